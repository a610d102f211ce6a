"""The gate's judgements: one metric of one case, baseline against now, under one rule.

Pure functions of numbers, so that their properties can be tested directly (tests/test_verdict.py):
identical samples never regress, a larger slowdown never turns a regression into a pass, and
the order of the samples does not matter.
"""

from __future__ import annotations

import enum
import statistics
from dataclasses import dataclass, replace
from typing import Sequence

from scipy.stats import mannwhitneyu

from parabench.measure.checks import Tolerance, first_divergence
from parabench.upstream.known import drift_beyond


class Verdict(str, enum.Enum):
    REGRESSED = "regressed"
    IMPROVED = "improved"
    UNCHANGED = "unchanged"
    NEW = "new"                        # measured now, no baseline for this case
    MISSING = "missing"                # in the baseline, selected now, but no result now
    NOT_COMPARABLE = "not comparable"  # a baseline exists, under another machine key
    UNJUDGED = "unjudged"              # should have been judged and was not (a metric, a skip, a spread): says why
    INFO = "info"                      # recorded for people, never judged


@dataclass(frozen=True)
class TimeRule:
    """A slowdown regresses when the medians differ by more than ``threshold`` **and** the
    per-step samples differ significantly (one-sided Mann–Whitney U, p < ``alpha``)."""

    threshold: float = 0.10
    alpha: float = 0.01
    min_samples: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1 or not 0 < self.alpha < 1 or self.min_samples < 3:
            raise ValueError(f"time rule {self}: need 0 ≤ threshold < 1, 0 < alpha < 1 and min_samples ≥ 3")


@dataclass(frozen=True)
class PairedRule:
    """The paired A/B rule (``parabench.ab.paired``): head against base over ``rounds`` interleaved rounds, a slowdown
    beyond ``threshold`` regressed at ``alpha`` per session."""

    threshold: float = 0.05  # a slowdown below 5 % is not a regression, however sure
    alpha: float = 0.05      # per session: the chance that an unchanged session raises any alarm
    rounds: int = 8          # one run of each case on each side per round

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1 or not 0 < self.alpha < 1 or self.rounds < 2:
            raise ValueError(f"A/B rule {self}: need 0 ≤ threshold < 1, 0 < alpha < 1 and rounds ≥ 2")


@dataclass(frozen=True)
class BytesRule:
    """A change beyond ``atol`` bytes + ``rtol`` (relative) is a regression or an improvement."""

    rtol: float = 0.0
    atol: int = 0
    informational: bool = False

    def __post_init__(self) -> None:
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"memory rule {self}: rtol and atol must be ≥ 0")


@dataclass(frozen=True)
class CurveRule:
    """The loss curve against the stored one: ``exact`` (bit for bit) or within a tolerance."""

    exact: bool = True
    atol: float = 0.0
    rtol: float = 0.0

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0 or (self.exact and (self.atol or self.rtol)):
            raise ValueError(f"loss rule {self}: exact takes no tolerance; atol and rtol must be ≥ 0")

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(atol=self.atol, rtol=self.rtol)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    baseline: str = ""
    now: str = ""
    change: float | None = None  # relative change, now / baseline − 1, where one means something
    detail: str = ""


def judge_time(baseline: Sequence[float], now: Sequence[float], rule: TimeRule, unit: str = "s",
               threshold_label: str = "") -> Judgement:
    """Median change with significance; ``baseline`` and ``now`` are per-step samples (any order).
    ``threshold_label`` is how the detail names the threshold (default ``threshold ±8%``)."""
    if min(len(baseline), len(now)) < rule.min_samples:
        return Judgement(Verdict.INFO, detail=f"too few steps to judge ({len(baseline)} vs {len(now)}; "
                                               f"the rule needs {rule.min_samples})")
    before, after = statistics.median(baseline), statistics.median(now)
    change = after / before - 1
    if change > rule.threshold:
        p = mannwhitneyu(now, baseline, alternative="greater").pvalue
        verdict = Verdict.REGRESSED if p < rule.alpha else Verdict.UNCHANGED
    elif change < -rule.threshold:
        p = mannwhitneyu(now, baseline, alternative="less").pvalue
        verdict = Verdict.IMPROVED if p < rule.alpha else Verdict.UNCHANGED
    else:
        p = None
    detail = threshold_label or f"threshold ±{rule.threshold:.0%}"
    if p is not None:
        detail += f", Mann–Whitney p={p:.2g} ({'<' if p < rule.alpha else '≥'} {rule.alpha:g})"
    return Judgement(verdict if p is not None else Verdict.UNCHANGED, _quantity(before, unit), _quantity(after, unit),
                     change, detail)


def judge_bytes(baseline: int, now: int, rule: BytesRule) -> Judgement:
    change = (now / baseline - 1) if baseline else (0.0 if now == baseline else float("inf"))
    if rule.informational:
        verdict = Verdict.INFO
    elif abs(now - baseline) <= rule.atol + rule.rtol * baseline:
        verdict = Verdict.UNCHANGED
    else:
        verdict = Verdict.REGRESSED if now > baseline else Verdict.IMPROVED
    detail = ("information only" if rule.informational
              else f"tolerance {rule.rtol:.2%}" + (f" + {_bytes(rule.atol)}" if rule.atol else ""))
    return Judgement(verdict, _bytes(baseline), _bytes(now), change, detail)


def judge_bytes_range(stored: Sequence[int], now: int, rule: BytesRule) -> Judgement:
    """``now`` against the values stored runs of unchanged code took: unchanged within their span; regressed
    above it by more than the tolerance over the lowest, improved below it by more than the tolerance (one stored
    value: ``judge_bytes``). The tolerance is measured from the lowest, so the span the stored runs already show
    is not allowed twice: a case whose runs took 12.5 or 14.2 MB and that allows 15 % regresses above 14.3 MB."""
    low = judge_bytes(min(stored), now, rule)
    if len(set(stored)) == 1:
        return low
    if now > max(stored) and low.verdict is Verdict.REGRESSED:
        judgement = low
    elif now < min(stored) and low.verdict is Verdict.IMPROVED:
        judgement = low
    else:
        judgement = replace(low, verdict=Verdict.UNCHANGED if not rule.informational else Verdict.INFO)
    span = f"{_bytes(min(stored))}–{_bytes(max(stored))}"
    detail = judgement.detail if rule.informational else f"{judgement.detail} over the lowest"
    return replace(judgement, baseline=span if judgement.verdict is Verdict.UNCHANGED else judgement.baseline,
                   detail=f"{detail}; {len(stored)} stored runs spanned {span}")


def judge_comm(baseline: dict, now: dict, rule: BytesRule) -> Judgement:
    """One rank's collectives of one step (``parabench.measure.costs``) against the stored ones.

    The bus bytes are judged by ``rule``; where they are within it but a collective's calls or bytes differ,
    more calls is a regression and fewer an improvement (an extra all-reduce of a few bytes is still one more
    synchronisation per step)."""
    from parabench.measure.costs import total

    bytes_judgement = judge_bytes(total(baseline), total(now), rule)
    differs = [f"{name} {_comm_entry(baseline.get(name))} → {_comm_entry(now.get(name))}"
               for name in sorted(set(baseline) | set(now))
               if {k: v for k, v in (baseline.get(name) or {}).items() if k != "group_sizes"}
               != {k: v for k, v in (now.get(name) or {}).items() if k != "group_sizes"}]
    verdict = bytes_judgement.verdict
    if verdict is Verdict.UNCHANGED and differs and not rule.informational:
        calls = total(now, "calls") - total(baseline, "calls")
        verdict = (Verdict.REGRESSED if calls > 0 or (calls == 0 and total(now, "bytes") > total(baseline, "bytes"))
                   else Verdict.IMPROVED)
    detail = "; ".join([bytes_judgement.detail] + (differs or ["every collective equal"]))
    return Judgement(verdict, f"{bytes_judgement.baseline} in {total(baseline, 'calls')} calls",
                     f"{bytes_judgement.now} in {total(now, 'calls')} calls", bytes_judgement.change, detail)


def _comm_entry(entry: dict | None) -> str:
    return "none" if not entry else f"{entry['calls']}× {_bytes(entry['bytes'])} (bus {_bytes(entry['bus_bytes'])})"


def judge_flops(baseline: int, now: int, rule: BytesRule) -> Judgement:
    """One rank's matmul FLOPs of one step against the stored ones (the tolerance as for bytes)."""
    judgement = judge_bytes(baseline, now, rule)
    return replace(judgement, baseline=f"{baseline / 1e9:.4f} GFLOP", now=f"{now / 1e9:.4f} GFLOP")


def judge_curve(baseline: Sequence[float], now: Sequence[float], rule: CurveRule) -> Judgement:
    """Step by step against the stored curve; names the first step that diverged."""
    if len(baseline) != len(now):
        return Judgement(Verdict.NOT_COMPARABLE, f"{len(baseline)} steps", f"{len(now)} steps",
                         detail="curves of different lengths")
    tolerance = rule.tolerance
    step = first_divergence(now, baseline, tolerance)
    how = "bit for bit" if rule.exact else f"atol {tolerance.atol:g} + rtol {tolerance.rtol:g}"
    final = (f"{baseline[-1]:.6f}", f"{now[-1]:.6f}") if baseline else ("", "")
    if step is None:
        return Judgement(Verdict.UNCHANGED, *final, detail=f"every step equal ({how})")
    largest = max(abs(a - b) for a, b in zip(now, baseline))
    return Judgement(Verdict.REGRESSED, *final, change=(now[-1] / baseline[-1] - 1) if baseline[-1] else None,
                     detail=f"diverged at step {step}: {now[step]:.8f} vs {baseline[step]:.8f} ({how}); "
                            f"max |Δ| {largest:.2e}")


def judge_parity(baseline: dict | None, now: dict) -> Judgement:
    """The stored parity check against the one-process reference (an absolute rule, per precision).

    A case that left the reference in its baseline too (a known deviation, run as a strict xfail)
    is unchanged while its drift now is within the baseline's (``known.drift_beyond``: its max |Δ| by
    ``known.DRIFT_MARGIN``, and no earlier first step off), regressed beyond that, and improved when it
    stops leaving the reference.
    """
    gap = f"max |Δ| {now['max_abs_difference']:.2e}"
    before = f"max |Δ| {baseline['max_abs_difference']:.2e}" if baseline else ""
    failed_before = baseline is not None and baseline["first_divergence"] is not None
    rule = now.get("rule") or f"atol {now['atol']:g} + rtol {now['rtol']:g}"
    if now["first_divergence"] is None:
        return Judgement(Verdict.IMPROVED if failed_before else Verdict.UNCHANGED, before, gap,
                         detail=f"within {rule}")
    if failed_before:
        beyond = drift_beyond(baseline["max_abs_difference"], baseline["first_divergence"],
                              now["max_abs_difference"], now["first_divergence"])
        both = (f"left the reference in the baseline too (from step {baseline['first_divergence']}, max |Δ| "
                f"{baseline['max_abs_difference']:.3e}; now from step {now['first_divergence']}, max |Δ| "
                f"{now['max_abs_difference']:.3e})")
        if beyond is not None:
            return Judgement(Verdict.REGRESSED, before, gap, detail=f"{both}, and further now: {beyond}")
        return Judgement(Verdict.UNCHANGED, before, gap, detail=both)
    return Judgement(Verdict.REGRESSED, before, gap,
                     detail=f"left the reference {now['reference']} at step {now['first_divergence']} ({rule})")


def _quantity(seconds: float, unit: str) -> str:
    if unit == "s":
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.4g} {unit}"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


TIME_REPORTED = "reported, not judged"  # a step-time row under --bench-gate-time=report

# Why something that should have been judged was not. Each makes the gate fail ("fail closed") unless the run
# excuses it by name (``--bench-gate-allow=REASON``); the fix is said in each row.
UNJUDGED_REASONS: dict[str, str] = {
    "nothing-gated": "no case of this run had a baseline of this machine key (a new host kind or device: record "
                     "baselines there first)",
    "missing": "a case with a baseline on this machine was selected and produced no result",
    "skipped": "a case with a baseline on this machine was skipped because this environment lacks what it needs "
               "(a package, a device, ranks, a kernel) or this host measured its bf16 slow",
    "not-comparable": "a case with a baseline on this machine was stored under another key (steps, data, threads, "
                      "pinning, launch, versions under [key] versions = \"equal\")",
    "metric-missing": "a metric the baseline has and this run lacks",
    "remeasured": "the baseline measured a metric another way (an older version of its measurement): re-record",
    "time-spread": "step time was to be judged, but the stored runs spread too much for a useful threshold",
}

"""Paired step-time verdicts for an A/B session: base and head run in alternating rounds on one machine.

Each round runs a case once on each side; the round's number is the log of head's median steady step over
base's. Slow drift of the machine (another job, thermal state) moves both sides of a round alike and cancels
in the ratio, which is what makes a same-session comparison hold where stored baselines moved by up to 39 %.

For each case: the ratio is the median over the rounds; the evidence is a one-sided Wilcoxon signed-rank test
of the rounds' log ratios against the threshold (head slower by more than ``threshold``; and, the other way,
faster by more than it). A session judges many cases, so the false-alarm rate is held per session: the
p-values of all its cases (both directions) are adjusted together (Benjamini–Hochberg,
``scipy.stats.false_discovery_control``; with every case unchanged, as in an A/A session, the chance of any
alarm is then at most ``alpha``). A case regresses when its adjusted p-value is below ``alpha`` and its
median ratio is above ``1 + threshold``.

The rules are data (``baselines/policy.toml``, ``[ab]``). With n rounds the smallest one-sided p-value is
2^-n, so ``rounds`` bounds what ``alpha`` can be reached over K cases (about alpha / K for the smallest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import false_discovery_control, wilcoxon

from parabench.gate.verdict import PairedRule, Verdict


@dataclass(frozen=True)
class Paired:
    """One case's rounds: the median head/base ratio and the one-sided evidence each way."""

    ratio: float
    p_slower: float  # head slower than base by more than the threshold
    p_faster: float  # head faster by more than it
    rounds: int


@dataclass(frozen=True)
class PairedVerdict:
    verdict: Verdict
    ratio: float
    p_adjusted: float  # of the direction the median points to, adjusted over the session
    detail: str


def log_ratios(head: Sequence[float], base: Sequence[float]) -> np.ndarray:
    """Per round, log(head / base) of the two sides' median steady steps (seconds)."""
    if len(head) != len(base) or not head:
        raise ValueError(f"paired rounds need as many head as base values, and some: got {len(head)} and {len(base)}")
    head_a, base_a = np.asarray(head, dtype=float), np.asarray(base, dtype=float)
    if not (np.all(np.isfinite(head_a)) and np.all(np.isfinite(base_a)) and np.all(head_a > 0) and np.all(base_a > 0)):
        raise ValueError("paired rounds need positive, finite step times")
    return np.log(head_a) - np.log(base_a)


def paired(ratios: np.ndarray, threshold: float) -> Paired:
    """The rounds' log ratios judged against ``threshold`` both ways (one-sided signed-rank tests)."""
    margin = math.log1p(threshold)
    slower = ratios - margin   # > 0 where head was slower than base by more than the threshold
    faster = -ratios - margin  # > 0 where head was faster by more than it
    return Paired(ratio=float(np.exp(np.median(ratios))), p_slower=_greater(slower), p_faster=_greater(faster),
                  rounds=len(ratios))


def _greater(differences: np.ndarray) -> float:
    if np.all(differences == 0):
        return 1.0
    magnitudes = np.abs(differences)
    # The exact null distribution holds without ties or zeros; otherwise the normal approximation (scipy's own
    # choice there is a permutation test, 0.5 s a call).
    exact = len(differences) <= 50 and np.all(magnitudes > 0) and len(np.unique(magnitudes)) == len(magnitudes)
    return float(wilcoxon(differences, alternative="greater", zero_method="zsplit",
                          method="exact" if exact else "approx").pvalue)


def rounds_needed(cases: int, alpha: float) -> int:
    """The fewest rounds at which one case of ``cases`` can be flagged alone: its smallest one-sided p-value,
    2^-n, must survive the session's adjustment over 2 × ``cases`` p-values (both directions) at ``alpha``."""
    # One round more than the bare minimum: a tie between rounds moves the test to its normal approximation,
    # whose smallest p-value is larger.
    return max(2, math.floor(math.log2(2 * max(1, cases) / alpha)) + 2)


def session_verdicts(cases: Mapping[str, Paired], rule: PairedRule) -> dict[str, PairedVerdict]:
    """Every case of one session, its p-values adjusted together so that the session holds ``rule.alpha``."""
    names = sorted(cases)
    if not names:
        return {}
    raw = [p for name in names for p in (cases[name].p_slower, cases[name].p_faster)]
    adjusted = false_discovery_control(raw, method="bh")
    out = {}
    for i, name in enumerate(names):
        case = cases[name]
        p_slower, p_faster = float(adjusted[2 * i]), float(adjusted[2 * i + 1])
        if case.ratio > 1 + rule.threshold and p_slower <= rule.alpha:
            verdict, p = Verdict.REGRESSED, p_slower
        elif case.ratio < 1 / (1 + rule.threshold) and p_faster <= rule.alpha:
            verdict, p = Verdict.IMPROVED, p_faster
        else:
            verdict, p = Verdict.UNCHANGED, min(p_slower, p_faster)
        detail = (f"median head/base {case.ratio - 1:+.1%} over {case.rounds} paired rounds; threshold "
                  f"±{rule.threshold:.0%}, Wilcoxon signed-rank p={p:.2g} adjusted over {len(names)} case(s) "
                  f"(session alpha {rule.alpha:g})")
        out[name] = PairedVerdict(verdict, case.ratio, p, detail)
    return out


# ---- the session's table: every A/B case, head against base ------------------------------------------------

def round_medians(results: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each round's median steady step (seconds) of one side, from its results' ``step_seconds``."""
    return [float(np.median(r["step_seconds"])) for r in results]


def compare_sides(benchmarks: Sequence[Mapping[str, Any]], policy, rule: PairedRule, sides: Mapping[str, Any],
                  injected: str | None = None):
    """The gate's report for an A/B session: each case's head result against its base result, same rules.

    ``benchmarks``: this session's benchmarks (``name`` and ``extra_info``), the A/B ones carrying
    ``extra_info["ab"]`` (``fixtures.ab``): the base side's result and both sides' round medians. Step time
    is judged on the paired rounds (``session_verdicts``: one false-alarm rate for the session); state
    bytes, peak, loss curve and parity by the gate's own rules (``parabench.gate.judge.judge_case``) with the base
    as the baseline. A loss curve that differs where library versions differ is reported, not judged.
    """
    from dataclasses import replace

    from parabench.gate.judge import across_versions, judge_case, version_changes
    from parabench.gate.keys import machine_key
    from parabench.gate.report import GateReport, Row

    report = GateReport(injected=injected, labels=("base", "head"), sides=dict(sides))
    paired_cases, rows_of, across = {}, {}, {}
    for bench in sorted(benchmarks, key=lambda b: b["name"]):
        info = bench["extra_info"]
        ab = info.get("ab")
        if not ab or "case" not in info:
            continue
        name = bench["name"]
        if ab.get("unknown"):
            report.rows.append(Row(name, "all", Verdict.NEW, detail=f"head only: {ab['unknown']}", source="base"))
            continue
        base = ab["base"]
        head = {k: v for k, v in info.items() if k != "ab"}
        rules = policy.rules(info["case"]["id"], info.get("device", "cpu"))
        rows = judge_case(name, [base], head, rules, source="base")[1:]  # the stored-baseline time row: not here
        changed = version_changes(machine_key(base, ("versions",), policy.ignore_packages)["versions"],
                                  machine_key(head, ("versions",), policy.ignore_packages)["versions"])
        if changed:
            across[name] = changed
            rows = [across_versions(row, changed) for row in rows]
        rows_of[name] = rows
        paired_cases[name] = paired(log_ratios(ab["head_medians"], ab["base_medians"]), rule.threshold)
    verdicts = session_verdicts(paired_cases, rule)
    for name, rows in rows_of.items():
        info = next(b["extra_info"] for b in benchmarks if b["name"] == name)
        verdict = verdicts[name]
        base_ms, head_ms = (float(np.median(info["ab"][k])) * 1e3 for k in ("base_medians", "head_medians"))
        time_row = Row(name, "step time (paired rounds)", verdict.verdict, f"{base_ms:.2f} ms", f"{head_ms:.2f} ms",
                       verdict.ratio - 1, f"{verdict.detail}; order {info['ab']['order']}", "base")
        if name in across:
            time_row = replace(time_row, detail=f"{time_row.detail}; versions differ ({across[name]})")
        report.rows += [time_row] + rows
    for changed in sorted(set(across.values())):
        count = sum(1 for c in across.values() if c == changed)
        report.notes.append(f"library versions differ (base → head: {changed}) in {count} case(s); a loss curve that "
                            "differs there is reported with its first differing step and max |Δ|, not judged "
                            "(parity with the one-process reference is the correctness check)")
    return report

"""Change points of a series: where a metric moved between two consecutive runs, and between which commits.

Exact metrics (state and peak bytes per rank, bus bytes and FLOPs per step, final loss, parity gap) are
deterministic on a host kind: any difference between consecutive runs of a series is a change point.

Step time is not: on the shared 2-core hosts the committed runs come from, one case's median step time moves by
tens of percent between recordings of the same commit. A step in it is found by ruptures' Pelt
(``STEP_RULE``) on the natural log of each run's median step time, and is kept only where the segments on either
side differ by at least the minimum step size. Both numbers come from the spread of repeated recordings of
unchanged code in the committed runs (``REPEATS``; ``repeat_spread`` recomputes them, tests/test_history.py checks
they still match).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parabench.history.series import EXACT_METRICS, Metric, Point, Run, Series, step_summary

# Repeated recordings of one commit (5ec3fc88) in one session, on the two Intel Xeon kinds of the committed runs:
# runs 0025-0027 (AVX-512) and 0028-0030 (AVX2 forced), recorded 2026-12-05 on a 2-CPU Intel Xeon host with the CI
# profile (the files' session profile: ci); 284 cases with three runs each. Recompute with
# python3 -c "from parabench.history.changes import repeat_spread; from parabench.history.series import read_runs;
# print(repeat_spread(read_runs('baselines')))"
REPEATS = (("0025", "0026", "0027"), ("0028", "0029", "0030"))
# The median over those cases of the standard deviation of ln(median step time) across the three recordings.
REPEAT_SIGMA = 0.095
# The median over those cases of the relative range (max/min - 1) of the three medians: a typical case's spread with
# unchanged code. A step-time step smaller than this is not reported.
MIN_STEP = 0.20


@dataclass(frozen=True)
class StepRule:
    """Pelt (ruptures, cost "l2", i.e. a change in the mean) on ln(median step seconds), one value per run.

    penalty = ``penalty_factor`` × σ² × ln(n) for n runs (the BIC penalty for a known noise σ at factor 2). σ is the
    series' own noise, estimated robustly from its successive differences (median |Δ ln| / (0.6745 √2), which a step
    moves little), but never below ``sigma``, the repeats' typical spread: a noisy case cannot claim a step within its
    own noise, a quiet one not within a typical case's. Each segment holds at least ``min_size`` runs, so one
    outlying run is not a step and a step at the newest run is reported once a second run confirms it; a kept step
    changes the geometric mean of the segments on either side by a factor of at least 1 + ``min_step`` either way
    (smaller ones are merged away, smallest first).
    """

    sigma: float = REPEAT_SIGMA
    min_step: float = MIN_STEP
    penalty_factor: float = 2.0
    min_size: int = 2

    def noise(self, logs: Sequence[float]) -> float:
        """σ for a series of ln(median) values: its successive differences' robust spread, at least ``sigma``."""
        steps = [abs(b - a) for a, b in itertools.pairwise(logs)]
        return max(self.sigma, statistics.median(steps) / (0.6745 * math.sqrt(2)) if steps else 0.0)

    def penalty(self, logs: Sequence[float]) -> float:
        return self.penalty_factor * self.noise(logs) ** 2 * math.log(len(logs))

    def describe(self) -> str:
        return (f"ruptures {_ruptures_version()} Pelt, model \"l2\", on ln(median step seconds) per run; penalty = "
                f"{self.penalty_factor:g} × σ² × ln(n), σ = the series' own noise (median |Δ ln| between successive "
                f"runs / (0.6745 √2)) but at least {self.sigma:g}; at least {self.min_size} runs per "
                f"segment; a step is kept when the geometric means of the segments on either side differ by a "
                f"factor of at least {1 + self.min_step:g} (either way)")


STEP_RULE = StepRule()


def _ruptures_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ruptures")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def step_changes(medians: Sequence[float], rule: StepRule = STEP_RULE) -> list[tuple[int, float]]:
    """(index, ratio) per step in ``medians`` (one per run, in order): the step lies between runs index-1 and
    index; ratio = geometric mean after / before (1.3: 30 % slower)."""
    n = len(medians)
    if n < 2 * rule.min_size or any(m <= 0 for m in medians):
        return []
    import numpy
    import ruptures

    signal = numpy.log(numpy.asarray(medians, dtype=float)).reshape(-1, 1)
    ends = ruptures.Pelt(model="l2", min_size=rule.min_size, jump=1).fit(signal).predict(pen=rule.penalty(list(signal[:, 0])))
    bounds = [0, *ends[:-1], n]  # ends ends with n
    logs = signal[:, 0]
    while len(bounds) > 2:
        ratios = [math.exp(logs[bounds[i]:bounds[i + 1]].mean() - logs[bounds[i - 1]:bounds[i]].mean())
                  for i in range(1, len(bounds) - 1)]
        small = min(range(len(ratios)), key=lambda i: abs(math.log(ratios[i])))
        if abs(math.log(ratios[small])) >= math.log(1 + rule.min_step):
            return [(bounds[i + 1], ratios[i]) for i in range(len(ratios))]
        del bounds[small + 1]
    return []


@dataclass(frozen=True)
class ChangePoint:
    """A metric of one series moved between two consecutive runs (``before``, ``after``)."""

    series: Series
    metric: str
    before: Point
    after: Point
    old: str
    new: str
    change: float | None       # relative (after / before - 1), where the values are one number each
    detail: str = ""           # what moved inside the metric (a state part, a collective)
    context: str = ""          # what else differed between the two runs (same commit, versions, measurement)


def series_changes(series: Series, rule: StepRule = STEP_RULE) -> list[ChangePoint]:
    """Every change point of one series, oldest first, exact metrics then step time at each pair of runs."""
    out = []
    points = series.points
    for before, after in itertools.pairwise(points):
        for metric in EXACT_METRICS:
            a, b = metric.read(before.info), metric.read(after.info)
            if a is None or b is None or a == b:
                continue
            out.append(ChangePoint(series, metric.name, before, after, show(a, metric), show(b, metric),
                                   relative(a, b), metric.detail(before.info, after.info) if metric.detail else "",
                                   context(before, after)))
    summaries = [step_summary(p.info) for p in points]
    timed = [(p, s["median"]) for p, s in zip(points, summaries) if s]
    for index, ratio in step_changes([m for _, m in timed], rule):
        before, after = timed[index - 1][0], timed[index][0]
        out.append(ChangePoint(series, "step time (median)", before, after, seconds(timed[index - 1][1]),
                               seconds(timed[index][1]), ratio - 1,
                               f"Pelt step: the geometric mean of the runs from here to the next step is "
                               f"{ratio:.2f}× that of the runs before",
                               context(before, after)))
    return sorted(out, key=lambda c: (c.after.run.order, c.metric))


def relative(a: Any, b: Any) -> float | None:
    """b / a - 1 for numbers or per-rank lists (their sums); None where that means nothing (a zero, a mismatch)."""
    if isinstance(a, list) and isinstance(b, list):
        a, b = sum(a), sum(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
        return b / a - 1
    return None


def show(value: Any, metric: Metric) -> str:
    if isinstance(value, list):
        if len(set(value)) == 1:
            return f"{quantity(value[0], metric.unit)} × {len(value)} ranks"
        return " / ".join(quantity(v, metric.unit) for v in value)
    return quantity(value, metric.unit)


def quantity(value: float, unit: str) -> str:
    if unit == "B":
        return f"{int(value):,} B"
    if unit == "FLOP":
        return f"{int(value):,}"
    return f"{value:.6g}"


def seconds(value: float) -> str:
    return f"{value * 1e3:.3g} ms"


def context(before: Point, after: Point) -> str:
    """What differed between two runs besides the metric: the commit, library versions, measurement versions."""
    parts = []
    a, b = before.run, after.run
    if a.commit == b.commit and a.commit:
        parts.append("same commit (a re-recording" + (", uncommitted changes possible" if a.dirty or b.dirty else "")
                     + ")")
    versions = _differences(before.info.get("versions", {}), after.info.get("versions", {}), "versions")
    measures = _differences(before.info.get("measures", {}), after.info.get("measures", {}), "measured by version")
    return "; ".join(parts + [p for p in (versions, measures) if p])


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> str:
    moved = [f"{name} {a.get(name, '—')} → {b.get(name, '—')}" for name in sorted(set(a) | set(b))
             if a.get(name) != b.get(name)]
    return f"{what}: " + ", ".join(moved) if moved else ""


def repeat_spread(runs: Sequence[Run], groups: Sequence[Sequence[str]] = REPEATS) -> dict[str, float]:
    """σ and the minimum step size as measured on ``groups`` of run numbers (recordings of one commit): the medians
    over cases (present in every run of a group) of the std of ln(median step) and of max/min - 1."""
    sigmas, ranges = [], []
    for group in groups:
        chosen = [r for r in runs if r.number in group]
        medians: dict[str, list[float]] = {}
        for run in chosen:
            for bench in run.stored.benchmarks:
                summary = step_summary(bench["extra_info"])
                if summary:
                    medians.setdefault(bench["name"], []).append(summary["median"])
        for values in medians.values():
            if len(values) == len(group) == len(chosen) and len(values) > 1:
                sigmas.append(statistics.stdev(math.log(v) for v in values))
                ranges.append(max(values) / min(values) - 1)
    if not sigmas:
        raise ValueError(f"no case was recorded in every run of {groups}")
    return {"cases": len(sigmas), "sigma": statistics.median(sigmas), "min_step": statistics.median(ranges)}

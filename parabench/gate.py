"""The gate: this run's cases against their stored baselines, metric by metric, under the policy.

``compare`` turns benchmarks (pytest-benchmark's, with parabench's ``extra_info``) into rows of
case, metric, baseline, now, change and verdict; ``GateReport`` renders them as a table, JSON
and Markdown. Nothing here runs a case: the same code judges a live session and two stored files.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from parabench.baselines import RECORD_HINT, StoredRun, newest_by_name
from parabench.keys import hardware_name, key_differences, machine_key
from parabench.policy import Policy, Rules
from parabench.verdict import (Judgement, Verdict, judge_bytes_range, judge_comm, judge_curve, judge_flops, judge_parity,
                               judge_time)

REPORT_FORMAT = 1


@dataclass(frozen=True)
class Row:
    name: str          # the benchmark's name: test function and case id
    metric: str
    verdict: Verdict
    baseline: str = ""
    now: str = ""
    change: float | None = None
    detail: str = ""
    source: str = ""   # the stored file the baseline came from

    @classmethod
    def of(cls, name: str, metric: str, judgement: Judgement, source: str = "") -> "Row":
        return cls(name, metric, judgement.verdict, judgement.baseline, judgement.now, judgement.change,
                   judgement.detail, source)


@dataclass
class GateReport:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    injected: str | None = None
    # What the two columns hold: a stored baseline and this run, or an A/B session's base and head sides.
    labels: tuple[str, str] = ("baseline", "now")
    sides: dict[str, Any] | None = None  # A/B: each side's interpreter, tree and versions (``parabench.ab``)

    @property
    def regressions(self) -> list[Row]:
        return [row for row in self.rows if row.verdict is Verdict.REGRESSED]

    def counts(self) -> dict[str, int]:
        """Cases by their worst verdict (regressed > not comparable > missing > new > improved > unchanged)."""
        order = [Verdict.REGRESSED, Verdict.NOT_COMPARABLE, Verdict.MISSING, Verdict.NEW, Verdict.IMPROVED,
                 Verdict.UNCHANGED]
        worst: dict[str, int] = {}
        for row in self.rows:
            if row.verdict in order:
                worst[row.name] = min(worst.get(row.name, len(order)), order.index(row.verdict))
        return {v.value: sum(1 for w in worst.values() if w == i) for i, v in enumerate(order)
                if any(w == i for w in worst.values())}

    def judged_cases(self) -> set[str]:
        """The cases at least one of whose metrics was judged against a baseline (not only reported)."""
        return {r.name for r in self.rows if r.verdict in (Verdict.REGRESSED, Verdict.IMPROVED, Verdict.UNCHANGED)}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items()) or "no cases"
        if self.regressions:
            verdict = f"{len({r.name for r in self.regressions})} case(s) REGRESSED"
        elif not self.judged_cases():
            verdict = "NOTHING GATED"
        else:
            verdict = "no regression"
        return f"parabench gate: {verdict} ({counts}; cases by their worst metric)"

    def ungated(self) -> str | None:
        """Why nothing, or only part of the run, was judged; None when every case was.

        A gate that compared nothing must say so where a CI log ends, not pass in silence.
        """
        cases = {r.name for r in self.rows}
        judged = self.judged_cases()
        if not cases or judged == cases:
            return None
        others = [r for r in self.rows if r.verdict is Verdict.NOT_COMPARABLE and r.name not in judged]
        new = {r.name for r in self.rows if r.verdict is Verdict.NEW}
        why = []
        if others:
            (detail, _), = Counter(row.detail for row in others).most_common(1)
            why.append(f"{len(others)} not comparable (most often {detail})")
        if new:
            why.append(f"{len(new)} without any stored baseline")
        head = ("NOTHING WAS GATED: no case of this run had a baseline of this machine key"
                if not judged else f"only {len(judged)} of {len(cases)} cases were gated")
        return f"{head}: {'; '.join(why) or 'see the table'}. {RECORD_HINT}"

    def regression_lines(self) -> list[str]:
        """One line per regressed metric, for the end of a log that is read from its tail."""
        return [f"REGRESSED {r.name} {r.metric}: {r.baseline} -> {r.now} ({_percent(r.change) or 'changed'}; {r.detail})"
                for r in self.regressions]

    def table_rows(self, everything: bool = False) -> list[list[str]]:
        shown = [r for r in self.rows if everything or r.verdict is not Verdict.INFO]
        return [[r.name, r.metric, r.baseline, r.now, _percent(r.change), r.verdict.value, r.detail] for r in shown]

    @property
    def headers(self) -> list[str]:
        return ["case", "metric", *self.labels, "change", "verdict", "why"]

    def table(self, everything: bool = False) -> str:
        from tabulate import tabulate

        return tabulate(self.table_rows(everything), headers=self.headers, tablefmt="simple", disable_numparse=True)

    def to_json(self) -> str:
        return json.dumps({"format": REPORT_FORMAT, "summary": self.summary(), "regressed": bool(self.regressions),
                           "gated_cases": len(self.judged_cases()), "ungated": self.ungated(),
                           "injected": self.injected, "counts": self.counts(), "notes": self.notes,
                           "columns": list(self.labels), **({"sides": self.sides} if self.sides else {}),
                           "rows": [{**asdict(r), "verdict": r.verdict.value} for r in self.rows]}, indent=2)

    def to_markdown(self) -> str:
        from tabulate import tabulate

        lines = [f"## {self.summary()}", ""]
        if self.injected:
            lines += [f"**Perturbation injected on purpose (self-test): `{self.injected}`**", ""]
        for side, about in (self.sides or {}).items():
            lines.append(f"- **{side}**: " + "; ".join(f"{k} {v}" for k, v in about.items() if k != "versions"))
        lines += [f"- {note}" for note in self.notes] + ([""] if self.notes or self.sides else [])
        if self.ungated():
            lines += [f"**{self.ungated()}**", ""]
        if self.regressions:
            lines += ["### Regressions", "", tabulate([[r.name, r.metric, r.baseline, r.now, _percent(r.change),
                                                        r.detail] for r in self.regressions],
                                                      headers=["case", "metric", *self.labels, "change", "why"],
                                                      tablefmt="github", disable_numparse=True), ""]
        lines += ["<details><summary>Every case and metric</summary>", "",
                  tabulate(self.table_rows(), headers=self.headers, tablefmt="github", disable_numparse=True),
                  "", "</details>", ""]
        return "\n".join(lines)


def compare(now: Sequence[Mapping[str, Any]], stored: Iterable[StoredRun], policy: Policy,
            expected: Iterable[str] = (), injected: str | None = None, judge_time: bool = True) -> GateReport:
    """Judge each benchmark in ``now`` against the newest stored one of the same name and machine key.

    ``now`` holds dicts with ``name`` and ``extra_info``; ``expected`` names the benchmarks this session
    selected, so one with a comparable baseline but no result now is reported as missing. With
    ``judge_time=False`` step time is reported with the verdict it would get, but not judged.
    """
    report = GateReport(injected=injected)
    history = newest_by_name(stored)
    measured = {bench["name"] for bench in now}
    # With versions = "compare" the library versions leave the key: a stored run of other versions is compared
    # (the runs of this run's versions first, if any), and every row of such a case names what differs.
    fields = tuple(f for f in policy.key_fields if f != "versions" or policy.versions == "equal")
    across: Counter[str] = Counter()
    for bench in sorted(now, key=lambda b: b["name"]):
        info = bench["extra_info"]
        if "case" not in info:
            continue
        key = machine_key(info, fields, policy.ignore_packages)
        candidates = history.get(bench["name"], [])
        same = [(run, old) for run, old in candidates
                if machine_key(old["extra_info"], fields, policy.ignore_packages) == key]
        if same:
            # This run's versions if a stored run has them, else the newest run's; pooled with runs of those only.
            mine = _versions(info, policy)
            stored_versions = [_versions(old["extra_info"], policy) for _, old in same]
            target = mine if mine in stored_versions else stored_versions[0]
            equal = [entry for entry, versions in zip(same, stored_versions) if versions == target]
            rules = policy.rules(info["case"]["id"], info.get("device", "cpu"))
            pooled = [old["extra_info"] for _, old in equal[:rules.time_history]]
            rows = judge_case(bench["name"], pooled, info, rules, equal[0][0].path)
            if not judge_time and rows[0].verdict is not Verdict.INFO:
                rows[0] = replace(rows[0], verdict=Verdict.INFO,
                                  detail=f"reported, not judged: by the policy {rows[0].verdict.value}; {rows[0].detail}")
            changed = version_changes(_versions(pooled[0], policy), mine)
            if changed:
                across[changed] += 1
                rows = [_across_versions(row, changed) for row in rows]
            report.rows += rows
        elif candidates:
            run, old = candidates[0]
            other = machine_key(old["extra_info"], policy.key_fields, policy.ignore_packages)
            full = machine_key(info, policy.key_fields, policy.ignore_packages)
            report.rows.append(Row(bench["name"], "all", Verdict.NOT_COMPARABLE, detail="stored under another "
                                   "machine key: " + "; ".join(key_differences(other, full)), source=run.path))
        else:
            report.rows.append(Row(bench["name"], "all", Verdict.NEW, detail="no stored baseline"))
    here = {(b["extra_info"].get("device"), _hardware(b["extra_info"])) for b in now if "case" in b["extra_info"]}
    for name in sorted(set(expected) - measured):
        entries = [(run, old) for run, old in history.get(name, [])
                   if not here or (old["extra_info"].get("device"), _hardware(old["extra_info"])) in here]
        if entries:
            report.rows.append(Row(name, "all", Verdict.MISSING, detail="selected and stored, but no result now "
                                   "(failed, skipped or errored: see the test report)", source=entries[0][0].path))
    for changed, count in across.most_common():
        report.notes.append(f"compared across library versions ({changed}, stored → now): {count} case(s); the loss "
                            f"curve is reported there, not judged (parity with one process checks correctness); "
                            f"[key] versions = \"equal\" in the policy compares equal versions only")
    if any(r.verdict is Verdict.NEW for r in report.rows):
        report.notes.append(f"cases without a stored baseline for this machine key are 'new'; {RECORD_HINT}")
    return report


def _versions(info: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    return machine_key(info, ("versions",), policy.ignore_packages)["versions"]


def version_changes(stored: Mapping[str, str], now: Mapping[str, str]) -> str:
    """``deepspeed 0.19.8 → 0.19.7, torch 2.13.0 → 2.14.1`` (stored → now), or "" when they agree."""
    return ", ".join(f"{name} {stored.get(name, 'absent')} → {now.get(name, 'absent')}"
                     for name in sorted(set(stored) | set(now)) if stored.get(name) != now.get(name))


def _across_versions(row: Row, changed: str) -> Row:
    """A row compared with a run of other library versions: named so; a loss curve that differs is reported."""
    if row.metric == "loss curve" and row.verdict is Verdict.REGRESSED:
        return replace(row, verdict=Verdict.INFO, detail=f"{row.detail}; versions differ ({changed}): reported, "
                                                        "not judged")
    return replace(row, detail=f"{row.detail}; versions differ ({changed})")


def judge_case(name: str, baselines: Sequence[Mapping[str, Any]], now: Mapping[str, Any], rules: Rules,
               source: str = "") -> list[Row]:
    """Every metric of one case against its stored runs of the same machine key, newest first.

    Step times pool the samples of up to ``rules.time_history`` stored runs (one run's median is
    itself noisy). The peak is judged against the range the same stored runs span, per rank: a peak that
    takes one of a few values from run to run (which asynchronous gather landed first, which bucket was
    reused) is a regression only above the highest stored one, beyond the tolerance, and an improvement
    only below the lowest. State bytes and the loss curve are deterministic and compared with the newest.
    """
    baseline = baselines[0]
    rows = [Row.of(name, f"step time ({rules.time_basis})", _judge_step_time(baselines, now, rules), source)]
    for metric in ("state_bytes", "peak_allocated_bytes", "cuda_max_reserved_bytes", "rss_bytes"):
        after = _per_rank_bytes(now, metric)
        pooled = baselines if metric == "peak_allocated_bytes" else baselines[:1]
        stored = [b for b in (_per_rank_bytes(info, metric) for info in pooled) if b and len(b) == len(after)]
        if after and stored:
            judgements = [judge_bytes_range([b[rank] for b in stored], a, rules.memory[metric])
                          for rank, a in enumerate(after)]
            rank, worst = max(enumerate(judgements), key=lambda item: _severity(item[1]))
            detail = f"{worst.detail}; worst of {len(judgements)} ranks: rank {rank}"
            rows.append(Row.of(name, metric, Judgement(worst.verdict, worst.baseline, worst.now, worst.change,
                                                       detail), source))
    rows += _cost_rows(name, baseline, now, rules, source)
    rows.append(Row.of(name, "loss curve", judge_curve(baseline["loss"], now["loss"], rules.loss), source))
    if "parity" in now:
        rows.append(Row.of(name, "parity", judge_parity(baseline.get("parity"), now["parity"]), source))
    return rows


def _cost_rows(name: str, baseline: Mapping[str, Any], now: Mapping[str, Any], rules: Rules,
               source: str) -> list[Row]:
    """One step's collectives and FLOPs per rank against the newest stored run's (where both counted them)."""
    from parabench.policy import COST_METRICS
    from parabench.verdict import BytesRule

    cost = rules.cost or {metric: BytesRule() for metric in COST_METRICS}
    rows = []
    for metric, judge in (("comm", judge_comm), ("flops", judge_flops)):
        before, after = baseline.get(metric), now.get(metric)
        if not before or not after or len(before) != len(after) or None in before or None in after:
            continue
        judgements = [judge(b, a, cost[metric]) for b, a in zip(before, after)]
        rank, worst = max(enumerate(judgements), key=lambda item: _severity(item[1]))
        rows.append(Row.of(name, "comm bus bytes" if metric == "comm" else "flops",
                           replace(worst, detail=f"{worst.detail}; worst of {len(judgements)} ranks: rank {rank}"),
                           source))
    return rows


def _judge_step_time(baselines: Sequence[Mapping[str, Any]], now: Mapping[str, Any], rules: Rules) -> Judgement:
    forced = [info.get("hardware", {}).get("kernels_forced") for info in baselines]
    forced_now = now.get("hardware", {}).get("kernels_forced")
    if any(f != forced_now for f in forced):
        # Forced kernels stand for another host kind's numerics (the same loss bits), not for its speed.
        return Judgement(Verdict.INFO, detail=f"not judged: the baseline ran with kernels forced "
                                              f"({_forced(forced[0])}), this run {_forced(forced_now)}; its memory, "
                                              f"loss and parity are compared, its speed belongs to another CPU")
    before = [s for info in baselines for s in info["step_seconds"]]
    after = now["step_seconds"]
    rule, pooled = rules.time, f"; baseline: {len(baselines)} stored run(s)"
    medians = [statistics.median(info["step_seconds"]) for info in baselines]
    spread = max(medians) / min(medians) - 1
    if rules.time_spread_factor * spread > rule.threshold:
        # A case whose stored runs disagree by 20 % cannot be judged at 8 %: Megatron-style, the
        # tolerance comes from repeat runs.
        rule = replace(rule, threshold=min(0.95, rules.time_spread_factor * spread))
        pooled += f" whose medians spread {spread:.1%}, so the threshold is {rule.threshold:.0%}"
    absolute = judge_time(before, after, rule)
    scales = [info.get("calibration_seconds") for info in baselines]
    scale_now = now.get("calibration_seconds")
    if not scale_now or not all(scales):
        if rules.time_basis == "normalized":
            return replace(absolute, detail=absolute.detail + pooled + "; absolute: no calibration stored")
        return replace(absolute, detail=absolute.detail + pooled)
    drift = scale_now / statistics.median(scales) - 1
    if rules.time_basis == "absolute":
        return replace(absolute, detail=f"{absolute.detail}{pooled}; machine {_percent(drift)} (calibration)")
    normalized = judge_time([s / scale for info, scale in zip(baselines, scales) for s in info["step_seconds"]],
                            [s / scale_now for s in after], rule, unit="× cal")
    return Judgement(normalized.verdict, absolute.baseline, absolute.now, normalized.change,
                     f"{normalized.detail}{pooled}; absolute {_percent(absolute.change)}, machine {_percent(drift)}")


def _forced(variables: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in variables.items()) if variables else "the CPU's own"


def _per_rank_bytes(info: Mapping[str, Any], metric: str) -> list[int]:
    values = info.get(metric) or []
    if metric == "state_bytes":
        return [v["total"] for v in values]
    if metric == "rss_bytes":
        return [v["max_rss"] for v in values]
    return [v for v in values if v is not None]


def _severity(judgement: Judgement) -> tuple[int, float]:
    rank = {Verdict.REGRESSED: 3, Verdict.IMPROVED: 2, Verdict.UNCHANGED: 1}.get(judgement.verdict, 0)
    return rank, abs(judgement.change or 0.0)


def _hardware(info: Mapping[str, Any]) -> str:
    return hardware_name(info.get("hardware", {}))


def _percent(change: float | None) -> str:
    return "" if change is None else f"{change:+.1%}"


"""The gate's judging: this run's cases against their stored baselines, metric by metric, under the policy.

``compare`` turns benchmarks (pytest-benchmark's, with parabench's ``extra_info``) into rows of case, metric,
baseline, now, change and verdict in a ``parabench.gate.report.GateReport``. Nothing here runs a case: the same
code judges a live session and two stored files.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from parabench.gate.baselines import RECORD_HINT, StoredRun, newest_by_name
from parabench.gate.keys import key_differences, machine_key, machine_kind
from parabench.gate.policy import Policy, Rules
from parabench.gate.render import percent
from parabench.gate.report import GateReport, Row
from parabench.gate.verdict import (
    TIME_REPORTED,
    UNJUDGED_REASONS,
    Judgement,
    Verdict,
    judge_bytes_range,
    judge_comm,
    judge_curve,
    judge_flops,
    judge_parity,
    judge_time,
)


def compare(now: Sequence[Mapping[str, Any]], stored: Iterable[StoredRun], policy: Policy,
            expected: Iterable[str] = (), injected: str | None = None, judge_time: bool = True,
            machine: tuple[str, str] | None = None, skipped: Mapping[str, str] | None = None,
            allowed: Iterable[str] = ()) -> GateReport:
    """Judge each benchmark in ``now`` against the newest stored one of the same name and machine key.

    ``now`` holds dicts with ``name`` and ``extra_info``; ``expected`` names the benchmarks this session
    selected, so one with a baseline on this machine but no result now is "missing"; ``skipped`` maps the
    benchmarks this environment could not run (a package, device or ranks missing) to the reason, so one with a
    baseline on this machine is "unjudged". ``machine`` is this run's (device, hardware name), for which stored
    runs count as "on this machine" (default: those of this run's results). Each of those fails the gate unless
    its reason is in ``allowed`` (``UNJUDGED_REASONS``). With ``judge_time=False`` step time is reported with the
    verdict it would get, but not judged.
    """
    unknown = sorted(set(allowed) - set(UNJUDGED_REASONS))
    if unknown:
        raise ValueError(f"unknown --bench-gate-allow reason(s) {', '.join(unknown)}; known: "
                         f"{', '.join(UNJUDGED_REASONS)}")
    report = GateReport(injected=injected, allowed=frozenset(allowed))
    history = newest_by_name(stored)
    measured = {bench["name"] for bench in now}
    here = {machine} if machine else {machine_kind(b["extra_info"]) for b in now if "case" in b["extra_info"]}

    def on_this_machine(name: str) -> list:
        return [(run, old) for run, old in history.get(name, []) if not here or machine_kind(old["extra_info"]) in here]

    # With versions = "compare" the library versions leave the key: a stored run of other versions is compared
    # (the runs of this run's versions first, if any), and every row of such a case names what differs.
    fields = policy.compared_fields
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
            rows = judge_case(bench["name"], pooled, info, rules, equal[0][0].path,
                              costs_from=[(run.path, old["extra_info"]) for run, old in equal])
            if not judge_time and rows[0].verdict is not Verdict.INFO and rows[0].metric.startswith("step time"):
                rows[0] = replace(rows[0], verdict=Verdict.INFO, reason="",
                                  detail=f"{TIME_REPORTED}: by the policy {rows[0].verdict.value}; {rows[0].detail}")
            changed = version_changes(_versions(pooled[0], policy), mine)
            if changed:
                across[changed] += 1
                rows = [across_versions(row, changed) for row in rows]
            report.rows += rows
        elif candidates:
            run, old = candidates[0]
            other = machine_key(old["extra_info"], policy.key_fields, policy.ignore_packages)
            full = machine_key(info, policy.key_fields, policy.ignore_packages)
            differences = "; ".join(key_differences(other, full))
            mine = on_this_machine(bench["name"])
            if mine:
                # A baseline of this very machine exists, under other settings: this case was not judged.
                report.rows.append(Row(bench["name"], "all", Verdict.NOT_COMPARABLE, detail=(
                    f"stored on this machine under another key: {differences}; run with the stored settings, or "
                    f"record a baseline with these ({RECORD_HINT})"), source=mine[0][0].path, reason="not-comparable"))
            else:
                report.rows.append(Row(bench["name"], "all", Verdict.NOT_COMPARABLE,
                                       detail="stored under another machine key: " + differences, source=run.path))
        else:
            report.rows.append(Row(bench["name"], "all", Verdict.NEW, detail="no stored baseline"))
    for name, why in sorted((skipped or {}).items()):
        entries = on_this_machine(name)
        if entries and name not in measured:
            report.rows.append(Row(name, "all", Verdict.UNJUDGED, detail=(
                f"has a baseline on this machine but was skipped: {why}"), source=entries[0][0].path, reason="skipped"))
    for name in sorted(set(expected) - measured - set(skipped or {})):
        entries = on_this_machine(name)
        if entries:
            report.rows.append(Row(name, "all", Verdict.MISSING, detail="stored, but no result now: failed, "
                                   "skipped or errored (see the test report), or no longer collected by a run of the "
                                   "whole suite (removed, renamed or left out of the profile: re-record if meant)", source=entries[0][0].path,
                                   reason="missing"))
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
    """``deepspeed 0.19.8 → 0.19.7, torch 2.13.0 → 2.14.1`` (stored → now), or "" when they agree.

    A package the stored run did not record is not a change: runs stored before results named packages by their
    distribution (scikit-learn, pillow) recorded none for them, and would otherwise read as another version and
    have their loss curves reported, not judged."""
    return ", ".join(f"{name} {stored.get(name, 'absent')} → {now.get(name, 'absent')}"
                     for name in sorted(set(stored) | set(now)) if name in stored and stored.get(name) != now.get(name))


def across_versions(row: Row, changed: str) -> Row:
    """A row compared with a run of other library versions: named so; a loss curve that differs is reported."""
    if row.metric == "loss curve" and row.verdict is Verdict.REGRESSED:
        return replace(row, verdict=Verdict.INFO, detail=f"{row.detail}; versions differ ({changed}): reported, "
                                                        "not judged")
    return replace(row, detail=f"{row.detail}; versions differ ({changed})")


# The judged metrics whose absence now, where the baseline has them, leaves the case unjudged ("metric-missing").
# rss_bytes and cuda_max_reserved_bytes are information only.
JUDGED_BYTES = ("state_bytes", "peak_allocated_bytes")


def judge_case(name: str, baselines: Sequence[Mapping[str, Any]], now: Mapping[str, Any], rules: Rules,
               source: str = "", costs_from: Sequence[tuple[str, Mapping[str, Any]]] | None = None) -> list[Row]:
    """Every metric of one case against its stored runs of the same machine key, newest first.

    Step times pool the samples of up to ``rules.time_history`` stored runs (one run's median is
    itself noisy). The peak is judged against the range the same stored runs span, per rank: a peak that
    takes one of a few values from run to run (which asynchronous gather landed first, which bucket was
    reused) is a regression only above the highest stored one, beyond the tolerance, and an improvement
    only below the lowest. State bytes and the loss curve are deterministic and compared with the newest.
    Collectives and FLOPs are compared with the newest of ``costs_from`` (source, extra_info; default the
    baselines) that counted them. A judged metric the baseline has and this run lacks is "unjudged".
    """
    baseline = baselines[0]
    rows = [Row.of(name, f"step time ({rules.time_basis})", _judge_step_time(baselines, now, rules), source)]
    if rows[0].verdict is Verdict.UNJUDGED:
        rows[0] = replace(rows[0], reason="time-spread")
    for metric in ("state_bytes", "peak_allocated_bytes", "cuda_max_reserved_bytes", "rss_bytes"):
        after = _per_rank_bytes(now, metric)
        pooled = baselines if metric == "peak_allocated_bytes" else baselines[:1]
        if metric in JUDGED_BYTES:
            version = measured_by(now, metric)
            if after and measured_by(baseline, metric) != version:
                rows.append(Row(name, metric, Verdict.UNJUDGED, now=f"version {version}", detail=(
                    f"the baseline measured {metric} another way (version {measured_by(baseline, metric)}, now "
                    f"{version}: parabench.measure.memory.MEASURES says what changed); re-record this machine's baselines "
                    f"({RECORD_HINT})"), source=source, reason="remeasured"))
                continue
            pooled = [info for info in pooled if measured_by(info, metric) == version]
        stored = [b for b in (_per_rank_bytes(info, metric) for info in pooled) if b and len(b) == len(after)]
        if after and stored:
            ordered = metric == "peak_allocated_bytes"
            if ordered:
                # Which rank peaks highest can change from run to run (ZeRO-3 with accumulation: rank 0 or rank 1 held
                # one more gathered fp32 copy, 14.216 / 12.465 MB, in either order): the highest peak is held to the
                # highest stored, the second to the second.
                after = sorted(after, reverse=True)
                stored = [sorted(b, reverse=True) for b in stored]
            judgements = [judge_bytes_range([b[rank] for b in stored], a, rules.memory[metric])
                          for rank, a in enumerate(after)]
            rank, worst = max(enumerate(judgements), key=lambda item: _severity(item[1]))
            which = (f"the {_ordinal(rank + 1)} highest of {len(judgements)} ranks' peaks" if ordered
                     else f"worst of {len(judgements)} ranks: rank {rank}")
            detail = f"{worst.detail}; {which}"
            rows.append(Row.of(name, metric, Judgement(worst.verdict, worst.baseline, worst.now, worst.change,
                                                       detail), source))
        elif metric in JUDGED_BYTES and _per_rank_bytes(baseline, metric) and not rules.memory[metric].informational:
            rows.append(_metric_missing(name, metric, f"{len(_per_rank_bytes(baseline, metric))} ranks",
                                        f"{len(after)} ranks" if after else "none", source))
    rows += _cost_rows(name, costs_from or [(source, info) for info in baselines], now, rules)
    rows.append(Row.of(name, "loss curve", judge_curve(baseline["loss"], now["loss"], rules.loss), source))
    if "parity" in now:
        rows.append(Row.of(name, "parity", judge_parity(baseline.get("parity"), now["parity"]), source))
    elif baseline.get("parity"):
        rows.append(_metric_missing(name, "parity", "checked", "none", source))
    return rows


def measured_by(info: Mapping[str, Any], metric: str) -> int:
    """The version of ``metric``'s measurement a result was made with (``parabench.measure.memory.MEASURES``; 1 before
    results recorded it)."""
    return int((info.get("measures") or {}).get(metric, 1))


def _metric_missing(name: str, metric: str, baseline: str, now: str, source: str) -> Row:
    return Row(name, metric, Verdict.UNJUDGED, baseline, now, detail=(
        f"the baseline has {metric} and this run has {'none' if now == 'none' else 'another shape: ' + now}: "
        "a measurement the suite used to make was not made (an option that turns it off, a broken probe)"),
        source=source, reason="metric-missing")


def _cost_rows(name: str, history: Sequence[tuple[str, Mapping[str, Any]]], now: Mapping[str, Any],
               rules: Rules) -> list[Row]:
    """One step's collectives and FLOPs per rank against the newest stored run that counted them."""
    from parabench.gate.policy import COST_METRICS
    from parabench.gate.verdict import BytesRule

    cost = rules.cost or {metric: BytesRule() for metric in COST_METRICS}
    rows = []
    for metric, judge in (("comm", judge_comm), ("flops", judge_flops)):
        label = "comm bus bytes" if metric == "comm" else "flops"
        after = now.get(metric)
        counted = [(source, info[metric]) for source, info in history if _counted(info.get(metric))]
        if not _counted(after):
            if counted:
                rows.append(_metric_missing(name, label, "counted", "none", counted[0][0]))
            continue
        if not counted:
            rows.append(Row(name, label, Verdict.INFO, now="counted", detail=(
                f"not judged: none of the {len(history)} stored run(s) of this key counted it (stored before the "
                f"suite counted costs); {RECORD_HINT}"), source=history[0][0] if history else ""))
            continue
        source, before = counted[0]
        if len(before) != len(after):
            rows.append(Row(name, label, Verdict.NOT_COMPARABLE, detail=f"{len(before)} ranks stored, {len(after)} "
                                                                       f"now", source=source))
            continue
        judgements = [judge(b, a, cost[metric]) for b, a in zip(before, after)]
        rank, worst = max(enumerate(judgements), key=lambda item: _severity(item[1]))
        newest = "" if source == history[0][0] else f"; from {source.rsplit('/', 1)[-1]}, the newest run that counted it"
        rows.append(Row.of(name, label, replace(worst, detail=f"{worst.detail}; worst of {len(judgements)} ranks: "
                                                              f"rank {rank}{newest}"), source))
    return rows


def _counted(values: Any) -> bool:
    return bool(values) and None not in values


def _judge_step_time(baselines: Sequence[Mapping[str, Any]], now: Mapping[str, Any], rules: Rules) -> Judgement:
    """Step time against the pooled stored runs, at the policy's threshold or the spread of those runs' medians
    × ``spread_factor`` if larger, printed in the row; where that exceeds ``max_threshold`` the stored runs cannot
    judge it (``Verdict.UNJUDGED``: use --bench-ab, which compares both sides in one session)."""
    forced = [info.get("hardware", {}).get("kernels_forced") for info in baselines]
    forced_now = now.get("hardware", {}).get("kernels_forced")
    if any(f != forced_now for f in forced):
        # Forced kernels stand for another host kind's numerics (the same loss bits), not for its speed.
        return Judgement(Verdict.INFO, detail=f"not judged: the baseline ran with kernels forced "
                                              f"({_forced(forced[0])}), this run {_forced(forced_now)}; its memory, "
                                              f"loss and parity are compared, its speed belongs to another CPU")
    scales = [info.get("calibration_seconds") for info in baselines]
    scale_now = now.get("calibration_seconds")
    normalized = rules.time_basis == "normalized" and bool(scale_now) and all(scales)
    per_run = [[s / scale for s in info["step_seconds"]] if normalized else list(info["step_seconds"])
               for info, scale in zip(baselines, scales)]
    after = [s / scale_now for s in now["step_seconds"]] if normalized else list(now["step_seconds"])
    before = [s for run in per_run for s in run]
    rule = rules.time
    threshold, spread = effective_threshold(per_run, rules)
    pooled = f"; baseline: {len(baselines)} stored run(s)"
    if len(baselines) > 1:
        pooled += f", medians spread {spread:.1%}"
    how = (f"threshold {threshold:.0%}" + (f" (policy {rule.threshold:.0%}; {rules.time_spread_factor:g} × the "
                                           f"stored runs' spread)" if threshold > rule.threshold else ""))
    absolute = judge_time([s for info in baselines for s in info["step_seconds"]], now["step_seconds"], rule)
    drift = (scale_now / statistics.median(scales) - 1) if scale_now and all(scales) else None
    machine = f"; machine {percent(drift)} (calibration)" if drift is not None else "; no calibration stored"
    if len(baselines) < rules.time_min_runs:
        return Judgement(Verdict.UNJUDGED, absolute.baseline, absolute.now, absolute.change, (
            f"not judged: {len(baselines)} stored run(s) of this key, and the policy's min_runs is "
            f"{rules.time_min_runs}: one run says nothing of how far its own median moves between sessions; record "
            f"more (tox -e record records three) or judge time with --bench-ab{pooled}{machine}"))
    if threshold > rules.time_max_threshold:
        wide = judge_time(before, after, replace(rule, threshold=min(threshold, 0.99)),
                          unit="× cal" if normalized else "s", threshold_label=how)
        if wide.verdict is Verdict.REGRESSED:  # slower even than the stored runs' own spread allows: a regression
            return Judgement(Verdict.REGRESSED, absolute.baseline, absolute.now, wide.change, (
                f"{wide.detail}: beyond even the wide "
                f"threshold the stored runs' spread sets (above max_threshold {rules.time_max_threshold:.0%}, so "
                f"smaller changes go unjudged){pooled}{machine}"))
        return Judgement(Verdict.UNJUDGED, absolute.baseline, absolute.now, absolute.change, (
            f"not judged: the stored runs' medians spread {spread:.1%}, so the threshold would be {threshold:.0%}, "
            f"above the policy's max_threshold {rules.time_max_threshold:.0%}; judge time with --bench-ab (both "
            f"sides in one session) or record quieter baselines{pooled}{machine}"))
    judged = judge_time(before, after, replace(rule, threshold=threshold), unit="× cal" if normalized else "s",
                        threshold_label=how)
    detail = judged.detail
    if normalized:
        return Judgement(judged.verdict, absolute.baseline, absolute.now, judged.change,
                         f"{detail}{pooled}; absolute {percent(absolute.change)}{machine}")
    return replace(judged, detail=f"{detail}{pooled}{machine}")


def effective_threshold(per_run_steps: Sequence[Sequence[float]], rules: Rules) -> tuple[float, float]:
    """(the step-time threshold a case is judged at, the spread of its stored runs' medians, max/min − 1): the
    policy's threshold, or ``spread_factor`` × the spread where larger (repeat runs that disagree by 20 % cannot
    judge 8 %)."""
    medians = [statistics.median(run) for run in per_run_steps]
    spread = max(medians) / min(medians) - 1
    return max(rules.time.threshold, rules.time_spread_factor * spread), spread


def time_judgeability(stored: Iterable[StoredRun], policy: Policy,
                      names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per case and machine (hardware, forced kernels), the step-time threshold the newest stored runs of one key
    would judge a new run at, and whether it is judged at all (``max_threshold``): how useful stored-run time is."""
    history = newest_by_name(stored)
    fields = policy.compared_fields
    rows = []
    for name in sorted(set(names) & set(history) if names is not None else history):
        kinds: dict[tuple, list[Mapping[str, Any]]] = {}
        for _, bench in history[name]:
            info = bench["extra_info"]
            forced = _forced(info.get("hardware", {}).get("kernels_forced"))
            kinds.setdefault((*machine_kind(info), forced), []).append(info)
        for (device, hardware, forced), infos in sorted(kinds.items()):
            key = machine_key(infos[0], fields, policy.ignore_packages)
            versions = _versions(infos[0], policy)
            rules = policy.rules(infos[0]["case"]["id"], device or "cpu")
            same = [info for info in infos if machine_key(info, fields, policy.ignore_packages) == key
                    and _versions(info, policy) == versions][:rules.time_history]
            threshold, spread = effective_threshold([info["step_seconds"] for info in same], rules)
            rows.append({"case": name, "device": device, "hardware": hardware, "kernels": forced, "runs": len(same),
                         "spread": round(spread, 4), "threshold": round(threshold, 4),
                         "judged": threshold <= rules.time_max_threshold and len(same) >= rules.time_min_runs})
    return rows


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


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

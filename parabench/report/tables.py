"""The report's tables, as data: each renders to Markdown (formatted) and CSV (raw numbers).

A builder takes a checked run (``parabench.report.runs``) and returns tables; none of them measures
anything. Strategy comparisons follow the seeds: throughput, time for N steps and memory per rank of
every strategy on one workload, optimizer, precision and batch; sweeps pivot a series over a knob.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from parabench.report.runs import STRATEGY_ONLY, CaseRecord, ReportRun

MB = 1e6


@dataclass
class Table:
    name: str                      # file stem of its CSV
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    formats: dict[str, Callable[[Any], str]] = field(default_factory=dict)  # header → cell text for Markdown
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        from tabulate import tabulate

        shown = [[self._cell(h, v) for h, v in zip(self.headers, row)] for row in self.rows]
        return tabulate(shown, headers=self.headers, tablefmt="github", disable_numparse=True)

    def _cell(self, header: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, (list, tuple)):
            return " / ".join(self._cell(header, v) for v in value)
        return self.formats.get(header, _default)(value)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.headers)
        for row in self.rows:
            writer.writerow(["" if v is None else " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
                             for v in row])
        return out.getvalue()


def _default(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _mb(n: float) -> str:
    return f"{n / MB:.2f}"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×"


# --- which cases are compared with which ---------------------------------------------------------------------

def comparisons(run: ReportRun) -> list[tuple[str, list[CaseRecord]]]:
    """Per workload, the strategies measured on its most common (optimizer, precision, batch, steps).

    That is the seeds' "same model under each plugin" comparison; the rest of a run's cases are in the
    table of every case.
    """
    by_workload: dict[str, list[CaseRecord]] = {}
    for record in _sweep_free(run):
        by_workload.setdefault(record.case["workload"], []).append(record)
    out = []
    for workload, records in sorted(by_workload.items()):
        setting = Counter(_setting(r) for r in records).most_common(1)[0][0]
        chosen = _unique(r for r in records if _setting(r) == setting)
        if len({r.strategy for r in chosen}) < 2:
            continue
        optimizer, precision, batch, accumulation, steps = setting
        title = (f"{workload}: {optimizer}, {precision}, global batch {batch}"
                 + (f", {accumulation} accumulation steps" if accumulation != 1 else "") + f", {steps} measured steps")
        out.append((title, sorted(chosen, key=lambda r: (r.strategy != "single", r.world_size, r.id))))
    return out


# The seeds' ColossalAI experiment: ViT under each booster plugin, each in the precision it was run in. Per plugin,
# (strategy, options it must have, precisions in order of preference: CUDA's first, what a CPU machine runs next).
SEED_PLUGINS = (
    ("torch_ddp", "colossalai-torch-ddp", {}, ("fp32",)),
    ("torch_ddp with mixed precision", "colossalai-torch-ddp", {}, ("fp16", "bf16")),
    ("low_level_zero", "colossalai-lowlevelzero2", {}, ("fp16", "bf16", "fp32")),
    ("gemini", "colossalai-gemini", {}, ("fp16", "bf16")),
    ("hybrid_parallel", "colossalai-hybrid", {"tp": 2}, ("fp16", "bf16", "fp32")),
)


def seed_plugins(run: ReportRun, workload: str = "vit-digits") -> list[tuple[str, CaseRecord]]:
    """The seeds' plugin table: for each of their plugins, its ``workload`` case of this run (on two ranks, the
    most measured steps), in the first precision of its preference the run has; plugins the run lacks are left out."""
    records = [r for r in _sweep_free(run) if r.case["workload"] == workload and r.world_size == 2]
    chosen = []
    for label, strategy, options, precisions in SEED_PLUGINS:
        for precision in precisions:
            found = [r for r in records if r.strategy == strategy and r.case["precision"] == precision
                     and all(dict(r.case.get("options", {})).get(k) == v for k, v in options.items())
                     and (options or not r.case.get("options"))]
            if found:
                chosen.append((f"{label} ({precision})", max(found, key=lambda r: (len(r.step_seconds), r.id))))
                break
    return chosen


def _setting(record: CaseRecord) -> tuple:
    case = record.case
    return case["optimizer"], case["precision"], record.global_batch, case.get("grad_accum", 1), len(record.step_seconds)


def _sweep_free(run: ReportRun) -> list[CaseRecord]:
    return [r for r in run.cases if r.group not in SWEEP_GROUPS]


def _unique(records: Iterable[CaseRecord]) -> list[CaseRecord]:
    """One record per case id (the first): a case measured by two tests is the same case."""
    seen: dict[str, CaseRecord] = {}
    for record in records:
        seen.setdefault(record.id, record)
    return list(seen.values())


def single_of(record: CaseRecord, run: ReportRun) -> CaseRecord | None:
    """The one-process case of the same workload, optimizer, precision and global batch, if the run has it:
    preferably one measured by the same experiment (benchmark group), over as many steps."""
    found = [other for other in run.cases
             if other.strategy == "single" and other.case["workload"] == record.case["workload"]
             and other.case["optimizer"] == record.case["optimizer"]
             and other.case["precision"] == record.case["precision"] and other.global_batch == record.global_batch]
    return max(found, key=lambda other: (other.group == record.group,
                                         len(other.step_seconds) == len(record.step_seconds)), default=None)


# --- tables ----------------------------------------------------------------------------------------------------

def every_case(run: ReportRun, steps: int) -> Table:
    table = Table("cases", f"every training case of {run.label}",
                  ["test", "case", "ranks", "global batch", "median step (ms)", "samples/s", f"time for {steps} steps (s)",
                   "high-water per rank (MB)", "state per rank (MB)", "final loss", "parity max |Δloss|"],
                  formats={"median step (ms)": _ms, "samples/s": lambda v: f"{v:.1f}",
                           f"time for {steps} steps (s)": lambda v: f"{v:.3f}", "high-water per rank (MB)": _mb,
                           "state per rank (MB)": _mb, "final loss": lambda v: f"{v:.4f}",
                           "parity max |Δloss|": lambda v: f"{v:.1e}"})
    for r in sorted(run.cases, key=lambda r: (r.case["workload"], r.id, r.test)):
        table.rows.append([r.test, r.id, r.world_size, r.global_batch, r.median_step_seconds, r.samples_per_second,
                           r.seconds_for(steps), r.high_water_bytes, r.state_bytes, r.losses[-1],
                           r.parity["max_abs_difference"] if r.parity else None])
    table.notes.append(_memory_note(run.cases))
    return table


def strategy_comparison(title: str, records: Sequence[CaseRecord], run: ReportRun, steps: int) -> Table:
    """The seeds' per-plugin table: throughput, speed-up over one process, time for N steps, memory per rank."""
    workload = records[0].case["workload"]
    table = Table(f"strategies_{workload.replace('-', '_')}", title,
                  ["strategy", "ranks", "samples/s", "× single", f"time for {steps} steps (s)",
                   "high-water per rank (MB)", "state per rank (MB)", "final loss"],
                  formats={"samples/s": lambda v: f"{v:.1f}", "× single": _times,
                           f"time for {steps} steps (s)": lambda v: f"{v:.3f}", "high-water per rank (MB)": _mb,
                           "state per rank (MB)": _mb, "final loss": lambda v: f"{v:.4f}"})
    for r in records:
        single = single_of(r, run)
        table.rows.append([r.label(STRATEGY_ONLY), r.world_size,
                           r.samples_per_second,
                           single.median_step_seconds / r.median_step_seconds if single else None,
                           r.seconds_for(steps), r.high_water_bytes, r.state_bytes, r.losses[-1]])
    table.notes.append("× single: one process's median step over this case's (above 1: faster than one process)")
    table.notes.append(_memory_note(records))
    return table


def _memory_note(records: Sequence[CaseRecord]) -> str:
    if any(r.on_cuda for r in records):
        return ("high-water: state held (parameters, gradients, optimizer state, master weights) plus an extra "
                "step's peak rise above it, per rank (CUDA: the allocator's counts)")
    return ("high-water: state held (parameters, gradients, optimizer state, master weights) plus the profiled "
            "step's peak rise above it, per rank (CPU: profiler memory events)")


# --- sweeps ----------------------------------------------------------------------------------------------------

# Groups with a section of their own, left out of the per-workload comparisons: the sweeps, and the plugin benchmark
# (parabench/report/published.py sets it beside the published figures)
SWEEP_GROUPS = ("batch_size_sweep", "split_size_sweep", "plugin_benchmark")


@dataclass(frozen=True)
class Sweep:
    """A series per row, a knob per column: e.g. strategies × global batch size."""

    name: str
    title: str
    knob: str                                  # the column quantity, with its unit
    series: dict[str, dict[int, CaseRecord]]   # row label → knob value → record

    @property
    def knobs(self) -> list[int]:
        return sorted({k for points in self.series.values() for k in points})


def batch_sweep(run: ReportRun) -> Sweep | None:
    """The batch-size sweep's cases (the seeds' 8…256), by series; None if the run has none."""
    series: dict[str, dict[int, CaseRecord]] = {}
    for r in run.cases:
        if r.group == "batch_size_sweep":
            series.setdefault(r.label(("batch",)), {}).setdefault(r.global_batch, r)
    if not series:
        return None
    workloads = sorted({r.case["workload"] for points in series.values() for r in points.values()})
    return Sweep("batch_sweep", f"batch-size sweep ({', '.join(workloads)})", "global batch", series)


def split_sweep(run: ReportRun) -> Sweep | None:
    """The seeds' split-size sweep: pipeline and model-parallel cases over their micro-batch size."""
    series: dict[str, dict[int, CaseRecord]] = {}
    for r in run.cases:
        if r.group == "split_size_sweep":
            label = r.label(("split",))
            series.setdefault(label, {}).setdefault(r.micro_batch, r)
    if not series:
        return None
    return Sweep("split_sweep", "split-size sweep: micro-batch size of the whole pipeline", "micro-batch", series)


def sweep_table(sweep: Sweep, quantity: str, steps: int, run: ReportRun) -> Table:
    """One quantity of a sweep as a pivot: rows are series, columns the knob's values."""
    value, fmt, unit = {
        "throughput": (lambda r: r.samples_per_second, lambda v: f"{v:.1f}", "samples/s"),
        "step": (lambda r: r.median_step_seconds, _ms, "median step, ms"),
        "time": (lambda r: r.seconds_for(steps), lambda v: f"{v:.3f}", f"time for {steps} steps, s"),
        "memory": (lambda r: max(r.high_water_bytes), _mb, "high-water of the largest rank, MB"),
        "speedup": (lambda r: _speedup(r, run), _times, "speed-up over one process on the whole batch (×)"),
    }[quantity]
    headers = ["case"] + [f"{sweep.knob} {k}" for k in sweep.knobs]
    table = Table(f"{sweep.name}_{quantity}", f"{sweep.title}: {unit}", headers,
                  formats={h: fmt for h in headers[1:]})
    for label, points in sorted(sweep.series.items(), key=lambda item: (not item[0].startswith("single"), item[0])):
        table.rows.append([label] + [value(points[k]) if k in points else None for k in sweep.knobs])
    return table


def _speedup(record: CaseRecord, run: ReportRun) -> float | None:
    single = single_of(record, run)
    return single.median_step_seconds / record.median_step_seconds if single else None


# --- optimizer steps and time to target ------------------------------------------------------------------------

def optimizer_speedups(run: ReportRun) -> Table | None:
    """ColossalAI's table: DistributedAdaFactor (column/row-parallel) against Adafactor, speed-up per step."""
    if not run.step_benches:
        return None
    table = Table("optimizer_step_speedup", "optimizer step: Adafactor vs DistributedAdaFactor",
                  ["optimizer", "layout", "dtype", "ranks", "weight", "mean step (ms)", "speed-up over Adafactor"],
                  formats={"mean step (ms)": lambda v: f"{v * 1e3:.3f}", "speed-up over Adafactor": _times})
    order = {"full": 0, "col": 1, "row": 2}
    for info in sorted(run.step_benches, key=lambda i: (i["step_bench"]["world_size"], i["step_bench"]["precision"],
                                                        order.get(i["step_bench"]["layout"], 3))):
        bench = info["step_bench"]
        table.rows.append([bench["optimizer"], bench["layout"], bench["precision"], bench["world_size"],
                           f"{bench['out_features']}x{bench['in_features']}", info["mean_step_seconds"],
                           info["speed_up_over_adafactor"]])
    table.notes.append("speed-up: Adafactor's mean step on the full weight over this row's, same shape, dtype and "
                       "ranks, measured in the same run")
    return table


def time_to_target(run: ReportRun) -> Table | None:
    if not run.converges:
        return None
    first = run.converges[0]["converge"]
    table = Table("time_to_target", f"time to converge: {first['case']['workload']} to "
                  f"{first['target']['accuracy']:.0%} held-out accuracy",
                  ["case", "steps", "epochs", "train seconds", "× single", "final held-out accuracy"],
                  formats={"epochs": lambda v: f"{v:.2f}", "train seconds": lambda v: f"{v:.2f}", "× single": _times,
                           "final held-out accuracy": lambda v: f"{v:.3f}"})
    single = next((c["converge"] for c in run.converges if c["converge"]["case"]["strategy"] == "single"), None)
    for info in sorted(run.converges, key=lambda i: (i["converge"]["case"]["strategy"] != "single",
                                                      i["converge"]["case"]["id"])):
        c = info["converge"]
        ratio = single["seconds"] / c["seconds"] if single and single.get("seconds") and c.get("seconds") else None
        table.rows.append([c["case"]["id"], c["steps"], c["epochs"], c["seconds"], ratio,
                           c["evaluations"][-1][1] if c["evaluations"] else None])
    table.notes.append("steps: optimizer steps until the held-out accuracy first reached the target ('-': not "
                       "reached); × single: one process's train seconds over this case's (above 1: faster)")
    return table


def per_epoch(converge: Mapping[str, Any]) -> list[tuple[int, float, float | None]]:
    """(epoch, mean training loss over it, last held-out accuracy evaluated in it) of one time-to-target run.

    Step ``s`` (from 0) trains on examples ``s·batch … (s+1)·batch − 1`` of the epoch-long stream, so it
    belongs to epoch ``s·batch // examples + 1``; an evaluation after ``n`` steps belongs to step ``n − 1``'s.
    """
    batch, examples = converge["global_batch"], converge["train_examples"]
    losses: dict[int, list[float]] = {}
    for step, loss in enumerate(converge["loss"]):
        losses.setdefault(step * batch // examples + 1, []).append(loss)
    accuracy = {(done - 1) * batch // examples + 1: value for done, value in converge["evaluations"] if done >= 1}
    return [(epoch, statistics.fmean(values), accuracy.get(epoch)) for epoch, values in sorted(losses.items())]


def epochs_table(run: ReportRun) -> Table | None:
    if not run.converges:
        return None
    table = Table("loss_accuracy_per_epoch", "loss and held-out accuracy per epoch (time-to-target runs)",
                  ["case", "epoch", "mean training loss", "held-out accuracy"],
                  formats={"mean training loss": lambda v: f"{v:.4f}", "held-out accuracy": lambda v: f"{v:.3f}"})
    for info in sorted(run.converges, key=lambda i: i["converge"]["case"]["id"]):
        for epoch, loss, accuracy in per_epoch(info["converge"]):
            table.rows.append([info["converge"]["case"]["id"], epoch, loss, accuracy])
    table.notes.append("an epoch is one pass over the training split (examples ÷ global batch steps); the last "
                       "epoch may be partial; accuracy: the last evaluation that fell in the epoch")
    return table


# --- two runs ----------------------------------------------------------------------------------------------------

_WORST_FIRST = ("regressed", "unjudged", "not comparable", "missing", "new", "improved", "unchanged", "info")


def deltas(run: ReportRun, base: ReportRun, report) -> tuple[Table, list[tuple[str, float, float, str]]]:
    """Per case: baseline and now side by side with their changes, and the gate's worst verdict with its reason.

    ``report`` is the gate's judgement of ``run`` against ``base``; also returns the (label, step-time
    change, memory change, verdict) points of the cases measured in both.
    """
    worst: dict[str, tuple[int, str, str]] = {}
    for row in report.rows:
        rank = _WORST_FIRST.index(row.verdict.value)
        if row.name not in worst or rank < worst[row.name][0]:
            worst[row.name] = (rank, row.verdict.value, f"{row.metric}: {row.detail}" if row.detail else row.metric)
    before = {r.name: r for r in base.cases}
    table = Table("baseline_vs_now", f"{base.label} (baseline) vs {run.label} (now), per case",
                  ["case", "median step (ms)", "Δ step", "high-water, largest rank (MB)", "Δ memory",
                   "final loss", "verdict", "why (worst metric)"],
                  formats={"Δ step": lambda v: f"{v:+.1%}", "Δ memory": lambda v: f"{v:+.1%}"})
    points = []
    for r in sorted(run.cases, key=lambda r: (_WORST_FIRST.index(worst.get(r.name, (6, "info", ""))[1]), r.name)):
        _, verdict, why = worst.get(r.name, (6, "info", ""))
        old = before.get(r.name)
        if old is None:
            table.rows.append([r.name, f"- → {r.median_step_seconds * 1e3:.2f}", None,
                               f"- → {max(r.high_water_bytes) / MB:.2f}", None, f"- → {r.losses[-1]:.4f}", verdict, why])
            continue
        step = r.median_step_seconds / old.median_step_seconds - 1
        memory = max(r.high_water_bytes) / max(old.high_water_bytes) - 1 if max(old.high_water_bytes) else None
        table.rows.append([r.name, f"{old.median_step_seconds * 1e3:.2f} → {r.median_step_seconds * 1e3:.2f}", step,
                           f"{max(old.high_water_bytes) / MB:.2f} → {max(r.high_water_bytes) / MB:.2f}", memory,
                           f"{old.losses[-1]:.4f} → {r.losses[-1]:.4f}", verdict, why])
        if memory is not None and verdict in ("regressed", "improved", "unchanged"):
            points.append((r.id, step, memory, verdict))
    missing = sorted(set(before) - {r.name for r in run.cases})
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        table.notes.append(f"{len(missing)} case(s) in the baseline but not in this run: {shown}")
    table.notes.append("rows are ordered worst verdict first; a verdict other than regressed, improved or unchanged "
                       "means the gate could not judge the case (see why)")
    return table, points


def _largest_rank(values: Sequence[Any] | None, key: Callable[[Any], float]) -> Any:
    return max(values, key=key) if values else None


def costs(title: str, records: Sequence[CaseRecord]) -> Table | None:
    """What each strategy does per step (``parabench.measure.costs``, ``parabench.measure.formulas``): collectives, bus bytes
    (× DDP's on the same setting), matmul FLOPs (× DDP's) and state per rank, measured and by the formula."""
    from parabench.measure.costs import total
    from parabench.measure.formulas import expected_for

    counted = [r for r in records if r.info.get("comm")]
    if not counted:
        return None
    ddp = next((r for r in counted if r.strategy == "torch-ddp"), None)
    ddp_bus = max(total(c) for c in ddp.info["comm"]) if ddp else None
    ddp_flops = max(ddp.info["flops"]) if ddp else None
    table = Table(f"costs_{records[0].case['workload'].replace('-', '_')}", f"what it costs: {title}",
                  ["strategy", "ranks", "collectives per step", "bus bytes per step (MB)", "× DDP", "GFLOP per step",
                   "FLOPs × DDP", "FLOPs / (6Ψ·tokens)", "state per rank (MB)", "formula (MB)", "state / formula"],
                  formats={"bus bytes per step (MB)": _mb, "× DDP": _times, "GFLOP per step": lambda v: f"{v / 1e9:.4f}",
                           "FLOPs × DDP": _times, "FLOPs / (6Ψ·tokens)": lambda v: f"{v:.3f}",
                           "state per rank (MB)": _mb, "formula (MB)": _mb, "state / formula": lambda v: f"{v:.3f}"})
    for r in counted:
        comm = _largest_rank(r.info["comm"], total)  # the rank that moves the most
        bus = total(comm)
        calls = ", ".join(f"{name} {entry['calls']}×" for name, entry in comm.items())
        flops = max(r.info.get("flops") or [0])
        expected_flops = max(r.info.get("flops_expected") or [0])
        state = max(s["total"] for s in r.info["state_bytes"])
        expected = expected_for(r.info)  # the formula as it stands (a run stored before a fix to it included)
        formula = max(e["total"] for e in expected) if expected else None
        table.rows.append([r.label(STRATEGY_ONLY), r.world_size, calls, bus, bus / ddp_bus if ddp_bus else None,
                           flops, flops / ddp_flops if ddp_flops else None,
                           flops / expected_flops if expected_flops else None, state, formula,
                           state / formula if formula else None])
    table.notes += ["bus bytes: the nccl-tests convention (all-reduce 2(n−1)/n × size, all-gather and reduce-scatter "
                    "(n−1)/n × the whole buffer, broadcast 1×), on the rank that moves the most; the ZeRO paper "
                    "expects 1× DDP for stages 1–2 and 1.5× for stage 3",
                    "FLOPs: matrix products and convolutions one step runs on a rank (parabench/measure/costs.py); "
                    "6Ψ·tokens is the rule of thumb (8Ψ·tokens where checkpointing recomputes the forward)",
                    "formula: parabench/measure/formulas.py, the ZeRO paper's accounting plus the terms each framework's "
                    "layout adds, computed from the model's parameter shapes (whole-tensor shards, padding, chunks, "
                    "buckets, copies); where the paper's formula is off by more than 1 % in a category, the term "
                    "and what remains after it are given below; what remains beyond 1 % is a finding"]
    table.notes += _formula_deviations(counted)
    return table


def _formula_deviations(records: Sequence[CaseRecord]) -> list[str]:
    """One note per strategy and category where the paper's formula is off by more than 1 %: the largest
    deviation seen, the computed term that accounts for it (``parabench.measure.formulas.predicted_state``) and the
    largest deviation left after the terms; and one per case whose state is off its prediction by more than 1 %
    (a finding)."""
    from parabench.measure.formulas import deviations, findings, predicted_for

    paper_off: dict[tuple[str, str], float] = {}
    left: dict[tuple[str, str], float] = {}
    terms: dict[tuple[str, str], str] = {}
    found: dict[str, dict[str, float]] = {}
    for r in records:
        predictions = predicted_for(r.info)  # the formula as it stands, also for runs stored before a fix to it
        if predictions is None:
            continue
        for measured, prediction in zip(r.info["state_bytes"], predictions):
            for category, change in deviations(measured, prediction.paper).items():
                key = (r.strategy, category)
                paper_off[key] = max(paper_off.get(key, 0.0), change, key=abs)
                if category in prediction.terms:
                    terms[key] = prediction.terms[category][0]
            for category in prediction.terms:
                # what the measurement leaves off the prediction, within 1 % or not
                want, got = prediction.expected[category], measured.get(category, 0)
                change = (got / want - 1) if want else 0.0
                left[(r.strategy, category)] = max(left.get((r.strategy, category), 0.0), change, key=abs)
        off = findings(r.strategy, r.info["state_bytes"], predictions)
        if off:
            found[r.label()] = off
    notes = [f"{strategy} {category} {change:+.1%} of the paper's formula; computed term: "
             f"{terms.get((strategy, category), 'none')}; after it {left.get((strategy, category), change):+.1%}"
             for (strategy, category), change in sorted(paper_off.items()) if category != "total"]
    notes += [f"finding (beyond 1 % of the formula with its computed terms, parabench/measure/formulas.py): {label} "
              + ", ".join(f"{category} {change:+.1%}" for category, change in off.items())
              for label, off in sorted(found.items())]
    return notes


def scaling(run: ReportRun) -> Table | None:
    """The scaling module's cases (``bench/test_scaling.py``): per strategy and model size over world sizes N, what
    a rank holds against the formula, what it moves and computes per step, and its profiled peak."""
    from parabench.measure.costs import total

    records = sorted((r for r in run.cases if r.test == "test_scaling" and r.info.get("state_bytes")),
                     key=lambda r: (r.strategy, r.info.get("parameters") or 0, r.world_size))
    if len({r.world_size for r in records}) < 2:
        return None
    table = Table("scaling", "model size × world size: state, collectives and FLOPs per rank",
                  ["strategy", "model", "Ψ", "N", "state per rank (MB)", "formula (MB)", "state × N (MB)",
                   "bus bytes per step (MB)", "GFLOP per step", "peak per rank (MB)"],
                  formats={"Ψ": lambda v: f"{v:,}", "state per rank (MB)": _mb, "formula (MB)": _mb,
                           "state × N (MB)": _mb, "bus bytes per step (MB)": _mb,
                           "GFLOP per step": lambda v: f"{v / 1e9:.4f}", "peak per rank (MB)": _mb})
    for r in records:
        state = max(s["total"] for s in r.info["state_bytes"])
        expected = r.info.get("state_bytes_expected")
        peaks = [p for p in r.info.get("peak_allocated_bytes") or [] if p is not None]
        table.rows.append([r.strategy, r.case["workload"], r.info.get("parameters"), r.world_size, state,
                           max(s["total"] for s in expected) if expected else None, state * r.world_size,
                           max(total(c) for c in r.info["comm"]) if r.info.get("comm") else None,
                           max(r.info.get("flops") or [0]) or None, max(peaks) if peaks else None])
    table.notes += ["state × N stays flat where a strategy shards everything (ZeRO-3, FSDP) and grows with N where it "
                    "replicates (DDP); bus bytes: the busiest rank, nccl-tests convention",
                    "formula: parabench/measure/formulas.py; the figure draws it over the measured points"]
    return table

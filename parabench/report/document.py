"""A report directory: ``report.md`` with its tables, a CSV per table and PNG figures, written all at once.

Everything is rendered into a staging directory beside the destination and moved into place only when
complete, so a failure (a corrupt run, a full disk) leaves the previous report, or nothing, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from parabench.gate.baselines import publish_folder
from parabench.report import figures, published, tables
from parabench.report.runs import ReportError, ReportRun, machine, versions
from parabench.report.tables import Table

DEFAULT_STEPS = 20  # the seeds' "time for 20 steps"


@dataclass
class Document:
    """The report being assembled in ``directory``: Markdown lines, and the files written beside them."""

    directory: Path
    lines: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def table(self, table: Table) -> None:
        name = f"{table.name}.csv"
        (self.directory / name).write_text(table.csv(), encoding="utf-8")
        self.files.append(name)
        self.lines += [f"**{table.title}** ([CSV]({name}))", "", table.markdown(), ""]
        self.lines += [f"- {note}" for note in table.notes] + ([""] if table.notes else [])

    def figure(self, name: str, caption: str, draw) -> None:
        """``draw(path)`` renders the PNG; the Markdown links it."""
        file = f"{name}.png"
        draw(self.directory / file)
        self.files.append(file)
        self.lines += [f"![{caption}]({file})", ""]


def render(run: ReportRun, out: str | Path, base: ReportRun | None = None, steps: int = DEFAULT_STEPS,
           policy_path: str | Path = "baselines/policy.toml", overwrite: bool = False,
           command: str = "", judge_time: bool = True) -> Path:
    """Write the report of ``run`` (against ``base`` when given) to the directory ``out``; returns it.

    Refuses to replace an existing ``out`` unless ``overwrite``. ``judge_time=False``: the comparison shows
    step time with the verdict it would get but judges only memory, loss and parity (``--bench-gate-time=report``).
    """
    if steps < 1:
        raise ReportError(f"--steps {steps}: use 1 or more (the seeds report time for 20 steps)")
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise ReportError(f"{out} exists and is not replaced; pass --overwrite, or choose another --out")
    policy = _policy(policy_path) if base is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        os.chmod(staging, 0o755)
        document = Document(staging)
        _write(document, run, base, steps, policy, command, judge_time)
        (staging / "report.md").write_text("\n".join(document.lines), encoding="utf-8")
        publish_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _policy(path: str | Path):
    from parabench.gate.policy import PolicyError, load_policy

    try:
        return load_policy(Path(path))
    except (PolicyError, OSError) as error:
        raise ReportError(f"the gate's policy: {error}") from None


def _write(doc: Document, run: ReportRun, base: ReportRun | None, steps: int, policy, command: str,
           judge_time: bool) -> None:
    infos = run.environment()
    source = f"run {run.label}" + (f" vs {base.label}" if base else "")
    doc.heading(f"parabench report: {run.label}" + (f" against {base.label}" if base else ""), 1)
    doc.lines += [f"- run: `{run.path}` ({run.datetime or 'time not recorded'})"]
    if base:
        doc.lines += [f"- baseline: `{base.path}` ({base.datetime or 'time not recorded'})"]
    doc.lines += [f"- machine: {machine(infos)}", f"- versions: {versions(infos)}",
                  f"- {len(run.cases)} training cases, {len(run.step_benches)} optimizer-step rows, "
                  f"{len(run.converges)} time-to-target runs"]
    if command:
        doc.lines += [f"- made with: `{command}`"]
    doc.lines += ["- times are the slowest rank's per step, measured inside the ranks after warm-up; "
                  f"'time for {steps} steps' sums the first {steps} measured steps", ""]
    if base is not None:
        _comparison(doc, run, base, policy, source, judge_time)
    for title, records in tables.comparisons(run):
        doc.heading(f"Strategies on {records[0].case['workload']}")
        table = tables.strategy_comparison(title, records, run, steps)
        doc.table(table)
        doc.figure(f"memory_{table.name}", f"peak memory per rank: {title}",
                   lambda path: figures.memory_per_rank(path, title, records, source))
        doc.figure(f"loss_{table.name}", f"loss curves: {title}",
                   lambda path: figures.loss_curves(path, title, records, source))
        cost = tables.costs(title, records)
        if cost is not None:
            doc.heading(f"What it costs on {records[0].case['workload']}", 3)
            doc.table(cost)
            doc.figure(f"bus_{cost.name}", f"bus bytes per step per rank: {title}",
                       lambda path: figures.bus_bytes(path, title, records, source))
    scaled = tables.scaling(run)
    if scaled is not None:
        doc.heading("Model size × world size")
        doc.table(scaled)
        doc.figure("scaling", "state and bus bytes per rank over N, with the formulas",
                   lambda path: figures.scaling(path, [r for r in run.cases if r.test == "test_scaling"], source))
    seeds = tables.seed_plugins(run)
    if len(seeds) > 1:
        title = "the seeds' plugins on vit-digits, each in its precision"
        doc.heading("The seeds' ColossalAI plugins")
        table = tables.strategy_comparison(title, [record for _, record in seeds], run, steps)
        table.name = "seed_plugins"
        for row, (label, _) in zip(table.rows, seeds):
            row[0] = label
        missing = [label for label, *_ in tables.SEED_PLUGINS if not any(l.startswith(label + " (") for l, _ in seeds)]
        if missing:
            table.notes.append(f"not in this run: {', '.join(missing)} (see its skip reasons)")
        doc.table(table)
    beside = published.plugin_tables(run)
    if beside:
        doc.heading("The seeds' plugin benchmark beside the published figures")
        for table in beside:
            doc.table(table)
    for sweep in (tables.batch_sweep(run), tables.split_sweep(run)):
        if sweep is None:
            continue
        doc.heading(sweep.title[0].upper() + sweep.title[1:])
        quantities = (["throughput", "speedup", "time", "memory"] if sweep.name == "batch_sweep"
                      else ["step", "speedup"])
        for quantity in quantities:
            doc.table(tables.sweep_table(sweep, quantity, steps, run))
        for quantity in (q for q in quantities if q in ("throughput", "memory", "step")):
            doc.figure(f"{sweep.name}_{quantity}", f"{sweep.title}: {quantity}",
                       lambda path, q=quantity: figures.sweep(path, sweep, q, source, steps))
    speedups = tables.optimizer_speedups(run)
    if speedups is not None:
        doc.heading("Optimizer step: DistributedAdaFactor over Adafactor")
        doc.table(speedups)
        doc.figure("optimizer_step_speedup", "optimizer step speed-up over Adafactor",
                   lambda path: figures.optimizer_speedups(path, run.step_benches, source, infos))
    converged = tables.time_to_target(run)
    if converged is not None:
        doc.heading("Time to converge")
        doc.table(converged)
        doc.table(tables.epochs_table(run))
        doc.figure("converge", "held-out accuracy and loss per epoch",
                   lambda path: figures.converge(path, run.converges, source))
    if run.cases:
        doc.heading("Every case")
        doc.lines += ["<details><summary>every training case of the run</summary>", ""]
        doc.table(tables.every_case(run, steps))
        doc.lines += ["</details>", ""]
    traces = sorted({trace for record in run.cases for trace in record.info.get("traces", [])})
    if traces:
        doc.heading("Profiler traces")
        doc.lines += ["Chrome trace JSON (open in chrome://tracing or https://ui.perfetto.dev):", ""]
        doc.lines += [f"- `{trace}`" for trace in traces] + [""]


def _comparison(doc: Document, run: ReportRun, base: ReportRun, policy, source: str, judge_time: bool) -> None:
    from parabench.gate.baselines import StoredRun
    from parabench.gate.judge import compare

    report = compare(run.case_benchmarks(), [StoredRun(base.path, base.datetime, base.case_benchmarks())], policy,
                     judge_time=judge_time)
    if not judge_time:
        report.notes.append("step time is reported, not judged (--time report)")
    doc.heading("Baseline vs now")
    how = ("step time with its threshold and Mann–Whitney test" if judge_time
           else "step time shown with the verdict it would get, not judged")
    doc.lines += [f"**{report.summary()}** — judged by the gate's policy: memory, loss curves and parity against "
                  f"the baseline; {how}", ""]
    doc.lines += [f"- {note}" for note in report.notes] + ([""] if report.notes else [])
    deltas, points = tables.deltas(run, base, report)
    doc.table(deltas)
    if points:
        doc.figure("comparison", "baseline vs now: change in time and memory per case",
                   lambda path: figures.comparison(path, points, source, run.environment() + base.environment()))
    gate_rows = Table("gate_rows", "every case and metric as the gate judged it", list(report.headers),
                      [list(row) for row in report.table_rows(everything=True)])
    doc.lines += ["<details><summary>every case and metric as the gate judged it</summary>", ""]
    doc.table(gate_rows)
    doc.lines += ["</details>", ""]


def render_all(runs: Sequence[ReportRun], out: str | Path, **options) -> Path:
    """One run's report, or the second run against the first (the baseline)."""
    if len(runs) not in (1, 2):
        raise ReportError(f"give one run, or two to compare (the baseline first); got {len(runs)}")
    return render(runs[-1], out, base=runs[0] if len(runs) == 2 else None, **options)

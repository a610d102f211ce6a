"""The GPU check's verdict: its steps and every selected test, each passed or failed, with its step time and peak."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from parabench.gpucheck.families import FAMILIES, PRECISIONS, family_of
from parabench.gpucheck.record import OUTCOMES_FILE, SELECTION_FILE

MIB = 2**20


@dataclass(frozen=True)
class Step:
    """One step before the cases (wheels, fork start-up, kernels…): whether it held, its seconds, what it said."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Row:
    """One selected test and its verdict."""

    test: str                   # the node id's test name with its case id
    family: str | None
    precision: str | None
    outcome: str                # passed, failed, error, skipped, xfailed, xpassed, or "not run"
    ok: bool
    median_step_ms: float | None
    peak_mib: float | None      # the step's rise (peak_allocated_bytes), largest rank
    high_water_mib: float | None  # cuda_max_allocated_bytes, largest rank (CUDA only)
    note: str


def rows(directory: Path, device: str, selection: list[dict] | None = None,
         not_run: dict[str, str] | None = None) -> list[Row]:
    """Every selected test of the run in ``directory`` with its verdict. On the CPU (``device`` cpu) a test
    skipped because it needs CUDA is expected; on CUDA every selected test must pass.

    ``selection``: the tests selected before the run (default: the run's own ``selection.json``); ``not_run``:
    why a test was left out of the run, by node id."""
    if selection is None:
        selection = json.loads((directory / SELECTION_FILE).read_text(encoding="utf-8"))
    not_run = not_run or {}
    outcomes = {}
    if (directory / OUTCOMES_FILE).exists():
        for line in (directory / OUTCOMES_FILE).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                outcomes[record["nodeid"]] = record
    found = []
    for selected in selection:
        record = outcomes.get(selected["nodeid"], {})
        outcome = record.get("outcome", "not run")
        note = record.get("message") or ("" if record else not_run.get(selected["nodeid"],
                                                                       "did not run: the time limit (see the log)"))
        cuda_only = outcome == "skipped" and "CUDA" in note
        ok = outcome in ("passed", "xfailed") or (device == "cpu" and cuda_only)
        case = selected.get("case") or {}
        found.append(Row(
            test=selected["nodeid"].split("::", 1)[-1], family=family_of(case), precision=case.get("precision"),
            outcome=outcome, ok=ok,
            median_step_ms=_scaled(record.get("median_step_seconds"), 1e3),
            peak_mib=_scaled(record.get("peak_allocated_bytes"), 1 / MIB),
            high_water_mib=_scaled(record.get("cuda_max_allocated_bytes"), 1 / MIB),
            note=note.splitlines()[0][:150] if note else ""))
    return found


def uncovered(found: list[Row]) -> list[str]:
    """The (family, precision) pairs of ``FAMILIES`` × ``PRECISIONS`` no passed test covers."""
    passed = {(r.family, r.precision) for r in found if r.outcome == "passed"}
    return [f"{family.label} {precision}" for family in FAMILIES for precision in PRECISIONS
            if (family.label, precision) not in passed]


def render(steps: list[Step], found: list[Row], device: str, wall_seconds: float) -> tuple[str, bool]:
    """The summary as text, and whether the check passed."""
    from tabulate import tabulate

    lines = [f"parabench GPU check on {device}: {wall_seconds:.0f} s", "", "steps:"]
    for step in steps:
        lines.append(f"  {'ok    ' if step.ok else 'FAILED'} {step.name} ({step.seconds:.1f} s)"
                     + (f": {step.detail}" if step.detail else ""))
    table = [[r.test, "passed" if r.outcome == "passed" else (r.outcome if r.ok else f"FAILED ({r.outcome})"),
              _number(r.median_step_ms, 2), _number(r.peak_mib, 2), _number(r.high_water_mib, 2), r.note]
             for r in found]
    lines += ["", "cases:", tabulate(table, headers=["test", "verdict", "median step ms", "peak rise MiB",
                                                     "CUDA high-water MiB", "note"], disable_numparse=True)]
    missing = uncovered(found) if device == "cuda" else []
    if missing:
        lines += ["", f"not covered by a passed case on {device}: {', '.join(missing)}"]
    passed = all(s.ok for s in steps) and bool(found) and all(r.ok for r in found) and not missing
    counts = {}
    for r in found:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    lines += ["", f"{'PASSED' if passed else 'FAILED'}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
              + f"; {sum(not s.ok for s in steps)} step(s) failed"]
    return "\n".join(lines), passed


def write(directory: Path, steps: list[Step], found: list[Row], device: str, wall_seconds: float) -> bool:
    """summary.txt and summary.json in ``directory``; print the text; return whether the check passed."""
    text, passed = render(steps, found, device, wall_seconds)
    (directory / "summary.txt").write_text(text + "\n", encoding="utf-8")
    (directory / "summary.json").write_text(json.dumps(
        {"device": device, "passed": passed, "wall_seconds": round(wall_seconds, 1),
         "steps": [asdict(s) for s in steps], "cases": [asdict(r) for r in found],
         "uncovered": uncovered(found) if device == "cuda" else []}, indent=1), encoding="utf-8")
    print(text, flush=True)
    return passed


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"

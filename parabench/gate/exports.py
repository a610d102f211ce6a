"""Each case's headline numbers, and the files CI's benchmark trackers read them from (``--bench-export``).

The headline of a case is what a chart over commits should show: the median step (with the steps' range), the
largest rank's peak and model state, the busiest rank's bus bytes per step and the largest rank's FLOPs per step
(and the final loss, for JUnit). It is read from a benchmark as pytest-benchmark stores it (``extra_info``), so a
session's results and a stored run export alike.

Formats (``EXPORTERS``):

* ``benchmark-action``: github-action-benchmark's ``customSmallerIsBetter`` input, a list of
  ``{"name", "unit", "value", "range", "extra"}``, one entry per case and measure (its ``pytest`` tool reads
  pytest-benchmark's ``stats.ops`` only, so memory and costs need the custom form). Every measure here is smaller
  is better.
* ``bencher``: Bencher Metric Format (BMF), ``{benchmark: {measure: {"value", "lower_value", "upper_value"}}}``;
  step time under Bencher's built-in ``latency`` measure, in nanoseconds as that measure is, the rest under
  measures of their own (``MEASURES``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from parabench.gate.baselines import atomic_write
from parabench.measure.costs import total


class ExportError(ValueError):
    """A ``--bench-export`` value that names no known format or no file; the message lists the formats."""


@dataclass(frozen=True)
class Headline:
    """One case's headline numbers; a measure its result lacks is None (not measured is not zero)."""

    name: str                    # the benchmark's name (the fullname where two benchmarks share a name)
    world_size: int
    steps: int                   # measured steps behind the step time
    median_step_seconds: float   # of the slowest rank's step times, as the gate and pytest-benchmark take them
    min_step_seconds: float
    max_step_seconds: float
    peak_bytes: int | None       # the largest rank's peak_allocated_bytes
    state_bytes: int | None      # the largest rank's model state (params, grads, optimizer, master)
    bus_bytes: int | None        # one step's bus bytes on the busiest rank (the nccl-tests convention)
    flops: int | None            # one step's matmul FLOPs on the largest rank
    final_loss: float | None

    def properties(self) -> dict[str, float | int]:
        """The numbers as JUnit XML properties (``record_property``): those measured, by name."""
        found = {"median_step_seconds": self.median_step_seconds, "peak_bytes": self.peak_bytes,
                 "state_bytes": self.state_bytes, "bus_bytes_per_step": self.bus_bytes,
                 "flops_per_step": self.flops, "final_loss": self.final_loss}
        return {key: value for key, value in found.items() if value is not None}


def _largest(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def headline(benchmark: dict[str, Any], name: str | None = None) -> Headline | None:
    """The headline of one stored benchmark (``name``, ``extra_info``); None for a benchmark that is not a case
    (an optimizer step, a time to target) or that has no step times."""
    info = benchmark.get("extra_info") or {}
    steps = info.get("step_seconds") or []
    if "case" not in info or not steps:
        return None
    comm = info.get("comm")
    states = info.get("state_bytes") or []
    losses = info.get("loss") or []
    return Headline(
        name=name or benchmark["name"], world_size=int(info.get("world_size") or len(states) or 1), steps=len(steps),
        median_step_seconds=statistics.median(steps), min_step_seconds=min(steps), max_step_seconds=max(steps),
        peak_bytes=_largest(info.get("peak_allocated_bytes") or []),
        state_bytes=_largest(s.get("total") for s in states if isinstance(s, dict)),
        bus_bytes=_largest(total(rank) for rank in comm if rank is not None) if comm else None,
        flops=_largest(info.get("flops") or []),
        final_loss=float(losses[-1]) if losses else None)


def headlines(benchmarks: Iterable[dict[str, Any]]) -> list[Headline]:
    """Every case's headline, in the benchmarks' order; named by the benchmark's name, or by its fullname where
    two of them share a name (one test function's name in two modules)."""
    benchmarks = list(benchmarks)
    names = [b["name"] for b in benchmarks]
    found = [headline(b, b["name"] if names.count(b["name"]) == 1 else b.get("fullname", b["name"]))
             for b in benchmarks]
    return [h for h in found if h is not None]


def _g(value: float) -> str:
    return f"{value:.6g}"


# (measure, github-action-benchmark name suffix and unit, Bencher measure slug)
MEASURES = (("step time", "s", "latency"), ("peak", "bytes", "peak-bytes"), ("state", "bytes", "state-bytes"),
            ("bus bytes per step", "bytes", "bus-bytes"), ("FLOPs per step", "FLOPs", "flops"))


def _measured(h: Headline) -> list[tuple[str, str, str, float | int, str]]:
    """(measure, unit, Bencher slug, value, what it is) for each measure ``h`` has."""
    ranks = f"{h.world_size} rank{'s' if h.world_size != 1 else ''}"
    values = {
        "step time": (h.median_step_seconds, f"median of {h.steps} measured steps (the slowest rank's); min "
                                             f"{_g(h.min_step_seconds)} s, max {_g(h.max_step_seconds)} s"),
        "peak": (h.peak_bytes, f"peak allocated in one step, the largest of {ranks}"),
        "state": (h.state_bytes, f"model state (params, grads, optimizer, master), the largest of {ranks}"),
        "bus bytes per step": (h.bus_bytes, f"collectives' bus bytes in one step, the busiest of {ranks}"),
        "FLOPs per step": (h.flops, f"matmul FLOPs in one step, the largest of {ranks}"),
    }
    return [(measure, unit, slug, values[measure][0], values[measure][1]) for measure, unit, slug in MEASURES
            if values[measure][0] is not None]


def benchmark_action(found: Iterable[Headline]) -> list[dict[str, Any]]:
    """github-action-benchmark's ``customSmallerIsBetter`` entries: ``"<name> - <measure>"`` each."""
    entries = []
    for h in found:
        for measure, unit, _, value, about in _measured(h):
            entry: dict[str, Any] = {"name": f"{h.name} - {measure}", "unit": unit, "value": value}
            if measure == "step time":  # the widest side of the steps around the median, as "± x"
                entry["range"] = "± " + _g(max(h.median_step_seconds - h.min_step_seconds,
                                               h.max_step_seconds - h.median_step_seconds))
            entry["extra"] = about
            entries.append(entry)
    return entries


def bencher(found: Iterable[Headline]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Bencher Metric Format: per benchmark, per measure slug, the value (step time: nanoseconds, with the steps'
    least and most as lower and upper values)."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for h in found:
        metrics: dict[str, dict[str, float | int]] = {}
        for measure, _, slug, value, _ in _measured(h):
            if measure == "step time":
                metrics[slug] = {"value": value * 1e9, "lower_value": h.min_step_seconds * 1e9,
                                 "upper_value": h.max_step_seconds * 1e9}
            else:
                metrics[slug] = {"value": value}
        out[h.name] = metrics
    return out


EXPORTERS: dict[str, tuple[Callable[[Iterable[Headline]], Any], str]] = {
    "benchmark-action": (benchmark_action, "github-action-benchmark's customSmallerIsBetter JSON"),
    "bencher": (bencher, "Bencher Metric Format (BMF) JSON"),
}


def known_formats() -> str:
    return "; ".join(f"{name} ({about})" for name, (_, about) in EXPORTERS.items())


def parse_exports(values: Iterable[str]) -> list[tuple[str, str]]:
    """``FORMAT:FILE`` values (each may hold several, comma-separated) as (format, file) pairs, in order."""
    found: list[tuple[str, str]] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            form, colon, path = part.partition(":")
            if form not in EXPORTERS or not colon or not path.strip():
                why = (f"unknown format {form!r}" if form not in EXPORTERS else "no file named after the colon")
                raise ExportError(f"--bench-export={part}: {why}; write FORMAT:FILE, FORMAT one of: "
                                  f"{known_formats()}")
            found.append((form, path.strip()))
    files = [path for _, path in found]
    twice = sorted({path for path in files if files.count(path) > 1})
    if twice:
        raise ExportError(f"--bench-export names {', '.join(twice)} more than once; give each export its own file")
    return found


def write_exports(exports: Iterable[tuple[str, str | Path]], benchmarks: Iterable[dict[str, Any]],
                  root: Path | None = None) -> list[tuple[str, Path, int]]:
    """Write each (format, file) export of ``benchmarks``, each file whole or not at all (a relative file under
    ``root``); returns (format, path, entries) for each."""
    benchmarks = list(benchmarks)
    found = headlines(benchmarks)
    written = []
    for form, path in exports:
        path = Path(root, path) if root is not None else Path(path)
        data = EXPORTERS[form][0](found)
        atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode(), overwrite=True)
        written.append((form, path, len(data)))
    return written

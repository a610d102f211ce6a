"""Stored runs as a report reads them: finding a run by path or number, and checking what each benchmark holds."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from parabench.gate.baselines import BaselineError, StoredRun, load_run
from parabench.gate.keys import hardware_name
from parabench.measure.result import high_water_bytes

_NUMBER = re.compile(r"\d{1,4}")
# What each kind of benchmark must hold for the report to read it (the result format's keys).
_CASE_KEYS = ("loss", "step_seconds", "global_batch", "state_bytes", "peak_allocated_bytes")
_STEP_BENCH_KEYS = ("step_seconds", "mean_step_seconds", "speed_up_over_adafactor")
_CONVERGE_KEYS = ("case", "target", "steps", "epochs", "seconds", "evaluations", "loss", "global_batch",
                  "train_examples")


STRATEGY_ONLY = ("optimizer", "workload", "precision", "batch")  # a label that names the strategy and its options


class ReportError(ValueError):
    """A run cannot be reported; the message names the file and what to do."""


def resolve(run: str, storage: str | Path) -> Path:
    """A RUN argument as a file: a path, or a stored run's number (``7``, ``0007``) or name under ``storage``."""
    path = Path(run)
    if path.suffix == ".json" or path.exists() or "/" in run:
        if not path.is_file():
            raise ReportError(f"{run}: no such file; give a stored run's path or its number "
                              f"({_stored_list(storage)})")
        return path
    pattern = f"{int(run):04d}_*.json" if _NUMBER.fullmatch(run) else f"*{run}*.json"
    found = sorted(Path(storage).glob(f"**/{pattern}"))
    if len(found) != 1:
        how = "no stored run" if not found else f"{len(found)} stored runs ({', '.join(p.name for p in found)})"
        raise ReportError(f"RUN {run!r}: {how} match(es) under {storage}; give a path, or one of: "
                          f"{_stored_list(storage)}")
    return found[0]


def newest(storage: str | Path) -> Path:
    """The most recently stored run under ``storage`` (by its number, then its name)."""
    found = sorted(Path(storage).glob("**/[0-9][0-9][0-9][0-9]_*.json"), key=lambda p: (p.name, str(p)))
    if not found:
        raise ReportError(f"no stored run under {storage}; record one with: python3 -m pytest bench/ "
                          f"--benchmark-autosave, or give a run file")
    return found[-1]


def _stored_list(storage: str | Path) -> str:
    names = sorted(p.name for p in Path(storage).glob("**/*.json"))
    return "stored: " + ", ".join(names) if names else f"nothing is stored under {storage}"


@dataclass(frozen=True)
class CaseRecord:
    """One training case of a run, with the quantities the report shows."""

    name: str                      # the benchmark's name (test function and case id)
    group: str
    info: Mapping[str, Any]        # its extra_info

    @property
    def case(self) -> Mapping[str, Any]:
        return self.info["case"]

    @property
    def id(self) -> str:
        return self.case["id"]

    @property
    def test(self) -> str:
        return self.name.split("[", 1)[0]

    @property
    def strategy(self) -> str:
        return self.case["strategy"]

    @property
    def world_size(self) -> int:
        return int(self.info.get("world_size", self.case["world_size"]))

    @property
    def global_batch(self) -> int:
        return int(self.info["global_batch"])

    @property
    def micro_batch(self) -> int:
        """Examples per micro-batch of the whole pipeline or accumulation (the seeds' "split size")."""
        parts = self.case.get("grad_accum", 1) * int(self.case.get("options", {}).get("chunks", 1))
        return self.global_batch // parts

    @property
    def losses(self) -> list[float]:
        return list(self.info["loss"])

    @property
    def step_seconds(self) -> list[float]:
        return list(self.info["step_seconds"])

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def samples_per_second(self) -> float:
        return self.global_batch / self.median_step_seconds

    def seconds_for(self, steps: int) -> float | None:
        """Wall time of the first ``steps`` measured steps (None if fewer were measured)."""
        times = self.step_seconds
        return sum(times[:steps]) if len(times) >= steps else None

    @property
    def on_cuda(self) -> bool:
        return self.info.get("device") == "cuda"

    @property
    def state_bytes(self) -> list[int]:
        return [ranks["total"] for ranks in self.info["state_bytes"]]

    @property
    def high_water_bytes(self) -> list[int]:
        """Per rank (see ``parabench.measure.result.high_water_bytes``)."""
        return [high_water_bytes(state, peak)
                for state, peak in zip(self.state_bytes, self.info["peak_allocated_bytes"])]

    @property
    def reserved_bytes(self) -> list[int] | None:
        reserved = self.info.get("cuda_max_reserved_bytes") or []
        return list(reserved) if reserved and all(r is not None for r in reserved) else None

    @property
    def parity(self) -> Mapping[str, Any] | None:
        return self.info.get("parity")

    def label(self, without: Sequence[str] = ()) -> str:
        """The case id without the parts named in ``without`` (``batch``, ``workload``, ``optimizer``…)."""
        case = self.case
        parts = [case["strategy"]]
        if "optimizer" not in without:
            parts.append(case["optimizer"])
        if "workload" not in without:
            parts.append(case["workload"].replace("-", "_"))
        if "world" not in without:
            parts.append(f"w{case['world_size']}")
        if "precision" not in without:
            parts.append(case["precision"])
        if "batch" not in without and case.get("global_batch") is not None:
            parts.append(f"b{case['global_batch']}")
        if "split" not in without and case.get("grad_accum", 1) != 1:
            parts.append(f"ga{case['grad_accum']}")
        if case.get("seed", 0):
            parts.append(f"seed{case['seed']}")
        for key, value in sorted(case.get("options", {}).items()):
            if "split" in without and key == "chunks":
                continue
            parts.append(key if value is True else f"no_{key}" if value is False else f"{key}{value}")
        return "-".join(parts)


@dataclass(frozen=True)
class ReportRun:
    """A stored run, checked: its training cases, optimizer-step rows and time-to-target results."""

    path: str
    datetime: str
    cases: tuple[CaseRecord, ...]
    step_benches: tuple[Mapping[str, Any], ...]
    converges: tuple[Mapping[str, Any], ...]
    benchmarks: tuple[Mapping[str, Any], ...] = field(repr=False, default=())  # as stored, for the gate

    @property
    def label(self) -> str:
        return Path(self.path).stem

    def case_benchmarks(self) -> tuple[Mapping[str, Any], ...]:
        """The stored benchmarks of its training cases (what the gate compares)."""
        return tuple(b for b in self.benchmarks if "case" in b["extra_info"])

    def environment(self) -> list[Mapping[str, Any]]:
        """Every benchmark's extra_info (hardware, device and versions live there)."""
        return [bench["extra_info"] for bench in self.benchmarks]


def load(path: str | Path) -> ReportRun:
    """Read and check a stored run; a missing, corrupt or incomplete file raises ReportError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file")
    try:
        stored = load_run(path)
    except BaselineError as error:
        raise ReportError(str(error)) from None
    except OSError as error:
        raise ReportError(f"{path}: cannot be read ({error.strerror})") from None
    return from_stored(stored)


def from_stored(stored: StoredRun) -> ReportRun:
    """A run's training cases, optimizer-step rows and time-to-target results, each checked."""
    cases = []
    for bench in stored.benchmarks:
        _require(stored.path, bench, bench["extra_info"], _CASE_KEYS)
        cases.append(CaseRecord(bench["name"], str(bench.get("group") or ""), bench["extra_info"]))
    step_benches, converges = [], []
    for bench in stored.others:
        info = bench["extra_info"]
        if "step_bench" in info:
            _require(stored.path, bench, info, _STEP_BENCH_KEYS)
            step_benches.append(info)
        elif "converge" in info:
            _require(stored.path, bench, info["converge"], _CONVERGE_KEYS)
            converges.append(info)
    if not (cases or step_benches or converges):
        raise ReportError(f"{stored.path}: holds no parabench result (no benchmark with a case, an optimizer step or "
                          f"a time to target); is it a parabench run?")
    return ReportRun(stored.path, stored.datetime, tuple(cases), tuple(step_benches), tuple(converges),
                     tuple(stored.benchmarks) + tuple(stored.others))


def _require(path: str, bench: Mapping[str, Any], info: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [key for key in keys if key not in info]
    if missing:
        raise ReportError(f"{path}: benchmark {bench.get('name')!r} lacks {', '.join(missing)}; the file is "
                          f"incomplete or was edited: restore it (git restore) or re-record it")


def machine(infos: Sequence[Mapping[str, Any]]) -> str:
    """The machine (and device, backend) these results were measured on, e.g. ``AMD EPYC, AVX512 (2 CPUs) · cpu/gloo``."""
    seen = dict.fromkeys(f"{hardware_name(i['hardware'])} · {i.get('device', '?')}/{i.get('backend', '?')}"
                         for i in infos if i.get("hardware"))
    return "; ".join(seen) or "machine not recorded"


def versions(infos: Sequence[Mapping[str, Any]]) -> str:
    """Every package version these results name, e.g. ``python 3.11.7, torch 2.13.0+cpu, deepspeed 0.19.8``."""
    found: dict[str, set[str]] = {}
    for info in infos:
        for name, version in info.get("versions", {}).items():
            found.setdefault(name, set()).add(str(version))
    order = ["python", "torch"]
    names = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    return ", ".join(f"{n} {'/'.join(sorted(found[n]))}" for n in names) or "versions not recorded"

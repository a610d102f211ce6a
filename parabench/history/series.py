"""Stored runs as series: per machine key and case, one point per run, in commit order, with each metric read out.

A series holds the runs of one benchmark name under one machine key as the gate keys it (``parabench.gate.keys``,
with the policy's key fields; library versions leave the key when the policy compares across them, as the gate
does, and every change of them is named where it happens). Runs are ordered by their commit's time, then by when
they were recorded: the order the code changed in, re-recordings of one commit side by side.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parabench.gate.baselines import BaselineError, StoredRun, discover
from parabench.gate.keys import hardware_name, machine_key, slug
from parabench.gate.policy import Policy
from parabench.measure.costs import total

HISTORY_HINT = "record runs with: python3 -m pytest bench/ --bench-record (docs/gate.md, 'Recording baselines'), or point --storage at them"


class HistoryError(ValueError):
    """The site cannot be built from what is stored; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class Run:
    """One stored run as the history places it: its number, commit and when it was recorded."""

    path: str
    stored: StoredRun = field(repr=False)
    number: str          # "0025" (the file's NNNN prefix), else the file's stem
    commit: str          # the full id, "" where the run recorded none
    commit_time: str
    dirty: bool
    datetime: str
    tags: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.commit[:8] if self.commit else "no commit"

    @property
    def label(self) -> str:
        """The x-axis label: run number and commit, e.g. ``#0025 5ec3fc88*`` (``*``: uncommitted changes)."""
        return f"#{self.number} {self.short}{'*' if self.dirty else ''}"

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.commit_time or self.datetime, self.datetime, self.path)


@dataclass(frozen=True)
class Point:
    run: Run
    info: Mapping[str, Any] = field(repr=False)   # the benchmark's extra_info


@dataclass(frozen=True)
class Series:
    """One benchmark under one machine key: its runs in commit order."""

    name: str                           # the benchmark's name (test function and case id)
    kind: tuple[Any, str]               # (device, hardware name): the machine kind
    key: Mapping[str, Any]              # the machine key (the policy's fields)
    points: tuple[Point, ...]

    @property
    def info(self) -> Mapping[str, Any]:
        return self.points[-1].info

    @property
    def case(self) -> Mapping[str, Any]:
        return self.info["case"]

    @property
    def case_id(self) -> str:
        return str(self.case.get("id", self.name))

    @property
    def strategy(self) -> str:
        return str(self.case.get("strategy", "?"))

    @property
    def kind_label(self) -> str:
        return f"{self.kind[0]}: {self.kind[1]}"

    @property
    def kind_slug(self) -> str:
        return slug(self.info)

    @property
    def key_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def page(self) -> str:
        """The series' page, relative to the site's root."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_")
        return f"cases/{self.kind_slug}/{name}-{self.key_digest}.html"


def read_runs(storage: str | Path) -> list[Run]:
    """Every stored run under ``storage``, in commit order, with the git tags of its commit."""
    storage = Path(storage)
    if not storage.is_dir():
        raise HistoryError(f"{storage}: no such folder; {HISTORY_HINT}")
    try:
        stored = discover(storage)
    except BaselineError as error:
        raise HistoryError(f"{error}. The history reads every stored run; nothing was written") from None
    stored = [run for run in stored if run.benchmarks]
    if not stored:
        raise HistoryError(f"no stored run with a training case under {storage}; {HISTORY_HINT}")
    runs = []
    for run in stored:
        try:
            commit = json.loads(Path(run.path).read_text(encoding="utf-8")).get("commit_info") or {}
        except (OSError, ValueError):
            commit = {}
        stem = Path(run.path).stem
        number = stem.split("_", 1)[0] if re.match(r"\d{4}_", stem) else stem
        runs.append(Run(run.path, run, number, str(commit.get("id") or ""), str(commit.get("time") or ""),
                        bool(commit.get("dirty")), run.datetime))
    tags = commit_tags({run.commit for run in runs if run.commit}, storage)
    runs = [Run(r.path, r.stored, r.number, r.commit, r.commit_time, r.dirty, r.datetime, tags.get(r.commit, ()))
            for r in runs]
    return sorted(runs, key=lambda run: run.order)


def commit_tags(commits: Iterable[str], where: str | Path) -> dict[str, tuple[str, ...]]:
    """Commit id → the git tags pointing at it (``git tag --points-at``); none where git or the commit is absent."""
    found: dict[str, tuple[str, ...]] = {}
    for commit in sorted(commits):
        try:
            done = subprocess.run(["git", "-C", str(where), "tag", "--points-at", commit], capture_output=True,
                                  text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return found  # no git here: no tags anywhere
        names = tuple(line.strip() for line in done.stdout.splitlines() if line.strip())
        if done.returncode == 0 and names:
            found[commit] = names
    return found


def build_series(runs: Sequence[Run], policy: Policy) -> list[Series]:
    """Every (benchmark name, machine key) of ``runs`` as a series, ordered by machine kind and name."""
    fields = policy.compared_fields
    grouped: dict[tuple[str, str], list[Point]] = {}
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        for bench in run.stored.benchmarks:
            info = bench["extra_info"]
            key = machine_key(info, fields, policy.ignore_packages)
            ident = (bench["name"], json.dumps(key, sort_keys=True, default=str))
            keys[ident] = key
            grouped.setdefault(ident, []).append(Point(run, info))
    out = []
    for ident, points in grouped.items():
        info = points[-1].info
        out.append(Series(ident[0], (info.get("device"), hardware_name(info.get("hardware", {}))), keys[ident],
                          tuple(points)))
    return sorted(out, key=lambda s: (str(s.kind), s.name, s.key_digest))


# Each metric of a point: a value per rank (lists) or one value; None where the run did not record it.

def step_summary(info: Mapping[str, Any]) -> dict[str, float] | None:
    """Median step time and its spread over the measured steps (seconds): quartiles and extremes."""
    times = [float(t) for t in info.get("step_seconds") or []]
    if not times:
        return None
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median": statistics.median(times), "q1": q1, "q3": q3, "min": min(times), "max": max(times),
            "steps": len(times)}


def state_per_rank(info: Mapping[str, Any]) -> list[int] | None:
    ranks = info.get("state_bytes")
    return [int(r["total"]) for r in ranks] if ranks else None


def peak_per_rank(info: Mapping[str, Any]) -> list[int] | None:
    peaks = info.get("peak_allocated_bytes")
    return [int(p) for p in peaks] if peaks and all(p is not None for p in peaks) else None


def bus_bytes_per_rank(info: Mapping[str, Any]) -> list[int] | None:
    """One step's bus bytes per rank, summed over its collectives (``parabench.measure.costs``)."""
    comm = info.get("comm")
    if not comm or any(rank is None for rank in comm):
        return None
    return [total(rank) for rank in comm]


def flops_per_rank(info: Mapping[str, Any]) -> list[int] | None:
    flops = info.get("flops")
    return [int(f) for f in flops] if flops and all(f is not None for f in flops) else None


def final_loss(info: Mapping[str, Any]) -> float | None:
    loss = info.get("loss")
    return float(loss[-1]) if loss else None


def parity_gap(info: Mapping[str, Any]) -> float | None:
    """The parity check's largest absolute difference from the one-process reference (None: no parity check)."""
    parity = info.get("parity")
    value = parity.get("max_abs_difference") if isinstance(parity, dict) else None
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str                                   # "B", "FLOP", "" (loss, parity)
    read: Callable[[Mapping[str, Any]], Any]
    per_rank: bool
    detail: Callable[[Mapping[str, Any], Mapping[str, Any]], str] | None = None  # what moved inside it


def _state_detail(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    parts = []
    for rank, (a, b) in enumerate(zip(before.get("state_bytes") or [], after.get("state_bytes") or [])):
        moved = [f"{part} {a.get(part, 0):,} → {b.get(part, 0):,}" for part in sorted(set(a) | set(b))
                 if part != "total" and a.get(part) != b.get(part)]
        if moved:
            parts.append(f"rank {rank}: " + ", ".join(moved))
    return "; ".join(parts)


def _comm_detail(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    parts = []
    for rank, (a, b) in enumerate(zip(before.get("comm") or [], after.get("comm") or [])):
        a, b = a or {}, b or {}
        moved = [f"{name} {(a.get(name) or {}).get('bus_bytes', 0):,} → {(b.get(name) or {}).get('bus_bytes', 0):,}"
                 for name in sorted(set(a) | set(b))
                 if (a.get(name) or {}).get("bus_bytes") != (b.get(name) or {}).get("bus_bytes")]
        if moved:
            parts.append(f"rank {rank}: " + ", ".join(moved))
    return "; ".join(parts)


# The exact metrics: any change between consecutive runs of a series is a change point.
EXACT_METRICS = (
    Metric("state bytes", "B", state_per_rank, True, _state_detail),
    Metric("peak bytes", "B", peak_per_rank, True),
    Metric("bus bytes per step", "B", bus_bytes_per_rank, True, _comm_detail),
    Metric("FLOPs per step", "FLOP", flops_per_rank, True),
    Metric("final loss", "", final_loss, False),
    Metric("parity gap", "", parity_gap, False),
)

"""Published figures beside a run's own: the seeds' plugin benchmark, this suite's cases against ColossalAI's table.

The published figures (``published.toml``) were measured on 4 GPUs with a pretrained model; a run here may be on
a CPU machine, on fewer ranks, in bf16 for fp16, with a model from its config. Their numbers do not compare; their
order does: which plugin holds the most memory per rank, which the least. Ours is each case's high-water of its
largest rank (state held plus the step's peak rise, ``parabench.measure.result.high_water_bytes``), theirs the maximum
memory per GPU; the table gives each plugin's place in both orders and whether they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from parabench.cases.plugin_benchmark import PLUGINS
from parabench.report.runs import CaseRecord, ReportError, ReportRun, machine
from parabench.report.tables import MB, Table
from parabench.tomlfile import read_toml

PUBLISHED = Path(__file__).with_name("published.toml")
PUBLISHED_FORMAT = 1
GROUP = "plugin_benchmark"  # bench/test_plugin_benchmark.py's benchmark group; its cases carry extra_info[GROUP]
_MEMORY = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?B)")
_UNITS = ("B", "KB", "MB", "GB", "TB")


@dataclass(frozen=True)
class PublishedRow:
    plugin: str
    batch: int
    samples_per_second: float
    memory: str           # as published, e.g. "696.72 MB"
    memory_bytes: float


@dataclass(frozen=True)
class PublishedBenchmark:
    source: str
    model: str
    dataset: str
    hardware: str
    ranks: int
    batch: str
    throughput: str
    memory: str
    memory_unit_base: int  # each unit of its memory figures is this many of the one below (1024: MB = 2²⁰ bytes)
    rows: tuple[PublishedRow, ...]

    def at(self, batch: int) -> dict[str, PublishedRow]:
        """The rows at ``batch``, by plugin, in the published order."""
        return {row.plugin: row for row in self.rows if row.batch == batch}


def memory_bytes(text: str, base: int) -> float:
    """``"696.72 MB"`` as bytes, each unit ``base`` times the one below it."""
    found = _MEMORY.fullmatch(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a memory size (a number and one of {', '.join(_UNITS)})")
    return float(found["value"]) * base ** _UNITS.index(found["unit"])


def load_published(path: str | Path = PUBLISHED, name: str = "plugin_benchmark") -> PublishedBenchmark:
    """The published benchmark ``name`` of ``path``; a malformed file raises ReportError naming the key."""
    path = Path(path)
    raw = read_toml(path, ReportError, "the published figures are missing; restore the file from git")
    try:
        if raw.get("format") != PUBLISHED_FORMAT:
            raise ValueError(f"format {raw.get('format')!r} is not known; this version reads {PUBLISHED_FORMAT}")
        table = raw[name]
        base = int(table["memory_unit_base"])
        rows = tuple(PublishedRow(str(row["plugin"]), int(row["batch"]), float(row["samples_per_second"]),
                                  str(row["memory"]), memory_bytes(str(row["memory"]), base)) for row in table["rows"])
        return PublishedBenchmark(
            source=str(table["source"]), model=str(table["model"]), dataset=str(table["dataset"]),
            hardware=str(table["hardware"]), ranks=int(table["ranks"]), batch=str(table["batch"]),
            throughput=str(table["throughput"]), memory=str(table["memory"]), memory_unit_base=base, rows=rows)
    except (KeyError, TypeError, ValueError) as error:
        what = f"no key {error}" if isinstance(error, KeyError) else str(error)
        raise ReportError(f"{path}: the published figures of {name!r} cannot be read ({what}); restore the file "
                          f"from git") from None


# --- orders by memory ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placing:
    """A plugin's places by memory, most first (1), in ours and in the published order; tied plugins share places."""

    plugin: str
    ours: tuple[int, int]
    theirs: tuple[int, int]

    @property
    def agrees(self) -> bool:
        """Whether its places overlap: the same place, or one a tie leaves open."""
        return self.ours[0] <= self.theirs[1] and self.theirs[0] <= self.ours[1]


def places(memory: Mapping[str, float]) -> dict[str, tuple[int, int]]:
    """Each key's (first, last) place when ordered by value, largest first; equal values share their places."""
    values = list(memory.values())
    return {key: (1 + sum(v > value for v in values), sum(v >= value for v in values))
            for key, value in memory.items()}


def compare_orders(ours: Mapping[str, float], theirs: Mapping[str, float]) -> list[Placing]:
    """The plugins both measured, in the published order, with their places among those plugins."""
    common = [plugin for plugin in theirs if plugin in ours]
    our_places = places({plugin: ours[plugin] for plugin in common})
    their_places = places({plugin: theirs[plugin] for plugin in common})
    return [Placing(plugin, our_places[plugin], their_places[plugin]) for plugin in common]


def order_text(memory: Mapping[str, float]) -> str:
    """``"torch_ddp = torch_ddp_fp16 > low_level_zero > …"``: most memory first."""
    ordered = sorted(memory.items(), key=lambda item: -item[1])
    text = ordered[0][0] if ordered else ""
    for (_, before), (plugin, value) in zip(ordered, ordered[1:]):
        text += f" {'=' if value == before else '>'} {plugin}"
    return text


def differing_pairs(ours: Mapping[str, float], theirs: Mapping[str, float]) -> list[str]:
    """Each pair of plugins the two orders put the other way round (a tie in one counts as neither way)."""
    common = [plugin for plugin in theirs if plugin in ours]
    out = []
    for i, first in enumerate(common):
        for second in common[i + 1:]:
            mine = _sign(ours[first] - ours[second])
            published = _sign(theirs[first] - theirs[second])
            if mine and published and mine != published:
                out.append(f"{first} {'>' if published > 0 else '<'} {second} published, "
                           f"{'>' if mine > 0 else '<'} here")
    return out


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def kendall_tau(ours: Mapping[str, float], theirs: Mapping[str, float]) -> float | None:
    """Kendall's τ-b of the two orders over the plugins both measured (1: the same, −1: reversed); None below 2."""
    from scipy.stats import kendalltau

    common = [plugin for plugin in theirs if plugin in ours]
    if len(common) < 2:
        return None
    tau = kendalltau([ours[p] for p in common], [theirs[p] for p in common]).statistic
    return None if tau != tau else float(tau)  # NaN where one side is all ties


# --- the table ---------------------------------------------------------------------------------------------------

def benchmark_records(run: ReportRun) -> dict[int, dict[str, CaseRecord]]:
    """The run's cases of the plugin benchmark by batch per rank and plugin (the most measured steps where two)."""
    found: dict[int, dict[str, CaseRecord]] = {}
    for record in run.cases:
        point = record.info.get(GROUP)
        if not point:
            continue
        by_plugin = found.setdefault(int(point["batch_per_rank"]), {})
        other = by_plugin.get(point["plugin"])
        if other is None or len(record.step_seconds) > len(other.step_seconds):
            by_plugin[point["plugin"]] = record
    return found


def _two(value: float) -> str:
    return f"{value:.2f}"


def _megabytes(value: float) -> str:
    return f"{value / MB:.2f}"


def _place(span: tuple[int, int]) -> str:
    return str(span[0]) if span[0] == span[1] else f"{span[0]}–{span[1]}"


def plugin_tables(run: ReportRun, published: PublishedBenchmark | None = None) -> list[Table]:
    """Per batch the run measured, ours and the published figures side by side, with the two memory orders."""
    found = benchmark_records(run)
    if not found:
        return []
    published = published or load_published()
    tables = []
    for batch, records in sorted(found.items()):
        theirs = published.at(batch)
        ours = {plugin: float(max(record.high_water_bytes)) for plugin, record in records.items()}
        placings = {p.plugin: p for p in compare_orders(ours, {k: row.memory_bytes for k, row in theirs.items()})}
        table = Table(f"plugin_benchmark_b{batch}",
                      f"the seeds' plugin benchmark, batch {batch} per data-parallel rank: this run beside "
                      f"the published figures",
                      ["plugin", "case", "ranks", "samples/s", "high-water, largest rank (MB)",
                       "state, largest rank (MB)", "place by memory", "published samples/s",
                       f"published {published.memory}", "published place", "same place"],
                      formats={"samples/s": _two, "high-water, largest rank (MB)": _megabytes,
                               "state, largest rank (MB)": _megabytes, "published samples/s": _two})
        for plugin in list(theirs) + sorted(set(records) - set(theirs)):
            record, row, placing = records.get(plugin), theirs.get(plugin), placings.get(plugin)
            table.rows.append([
                plugin, record.id if record else None, record.world_size if record else None,
                record.samples_per_second if record else None,
                max(record.high_water_bytes) if record else None, max(record.state_bytes) if record else None,
                _place(placing.ours) if placing else None, row.samples_per_second if row else None,
                row.memory if row else None, _place(placing.theirs) if placing else None,
                ("yes" if placing.agrees else "no") if placing else None])
        table.notes += _notes(run, records, theirs, ours, list(placings.values()), published)
        tables.append(table)
    return tables


def _notes(run: ReportRun, records: Mapping[str, CaseRecord], theirs: Mapping[str, PublishedRow],
           ours: Mapping[str, float], placings: Sequence[Placing], published: PublishedBenchmark) -> list[str]:
    infos = [record.info for record in records.values()]
    ranks = sorted({record.world_size for record in records.values()})
    workloads = sorted({record.case["workload"] for record in records.values()})
    notes = [f"this run: {machine(infos)}, {'/'.join(map(str, ranks))} ranks, {', '.join(workloads)} (ViT-Base/16 "
             f"at 224 px from its config, random initialisation; scikit-learn's digits scaled to 224 × 224 with 3 "
             f"channels); memory: high-water of the largest rank, the state it holds plus the step's peak rise "
             f"(MB: 10⁶ bytes); samples/s: the global batch over the median step",
             f"published: {published.source}, {published.model} on {published.dataset}, {published.hardware}; "
             f"batch {published.batch}; throughput in {published.throughput}; {published.memory} as printed, each "
             f"unit {published.memory_unit_base} of the one below"]
    devices = sorted({str(info.get("device", "cpu")) for info in infos})
    differs = [f"{plugin.name}: {plugin.differs[device]}" for plugin in PLUGINS for device in devices
               if plugin.name in records and plugin.differs.get(device)]
    if differs:
        notes.append("as run here, beside the published configuration: " + "; ".join(differs))
    missing = [plugin for plugin in theirs if plugin not in records]
    if missing:
        notes.append(f"not in this run: {', '.join(missing)} (skipped or failed: see the session's output)")
    if len(placings) < 2:
        return notes
    agreeing = [p.plugin for p in placings if p.agrees]
    common = [p.plugin for p in placings]
    mine = {plugin: ours[plugin] for plugin in common}
    published_memory = {plugin: theirs[plugin].memory_bytes for plugin in common}
    tau = kendall_tau(mine, published_memory)
    notes.append(f"order by memory, most first: here {order_text(mine)}; published {order_text(published_memory)}")
    notes.append(f"same place in both orders: {len(agreeing)} of {len(placings)} plugins"
                 + (f" (not: {', '.join(p for p in common if p not in agreeing)})" if len(agreeing) < len(common)
                    else "")
                 + (f"; Kendall's τ-b {tau:+.2f} (1: the same order, −1: reversed)" if tau is not None else ""))
    pairs = differing_pairs(mine, published_memory)
    if pairs:
        notes.append("ordered the other way round: " + "; ".join(pairs))
    return notes

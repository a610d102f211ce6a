"""The report's plots (matplotlib, PNG): each carries its title, axis units, and the machine and versions it was
measured on, so that one image taken out of the report still says what it shows."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from parabench.report.runs import STRATEGY_ONLY, CaseRecord, machine, versions
from parabench.report.tables import MB, Sweep, per_epoch

DPI = 110
LABELLED = 8  # regressed cases named in the comparison plot
COINCIDE = 1e-5  # the fp32 parity tolerance: curves this close draw as one line


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, axes, path: Path, title: str, infos: Sequence[Mapping[str, Any]], source: str) -> None:
    """Title, provenance footer (machine, device, versions, run), legend placement; save and close."""
    plt = _pyplot()
    fig.suptitle(title, fontsize=11, fontweight="bold")
    footer = textwrap.fill(f"{machine(infos)} | {versions(infos)} | {source}", width=150)
    fig.text(0.01, 0.005, footer, fontsize=6.5, color="0.3", va="bottom", ha="left")
    lines = footer.count("\n") + 1
    fig.tight_layout(rect=(0, 0.025 * lines + 0.01, 1, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _legend(ax, count: int) -> None:
    if count > 8:
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7.5)


def sweep(path: Path, sweep: Sweep, quantity: str, source: str, steps: int) -> None:
    """One line per series over the sweep's knob (log₂ axis): throughput, step time or memory."""
    plt = _pyplot()
    value, ylabel = {
        "throughput": (lambda r: r.samples_per_second, "throughput (samples/s)"),
        "step": (lambda r: r.median_step_seconds * 1e3, "median step time (ms)"),
        "memory": (lambda r: max(r.high_water_bytes) / MB, "high-water, largest rank (MB)"),
    }[quantity]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    records = []
    for label, points in sorted(sweep.series.items()):
        knobs = sorted(points)
        ax.plot(knobs, [value(points[k]) for k in knobs], marker="o", label=label)
        records += points.values()
    ax.set_xscale("log", base=2)
    ax.set_xticks(sweep.knobs, [str(k) for k in sweep.knobs])
    ax.set_xlabel(f"{sweep.knob} (examples)")
    values = [value(r) for r in records]
    if min(values) > 0 and max(values) > 20 * statistics.median(values):  # one series would flatten the rest
        ax.set_yscale("log")
        ylabel += ", logarithmic axis"
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(sweep.series))
    _finish(fig, ax, path, f"{sweep.title}: {ylabel}", [r.info for r in records], source)


def memory_per_rank(path: Path, title: str, records: Sequence[CaseRecord], source: str) -> None:
    """Per case, one bar per rank: the state held within the high-water mark (state + an extra step's peak rise).

    A logarithmic axis where the largest case holds over 20× the median, so that small cases stay readable.
    """
    plt = _pyplot()
    ranks = max(r.world_size for r in records)
    height = 0.8 / ranks
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(records) * max(1, ranks / 2)))
    every = [value for r in records for value in r.high_water_bytes if value]
    logarithmic = bool(every) and max(every) > 20 * statistics.median(every)
    for rank in range(ranks):
        shown = [(i, r) for i, r in enumerate(records) if rank < len(r.high_water_bytes)]
        ys = [i + (rank - (ranks - 1) / 2) * height for i, _ in shown]
        high = [r.high_water_bytes[rank] / MB for _, r in shown]
        color = f"C{rank}"
        ax.barh(ys, high, height=height, color=color, alpha=0.4,
                label=f"rank {rank}: high-water (state + step's peak rise)")
        ax.barh(ys, [r.state_bytes[rank] / MB for _, r in shown], height=height, color=color,
                label=f"rank {rank}: state held")
        for y, value in zip(ys, high):
            ax.annotate(f"{value:.1f}", (value, y), xytext=(2, 0), textcoords="offset points", va="center",
                        fontsize=6)
    ax.set_yticks(range(len(records)), [r.label(STRATEGY_ONLY) for r in records],
                  fontsize=7.5)
    ax.invert_yaxis()
    if logarithmic:
        ax.set_xscale("log")
        held = [value for r in records for value in r.state_bytes if value]
        ax.set_xlim(left=min(every + held) / MB / 2)
    ax.set_xlabel("memory per rank (MB" + (", logarithmic axis)" if logarithmic else ")"))
    ax.grid(True, axis="x", alpha=0.3)
    _legend(ax, 2 * ranks)
    _finish(fig, ax, path, f"peak memory per rank — {title}", [r.info for r in records], source)


def loss_curves(path: Path, title: str, records: Sequence[CaseRecord], source: str) -> None:
    """Every case's loss at every step (warm-up included), overlaid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    styles = ["-", "--", ":", "-."]
    for i, r in enumerate(records):
        ax.plot(range(len(r.losses)), r.losses, linestyle=styles[(i // 10) % len(styles)], linewidth=1.1,
                label=r.label(STRATEGY_ONLY))
    reference = records[0].losses
    same = sum(1 for r in records[1:] if len(r.losses) == len(reference)
               and max(abs(a - b) for a, b in zip(r.losses, reference)) <= COINCIDE)
    if same:
        first = records[0].label(STRATEGY_ONLY)
        ax.set_title(f"{same} of {len(records) - 1} curves coincide with {first}'s (every step within {COINCIDE:g})",
                     fontsize=8.5)
    ax.set_xlabel("optimizer step (warm-up included)")
    ax.set_ylabel("training loss (global mean)")
    ax.grid(True, alpha=0.3)
    _legend(ax, len(records))
    _finish(fig, ax, path, f"loss curves — {title}", [r.info for r in records], source)


def optimizer_speedups(path: Path, step_benches: Sequence[Mapping[str, Any]], source: str,
                       run_infos: Sequence[Mapping[str, Any]]) -> None:
    """Speed-up of DistributedAdaFactor's step over Adafactor's, per dtype and world size, column- and row-parallel.

    ``run_infos``: the run's other results, for the machine and versions where these rows do not record them.
    """
    plt = _pyplot()
    rows = [i for i in step_benches if i["step_bench"]["layout"] != "full"]
    groups = sorted({(i["step_bench"]["world_size"], i["step_bench"]["precision"]) for i in rows})
    layouts = sorted({i["step_bench"]["layout"] for i in rows})
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / max(1, len(layouts))
    for j, layout in enumerate(layouts):
        found = {(i["step_bench"]["world_size"], i["step_bench"]["precision"]): i["speed_up_over_adafactor"]
                 for i in rows if i["step_bench"]["layout"] == layout}
        ax.bar([g + (j - (len(layouts) - 1) / 2) * width for g in range(len(groups))],
               [found.get(g, 0) for g in groups], width=width, label=f"DistributedAdaFactor, {layout}-parallel")
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--", label="Adafactor (full weight)")
    ax.set_xticks(range(len(groups)), [f"{precision}, {world} ranks" for world, precision in groups])
    ax.set_ylabel("speed-up of one optimizer step (×, Adafactor's time ÷ this)")
    shape = rows[0]["step_bench"] if rows else {"out_features": "?", "in_features": "?"}
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    infos = list(step_benches) if any(i.get("hardware") for i in step_benches) else list(run_infos)
    _finish(fig, ax, path, f"optimizer step speed-up over Adafactor, weight {shape['out_features']}×"
                           f"{shape['in_features']}", infos, source)


def converge(path: Path, converges: Sequence[Mapping[str, Any]], source: str) -> None:
    """Held-out accuracy at each evaluation and mean training loss per epoch, one line per case."""
    plt = _pyplot()
    fig, (accuracy_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 5))
    target = converges[0]["converge"]["target"]["accuracy"]
    for info in sorted(converges, key=lambda i: i["converge"]["case"]["id"]):
        c = info["converge"]
        accuracy_ax.plot([s * c["global_batch"] / c["train_examples"] for s, _ in c["evaluations"]],
                         [a for _, a in c["evaluations"]],
                         label=c["case"]["id"], linewidth=1.1)
        epochs = per_epoch(c)
        loss_ax.plot([e for e, _, _ in epochs], [loss for _, loss, _ in epochs], marker="o", markersize=3,
                     label=c["case"]["id"], linewidth=1.1)
    accuracy_ax.axhline(target, color="0.3", linestyle="--", linewidth=0.8, label=f"target {target:.0%}")
    accuracy_ax.set_xlabel("epoch (passes over the training split)")
    accuracy_ax.set_ylabel("held-out accuracy (fraction)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("mean training loss over the epoch")
    for ax in (accuracy_ax, loss_ax):
        ax.grid(True, alpha=0.3)
    accuracy_ax.legend(fontsize=6.5)
    workload = converges[0]["converge"]["case"]["workload"]
    _finish(fig, accuracy_ax, path, f"time to converge on {workload}: accuracy and loss per epoch", list(converges),
            source)


def comparison(path: Path, points: Sequence[tuple[str, float, float, str]], source: str,
               infos: Sequence[Mapping[str, Any]]) -> None:
    """Two runs: each case's change in median step time against its change in high-water memory, by verdict."""
    plt = _pyplot()
    colors = {"regressed": "tab:red", "improved": "tab:green", "unchanged": "tab:gray"}
    fig, ax = plt.subplots(figsize=(10, 6))
    for verdict in sorted({v for *_, v in points}):
        chosen = [(t, m) for _, t, m, v in points if v == verdict]
        ax.scatter([100 * t for t, _ in chosen], [100 * m for _, m in chosen], s=18, alpha=0.75,
                   color=colors.get(verdict, "tab:orange"), label=f"{verdict} ({len(chosen)})")
    # Name the worst regressions (the table lists them all), staggered so that neighbours stay readable.
    regressed = sorted((p for p in points if p[3] == "regressed"), key=lambda p: -abs(p[1]) - abs(p[2]))
    for i, (label, t, m, _) in enumerate(regressed[:LABELLED]):
        ax.annotate(label, (100 * t, 100 * m), fontsize=6, xytext=(4, 6 + 9 * (i % 4) * (-1) ** i),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5})
    ax.axvline(0, color="0.5", linewidth=0.7)
    ax.axhline(0, color="0.5", linewidth=0.7)
    ax.set_xlabel("median step time, change (%; now ÷ baseline − 1)")
    ax.set_ylabel("high-water memory of the largest rank, change (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title="case's worst gate verdict", title_fontsize=8)
    _finish(fig, ax, path, "baseline vs now: time and memory per case", infos, source)


def bus_bytes(path: Path, title: str, records: Sequence[CaseRecord], source: str) -> None:
    """Per case, the bus bytes of one step on its busiest rank, stacked by collective."""
    from parabench.measure.costs import total

    plt = _pyplot()
    counted = [r for r in records if r.info.get("comm")]
    names = sorted({name for r in counted for comm in r.info["comm"] for name in comm})
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.4 * len(counted)))
    left = [0.0] * len(counted)
    for i, name in enumerate(names):
        widths = [max(r.info["comm"], key=total).get(name, {}).get("bus_bytes", 0) / MB for r in counted]
        ax.barh(range(len(counted)), widths, left=left, color=f"C{i}", label=name)
        left = [a + b for a, b in zip(left, widths)]
    for y, value in enumerate(left):
        ax.annotate(f"{value:.2f}", (value, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
    ax.set_yticks(range(len(counted)), [r.label(STRATEGY_ONLY) for r in counted], fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("bus bytes per step, busiest rank (MB, nccl-tests convention)")
    ax.grid(True, axis="x", alpha=0.3)
    _legend(ax, len(names))
    _finish(fig, ax, path, f"collectives per step — {title}", [r.info for r in counted], source)



def scaling(path: Path, records: Sequence[CaseRecord], source: str) -> None:
    """State bytes and bus bytes per rank over world size N, measured points with the formulas drawn through them:
    the ZeRO paper's model states (``parabench.measure.formulas``), DDP's all-reduce 2(N−1)/N × 4Ψ and stage 3's 1.5× that."""
    from parabench.measure.costs import total
    from parabench.measure.formulas import PAPER_COMM_FACTOR, paper_bus_bytes

    plt = _pyplot()
    fig, (state_ax, bus_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
    series: dict[tuple[str, str], list[CaseRecord]] = {}
    for r in records:
        series.setdefault((r.strategy, r.case["workload"]), []).append(r)
    strategies = sorted({strategy for strategy, _ in series})
    workloads = sorted({workload for _, workload in series})
    # A strategy a colour and a marker (ZeRO-3 and FSDP hold the same bytes: hollow over filled shows both).
    markers = [dict(marker="o", markersize=9, fillstyle="none"), dict(marker="s", markersize=5),
               dict(marker="^", markersize=6)]
    for (strategy, workload), points in sorted(series.items()):
        points.sort(key=lambda r: r.world_size)
        ns = [r.world_size for r in points]
        colour = f"C{strategies.index(strategy)}"
        style = dict(markers[strategies.index(strategy) % len(markers)], color=colour, linestyle="none")
        label = f"{strategy}, {workload}"
        state_ax.plot(ns, [max(s["total"] for s in r.info["state_bytes"]) / MB for r in points], label=label, **style)
        if all(r.info.get("state_bytes_expected") for r in points):
            state_ax.plot(ns, [max(s["total"] for s in r.info["state_bytes_expected"]) / MB for r in points], "--",
                          color=colour, linewidth=0.8)
        moving = [r for r in points if r.world_size > 1 and r.info.get("comm") is not None]  # N = 1 moves nothing
        if moving:
            bus_ax.plot([r.world_size for r in moving], [max(total(c) for c in r.info["comm"]) / MB for r in moving],
                        label=label, **style)
            psi = points[0].info.get("parameters")
            if psi and strategy in PAPER_COMM_FACTOR:
                ns = [r.world_size for r in moving]
                bus_ax.plot(ns, [paper_bus_bytes(strategy, psi, n) / MB for n in ns], ":", color=colour, linewidth=0.8)
    state_ax.set_title("model state per rank (dashed: the formula)", fontsize=9)
    bus_ax.set_title("bus bytes per step, busiest rank (dotted: the ZeRO paper,\n"
                     "DDP 2(N−1)/N·4Ψ, stage 3 and FSDP 1.5× that)", fontsize=9)
    for ax in (state_ax, bus_ax):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 2, 4], ["1", "2", "4"])
        ax.set_xlabel("ranks N")
        ax.set_ylabel("MB")
        ax.grid(True, which="both", alpha=0.3)
    state_ax.legend(fontsize=6.5, title=" / ".join(workloads), title_fontsize=6.5)
    _finish(fig, state_ax, path, "model size × world size", [r.info for r in records], source)

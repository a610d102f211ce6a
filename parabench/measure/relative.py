"""Each case against the peer it was measured beside in the same run (``relative_to``), as a table.

    python -m pytest bench/ -k deepspeed --benchmark-json=run.json
    python -m parabench.relative run.json [-k deepspeed]

Per case: median step time, the largest rank's state bytes and peak allocated, and each as a
ratio to the peer (e.g. ``torch-ddp``) measured in the same session, plus the largest loss gap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

from parabench.gate.baselines import BaselineError, load_run

MB = 1e6


def rows(benchmarks, selection: str = "") -> list[list[object]]:
    out = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        case = info.get("case", {}).get("id", bench["name"])
        if selection not in case or not info.get("relative"):
            continue
        median_ms = 1e3 * statistics.median(info["step_seconds"])
        state = max(ranks["total"] for ranks in info["state_bytes"]) / MB
        peak = max(p or 0 for p in info["peak_allocated_bytes"]) / MB
        for peer, ratio in info["relative"].items():
            out.append([case, f"{median_ms:.1f}", f"{state:.3f}", f"{peak:.2f}", peer,
                        f"{ratio['step_time']:.2f}", f"{ratio['state_bytes']:.2f}",
                        f"{ratio['high_water_bytes']:.2f}", f"{ratio['loss_max_abs_difference']:.1e}"])
    return out


# On CPU "peak" is the profiled step's rise above the state it starts with; "high water" adds that state.
HEADERS = ["case", "median step ms", "state MB (max rank)", "peak MB (max rank)", "peer (same run)",
           "step time ×", "state ×", "high water ×", "max |Δloss|"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parabench.relative", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a pytest-benchmark JSON (--benchmark-json, or a stored run)")
    parser.add_argument("-k", dest="selection", default="", help="only case ids containing this text")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run)
    except BaselineError as error:
        parser.error(str(error))
    found = rows(run.benchmarks, args.selection)
    if not found:
        print(f"{args.run}: no case with a same-run peer (tests that call relative_to record one)", file=sys.stderr)
        return 1
    print(tabulate(found, HEADERS, tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-rank peaks of repeated runs, read from pytest-benchmark stores, as a CSV and a table of their spread.

    python3 docs/evidence/peak_spread.py --csv OUT.csv [--cases PATTERN]...  REPLAY=STORE_ROOT [REPLAY=STORE_ROOT ...]

Each STORE_ROOT holds one folder per run named ``<kernels>-<run>`` (``avx512-1``, ``avx2-1``), each the
``--benchmark-storage`` of one session; REPLAY names the code that measured them. The spread of a case and rank
is max/min - 1 over its runs; the gate's view, each run's highest rank against the others', is printed after.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate


def read(replay: str, root: Path, patterns: list[str]) -> list[tuple[str, str, int, int, str, int]]:
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        kernels, run = run_dir.name.rsplit("-", 1)
        for path in run_dir.rglob("*.json"):
            for bench in json.loads(path.read_text())["benchmarks"]:
                case = bench["name"].split("[", 1)[1].rstrip("]")
                if patterns and not any(fnmatch.fnmatchcase(case, p) for p in patterns):
                    continue
                for rank, peak in enumerate(bench["extra_info"].get("peak_allocated_bytes") or []):
                    rows.append((replay, case, rank, int(run), kernels, peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--cases", action="append", default=[], metavar="PATTERN",
                        help="an fnmatch pattern over case ids (repeat it); default every case")
    parser.add_argument("stores", nargs="+", metavar="REPLAY=STORE_ROOT")
    args = parser.parse_args()
    rows = sorted(row for spec in args.stores for row in read(*_pair(spec), args.cases))
    with args.csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["replay", "case", "rank", "run", "kernels", "peak_allocated_bytes"])
        writer.writerows(rows)
    peaks = defaultdict(list)
    for replay, case, rank, _, _, peak in rows:
        peaks[(case, rank, replay)].append(peak)
    table = [(case, rank, replay, len(v), f"{min(v) / 2**20:.3f}", f"{max(v) / 2**20:.3f}",
              f"{(max(v) / min(v) - 1) * 100:.2f}")
             for (case, rank, replay), v in sorted(peaks.items())]
    print(tabulate(table, headers=["case", "rank", "replay", "runs", "min MiB", "max MiB", "spread %"]))
    for replay in sorted({r[0] for r in rows}):
        worst = max((max(v) / min(v) - 1, key) for key, v in peaks.items() if key[2] == replay)
        print(f"{replay}: largest spread {worst[0] * 100:.2f}% ({worst[1][0]}, rank {worst[1][1]})")
    # What the gate compares: each run's highest rank against the other runs' highest.
    highest = defaultdict(dict)
    for replay, case, _, run, kernels, peak in rows:
        key = (replay, case, kernels, run)
        highest[key[:3]][run] = max(highest[key[:3]].get(run, 0), peak)
    spread = [(replay, case, kernels, len(v), (max(v.values()) / min(v.values()) - 1) * 100 if min(v.values()) else 0.0)
              for (replay, case, kernels), v in sorted(highest.items())]
    moving = [row for row in spread if row[4] > 0]
    print(tabulate([(*row[:4], f"{row[4]:.2f}") for row in moving],
                   headers=["replay", "case", "kernels", "runs", "highest-rank spread %"]))
    for replay in sorted({r[0] for r in spread}):
        cases = [r for r in spread if r[0] == replay]
        print(f"{replay}: {len(cases) - sum(r[0] == replay for r in moving)} of {len(cases)} case/kernel pairs repeat "
              f"their highest rank's peak to the byte")


def _pair(spec: str) -> tuple[str, Path]:
    replay, sep, root = spec.partition("=")
    if not sep or not Path(root).is_dir():
        raise SystemExit(f"{spec!r}: give REPLAY=STORE_ROOT with STORE_ROOT an existing folder of run folders")
    return replay, Path(root)


if __name__ == "__main__":
    main()

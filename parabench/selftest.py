"""How often the gate is right on this machine: repeated runs, unchanged and perturbed, against one baseline.

    python -m parabench.selftest --runs 20 --slowdown 0.15 -k "adamw and gpt2_text and w2-fp32"

Records the selected cases once into a private store, then runs the gate ``--runs`` times on
unchanged code and ``--runs`` times with ``--bench-inject=slowdown=F``, interleaved so that the
machine's drift hits both alike, plus ``--exact-runs`` runs of each deterministic perturbation
(memory growth, summed gradients, lr = 0). Prints how many runs (and case-runs) each flagged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SELECTION = "adamw and gpt2_text and w2-fp32 and not ga2"


def pytest_session(storage: Path, selection: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "bench/test_torch_strategies.py", "-q", "-p",
                           "no:cacheprovider", "-k", selection, f"--benchmark-storage=file://{storage}", *extra],
                          cwd=REPO, capture_output=True, text=True)


def gate_rows(storage: Path, selection: str, report: Path, *extra: str) -> list[dict]:
    pytest_session(storage, selection, "--bench-gate", f"--bench-report={report}", *extra)
    return json.loads((report / "gate.json").read_text())["rows"]


def flagged(rows: list[dict], metrics: tuple[str, ...]) -> set[str]:
    """Cases with a regression in one of ``metrics``."""
    return {r["name"] for r in rows if r["verdict"] == "regressed" and r["metric"].split(" (")[0] in metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slowdown", type=float, default=0.15)
    parser.add_argument("--exact-runs", type=int, default=3, help="runs of each deterministic perturbation")
    parser.add_argument("-k", dest="selection", default=DEFAULT_SELECTION)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="parabench-selftest-"))
    storage = work / "baselines"
    recorded = pytest_session(storage, args.selection, "--bench-record")
    if recorded.returncode != 0:
        print(recorded.stdout[-3000:], recorded.stderr[-2000:])
        return 2
    tally: Counter = Counter()
    cases: set[str] = set()
    plan = [("unchanged", ()), (f"slowdown={args.slowdown:g}", (f"--bench-inject=slowdown={args.slowdown:g}",))]
    for run in range(args.runs):
        for label, extra in plan:
            rows = gate_rows(storage, args.selection, work / f"{label}-{run}", *extra)
            names = {r["name"] for r in rows}
            cases |= names
            hit = flagged(rows, ("step time",))
            tally[label, "runs"] += bool(hit) if label == "unchanged" else hit == names
            tally[label, "case-runs"] += len(hit)
            print(f"run {run + 1:2d} {label:15s} flagged {len(hit)}/{len(names)}: {sorted(hit)}", flush=True)
    exact = [("memory=0.01", ("state_bytes", "peak_allocated_bytes")), ("grads-summed", ("loss curve",)),
             ("lr0", ("loss curve",))]
    for label, metrics in exact:
        for run in range(args.exact_runs):
            rows = gate_rows(storage, args.selection, work / f"{label}-{run}", f"--bench-inject={label}")
            every_metric = all(flagged(rows, (m,)) == {r["name"] for r in rows} for m in metrics)
            steps = sorted({r["detail"].split(":")[0] for r in rows if r["metric"] == "loss curve"
                            and r["verdict"] == "regressed"})
            tally[label, "runs"] += every_metric
            print(f"{label:15s} run {run + 1}: every case flagged in {', '.join(metrics)}: {every_metric} {steps}",
                  flush=True)
    n = len(cases)
    print(f"\n{n} cases: {args.selection!r}; results under {work}")
    print(f"unchanged: {tally['unchanged', 'runs']}/{args.runs} runs with a false alarm "
          f"({tally['unchanged', 'case-runs']}/{args.runs * n} case-runs)")
    label = plan[1][0]
    print(f"{label}: {tally[label, 'runs']}/{args.runs} runs with every case flagged "
          f"({tally[label, 'case-runs']}/{args.runs * n} case-runs)")
    for label, _ in exact:
        print(f"{label}: {tally[label, 'runs']}/{args.exact_runs} runs with every case flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How often the gate is right on this machine: repeated runs, unchanged and perturbed, against one baseline.

    python -m parabench.selftest --runs 20 --slowdown 0.15 -k "adamw and gpt2_text and w2-fp32"

Records the selected cases once into a private store, then runs the gate ``--runs`` times on
unchanged code and ``--runs`` times with ``--bench-inject=slowdown=F``, interleaved so that the
machine's drift hits both alike, plus ``--exact-runs`` runs of each deterministic perturbation
(memory growth, summed gradients, lr = 0). Prints how many runs (and case-runs) each flagged.

    python -m parabench.selftest --ab --runs 20 --slowdown 0.15 -k "<cases>"

    python -m parabench.selftest --costs --runs 20 -k "<cases>"

Costs mode: records the cases once, then ``--runs`` gate runs on unchanged code (every case's collectives and
FLOPs must equal the stored ones to the byte) alternating with ``--runs`` runs with ``--bench-inject=comm=1024``
(one more all-reduce per step: every case's collectives must be flagged). Prints the counts.

A/B mode: ``--runs`` A/A sessions (``--bench-ab`` with this interpreter and tree on both sides) alternating with
``--runs`` A/B sessions whose head side alone runs ``--bench-inject=slowdown=F``. Each session is judged on its own
rounds. Prints, per session, the cases flagged and their paired ratios; at the end, how many A/A sessions raised
any alarm and in how many A/B sessions each case was flagged.
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


# test_train only: the scaling module runs cases of the same ids (5 steps each)
AB_SELECTION = ("test_train and (torch-ddp-adamw-gpt2_text-w2-fp32 or torch-fsdp-adamw-gpt2_text-w2-fp32 or "
                "deepspeed-zero3-adamw-gpt2_text-w2-fp32) and not (colossalai or ga2 or offload or ckpt or hpz2)")


def ab_session(work: Path, label: str, selection: str, *extra: str) -> tuple[dict, float]:
    """One A/B session against this interpreter and tree: its gate.json and wall seconds."""
    import time

    report = work / label
    report.mkdir(parents=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", "-k", selection,
                           f"--bench-ab={sys.executable}", f"--bench-report={report}",
                           f"--benchmark-json={report / 'benchmarks.json'}", *extra],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    path = report / "gate.json"
    if not path.exists():
        raise RuntimeError(f"A/B session {label} wrote no gate.json (exit {done.returncode}):\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-2000:]}")
    return json.loads(path.read_text()), wall


def main_ab(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="parabench-selftest-ab-"))
    selection = args.selection if args.selection != DEFAULT_SELECTION else AB_SELECTION
    extra = [f"--bench-steps={args.steps}"] if args.steps else []
    if args.rounds:
        extra.append(f"--bench-ab-rounds={args.rounds}")
    slowed = f"slowdown={args.slowdown:g}"
    false_alarms, any_metric, caught, walls = 0, 0, Counter(), []
    cases: set[str] = set()
    rounds = set()
    for run in range(args.runs):
        for label, more in (("A/A", ()), ("A/B", (f"--bench-inject={slowed}", "--bench-ab-verdict=report"))):
            report, wall = ab_session(work, f"{label.replace('/', '')}-{run}", selection, *extra, *more)
            walls.append(wall)
            times = [r for r in report["rows"] if r["metric"].startswith("step time")]
            names = {r["name"] for r in times}
            cases |= names
            rounds |= {r["detail"].split(" over ")[1].split(" paired")[0] for r in times}
            hit = {r["name"] for r in times if r["verdict"] == "regressed"}
            ratios = ", ".join(f"{r['name'].split('[')[1].split('-adamw')[0]} {r['change']:+.1%}" for r in times)
            if label == "A/A":
                false_alarms += bool(hit)
                any_metric += bool(report["regressed"])
            else:
                caught.update(hit)
            print(f"session {run + 1:2d} {label}: {len(hit)}/{len(names)} flagged ({ratios}); {wall:.0f} s", flush=True)
    print(f"\n{len(cases)} cases ({selection!r}); rounds per case: {', '.join(sorted(rounds))}; "
          f"one session {min(walls):.0f}–{max(walls):.0f} s (median {sorted(walls)[len(walls) // 2]:.0f} s); "
          f"results under {work}")
    print(f"A/A: {false_alarms}/{args.runs} sessions with a step-time alarm ({any_metric}/{args.runs} with any "
          f"regressed metric)")
    for name in sorted(cases):
        print(f"A/B {slowed} on head: {name} flagged in {caught[name]}/{args.runs} sessions")
    return 0


def main_costs(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="parabench-selftest-costs-"))
    storage = work / "baselines"
    steps = [f"--bench-steps={args.steps}"] if args.steps else []
    recorded = pytest_session(storage, args.selection, "--bench-record", *steps)
    if recorded.returncode != 0:
        print(recorded.stdout[-3000:], recorded.stderr[-2000:])
        return 2
    equal = caught = 0
    cases: set[str] = set()
    for run in range(args.runs):
        for label, extra in (("unchanged", ()), ("comm=1024", ("--bench-inject=comm=1024",))):
            rows = gate_rows(storage, args.selection, work / f"{label}-{run}", *steps, *extra)
            names = {r["name"] for r in rows}
            cases |= names
            costs = [r for r in rows if r["metric"] in ("comm bus bytes", "flops")]
            judged = {(r["name"], r["metric"]) for r in costs}
            complete = judged == {(n, m) for n in names for m in ("comm bus bytes", "flops")}
            if label == "unchanged":
                ok = complete and all(r["verdict"] == "unchanged" for r in costs)
                equal += ok
            else:
                ok = complete and flagged(rows, ("comm bus bytes",)) == names and all(
                    r["verdict"] == "unchanged" for r in costs if r["metric"] == "flops")
                caught += ok
            print(f"run {run + 1:2d} {label:10s}: {'as expected' if ok else 'NOT as expected'} "
                  f"({', '.join(sorted({r['verdict'] + ' ' + r['metric'] for r in costs}))})", flush=True)
    print(f"\n{len(cases)} cases ({args.selection!r}); results under {work}")
    print(f"unchanged: collectives and FLOPs equal to the byte in {equal}/{args.runs} runs")
    print(f"comm=1024: the extra all-reduce flagged in every case in {caught}/{args.runs} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parabench.selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--slowdown", type=float, default=0.15)
    parser.add_argument("--exact-runs", type=int, default=3, help="runs of each deterministic perturbation")
    parser.add_argument("-k", dest="selection", default=DEFAULT_SELECTION)
    parser.add_argument("--ab", action="store_true", help="A/A and A/B sessions (--bench-ab) instead of the gate's")
    parser.add_argument("--costs", action="store_true", help="collectives and FLOPs: unchanged and comm=1024 runs")
    parser.add_argument("--steps", type=int, default=None, help="A/B and costs: --bench-steps of each session")
    parser.add_argument("--rounds", type=int, default=None, help="A/B: --bench-ab-rounds (default: the policy's)")
    args = parser.parse_args(argv)
    if args.ab:
        return main_ab(args)
    if args.costs:
        return main_costs(args)
    work = Path(tempfile.mkdtemp(prefix="parabench-selftest-"))
    storage = work / "baselines"
    # As `tox -e record` does: the gate judges time against the newest runs of a key, at least [time] min_runs.
    from parabench.gate.policy import load_policy

    for _ in range(max(2, load_policy(REPO / "baselines" / "policy.toml").rules("", "cpu").time_min_runs)):
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
            unjudged = {r["name"] for r in rows if r["metric"].startswith("step time") and r["verdict"] == "unjudged"}
            tally[label, "unjudged"] += len(unjudged)
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
    for label, _ in plan:  # a time row the stored runs could not judge is neither an alarm nor a detection
        print(f"{label}: step time unjudged in {tally[label, 'unjudged']}/{args.runs * n} case-runs (the stored "
              f"runs' spread; docs/gate.md, 'Time on shared CPU runners')")
    for label, _ in exact:
        print(f"{label}: {tally[label, 'runs']}/{args.exact_runs} runs with every case flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m parabench report [RUN …]``, ``thresholds``, ``host``, ``history`` and
``bisect GOOD BAD -k CASE``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

STORAGE = "baselines"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m parabench", description="parabench's command line")
    commands = main.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="render a stored run (or two, compared) as Markdown, CSV and PNG",
        description="Render stored runs as the seeds' tables and plots: throughput per strategy and batch size, "
                    "peak memory per rank, time for N steps, speed-ups, loss curves; with two runs, the second "
                    "against the first with the gate's verdicts.")
    report.add_argument("runs", nargs="*", metavar="RUN",
                        help="a run file, or a stored run's number or name under --storage (default: the newest "
                             "stored run); give two to compare, the baseline first")
    report.add_argument("--storage", default=STORAGE, help=f"where runs are stored (default {STORAGE}/)")
    report.add_argument("--out", default=None, metavar="DIR",
                        help="the report's directory (default reports/report-<run>[-vs-<baseline>])")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    report.add_argument("--steps", type=int, default=20, help="N of 'time for N steps' (default 20, as the seeds)")
    report.add_argument("--policy", default=f"{STORAGE}/policy.toml",
                        help="the gate's policy for comparing two runs (default baselines/policy.toml)")
    report.add_argument("--time", default="judge", choices=("judge", "report"),
                        help="comparing two runs, judge (default) step time as the gate does, or report it with the "
                             "verdict it would get and judge only memory, loss and parity (as CI's gate does)")
    thresholds = commands.add_parser(
        "thresholds", help="how stored runs would judge step time: each case's effective threshold",
        description="For every stored case and machine, the step-time threshold the gate would judge a new run at "
                    "(the policy's, or spread_factor x the spread of the newest stored runs' medians), and whether "
                    "it is judged at all (time.max_threshold); a summary line, and all rows as CSV with --csv.")
    thresholds.add_argument("--storage", default=STORAGE, help=f"where runs are stored (default {STORAGE}/)")
    thresholds.add_argument("--policy", default=f"{STORAGE}/policy.toml", help="the gate's policy")
    thresholds.add_argument("--select", metavar="FILE", default=None,
                            help="only these benchmark names, one a line (e.g. the names `pytest bench/ "
                                 "--collect-only -q` lists after '::')")
    thresholds.add_argument("--csv", metavar="PATH", default=None, help="write every row here (replaced whole)")
    host = commands.add_parser(
        "host", help="this host's kind and how many stored runs of it measure as this version does",
        description="Print this host's machine kind (device, CPU or GPU, kernel instruction set, forced kernels) and "
                    "the stored runs made on that kind with this version's measurements (parabench.measure.memory."
                    "MEASURES); exit 0 when there is one, 3 when there is none (a new host kind: record its "
                    "baselines with tox -e record).")
    host.add_argument("--storage", default=STORAGE, help=f"where runs are stored (default {STORAGE}/)")
    host.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    history = commands.add_parser(
        "history", help="a static site of every stored run: each case's metrics over runs, change points, verdicts",
        description="Write a static site (HTML and Plotly charts, no network needed to view it) over every stored "
                    "run: per machine kind and case, step time, peak and state bytes per rank, bus bytes and FLOPs "
                    "per step, final loss and parity gap over runs in commit order; an index with each case's latest "
                    "verdict, and a Regressions page listing every change point (docs/history.md). Needs the "
                    "report extra: pip install -e \".[report]\" with the lock.")
    history.add_argument("--storage", default=STORAGE, help=f"where runs are stored (default {STORAGE}/)")
    history.add_argument("--out", default="reports/history", metavar="DIR",
                         help="the site's folder (default reports/history); a previous site there is replaced whole "
                              "once the new one is complete")
    history.add_argument("--policy", default=f"{STORAGE}/policy.toml",
                         help="the gate's policy, for the machine key and the latest verdicts (default "
                              "baselines/policy.toml)")
    history.add_argument("--time", default="report", choices=("judge", "report"),
                         help="the latest verdicts: report step time with the verdict it would get (default, as CI's "
                              "gate does), or judge it")
    bisect = commands.add_parser(
        "bisect", help="the first commit between GOOD and BAD that made a case worse, by A/B sessions against GOOD",
        description="Walk BAD's first-parent line back to GOOD by binary search: each commit tested runs `pytest "
                    "bench/ -k CASE --bench-ab=GOOD` in a detached worktree of its own (head: that commit; base: "
                    "GOOD) and is bad when a row of the chosen metrics regressed in that session's gate.json. BAD "
                    "is judged first. A commit whose case fails or errors, or where the metrics were not judged, is "
                    "skipped (as git bisect skip). The checkout is left as it was. Exit 0: the first bad commit "
                    "found; 2: a usage error, or BAD not worse than GOOD; 1: something failed. docs/bisect.md.",
        epilog="Arguments after -- go to every step's pytest, e.g. -- --bench-steps=4.")
    bisect.add_argument("good", metavar="GOOD", help="a commit where the case is as it should be")
    bisect.add_argument("bad", metavar="BAD", help="a later commit, on whose history GOOD is, where it is worse")
    bisect.add_argument("-k", required=True, metavar="CASE",
                        help="the case(s) to judge, as pytest -k selects them in bench/")
    bisect.add_argument("--metric", action="append", metavar="NAME",
                        help="what makes a commit bad, repeated or comma-separated: state_bytes, "
                             "peak_allocated_bytes, comm, flops, loss, parity (the exact metrics: the default, all "
                             "of them, 2 A/B rounds a step) or time (step time: the policy's rounds)")
    bisect.add_argument("--changed", action="store_true",
                        help="bad is any change of the chosen metrics: regressed, improved, or measured another way "
                             "(unjudged, 'remeasured')")
    bisect.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="A/B rounds a step (default 2 for exact metrics, the policy's with time)")
    bisect.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds one step's session may run before it is stopped and skipped (default 3600)")
    bisect.add_argument("--out", default=None, metavar="DIR",
                        help="keep each step's gate.json, gate.md and pytest log under DIR/<commit>/")
    bisect.add_argument("--repo", default=".", help="the checkout whose history is searched (default: here)")
    return main


def history(args: argparse.Namespace, command: str) -> int:
    try:
        import plotly  # noqa: F401
        import ruptures  # noqa: F401
    except ImportError as error:
        print(f"parabench history: {error.name} is not installed; install the history extra with the lock: "
              f"python3 -m pip install -c constraints.txt -c requirements-lock.txt -e \".[report]\"",
              file=sys.stderr)
        return 2
    from parabench.history.series import HistoryError
    from parabench.history.site import build

    try:
        site = build(args.storage, args.out, args.policy, command=command, judge_time=args.time == "judge")
    except HistoryError as error:
        print(f"parabench history: {error}", file=sys.stderr)
        return 2
    print(f"parabench history: wrote {site.out / 'index.html'}: {site.summary()}")
    return 0


def host(args: argparse.Namespace) -> int:
    """``python -m parabench host``: 0 when this host kind has stored runs measured as now, 3 when the store has
    runs but none of this kind measured as now, 2 when it holds no run at all."""
    from parabench.gate.baselines import discover
    from parabench.gate.judge import measured_by
    from parabench.gate.keys import machine_kind, this_machine_kind
    from parabench.measure.memory import MEASURES

    # The kind as the gate keys it: device, CPU model and the kernels torch runs (AVX2 forced on an AVX-512 host
    # is the AVX2 kind of that model).
    kind = this_machine_kind(args.device)
    stored = discover(args.storage)
    if not stored:
        # An empty or missing store is not a new host kind: nothing anywhere would be judged
        print(f"no stored run under {args.storage}: point --storage at the baselines (or record some there first)")
        return 2
    runs = [run for run in stored
            if any(machine_kind(b["extra_info"]) == kind
                   and all(measured_by(b["extra_info"], metric) == version for metric, version in MEASURES.items())
                   for b in run.benchmarks)]
    print(f"this host: {kind[0]}, {kind[1]}; stored runs of this kind measured as now: {len(runs)}"
          + (f" (newest {runs[-1].path})" if runs else ""))
    return 0 if runs else 3


def thresholds(args: argparse.Namespace) -> str:
    """The summary of ``python -m parabench thresholds`` per machine; the rows go to ``--csv``."""
    import csv
    import io
    import statistics

    from parabench.gate.baselines import atomic_write, discover
    from parabench.gate.judge import time_judgeability
    from parabench.gate.policy import load_policy

    names = None
    if args.select:
        names = [line.strip() for line in Path(args.select).read_text().splitlines() if line.strip()]
    rows = time_judgeability(discover(args.storage), load_policy(args.policy), names)
    if not rows:
        raise SystemExit(f"parabench thresholds: no stored case under {args.storage}"
                         + (f" among the {len(names)} names of {args.select}" if names is not None else ""))
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(args.csv, out.getvalue().encode(), overwrite=True)
    lines = []
    for machine in sorted({(r["hardware"], r["kernels"]) for r in rows}):
        mine = [r for r in rows if (r["hardware"], r["kernels"]) == machine]
        values = sorted(r["threshold"] for r in mine)
        p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
        lines.append(f"{machine[0]} (kernels: {machine[1]}): {len(mine)} cases; effective threshold median "
                     f"{statistics.median(values):.1%}, p90 {p90:.1%}; judged {sum(r['judged'] for r in mine)}, not "
                     f"judged {sum(not r['judged'] for r in mine)} (too few stored runs, or their medians spread too much)")
    return "\n".join(lines)


def report(args: argparse.Namespace, command: str) -> Path:
    from parabench.report.document import render_all
    from parabench.report.runs import load, newest, resolve

    paths = [resolve(run, args.storage) for run in args.runs] or [newest(args.storage)]
    runs = [load(path) for path in paths]  # every file is checked before anything is written
    out = args.out or f"reports/report-{runs[-1].label}" + (f"-vs-{runs[0].label}" if len(runs) == 2 else "")
    return render_all(runs, out, steps=args.steps, policy_path=args.policy, overwrite=args.overwrite,
                      command=command, judge_time=args.time == "judge")


def main(argv: list[str] | None = None) -> int:
    from parabench.report.runs import ReportError

    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if argv[:1] == ["bisect"] and "--" in argv:  # the rest is every step's pytest's
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser().parse_args(argv)
    args.pytest_args = extra
    if args.command == "host":
        return host(args)
    if args.command == "bisect":
        from parabench.ab.bisect import bisect

        return bisect(args)
    if args.command == "thresholds":
        print(thresholds(args))
        return 0
    if args.command == "history":
        return history(args, f"python -m parabench {shlex.join(argv)}")
    try:
        out = report(args, f"python -m parabench {shlex.join(argv)}")
    except ReportError as error:
        print(f"parabench report: {error}", file=sys.stderr)
        return 2
    print(f"parabench report: wrote {out / 'report.md'} (with its CSV tables and PNG figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m parabench report [RUN …]``."""

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
    return main


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
    args = parser().parse_args(argv)
    try:
        out = report(args, f"python -m parabench {shlex.join(argv)}")
    except ReportError as error:
        print(f"parabench report: {error}", file=sys.stderr)
        return 2
    print(f"parabench report: wrote {out / 'report.md'} (with its CSV tables and PNG figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

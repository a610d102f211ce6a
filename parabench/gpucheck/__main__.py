"""``python -m parabench.gpucheck``: the one-GPU check (see ``parabench.gpucheck``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parabench.gpucheck.check import REPO, TIME_LIMIT_S, main_build, main_check
from parabench.gpucheck.wheels import TARGET_PYTHON

DEFAULT_WHEELS = REPO / "gpucheck-wheels"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parabench.gpucheck",
        description="Every framework family on one GPU rank in bf16 and fp16, with the fork start-up, the CUDA "
                    "kernels, memory statistics and costs; results, log and summary under --out.",
        epilog="Arguments after -- go to pytest (e.g. -- -k zero3).")
    parser.add_argument("--out", type=Path, default=REPO / "gpucheck-out", help="where results, log and summary go "
                        "(default gpucheck-out/; the files of a previous run there are replaced)")
    parser.add_argument("--wheels", type=Path, default=None, help="the carried wheels to install into OUT/site "
                        "first (default gpucheck-wheels/ where it exists)")
    parser.add_argument("--no-wheels", action="store_true", help="install nothing; use what this Python has")
    parser.add_argument("--dry-run", action="store_true", help="the CPU half here: the same selection with "
                        "--bench-device=cpu (fp16 and Gemini's auto placement skip, saying so)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, metavar="S",
                        help=f"seconds for the whole check (default {TIME_LIMIT_S:.0f}); cases not run by then fail")
    parser.add_argument("--build-wheels", type=Path, default=None, metavar="DIR",
                        help="make the wheel folder instead (needs pip's index): the pinned DeepSpeed, ColossalAI, "
                             "fairscale and datasets, ops off, and what they import that the GPU machine lacks")
    parser.add_argument("--python-version", default=TARGET_PYTHON,
                        help=f"with --build-wheels: the GPU machine's Python (default {TARGET_PYTHON})")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    arguments = parser.parse_args(argv)
    if arguments.build_wheels is not None:
        return main_build(arguments.build_wheels, arguments.python_version)
    folder = arguments.wheels
    if folder is None and not arguments.no_wheels and DEFAULT_WHEELS.is_dir():
        folder = DEFAULT_WHEELS
    if arguments.no_wheels:
        folder = None
    return main_check(arguments.out, folder, "cpu" if arguments.dry_run else "cuda", arguments.time_limit, extra)


if __name__ == "__main__":
    sys.exit(main())

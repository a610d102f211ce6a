"""The ranks' start-up, checked alone: the fork server's imports leave CUDA untouched, and a fork of it computes.

``python -m parabench.gpucheck.forkcheck --device cuda|cpu`` imports what the server that forks the ranks imports
(``parabench.runtime.rank_imports``, which itself fails if CUDA was initialised), says whether CUDA is initialised after
it (it must not be), then forks a child that starts CUDA (or computes on the CPU) and multiplies two matrices
there. Exit 0 when both hold; otherwise the cause is printed.
"""

from __future__ import annotations

import argparse
import os
import sys


def child(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.init()
    a = torch.ones(64, 64, device=device)
    value = (a @ a).sum().item()  # every entry is 64
    expected = 64.0 ** 3
    if value != expected:
        print(f"forkcheck: the forked child computed {value}, expected {expected}", flush=True)
        return 1
    print(f"forkcheck: a forked child computed on {torch.device(device, 0) if device == 'cuda' else device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parabench.gpucheck.forkcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    device = parser.parse_args(argv).device
    import torch

    import parabench.runtime.rank_imports  # noqa: F401 - raises if its imports initialised CUDA

    if torch.cuda.is_initialized():
        print("forkcheck: CUDA is initialised after the fork server's imports: every forked rank would fail",
              flush=True)
        return 1
    print(f"forkcheck: the fork server's imports leave CUDA uninitialised (torch {torch.__version__}, "
          f"CUDA build {torch.version.cuda or 'none'})", flush=True)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(device)
        except BaseException as error:  # noqa: BLE001 - the child reports whatever stopped it, then exits
            print(f"forkcheck: the forked child failed: {type(error).__name__}: {error}", flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) and 1


if __name__ == "__main__":
    sys.exit(main())

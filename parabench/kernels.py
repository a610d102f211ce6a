"""The ops DeepSpeed and ColossalAI compile on first use (once per machine, then cached), built up front.

Left alone, each is compiled inside the first case that needs it (DeepSpeed's CPU Adam ~2 min, ColossalAI's
CPU Adam ~90 s on this 2-core class), which then times out or reads as that case's set-up. Instead the
session builds the ones its selected cases need before the first case starts, and says so
(``fixtures.kernels``); ``python -m parabench.kernels`` builds every one of the installed packages
(``.ci/run`` does, after installing).

Usage: ``python -m parabench.kernels [NAME …]`` (names: see ``KERNELS``); prints what it built and how long
it took, or where the cached build lies.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Kernel:
    name: str
    what: str
    package: str
    optimizers: tuple[str, ...]   # the registry's optimizers that load it
    built_file: Callable[[], Path]  # where the compiled module lies once built
    build: Callable[[], None]       # compile (or load, when cached) in this process


def _deepspeed_file() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("cpu_adam", verbose=False)) / "cpu_adam.so"


def _deepspeed_build() -> None:
    from deepspeed.ops.op_builder import CPUAdamBuilder

    CPUAdamBuilder().load(verbose=False)


def _colossalai_file() -> Path:
    from colossalai.kernel.extensions.cpp_extension import _CppExtension

    return Path(_CppExtension.get_jit_extension_folder_path()) / "cpu_adam_arm.so"


def _colossalai_build() -> None:
    import torch

    from parabench.colossalai_cpu import ensure_cpu_patches

    if torch.cuda.is_available():
        return  # with CUDA, ColossalAI builds its CUDA/x86 extension itself
    ensure_cpu_patches("cpu")  # the x86 kernel needs CUDA headers; the plain C++ one builds (parabench/colossalai_cpu.py)
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    CPUAdamLoader().load()


KERNELS = (
    Kernel("deepspeed-cpu-adam", "DeepSpeed's CPU Adam op", "deepspeed", ("ds-cpuadam",), _deepspeed_file,
           _deepspeed_build),
    Kernel("colossalai-cpu-adam", "ColossalAI's CPU Adam kernel", "colossalai", ("hybrid-adam", "cpu-adam"),
           _colossalai_file, _colossalai_build),
)


def installed(kernel: Kernel) -> bool:
    return importlib.util.find_spec(kernel.package) is not None


def built(kernel: Kernel) -> bool:
    try:
        return kernel.built_file().exists()
    except Exception:  # noqa: BLE001 - an upstream layout we do not know: build (or load) to find out
        return False


def needed_by(optimizers: set[str]) -> list[Kernel]:
    """The installed kernels that these optimizers load and that are not built yet."""
    return [k for k in KERNELS if installed(k) and set(k.optimizers) & optimizers and not built(k)]


def build_in_subprocess(kernel: Kernel, timeout_s: float = 1200) -> tuple[float, str | None]:
    """Build ``kernel`` in a fresh interpreter: (seconds, None) or (seconds, the error's last lines)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "parabench.kernels", kernel.name], capture_output=True, text=True,
                          timeout=timeout_s)
    error = None if done.returncode == 0 else "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return time.perf_counter() - started, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parabench.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"kernels to build (default: all installed): "
                                                 f"{', '.join(k.name for k in KERNELS)}")
    names = parser.parse_args(argv).names
    known = {k.name: k for k in KERNELS}
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown kernel {unknown[0]!r}; known: {', '.join(known)}")
    failed = 0
    for kernel in [known[n] for n in names] if names else KERNELS:
        if not installed(kernel):
            print(f"{kernel.name}: {kernel.package} is not installed; nothing to build")
            continue
        cached = built(kernel)
        started = time.perf_counter()
        try:
            kernel.build()
        except Exception as error:  # noqa: BLE001 - report every kernel, then fail
            print(f"{kernel.name}: {kernel.what} did not build: {type(error).__name__}: {error}", file=sys.stderr)
            failed += 1
            continue
        how = "loaded from its cache" if cached else "built"
        print(f"{kernel.name}: {kernel.what} {how} in {time.perf_counter() - started:.1f} s ({kernel.built_file()})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

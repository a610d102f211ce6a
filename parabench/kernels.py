"""The ops DeepSpeed and ColossalAI compile on first use (once per machine, then cached), built up front.

Left alone, each is compiled inside the first case that needs it (DeepSpeed's CPU Adam ~2 min, ColossalAI's
CPU Adam ~90 s on this 2-core class), which then times out or reads as that case's set-up. Instead the
session builds the ones its selected cases need before the first case starts, and says so
(``fixtures.kernels``); ``python -m parabench.kernels`` builds every one of the installed packages
(``.ci/run`` does, after installing).

Which ops a case loads depends on its device: on CPU, DeepSpeed's CPU Adam and ColossalAI's plain C++ CPU Adam
(``CPU_KERNELS``); on CUDA, DeepSpeed's CPU Adam (built for the CUDA accelerator) and FusedAdam, and ColossalAI's
CUDA-built x86 CPU Adam and fused optimizer kernels (``CUDA_KERNELS``). Each is reported by the file its
loader looks for.

Usage: ``python -m parabench.kernels [--device auto|cpu|cuda] [NAME …]`` (names: see ``KERNELS``); prints what
it built and how long it took, or where the cached build lies.
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


def _torch_extension_file(name: str) -> Path:
    """Where torch's JIT loader builds DeepSpeed's op ``name`` (its ``OpBuilder.NAME``)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / f"{name}.so"


def _deepspeed_file() -> Path:
    return _torch_extension_file("cpu_adam")


def _deepspeed_build() -> None:
    from deepspeed.ops.op_builder import CPUAdamBuilder

    CPUAdamBuilder().load(verbose=False)


def _deepspeed_fused_adam_file() -> Path:
    return _torch_extension_file("fused_adam")


def _deepspeed_fused_adam_build() -> None:
    from deepspeed.ops.op_builder import FusedAdamBuilder

    FusedAdamBuilder().load(verbose=False)


def _colossalai_extension_file(name: str) -> Path:
    """Where ColossalAI JIT-builds its extension ``name`` (in a folder named after the accelerator in use)."""
    from colossalai.kernel.extensions.cpp_extension import _CppExtension

    return Path(_CppExtension.get_jit_extension_folder_path()) / f"{name}.so"


def _colossalai_file() -> Path:
    return _colossalai_extension_file("cpu_adam_arm")


def _colossalai_build() -> None:
    import torch

    from parabench.upstream.colossalai_cpu import ensure_cpu_patches

    if torch.cuda.is_available():
        return  # with CUDA, ColossalAI builds its CUDA/x86 extension itself
    # The x86 kernel needs CUDA headers; the plain C++ one builds (parabench/upstream/colossalai_cpu.py).
    ensure_cpu_patches("cpu")
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    CPUAdamLoader().load()


def _colossalai_cuda_cpu_adam_build() -> None:
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    CPUAdamLoader().load()  # with CUDA, the x86 kernel (a CUDA extension) is the one it loads


def _colossalai_fused_optim_build() -> None:
    from colossalai.kernel.kernel_loader import FusedOptimizerLoader

    FusedOptimizerLoader().load()


DEEPSPEED_CPU_ADAM = Kernel("deepspeed-cpu-adam", "DeepSpeed's CPU Adam op", "deepspeed", ("ds-cpuadam",),
                            _deepspeed_file, _deepspeed_build)
CPU_KERNELS = (
    DEEPSPEED_CPU_ADAM,
    Kernel("colossalai-cpu-adam", "ColossalAI's CPU Adam kernel", "colossalai", ("hybrid-adam", "cpu-adam"),
           _colossalai_file, _colossalai_build),
)
CUDA_KERNELS = (
    DEEPSPEED_CPU_ADAM,  # DeepSpeed's builder for the accelerator in use: the same op and file
    Kernel("deepspeed-fused-adam", "DeepSpeed's FusedAdam op", "deepspeed", ("ds-fusedadam",),
           _deepspeed_fused_adam_file, _deepspeed_fused_adam_build),
    # HybridAdam steps CPU parameters (offloaded masters) on the CPU Adam kernel and CUDA ones on the fused one.
    Kernel("colossalai-cpu-adam-x86", "ColossalAI's x86 CPU Adam kernel (a CUDA extension)", "colossalai",
           ("hybrid-adam", "cpu-adam"), lambda: _colossalai_extension_file("cpu_adam_x86"),
           _colossalai_cuda_cpu_adam_build),
    Kernel("colossalai-fused-optim", "ColossalAI's fused optimizer CUDA kernels", "colossalai", ("hybrid-adam",),
           lambda: _colossalai_extension_file("fused_optim_cuda"), _colossalai_fused_optim_build),
)
KERNELS = {"cpu": CPU_KERNELS, "cuda": CUDA_KERNELS}  # by the device the session's cases run on


def installed(kernel: Kernel) -> bool:
    return importlib.util.find_spec(kernel.package) is not None


def built(kernel: Kernel) -> bool:
    try:
        return kernel.built_file().exists()
    except Exception:  # noqa: BLE001 - an upstream layout we do not know: build (or load) to find out
        return False


def _modified(kernel: Kernel) -> float | None:
    """When the kernel's built module was last written, or None where there is none."""
    try:
        return kernel.built_file().stat().st_mtime
    except Exception:  # noqa: BLE001 - not built, or an upstream layout we do not know
        return None


def needed_by(optimizers: set[str], device: str) -> list[Kernel]:
    """The installed kernels that these optimizers load on ``device`` ("cpu", "cuda") and that are not built yet."""
    return [k for k in KERNELS[device] if installed(k) and set(k.optimizers) & optimizers and not built(k)]


def build_in_subprocess(kernel: Kernel, device: str, timeout_s: float = 1200) -> tuple[float, str | None]:
    """Build ``kernel`` of ``device``'s list in a fresh interpreter: (seconds, None) or (seconds, the error's last
    lines)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "parabench.kernels", "--device", device, kernel.name],
                          capture_output=True, text=True, timeout=timeout_s)
    error = None if done.returncode == 0 else "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return time.perf_counter() - started, error


def main(argv: list[str] | None = None) -> int:
    from parabench.runtime.env import device_type

    parser = argparse.ArgumentParser(prog="python -m parabench.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="the device whose kernels to build (default: cuda where torch sees one, else cpu)")
    parser.add_argument("names", nargs="*", help="kernels to build (default: all installed): on cpu "
                                                 f"{', '.join(k.name for k in CPU_KERNELS)}; on cuda "
                                                 f"{', '.join(k.name for k in CUDA_KERNELS)}")
    arguments = parser.parse_args(argv)
    device = device_type(arguments.device)
    kernels = KERNELS[device]
    known = {k.name: k for k in kernels}
    unknown = [n for n in arguments.names if n not in known]
    if unknown:
        parser.error(f"unknown kernel {unknown[0]!r}; known: {', '.join(known)}")
    failed = 0
    for kernel in [known[n] for n in arguments.names] if arguments.names else kernels:
        if not installed(kernel):
            print(f"{kernel.name}: {kernel.package} is not installed; nothing to build")
            continue
        before = _modified(kernel)
        started = time.perf_counter()
        try:
            kernel.build()
        except Exception as error:  # noqa: BLE001 - report every kernel, then fail
            print(f"{kernel.name}: {kernel.what} did not build: {type(error).__name__}: {error}", file=sys.stderr)
            failed += 1
            continue
        # A cached build whose sources changed (or were reinstalled: ninja goes by file times) is compiled again.
        how = "loaded from its cache" if before is not None and before == _modified(kernel) else "built"
        print(f"{kernel.name}: {kernel.what} {how} in {time.perf_counter() - started:.1f} s ({kernel.built_file()})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The environment a result was measured in: device, backend, library versions, hardware key."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

# Every case's result depends on these; a framework package (deepspeed, colossalai, fairscale) is
# tracked only for the cases that use it, so installing one does not orphan the others' baselines.
TRACKED_PACKAGES = ("torch", "transformers", "datasets", "pytest-benchmark")


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_type(requested: str = "auto") -> str:
    """'cuda' when asked for or when one exists (auto), else 'cpu'."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "auto":
        return "cuda" if cuda_device_count() else "cpu"
    if requested == "cuda" and not cuda_device_count():
        raise RuntimeError("--bench-device=cuda was asked for, but torch sees no CUDA device")
    return requested


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of python, the tracked packages and ``extra`` (the packages a case needs), by distribution name:
    an import name that is not a distribution's (``sklearn``, ``PIL``) is recorded as the distribution that
    provides it (``scikit-learn``, ``pillow``)."""
    found = {"python": platform.python_version()}
    for name in dict.fromkeys(TRACKED_PACKAGES + tuple(extra)):
        for distribution in _distributions(name):
            try:
                found[distribution] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
    return found


def _distributions(name: str) -> list[str]:
    """The distributions an import or distribution name stands for (itself, if it is one)."""
    try:
        importlib.metadata.distribution(name)
        return [name]
    except importlib.metadata.PackageNotFoundError:
        return _providers().get(name, [])


@functools.lru_cache(maxsize=None)
def _providers() -> dict[str, list[str]]:
    return {module: sorted({d.lower() for d in names})
            for module, names in importlib.metadata.packages_distributions().items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Variables that make torch, oneDNN or MKL run other kernels than the CPU's own (AVX2 kernels on an AVX-512
# host, say): the results then stand for the kernels (same loss bits), not for this CPU's speed.
KERNEL_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def kernels_forced() -> dict[str, str]:
    """The kernel-selection variables set in this environment (empty: the CPU's own kernels)."""
    return {name: os.environ[name] for name in KERNEL_OVERRIDES if os.environ.get(name)}


def hardware(device: str) -> dict[str, object]:
    """What the time and memory of a result depend on, beyond the code."""
    import torch

    # The instruction set torch dispatches its CPU kernels to: virtual machines may name every host
    # "AMD EPYC", while an AVX2 host and an AVX-512 host round differently (loss bits, workspace sizes).
    info: dict[str, object] = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "cpu_count": os.cpu_count(), "device": device}
    forced = kernels_forced()
    if forced:
        info["kernels_forced"] = forced
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info

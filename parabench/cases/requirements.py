"""Requirements of a case (packages, CUDA, ranks, hub access) turned into readable skip reasons.

Everything here runs in the controller, before any rank process is spawned.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Requirements:
    """What a strategy, optimizer or workload needs from the machine."""

    packages: tuple[str, ...] = ()
    cuda: bool = False
    min_world_size: int = 1
    max_world_size: int | None = None
    world_size_multiple_of: int = 1
    # (name, probe) pairs: probe() returns None when satisfied, else the reason.
    probes: tuple = field(default=())
    why_cuda: tuple[str, ...] = ()  # what needs the CUDA device, for the skip reason
    # Probes of a CPU workaround (its fit to the installed package), asked only of a case that runs on the CPU.
    cpu_probes: tuple = field(default=())

    def __add__(self, other: "Requirements") -> "Requirements":
        maxes = [m for m in (self.max_world_size, other.max_world_size) if m is not None]
        return Requirements(
            packages=tuple(dict.fromkeys(self.packages + other.packages)),
            cuda=self.cuda or other.cuda,
            min_world_size=max(self.min_world_size, other.min_world_size),
            max_world_size=min(maxes) if maxes else None,
            world_size_multiple_of=_lcm(self.world_size_multiple_of, other.world_size_multiple_of),
            probes=self.probes + other.probes,
            why_cuda=tuple(dict.fromkeys(self.why_cuda + other.why_cuda)),
            cpu_probes=self.cpu_probes + other.cpu_probes,
        )


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


@dataclass(frozen=True)
class Machine:
    """What the controller can offer the ranks."""

    cuda_devices: int
    max_cpu_world_size: int
    # Under a launcher (torchrun, srun): its world size. Cases run on all of its ranks, or one-process
    # cases on rank 0; no other world size can.
    launched_world_size: int | None = None

    @property
    def device(self) -> str:
        return "cuda" if self.cuda_devices else "cpu"

    def max_world_size(self) -> int:
        return self.cuda_devices if self.cuda_devices else self.max_cpu_world_size


@functools.lru_cache(maxsize=None)
def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_INSTALL_HINT = {
    "deepspeed": "pip install -c constraints.txt -e '.[deepspeed]'",
    "colossalai": "pip install -c constraints.txt -e '.[colossalai]' and then "
                  "pip install --no-deps -c constraints.txt colossalai galore-torch bitsandbytes (docs/getting-started.md, 'Set-up')",
    "fairscale": "pip install -c constraints.txt -e '.[fairscale]'",
}


def unmet(who: str, req: Requirements, world_size: int, machine: Machine) -> str | None:
    """The first unmet requirement as a skip reason naming what is missing, or None."""
    for pkg in req.packages:
        if not package_available(pkg):
            hint = _INSTALL_HINT.get(pkg, f"pip install {pkg}")
            return f"{who} needs the package '{pkg}' ({hint})"
    if req.cuda and not machine.cuda_devices:
        return f"{who} needs a CUDA device" + (f" ({'; '.join(req.why_cuda)})" if req.why_cuda else "")
    if world_size < req.min_world_size:
        return f"{who} needs at least {req.min_world_size} ranks (case has {world_size})"
    if req.max_world_size is not None and world_size > req.max_world_size:
        return f"{who} runs on at most {req.max_world_size} ranks (case has {world_size})"
    if world_size % req.world_size_multiple_of:
        return f"{who} needs a world size divisible by {req.world_size_multiple_of}"
    if machine.launched_world_size is not None:
        if world_size not in (1, machine.launched_world_size):
            return (f"needs {world_size} ranks; this launch has {machine.launched_world_size} (launch "
                    f"{world_size} ranks in all, e.g. torchrun --nnodes N --nproc-per-node {world_size}/N, or run "
                    f"without a launcher)")
    elif world_size > machine.max_world_size():
        if machine.cuda_devices:
            return f"needs {world_size} ranks; this machine has {machine.cuda_devices} CUDA device(s)"
        return (f"needs {world_size} ranks; CPU runs are limited to {machine.max_cpu_world_size} "
                f"(raise it with --bench-max-ranks)")
    for probe in req.probes + (req.cpu_probes if machine.device == "cpu" else ()):
        reason = probe()
        if reason:
            return f"{who} {reason}"
    return None

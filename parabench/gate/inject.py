"""Faults and perturbations injected on purpose, so the harness's own tests can prove they are caught.

Two kinds, kept apart:

* A **fault** (``raise``, ``hang``, ``die`` by SIGKILL, ``grow`` memory without bound) is a case option
  (``inject=raise``): it shows in the case id and can never hide in a stored result. It fires on the
  last rank at step ``inject_step`` (default 1).
* A **perturbation** (``--bench-inject``, self-test only) changes what a case measures without changing
  its id, so the gate compares it with the case's stored baseline and must flag it:
  ``slowdown=F`` (each measured step takes ``1+F`` times as long), ``memory=F`` (state bytes and the
  peak allocation grow by ``F``), ``comm=N`` (one more all-reduce of N float32 zeros over all ranks after every
  step: the numerics stay, the step's collectives change), ``peak=F`` (the recorded peak allocation alone grows by
  ``F``: nothing in the ranks changes), ``no-peak`` (no peak recorded, as if its probe broke), ``drift=F`` (the
loss curve's distance from the one-process reference, step by step, grows by ``1 + F``: the parity check and the
known deviations' recorded drift see it), ``grads-summed`` (gradients summed over replicas, not
  averaged) and ``lr0`` (learning rate 0). A perturbed run is marked in its results and is never recorded as a baseline.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch

from parabench.cases.case import Case

FAULTS = ("raise", "hang", "die", "grow")
GROWTH_BYTES = 256 * 1024**2  # what a ``grow`` fault adds each round, until the pool's memory limit stops it


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def before_step(case: Case, rank: int, world_size: int, step: int) -> None:
    fault = case.option("inject")
    if fault is None:
        return
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if step != case.option("inject_step", 1) or rank != world_size - 1:
        return
    if fault == "raise":
        raise InjectedFault(f"injected failure on rank {rank} at step {step}")
    if fault == "hang":
        # The other ranks go on into the step's gradient all-reduce and wait there for this one.
        time.sleep(10**6)
    if fault == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "grow":
        import psutil

        held = []
        # Memory until the controller's per-rank limit ends it, never past half of the machine's memory (then it
        # waits for the case's time-out): the kernel's OOM killer must not get there first when the controller,
        # which looks every 0.5 s, looks late on a loaded machine (once, under pytest -n 2, at 5 GB/s).
        cap = psutil.virtual_memory().total // 2
        while len(held) * GROWTH_BYTES < cap:
            held.append(torch.ones(GROWTH_BYTES // 4))
            time.sleep(0.05)
        time.sleep(10**6)


@dataclass(frozen=True)
class Perturbation:
    """A known change to a case's time, memory or numerics (see the module's docstring)."""

    kind: str
    amount: float = 0.0

    KINDS = {"slowdown": True, "memory": True, "comm": True, "peak": True, "drift": True,  # → takes an amount
             "no-peak": False, "grads-summed": False, "lr0": False}

    @classmethod
    def parse(cls, text: str) -> "Perturbation":
        """``slowdown=0.15``, ``memory=0.01``, ``comm=1024``, ``peak=0.3``, ``drift=1``, ``no-peak``, ``grads-summed``
        or ``lr0``."""
        kind, _, amount = text.partition("=")
        usage = ("use slowdown=F, memory=F (F a fraction, e.g. 0.15), comm=N (N float32 elements, a whole number), "
                 "peak=F, drift=F, no-peak, grads-summed or lr0")
        if kind not in cls.KINDS:
            raise ValueError(f"unknown perturbation {text!r}; {usage}")
        if cls.KINDS[kind] != bool(amount):
            raise ValueError(f"perturbation {text!r}: {kind} {'needs' if cls.KINDS[kind] else 'takes no'} "
                             f"amount; {usage}")
        try:
            value = float(amount) if amount else 0.0
        except ValueError:
            value = -1.0
        if cls.KINDS[kind] and not value > 0:
            raise ValueError(f"perturbation {text!r}: the amount must be a positive fraction; {usage}")
        if kind == "comm" and value != int(value):
            raise ValueError(f"perturbation {text!r}: the amount is a count of elements; {usage}")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}" if self.KINDS[self.kind] else self.kind

    # -- applied inside the rank ------------------------------------------------------------------------

    def prepare(self, optimizer: torch.optim.Optimizer, replicas: int) -> None:
        """Break the numerics (grads-summed, lr0) once the optimizer exists.

        ``optimizer`` is the one that steps the weights (``Strategy.stepping_optimizer``: under DeepSpeed or
        ColossalAI, the one inside their wrapper); ``replicas`` the number of data-parallel replicas whose
        gradients were averaged (tensor and pipeline parallel ranks do not average theirs).
        """
        if self.kind == "lr0":
            for group in optimizer.param_groups:
                group["lr"] = 0.0
        elif self.kind == "grads-summed" and replicas > 1:
            def undo_average(opt, args, kwargs) -> None:
                for group in opt.param_groups:
                    for param in group["params"]:
                        if param.grad is not None:
                            param.grad.mul_(replicas)
            optimizer.register_step_pre_hook(undo_average)

    def timed(self, step: Callable[[], object], synchronize: Callable[[], None]) -> Callable[[], object]:
        """``step``, made ``1 + amount`` times as long (slowdown) by waiting inside the timed region."""
        if self.kind != "slowdown":
            return step

        def slower() -> object:
            start = time.perf_counter()
            out = step()
            synchronize()
            time.sleep(self.amount * (time.perf_counter() - start))
            return out
        return slower

    def communicating(self, step: Callable[[], object]) -> Callable[[], object]:
        """``step``, followed by one more all-reduce over all ranks (comm=N); else ``step`` itself."""
        if self.kind != "comm":
            return step
        import torch.distributed as dist

        def more() -> object:
            out = step()
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            dist.all_reduce(torch.zeros(int(self.amount), device=device))
            return out
        return more

    def recorded_peak(self, peak_bytes: int | None) -> int | None:
        """The peak allocation to record: ``1 + amount`` times the measured one (peak=F); else it unchanged."""
        if self.kind == "no-peak":
            return None
        if self.kind != "peak" or peak_bytes is None:
            return peak_bytes
        return round(peak_bytes * (1 + self.amount))

    def drifted(self, losses: list[float], reference: list[float]) -> list[float]:
        """The loss curve ``1 + amount`` times as far from ``reference`` at every step (drift=F); else unchanged."""
        if self.kind != "drift":
            return list(losses)
        return [ref + (1 + self.amount) * (loss - ref) for loss, ref in zip(losses, reference)]

    @property
    def grows_memory(self) -> bool:
        return self.kind == "memory"

    def ballast(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Memory growth: a tensor of ``amount × nbytes`` bytes, for the rank to hold."""
        return torch.ones(max(1, round(self.amount * nbytes)), dtype=torch.uint8, device=device)

"""Step timing: a step's wall time with the device drained before and after it."""

from __future__ import annotations

import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; a CPU's work is done when it returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall time of one step, with the device drained before and after."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def synchronize(self) -> None:
        """Drain this timer's device (a perturbation that times its own work drains it as the step does)."""
        synchronize(self.device)

    def time(self, step: Callable[[], object]) -> tuple[object, float]:
        self.synchronize()
        start = time.perf_counter()
        out = step()
        self.synchronize()
        return out, time.perf_counter() - start

"""Chrome traces of a case's training: ``torch.profiler`` over extra, untimed steps after every measurement."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TraceRequest:
    """Profile ``steps`` more training steps on every rank; rank R writes ``directory/rankR.json``."""

    directory: str  # absolute: a rank's working directory need not be the controller's
    steps: int

    def __post_init__(self) -> None:
        if not os.path.isabs(self.directory):
            raise ValueError(f"trace directory {self.directory!r} is relative; ranks may run in another working "
                             "directory, so pass an absolute path")
        if self.steps < 1:
            raise ValueError(f"{self.steps} profiled steps: use 1 or more")

    def path(self, rank: int) -> str:
        """Where rank ``rank`` writes its trace."""
        return os.path.join(self.directory, f"rank{rank}.json")


def record_trace(request: TraceRequest, rank: int, device: torch.device, step: Callable[[int], object]) -> str:
    """Run ``step(i)`` for ``i`` in ``range(request.steps)`` under ``torch.profiler``; write this rank's trace.

    Returns the trace's path. The trace is exported under a temporary name in the same directory and
    then renamed, so a reader sees the whole new trace or the previous one, never half of either.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    os.makedirs(request.directory, exist_ok=True)
    with profile(activities=activities, record_shapes=True) as profiler:
        for i in range(request.steps):
            with record_function(f"parabench step {i}"):  # where each step starts and ends in the viewer
                step(i)
    path = request.path(rank)
    # The pid keeps two sessions that trace the same case into the same directory apart.
    temporary = os.path.join(request.directory, f".rank{rank}.json.{os.getpid()}.tmp")
    try:
        profiler.export_chrome_trace(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path

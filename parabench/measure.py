"""Per-rank measurements: exact state bytes, profiler-replay peak, CUDA peaks, RSS, step timing.

CPU has no allocator statistics, so memory is measured two deterministic ways (DESIGN §4):
the bytes of the training state itself, and the peak of a profiled step's allocations.
"""

from __future__ import annotations

import resource
import time
from typing import Callable, Iterable, Mapping

import torch

STATE_CATEGORIES = ("params", "grads", "optimizer", "master")


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds (DTensor → its local tensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(tensors: Mapping[str, Iterable[object]]) -> dict[str, int]:
    """Bytes held per category, each storage counted once (in the first category that names it).

    Views of one storage (flat buffers, tied weights) share the pointer and are counted once;
    non-tensors (step counters as ints, None gradients) are ignored.
    """
    unknown = set(tensors) - set(STATE_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown state categories {sorted(unknown)}; known: {', '.join(STATE_CATEGORIES)}")
    seen: set[tuple[str, int]] = set()
    totals = {category: 0 for category in STATE_CATEGORIES}
    for category in STATE_CATEGORIES:
        for t in tensors.get(category, ()):
            if not isinstance(t, torch.Tensor):
                continue
            storage = local_tensor(t).untyped_storage()
            key = (str(storage.device), storage.data_ptr())
            if storage.nbytes() == 0 or key in seen:
                continue
            seen.add(key)
            totals[category] += storage.nbytes()
    totals["total"] = sum(totals[c] for c in STATE_CATEGORIES)
    return totals


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> Iterable[object]:
    for per_param in optimizer.state.values():
        yield from per_param.values()


def profiled_peak_bytes(step: Callable[[], object]) -> int:
    """Peak CPU bytes allocated during ``step``, replaying the profiler's per-op allocations in order.

    Each event's *self* memory delta is replayed in start order; the running maximum is the peak,
    relative to what was allocated before the step.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def rss_bytes() -> dict[str, int]:
    """Resident set size now and at its maximum (information only: noisy, includes imports)."""
    import psutil

    return {"rss": psutil.Process().memory_info().rss,
            "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class StepTimer:
    """Wall time of one step, with the device drained before and after."""

    def __init__(self, device: torch.device) -> None:
        self.synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def time(self, step: Callable[[], object]) -> tuple[object, float]:
        self.synchronize()
        start = time.perf_counter()
        out = step()
        self.synchronize()
        return out, time.perf_counter() - start

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

# How each memory metric is measured, by version: a stored value of another version measured something else, and
# the gate does not compare the two (it names the metric "remeasured": re-record). Stored results without this
# field are version 1.
#   peak_allocated_bytes 2: the profiler's allocation and free events replayed in time order (1: each op's self
#     memory at its start, which counted asynchronous collectives' buffers twice, once or not at all)
#   state_bytes 2: every storage a rank holds, DeepSpeed ZeRO-3's fp32 partition copy in fp32 runs included
MEASURES = {"peak_allocated_bytes": 2, "state_bytes": 2}


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
    """Peak CPU bytes allocated during ``step``: the allocator's own events, replayed in the order they happened.

    Each allocation and free the profiler recorded (``[memory]``, on any thread it profiles) is replayed by its
    time stamp; the running maximum is the peak, relative to what was allocated before the step.

    Not the per-op view (``prof.events()``' self memory at each op's start): torch attributes an allocation to
    every op whose time span holds it, whatever thread it ran on, so an allocation on the main thread during an
    asynchronous collective on a gloo thread counted twice, once or not at all depending on how the two threads
    interleaved. That replay made FSDP2's and ZeRO-3's peaks differ by up to 19.8 % between runs of unchanged
    code (README, "What a case measures"; docs/evidence/peak_spread.csv).
    """
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import MEMORY_EVENT_NAME
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = [e for e in prof.profiler.kineto_results.events()
                   if e.name() == MEMORY_EVENT_NAME and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for event in sorted(allocations, key=lambda e: e.start_ns()):  # stable: one thread's ties keep their order
        current += event.nbytes()
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

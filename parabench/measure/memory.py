"""Per-rank memory: exact state bytes, profiler-replay peak, CUDA peaks, RSS (step timing: ``parabench.measure.timing``).

CPU has no allocator statistics, so memory is measured two deterministic ways:
the bytes of the training state itself, and the peak of a profiled step's allocations.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import resource
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

# buffers: storage a framework keeps for its collectives between steps (DDP's reducer buckets)
STATE_CATEGORIES = ("params", "grads", "optimizer", "master", "buffers")

# How each memory metric is measured, by version: a stored value of another version measured something else, and
# the gate does not compare the two (it names the metric "remeasured": re-record). Stored results without this
# field are version 1.
#   peak_allocated_bytes 2: the profiler's allocation and free events replayed in time order (1: each op's self
#     memory at its start, which counted asynchronous collectives' buffers twice, once or not at all)
#   peak_allocated_bytes 3: with the step's collectives made synchronous (``synchronous_collectives``), so that no
#     buffer's last reference is dropped on a gloo thread, whose frees the profiler does not record
#   state_bytes 2: every storage a rank holds, DeepSpeed ZeRO-3's fp32 partition copy in fp32 runs included
#   state_bytes 3: and DDP's reducer buckets (``buffers``), a copy of the gradients every DDP-wrapped case holds
# (On CUDA, where no run was stored before, peak_allocated_bytes is the same rise over one step, read from the
# allocator's counters: ``cuda_step_peak_bytes``.)
MEASURES = {"peak_allocated_bytes": 3, "state_bytes": 3}


@dataclass(frozen=True)
class Held:
    """Bytes of a storage Python cannot reach, as the framework that holds it reports them."""

    nbytes: int
    what: str


def ddp_buckets(model: torch.nn.Module | None) -> list[Held]:
    """The reducer buckets of every ``DistributedDataParallel`` in ``model``: each bucket's flat gradient buffer
    (allocated when DDP is built, kept for its life), by the sizes DDP logs: the buckets it rebuilt after its first
    backward (``rebuilt_bucket_sizes``), or those it was built with (``bucket_sizes``). Not found in any tensor
    Python can reach, this is DDP's own account, and the formula's ``buffers`` term is the gradients' bytes: the
    two agree where DDP allocates what it logs. None where the gradients are views of the buckets
    (``gradient_as_bucket_view``): the gradients count them."""
    from torch.nn.parallel import DistributedDataParallel

    held = []
    for module in model.modules() if isinstance(model, torch.nn.Module) else ():
        if isinstance(module, DistributedDataParallel):
            logged = module._get_ddp_logging_data()
            if logged.get("gradient_as_bucket_view"):
                continue
            # After its first backward DDP regroups the gradients in the order they became ready and logs the new
            # buckets (rebuilt_bucket_sizes); until then (and with one rank, where it does not) the ones it built
            sizes = logged.get("rebuilt_bucket_sizes") if logged.get("has_rebuilt_buckets") else None
            held += [Held(int(size), "DDP reducer bucket") for size in str(sizes or logged.get("bucket_sizes", ""))
                     .split(",") if size.strip()]
    return held


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds (DTensor → its local tensor)."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(tensors: Mapping[str, Iterable[object]]) -> dict[str, int]:
    """Bytes held per category, each storage counted once (in the first category that names it).

    Views of one storage (flat buffers, tied weights) share the pointer and are counted once; a ``Held`` counts
    its bytes; other non-tensors (step counters as ints, None gradients) are ignored.
    """
    unknown = set(tensors) - set(STATE_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown state categories {sorted(unknown)}; known: {', '.join(STATE_CATEGORIES)}")
    seen: set[tuple[str, int]] = set()
    totals = {category: 0 for category in STATE_CATEGORIES}
    for category in STATE_CATEGORIES:
        for t in tensors.get(category, ()):
            if isinstance(t, Held):
                totals[category] += t.nbytes
                continue
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


def cuda_step_peak_bytes(step: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """``(rise, high_water)``: CUDA bytes allocated during ``step`` above what was allocated when it started, as the
    CPU's ``profiled_peak_bytes`` measures; and the most allocated in all during it, what the rank held before
    the step (whatever earlier cases in this long-lived rank left allocated) included.

    The caching allocator counts its blocks on the host as it hands them out and takes them back, so the counts
    need no synchronisation with the device.
    """
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    high_water = torch.cuda.max_memory_allocated(device)
    return high_water - start, high_water


def profiled_peak_bytes(step: Callable[[], object]) -> int:
    """Peak CPU bytes allocated during ``step``: the allocator's own events, replayed in the order they happened.

    Each allocation and free the profiler recorded (``[memory]``, on any thread it profiles) is replayed by its
    time stamp; the running maximum is the peak, relative to what was allocated before the step.

    Not the per-op view (``prof.events()``' self memory at each op's start): torch attributes an allocation to
    every op whose time span holds it, whatever thread it ran on, so an allocation on the main thread during an
    asynchronous collective on a gloo thread counted twice, once or not at all depending on how the two threads
    interleaved. That replay made FSDP2's and ZeRO-3's peaks differ by up to 19.8 % between runs of unchanged
    code (docs/measures.md, "The peak"; docs/evidence/peak_spread.csv).

    The step runs with its collectives made synchronous (``synchronous_collectives``): the profiler records the
    allocator's events of the threads it profiles only, and a collective's buffers whose last reference a gloo
    worker thread dropped were never freed in the replay (FSDP2 on mlp-digits: one all-gather buffer, +50 %, in
    some runs and not others).
    """
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import MEMORY_EVENT_NAME
    from torch.profiler import ProfilerActivity, profile

    with synchronous_collectives(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = [e for e in prof.profiler.kineto_results.events()
                   if e.name() == MEMORY_EVENT_NAME and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for event in sorted(allocations, key=lambda e: e.start_ns()):  # stable: one thread's ties keep their order
        current += event.nbytes()
        peak = max(peak, current)
    return peak


# torch.distributed's collectives that take ``async_op`` (point-to-point sends stay as they are)
COLLECTIVES = ("all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_single",
               "all_gather_coalesced", "_all_gather_base", "reduce_scatter", "reduce_scatter_tensor",
               "reduce_scatter_single", "_reduce_scatter_base", "broadcast", "reduce", "all_to_all",
               "all_to_all_single", "gather", "scatter", "barrier")
RELEASE_TIMEOUT_S = 10.0  # a worker drops its references microseconds after the collective completes


class CollectiveHeld(RuntimeError):
    """A collective's worker held its tensors past ``RELEASE_TIMEOUT_S``: the peak cannot be replayed."""


@contextlib.contextmanager
def synchronous_collectives():
    """Within: each collective of ``torch.distributed`` (``COLLECTIVES``, by either module's name, and DeepSpeed's
    saved references to them) runs to completion before it returns, and returns only once the process group's
    worker thread has dropped its references to the collective's tensors; a caller that asked for ``async_op``
    gets a completed ``Work``. A worker that holds them past ``RELEASE_TIMEOUT_S`` raises ``CollectiveHeld``.

    Where a collective runs asynchronously, its buffers are freed by whichever thread drops the last reference:
    the caller's, or (after the caller is done with them) the gloo worker's, whose frees the profiler does not
    record. Made synchronous, the worker is done first, and every free is the caller's. Allocations stay where
    the framework makes them: a prefetched all-gather's output is still allocated when it is issued; what the
    worker's timing decided (which thread frees, and when) no longer moves the peak."""
    import sys

    import torch.distributed as dist
    from torch._C._distributed_c10d import _create_work_from_future
    from torch.distributed import distributed_c10d

    targets = [(module, name) for module in (dist, distributed_c10d) for name in COLLECTIVES if hasattr(module, name)]
    comm = sys.modules.get("deepspeed.comm.comm")
    backend = getattr(comm, "cdb", None)  # DeepSpeed keeps the functions it found at its start
    targets += [(backend, name) for name in ("all_gather_function", "reduce_scatter_function")
                if getattr(backend, name, None) is not None]

    def synchronous(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            asked = bound.arguments.get("async_op", False)
            if "async_op" in signature.parameters:
                bound.arguments["async_op"] = False
            tensors = _tensors(bound.arguments.values())
            before = _references(tensors)
            out = function(*bound.args, **bound.kwargs)
            _until_released(tensors, before, getattr(function, "__name__", "a collective"))
            if not asked:
                return out
            future = torch.futures.Future()
            future.set_result(None)
            return _create_work_from_future(future)

        return run

    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]
    wrappers: dict[int, Callable] = {}  # one wrapper per function, whichever name it is reached by
    try:
        for owner, name, function in originals:
            if id(function) not in wrappers:
                wrappers[id(function)] = synchronous(function)
            setattr(owner, name, wrappers[id(function)])
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def _tensors(values) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensors(value))
    return found


def _references(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Each tensor's references held in C++: to its TensorImpl (copies of the tensor) and to its storage (views)."""
    return [(t._use_count(), torch._C._storage_Use_Count(t.untyped_storage()._cdata)) for t in tensors]


def _until_released(tensors: list[torch.Tensor], before: list[tuple[int, int]], what: str) -> None:
    """Wait until no tensor has more references than before the collective (the worker released its own)."""
    deadline = time.perf_counter() + RELEASE_TIMEOUT_S
    while any(now[0] > then[0] or now[1] > then[1] for now, then in zip(_references(tensors), before)):
        if time.perf_counter() > deadline:
            raise CollectiveHeld(f"{what}: its tensors were still referenced {RELEASE_TIMEOUT_S:g} s after it "
                                 "completed, so when they are freed, and by which thread, is not known: the step's "
                                 "peak cannot be replayed")
        time.sleep(1e-5)


def rss_bytes() -> dict[str, int]:
    """Resident set size now and at its maximum (information only: noisy, includes imports)."""
    import psutil

    return {"rss": psutil.Process().memory_info().rss,
            "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

"""What one training step costs, exactly: each collective's calls and bytes, and the step's matmul FLOPs.

Both are the same on every run of the same code, on any host, so the gate compares them exactly.

* **Collectives**: a ``TorchDispatchMode`` sees every ``c10d::`` and ``_c10d_functional::`` op a step
  dispatches, DDP's C++ reducer included (its bucket all-reduces go through the dispatcher), with its tensors
  and its process group (so the group's size: a tensor-parallel group is not the data-parallel one). The
  profiler's ``gloo:``/``nccl:`` events carry the tensors but not the group, and gloo runs a reduce-scatter as
  an all-reduce; the dispatcher op is what the framework asked for.
  Per collective: ``calls``, ``bytes`` (its size in the nccl-tests convention: the whole buffer, i.e. the
  all-gather's output and the reduce-scatter's input) and ``bus_bytes`` (size × the nccl-tests bus factor:
  all-reduce 2(n−1)/n, all-gather / reduce-scatter / all-to-all (n−1)/n, broadcast / reduce / send / recv 1),
  and the group sizes seen.
* **FLOPs**: ``torch.profiler(with_flops=True)`` over the same step; the sum over its matrix products and
  convolutions (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``, ``conv2d``: 2·m·n·k each, backward products
  included; where one op is recorded inside another of the same name, the inner one, see ``innermost_flops``).
  Elementwise ``mul``/``add`` are left out: the ≈ 6 × parameters × tokens rule counts products only.
  Not counted: the fused attention kernel (no FLOP formula in the profiler; at these sequence lengths it is
  small beside the projections) and convolutions' backward.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# collective → (the argument names whose tensors make its nccl-tests size, multiply that by the group size)
_SIZE_ARGUMENTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "all_reduce": (("tensors", "input", "inputs"), False),
    "all_gather": (("output_tensor", "output_tensors", "output_lists", "outputs"), False),
    "all_gather_functional": (("input", "inputs"), True),
    "reduce_scatter": (("input_tensor", "input_tensors", "inputs", "input"), False),
    "all_to_all": (("input", "input_tensors"), False),
    "broadcast": (("tensors", "input"), False),
    "reduce": (("tensors",), False),
    "gather": (("input_tensors",), True),
    "scatter": (("output_tensors",), True),
    "send": (("tensors", "tensor"), False),
    "recv": (("tensors", "tensor"), False),
    "barrier": ((), False),
}
# the dispatcher op's name → the collective it is (c10d:: and _c10d_functional::)
_OPS = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce", "all_reduce": "all_reduce",
    "all_reduce_": "all_reduce", "all_reduce_coalesced": "all_reduce", "all_reduce_coalesced_": "all_reduce",
    "_allgather_base_": "all_gather", "allgather_": "all_gather", "allgather_coalesced_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather", "all_gather_into_tensor": "all_gather_functional",
    "all_gather_into_tensor_coalesced": "all_gather_functional", "all_gather_into_tensor_out": "all_gather_functional",
    "_reduce_scatter_base_": "reduce_scatter", "reduce_scatter_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter", "reduce_scatter_tensor_out": "reduce_scatter",
    "alltoall_": "all_to_all", "alltoall_base_": "all_to_all", "all_to_all_single": "all_to_all",
    "broadcast_": "broadcast", "broadcast": "broadcast", "reduce_": "reduce", "gather_": "gather",
    "scatter_": "scatter", "send": "send", "isend": "send", "recv_": "recv", "recv_any_source_": "recv",
    "irecv": "recv", "barrier": "barrier", "monitored_barrier_": "barrier",
}
# nccl-tests' bus bandwidth factor (doc/PERFORMANCE.md there), as (numerator, denominator) of n
BUS_FACTOR: dict[str, Callable[[int], tuple[int, int]]] = {
    "all_reduce": lambda n: (2 * (n - 1), n), "all_gather": lambda n: (n - 1, n),
    "reduce_scatter": lambda n: (n - 1, n), "all_to_all": lambda n: (n - 1, n), "gather": lambda n: (n - 1, n),
    "scatter": lambda n: (n - 1, n), "broadcast": lambda n: (int(n > 1), 1), "reduce": lambda n: (int(n > 1), 1),
    "send": lambda n: (1, 1), "recv": lambda n: (1, 1), "barrier": lambda n: (0, 1),
}
FLOP_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::conv2d"})


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _group_size(arguments: dict[str, Any]) -> int:
    if isinstance(arguments.get("group_size"), int):
        return arguments["group_size"]
    group = arguments.get("process_group")
    if isinstance(group, torch.ScriptObject):
        return torch._C._distributed_c10d.ProcessGroup.unbox(group).size()
    name = arguments.get("group_name")
    if name is not None:
        from torch.distributed.distributed_c10d import _resolve_process_group

        return _resolve_process_group(name).size()
    raise ValueError(f"no process group among {sorted(arguments)}")


class CommCounter(TorchDispatchMode):
    """Counts the collectives dispatched while it is active: ``counts()`` is ``extra_info["comm"]``'s entry."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "bytes": 0, "bus_bytes": 0,
                                                                      "group_sizes": set()})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in ("c10d", "_c10d_functional"):
            name = func._schema.name.split("::")[1]
            if name in _OPS:
                schema = func._schema.arguments
                arguments = {a.name: v for a, v in zip(schema, args)} | kwargs
                self.record(_OPS[name], arguments)
            elif name == "batch_p2p_ops":
                for op, tensor in zip(args[0], args[3]):
                    self.record("send" if op == "isend" else "recv", {"tensor": tensor, "group_name": args[4]})
        # An op run from here is below __torch_function__, as it is without this mode: a subclass' override must
        # not see it again (ColossalAI's ColoTensor rewraps the result, and its backward then recursed for good).
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    def record(self, collective: str, arguments: dict[str, Any]) -> None:
        names, times_group = _SIZE_ARGUMENTS[collective]
        n = _group_size(arguments)
        size = sum(_tensor_bytes(arguments.get(a)) for a in names) * (n if times_group else 1)
        collective = collective.removesuffix("_functional")
        numerator, denominator = BUS_FACTOR[collective](n)
        entry = self.calls[collective]
        entry["calls"] += 1
        entry["bytes"] += size
        entry["bus_bytes"] += size * numerator // denominator
        entry["group_sizes"].add(n)

    def counts(self) -> dict[str, dict[str, Any]]:
        return {name: {**entry, "group_sizes": sorted(entry["group_sizes"])}
                for name, entry in sorted(self.calls.items())}


def profiler_activities(device: torch.device | str) -> list:
    """What the profiler records for a case on ``device`` (the rank's): CUDA kernels only for a CUDA case."""
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])


def step_costs(step: Callable[[], object], device: torch.device | str) -> tuple[dict[str, dict[str, Any]], int]:
    """Run ``step`` once on ``device`` (the rank's), counting its collectives and its matmul FLOPs: ``(comm, flops)``
    of this rank."""
    from torch.profiler import profile

    activities = profiler_activities(device)
    counter = CommCounter()
    # profile_memory, though nothing here reads it: on CPU this step is the warm-up of the profiled peak that
    # follows (parabench.runtime.train), and only a memory-profiled step warms it. Without it the next step's peak
    # read 9.5 % higher than the one after (torch-ddp gpt2-text, 18.39 MB), so a peak read one step later
    # (a memory perturbation's) came out 8.5 % under the baseline instead of 1 % over.
    with profile(activities=activities, record_shapes=True, with_flops=True, profile_memory=True) as profiler:
        with counter:
            step()
    return counter.counts(), innermost_flops(profiler.events())


def innermost_flops(events) -> int:
    """The FLOPs of the products that ran: an op recorded inside one of the same name is the same product seen
    twice (once as dispatched, once as run, under a dispatch mode such as ``CommCounter`` or a tensor subclass
    such as DTensor, whose outer op has the global shape and whose inner one the local shape this rank ran)."""

    def inside(event, name: str) -> bool:
        return any(child.name == name or inside(child, name) for child in event.cpu_children)

    return sum(int(e.flops or 0) for e in events if e.name in FLOP_OPS and not inside(e, e.name))


def total(comm: dict[str, dict[str, Any]] | None, field: str = "bus_bytes") -> int:
    """One rank's ``field`` summed over its collectives."""
    return sum(entry[field] for entry in (comm or {}).values())

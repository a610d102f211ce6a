"""The optimizer step alone, on one tensor-parallel weight: Adafactor against DistributedAdaFactor.

ColossalAI's distributed-optimizer table times one optimizer step of a weight (4096×4096 on its GPUs):
Adafactor on the full weight on every device, and DistributedAdaFactor on the weight of a column-parallel
(``Linear1D_Col``: output features split) or row-parallel (``Linear1D_Row``: input features split) layer
over all ranks. ``run_step_bench`` does the same inside the ranks, then checks the update: the gathered
shards must equal Adafactor's full weight after the same steps on the same gradients.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist

from parabench.cases.case import PRECISIONS
from parabench.measure.timing import StepTimer
from parabench.strategies.precision import dtype_of

LAYOUTS = {"full": "Adafactor on the full weight (every rank)",
           "col": "DistributedAdaFactor, Linear1D_Col weight (output features split)",
           "row": "DistributedAdaFactor, Linear1D_Row weight (input features split)"}
_SHAPE = re.compile(r"(\d+)x(\d+)")


def parse_shape(text: str) -> tuple[int, int]:
    """``"4096x4096"`` → (4096, 4096): output × input features."""
    match = _SHAPE.fullmatch(text.strip())
    if not match or 0 in (int(match[1]), int(match[2])):
        raise ValueError(f"weight shape {text!r}: write OUTxIN with positive integers, e.g. 1024x1024")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class StepBench:
    """One row of the table: a layout, a weight shape, a precision and a world size."""

    layout: str
    out_features: int
    in_features: int
    precision: str
    world_size: int
    steps: int = 20
    warmup_steps: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        split = {"col": self.out_features, "row": self.in_features}.get(self.layout)
        if split is not None and split % self.world_size:
            raise ValueError(f"{self.id}: the split dimension ({split}) must be divisible by the world size "
                             f"({self.world_size}); choose a shape whose dimensions are multiples of it")

    @property
    def optimizer(self) -> str:
        return "colossalai-adafactor" if self.layout == "full" else "dist-adafactor"

    @property
    def id(self) -> str:
        return (f"{self.optimizer}-{self.layout}-{self.out_features}x{self.in_features}-"
                f"w{self.world_size}-{self.precision}")

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id, "optimizer": self.optimizer}


def _gradient(bench: StepBench, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(bench.seed * 1_000_003 + step)
    return torch.randn(bench.out_features, bench.in_features, generator=generator)


def _layer(bench: StepBench, weight: torch.Tensor, group, bias: torch.Tensor | None = None) -> torch.nn.Module:
    """The weight (and bias) as the layout's (tensor-parallel) linear layer."""
    from colossalai.shardformer.layer import Linear1D_Col, Linear1D_Row

    linear = torch.nn.Linear(bench.in_features, bench.out_features, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    if bench.layout == "col":
        return Linear1D_Col.from_native_module(linear, process_group=group, gather_output=True)
    if bench.layout == "row":
        return Linear1D_Row.from_native_module(linear, process_group=group, parallel_input=False)
    return linear


# The weight dimension each layout splits over the ranks (out × in weights); None: not split.
_SPLIT_DIM = {"full": None, "col": 0, "row": 1}


def _shard(full: torch.Tensor, dim: int | None, rank: int, parts: int) -> torch.Tensor:
    return full if dim is None else full.chunk(parts, dim=dim)[rank]


def _gather(local: torch.Tensor, dim: int | None, group, parts: int) -> torch.Tensor:
    if dim is None:
        return local
    pieces = [torch.empty_like(local) for _ in range(parts)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


@contextlib.contextmanager
def _tensor_parallel_group(context):
    """ColossalAI ready in this rank, and a tensor-parallel group over all ranks (freed afterwards)."""
    from colossalai.cluster import ProcessGroupMesh
    from colossalai.tensor.d_tensor.api import clear_layout_converter

    from parabench.upstream.colossalai_cpu import ensure_cpu_patches

    ensure_cpu_patches(context.device)
    mesh = ProcessGroupMesh(context.world_size)
    try:
        yield mesh.get_group_along_axis(0)
    finally:
        clear_layout_converter()
        mesh.destroy_mesh_process_groups()


def run_step_bench(context, bench: StepBench) -> dict:
    """Time ``bench.steps`` optimizer steps (after warm-up) on this rank; check the update against Adafactor.

    Collective: every rank of the pool calls it. Returns this rank's step times and the largest
    |Δ| between the gathered weight and Adafactor's full weight after the same steps.
    """
    from parabench.cases.optimizers import OPTIMIZERS

    dtype, device, dim = dtype_of(bench.precision), context.device, _SPLIT_DIM[bench.layout]
    torch.manual_seed(bench.seed)
    initial = torch.randn(bench.out_features, bench.in_features)
    with _tensor_parallel_group(context) as group:
        layer = _layer(bench, initial, group).to(device=device, dtype=dtype)
        optimizer = OPTIMIZERS.get(bench.optimizer).build([layer.weight])
        if dim is not None:
            optimizer.setup_distributed(tp_group=group, dp_group=None, shard_to_working_param={}, use_zero=False)
        timer, seconds = StepTimer(device), []
        for step in range(bench.warmup_steps + bench.steps):
            grad = _shard(_gradient(bench, step), dim, context.rank, bench.world_size)
            layer.weight.grad = grad.to(device=device, dtype=dtype)
            _, took = timer.time(optimizer.step)
            if step >= bench.warmup_steps:
                seconds.append(took)
        gathered = _gather(layer.weight.detach(), dim, group, bench.world_size).float().cpu()
    # The one-process twin on the full weight, same steps and gradients.
    full = torch.nn.Parameter(initial.clone().to(device=device, dtype=dtype))
    twin = OPTIMIZERS.get("colossalai-adafactor").build([full])
    for step in range(bench.warmup_steps + bench.steps):
        full.grad = _gradient(bench, step).to(device=device, dtype=dtype)
        twin.step()
    difference = (gathered - full.detach().float().cpu()).abs().max().item()
    return {"rank": context.rank, "step_seconds": seconds, "max_abs_difference": difference,
            "local_shape": list(layer.weight.shape)}


@dataclass(frozen=True)
class StepBenchResult:
    """A row's result across ranks: a step is done when the slowest rank is."""

    bench: StepBench
    ranks: list[dict]

    @property
    def step_seconds(self) -> list[float]:
        return [max(times) for times in zip(*(r["step_seconds"] for r in self.ranks))]

    @property
    def mean_step_seconds(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds)

    @property
    def max_abs_difference(self) -> float:
        return max(r["max_abs_difference"] for r in self.ranks)

    def baseline(self) -> StepBench:
        """The Adafactor row this one's speed-up is measured against."""
        return replace(self.bench, layout="full")


def parity_on_ranks(context, optimizer: str, layout: str, out_features: int, in_features: int,
                    steps: int, precision: str = "fp32", seed: int = 0) -> list[float]:
    """A distributed optimizer on a tensor-parallel layer (with bias) against its one-process twin.

    Both start from the same full weights and take ``steps`` steps on the same full gradients (each rank
    its shard). Returns, per step, the largest |Δ| over the gathered weight and the bias. Collective.
    """
    from parabench.cases.optimizers import OPTIMIZERS

    spec = OPTIMIZERS.get(optimizer)
    if spec.twin is None:
        raise ValueError(f"{optimizer} has no one-process twin; use a dist-* optimizer")
    bench = StepBench(layout, out_features, in_features, precision, context.world_size, steps, 0, seed)
    dtype, parts, rank = dtype_of(precision), context.world_size, context.rank
    dim = _SPLIT_DIM[layout]
    bias_dim = 0 if layout == "col" else None  # a column-parallel layer splits its bias with its outputs
    torch.manual_seed(seed)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    with _tensor_parallel_group(context) as group:
        layer = _layer(bench, weight, group, bias).to(dtype=dtype)
        twin_weight, twin_bias = (torch.nn.Parameter(t.clone().to(dtype)) for t in (weight, bias))
        distributed = spec.build(list(layer.parameters()))
        distributed.setup_distributed(group, None, {}, None, False)
        twin = OPTIMIZERS.get(spec.twin).build([twin_weight, twin_bias])
        differences = []
        for step in range(steps):
            grad, bias_grad = _gradient(bench, step), _gradient(bench, 100_000 + step)[:, 0]
            twin_weight.grad, twin_bias.grad = grad.to(dtype), bias_grad.to(dtype)
            layer.weight.grad = _shard(grad, dim, rank, parts).to(dtype)
            layer.bias.grad = _shard(bias_grad, bias_dim, rank, parts).to(dtype)
            twin.step()
            distributed.step()
            differences.append(max(
                (_gather(layer.weight.detach(), dim, group, parts).float() - twin_weight.detach().float())
                .abs().max().item(),
                (_gather(layer.bias.detach(), bias_dim, group, parts).float() - twin_bias.detach().float())
                .abs().max().item()))
        return differences

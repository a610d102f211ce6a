"""What a strategy is: a way of parallelising one model and optimizer across the ranks."""

from __future__ import annotations

import contextlib
import ctypes
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Mapping

import torch
import torch.distributed as dist

from parabench.cases.optimizers import OptimizerSpec
from parabench.cases.requirements import Requirements
from parabench.strategies.precision import Autocast
from parabench.workloads import Batch, Workload

LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass(frozen=True)
class RankContext:
    """Where this rank stands: its place in the world and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    # (steps done, steps in all) of the running task, in memory the controller shares with its ranks;
    # None outside a pool. Not part of the context's value.
    progress: ctypes.Array[ctypes.c_longlong] | None = field(default=None, compare=False, repr=False)

    def report_progress(self, done_steps: int, total_steps: int) -> None:
        """Tell the controller how far the running task is: two stores to shared memory, no message.

        Rank 0 speaks for all: every rank of a collective task takes the same steps.
        """
        if self.progress is not None and self.rank == 0:
            self.progress[1] = total_steps
            self.progress[0] = done_steps


class Strategy(ABC):
    """One way of parallelising training, registered by name in ``parabench.strategies``.

    Class attributes declare what the strategy needs, so that the controller can skip a case
    before spawning anything. An instance lives inside one rank for one case.
    """

    name: ClassVar[str]
    family: ClassVar[str]  # the pytest mark that selects it: torch, deepspeed, colossalai, fairscale
    requires: ClassVar[Requirements] = Requirements(min_world_size=2)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # In bf16/fp16: the strategy trains low-precision weights from fp32 master weights (DeepSpeed, LowLevelZero,
    # Gemini…) rather than autocasting fp32 weights, so its one-process reference does the same.
    master_weights: ClassVar[bool] = False
    # The strategy whose model-state formula this one follows (``parabench.measure.formulas.FAMILIES``: a package's
    # DDP wrapper says "torch-ddp"). None: its own name's where the formulas have one; otherwise it has none.
    formula: ClassVar[str | None] = None

    def __init__(self, context: RankContext, precision: str = "fp32", options: Mapping[str, object] = ()) -> None:
        self.context = context
        self.precision = precision
        self.options = dict(options)
        self.autocast = Autocast(precision, context.device.type)
        self.model: torch.nn.Module
        self.optimizer: torch.optim.Optimizer

    @classmethod
    def requirements(cls, precision: str, options: Mapping[str, object] = ()) -> Requirements:
        """What a case of this strategy at ``precision`` with ``options`` needs."""
        needs = cls.requires
        if precision == "fp16":
            needs = needs + Requirements(cuda=True, why_cuda=("fp16: CPU kernels run bf16, use bf16 here",))
        return needs

    @classmethod
    def supports(cls, precision: str) -> bool:
        return precision in cls.precisions

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        """Raise ``ValueError`` naming the fix for options this strategy cannot take (at collection)."""

    def set_batching(self, micro_batch: int, grad_accum: int) -> None:
        """This rank's micro-batch size and accumulation count, known before ``setup``."""
        self.micro_batch, self.grad_accum = micro_batch, grad_accum

    @abstractmethod
    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        """Wrap ``model`` (already built on every rank from the same seed) and build the optimizer."""

    def data_parallel(self) -> tuple[int, int]:
        """(this rank's index, number of replicas) among the ranks that split the global batch."""
        return self.context.rank, self.context.world_size

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Skip gradient synchronisation (for all but the last micro-batch of an accumulation)."""
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns the mean local loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        count = len(micro_batches)
        losses = []
        for i, batch in enumerate(micro_batches):
            with (contextlib.nullcontext() if i == count - 1 else self.no_sync()):
                with self.forward_context():
                    loss = loss_fn(self.model, self.cast_inputs(batch))
                # Without accumulation, no extra op enters the graph of the measured step.
                self.backward(loss / count if count > 1 else loss)
            losses.append(loss.detach().float())
        self.optimizer_step()
        return losses[0] if count == 1 else torch.stack(losses).mean()

    # The places a framework takes over precision: inputs, forward, backward, step (here: torch autocast).
    def cast_inputs(self, batch: Batch) -> Batch:
        """``batch`` as the model takes it (a model cast to bf16 takes bf16 inputs)."""
        return batch

    def forward_context(self) -> contextlib.AbstractContextManager:
        return self.autocast.context()

    def backward(self, loss: torch.Tensor) -> None:
        self.autocast.backward(loss)

    def optimizer_step(self) -> None:
        self.autocast.step(self.optimizer)

    def stepping_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer whose step updates the trained weights (or their fp32 masters): a framework's
        wrapper steps it after reducing the gradients, so a change to its gradients is a change to the update."""
        return self.optimizer

    def global_loss(self, local_loss: torch.Tensor) -> float:
        """The loss of the whole global batch: the mean over data-parallel replicas."""
        if self.context.world_size == 1:
            return local_loss.item()
        total = local_loss.detach().clone().to(self.context.device)
        dist.all_reduce(total)
        return total.item() / self.context.world_size

    def count_correct(self, workload: Workload, batch: Batch) -> tuple[float, float]:
        """(correct, counted) predictions on ``batch``, this rank's share (see ``parabench.measure.converge``)."""
        with self.forward_context():
            accuracy = workload.accuracy(self.model, batch)
        if accuracy is None:
            raise ValueError(f"{workload.name} does not classify; time to converge needs a workload that does")
        count = len(next(iter(batch.values())))
        return accuracy * count, float(count)

    def state_tensors(self) -> dict[str, Iterable[object]]:
        """The tensors this rank holds, by category (see ``parabench.measure.memory.state_bytes``)."""
        from parabench.measure.memory import optimizer_state_tensors

        params = list(self.model.parameters())
        return {"params": params, "grads": [p.grad for p in params],
                "optimizer": optimizer_state_tensors(self.optimizer)}

    def teardown(self) -> None:
        """Release what the case holds, so the next case in this rank starts clean."""
        for attribute in ("model", "optimizer"):
            self.__dict__.pop(attribute, None)


def block_classes(model: torch.nn.Module, names: Iterable[str]) -> set[type]:
    """The module classes in ``model`` whose names are in ``names`` (the workload's blocks)."""
    wanted = set(names)
    return {type(m) for m in model.modules() if type(m).__name__ in wanted}

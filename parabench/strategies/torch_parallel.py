"""PyTorch's model parallelism: tensor parallel, pipeline schedules, and layers split across ranks by hand.

None of these splits the batch: every rank sees the whole global batch. Tensor parallelism shards
the workload's linear layers (``Workload.tensor_parallel``); the staged strategies cut the workload's
``pipeline_layers`` into one stage per rank, balanced by parameter count (``parabench.strategies.pipeline``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist

from parabench.cases.optimizers import OptimizerSpec
from parabench.strategies.base import LossFn, Strategy
from parabench.strategies.options import Chunked
from parabench.workloads import Batch, Workload, concatenated


class TorchTP(Strategy):
    """``parallelize_module`` with the workload's column/row plan on a 1-D mesh of every rank."""

    name = "torch-tp"
    family = "torch"
    precisions = ("fp32", "bf16")

    def data_parallel(self) -> tuple[int, int]:
        return 0, 1

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        model = model.to(self.context.device)
        workload.tensor_parallel(model, init_device_mesh(self.context.device.type, (self.context.world_size,)))
        self.model = model
        self.optimizer = optimizer.build(model.parameters())


class _Staged(Strategy):
    """One stage of the workload's layers per rank; the first rank takes the inputs, the last the labels."""

    family = "torch"
    precisions = ("fp32", "bf16")

    def data_parallel(self) -> tuple[int, int]:
        return 0, 1

    @property
    def first(self) -> bool:
        return self.context.rank == 0

    @property
    def last(self) -> bool:
        return self.context.rank == self.context.world_size - 1

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from parabench.strategies.pipeline import balance, stage_slice

        layers = workload.pipeline_layers(model)
        lengths = balance(layers, self.context.world_size)
        self.workload = workload
        self.model = torch.nn.Sequential(*layers[stage_slice(lengths, self.context.rank)]).to(self.context.device)
        self.optimizer = optimizer.build(self.model.parameters())

    def count_correct(self, workload: Workload, batch: Batch) -> tuple[float, float]:
        """Forward only, stage by stage; the last stage counts, the others count nothing."""
        from parabench.strategies.pipeline import recv, send

        inputs, labels = workload.pipeline_io(batch)
        rank, device = self.context.rank, self.context.device
        with self.forward_context():
            outputs = self.model(inputs if self.first else recv(rank - 1, device))
        if not self.last:
            send(outputs, rank + 1)
            return 0.0, 0.0
        return (outputs.argmax(-1) == labels).sum().item(), float(len(labels))

    def global_loss(self, local_loss: torch.Tensor) -> float:
        """The last stage's loss (the only rank that has one), sent to every rank."""
        loss = local_loss.detach().float().clone().to(self.context.device)
        dist.broadcast(loss, src=self.context.world_size - 1)
        return loss.item()


class TorchMP(_Staged):
    """Model parallelism by hand: each micro-batch goes forward through the ranks and back, one at a time."""

    name = "torch-mp"

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        from parabench.strategies.pipeline import recv, send

        rank, device = self.context.rank, self.context.device
        self.optimizer.zero_grad(set_to_none=True)
        count = len(micro_batches)
        losses = []
        for batch in micro_batches:
            inputs, labels = self.workload.pipeline_io(batch)
            with self.forward_context():
                received = None if self.first else recv(rank - 1, device).requires_grad_()
                outputs = self.model(inputs if self.first else received)
                loss = self.workload.pipeline_loss(outputs, labels) if self.last else None
            if self.last:
                self.backward(loss / count if count > 1 else loss)
                losses.append(loss.detach().float())
            else:
                send(outputs.detach(), rank + 1)
                outputs.backward(recv(rank + 1, device))
            if received is not None:
                send(received.grad, rank - 1)
        self.optimizer_step()
        return torch.stack(losses).mean() if losses else torch.zeros(())


class _Scheduled(Chunked, _Staged):
    """A ``torch.distributed.pipelining`` schedule over this rank's ``PipelineStage``.

    Option ``chunks``: micro-batches per step (default 4); the rank's batch must split into them.
    """

    option_names = ("chunks",)
    min_chunks = 0  # per stage
    schedule: ClassVar[str]

    def set_batching(self, micro_batch: int, grad_accum: int) -> None:
        self.whole_batch(micro_batch, grad_accum)
        if self.chunks < self.min_chunks * self.context.world_size:
            raise ValueError(f"{self.name} needs at least as many chunks as stages ({self.context.world_size}); "
                             f"got chunks={self.chunks}")
        super().set_batching(micro_batch, grad_accum)

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        import torch.distributed.pipelining as pipelining

        super().setup(model, optimizer, workload)
        stage = pipelining.PipelineStage(self.model, stage_index=self.context.rank,
                                         num_stages=self.context.world_size, device=self.context.device)
        # scale_grads: the gradient of the mean loss over the chunks, as one process computes it.
        self.runner = getattr(pipelining, self.schedule)(stage, n_microbatches=self.chunks,
                                                         loss_fn=workload.pipeline_loss, scale_grads=True)

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        whole = concatenated(micro_batches)
        inputs, labels = self.workload.pipeline_io(whole)
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        with self.forward_context():
            if self.first:
                self.runner.step(inputs)
            elif self.last:
                self.runner.step(target=labels, losses=losses)
            else:
                self.runner.step()
        self.optimizer_step()
        return torch.stack([loss.detach().float() for loss in losses]).mean() if losses else torch.zeros(())

    def teardown(self) -> None:
        self.__dict__.pop("runner", None)
        super().teardown()


class TorchPipeGPipe(_Scheduled):
    """GPipe: all chunks forward, then all backward."""

    name = "torch-pp-gpipe"
    schedule = "ScheduleGPipe"


class TorchPipe1F1B(_Scheduled):
    """1F1B: after the warm-up, each stage alternates one forward and one backward."""

    name = "torch-pp-1f1b"
    schedule = "Schedule1F1B"
    min_chunks = 1


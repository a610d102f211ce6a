"""fairscale 0.4.13: OSS under DDP, ShardedDataParallel, FullyShardedDataParallel and the one-process Pipe."""

from __future__ import annotations

import contextlib
from typing import Iterable, Mapping

import torch

from parabench.cases.optimizers import OptimizerSpec
from parabench.cases.requirements import Requirements
from parabench.measure.memory import optimizer_state_tensors
from parabench.strategies.base import LossFn, Strategy, block_classes
from parabench.strategies.options import Chunked, check_integer, check_known
from parabench.strategies.torch_native import TorchDDP
from parabench.workloads import Batch, Workload

_FAIRSCALE = Requirements(packages=("fairscale",))


def _oss(params: Iterable[torch.nn.Parameter], optimizer: OptimizerSpec):
    from fairscale.optim import OSS

    return OSS(params, optim=optimizer.cls, **optimizer.kwargs)


class FairscaleOSS(TorchDDP):
    """torch DDP with fairscale's ``OSS``: each rank steps its shard of the optimizer state, then broadcasts."""

    name = "fairscale-oss"
    family = "fairscale"
    requires = Requirements(min_world_size=2) + _FAIRSCALE
    precisions = ("fp32", "bf16")

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        self.model = self.wrap(model)
        self.optimizer = _oss(self.model.parameters(), optimizer)

    def state_tensors(self) -> dict[str, Iterable[object]]:
        tensors = super().state_tensors()
        tensors["optimizer"] = optimizer_state_tensors(self.optimizer.optim)  # this rank's shard
        return tensors


class FairscaleSDP(FairscaleOSS):
    """``ShardedDataParallel`` + ``OSS``: each gradient is reduced to the rank that owns its optimizer shard.

    Option ``buffer``: ``reduce_buffer_size`` in elements (fairscale's default 2**23). Its buckets keep the
    small gradients as views of one buffer, so the training loop's ``optimizer.zero_grad(set_to_none=True)``
    detaches them from it and the reduction goes wrong; ``buffer=0`` reduces each gradient on its own.
    """

    name = "fairscale-sdp"
    option_names = ("buffer",)

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)
        check_integer(cls, options, "buffer", 0, "ShardedDataParallel's reduce_buffer_size in elements")

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from fairscale.nn.data_parallel import ShardedDataParallel

        model = model.to(self.context.device)
        self.optimizer = _oss(model.parameters(), optimizer)
        buffer = self.options.get("buffer")
        self.model = ShardedDataParallel(model, self.optimizer,
                                         **({} if buffer is None else {"reduce_buffer_size": int(buffer)}))


class FairscaleFSDP(Strategy):
    """fairscale's ``FullyShardedDataParallel``: each workload block, then the root, flattened and sharded.

    It needs CUDA streams; a CPU case runs through the patches in ``parabench.upstream.fairscale_cpu``.
    """

    name = "fairscale-fsdp"
    family = "fairscale"
    requires = Requirements(min_world_size=2) + _FAIRSCALE

    @classmethod
    def requirements(cls, precision: str, options: Mapping[str, object] = ()) -> Requirements:
        from parabench.upstream.fairscale_cpu import shim_unavailable

        return super().requirements(precision, options) + Requirements(cpu_probes=(shim_unavailable,))

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from fairscale.nn import FullyShardedDataParallel, auto_wrap, enable_wrap

        from parabench.upstream.fairscale_cpu import ensure_cpu_shim

        ensure_cpu_shim(self.context.device)
        blocks = tuple(block_classes(model, workload.block_types))
        device = self.context.device

        def policy(module: torch.nn.Module, recurse: bool, unwrapped_params: int, **_) -> bool:
            return recurse or isinstance(module, blocks)

        model = model.to(device)
        with enable_wrap(wrapper_cls=FullyShardedDataParallel, compute_device=device):
            model = auto_wrap(model, auto_wrap_policy=policy) if blocks else model
        self.model = FullyShardedDataParallel(model, compute_device=device)
        self.optimizer = optimizer.build(self.model.parameters())

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync()


class FairscalePipe(Chunked, Strategy):
    """fairscale's ``nn.Pipe`` (GPipe) inside one process: the workload's layers over ``stages`` devices.

    Options: ``chunks`` micro-batches per step (default 4), ``stages`` (default 2). With as many CUDA
    devices as stages each stage gets its own; otherwise all stages share this rank's device (on a CPU
    the stages then run one after another: the measure is the schedule's overhead, not overlap).
    """

    name = "fairscale-pipe"
    family = "fairscale"
    requires = Requirements(max_world_size=1) + _FAIRSCALE
    option_names = ("chunks", "stages")

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        super().validate_options(options)
        check_integer(cls, options, "stages", 1, "the number of pipeline stages")

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from fairscale.nn import Pipe

        from parabench.strategies.pipeline import balance

        layers = workload.pipeline_layers(model)
        lengths = balance(layers, int(self.options.get("stages", 2)))
        self.workload = workload
        self.model = Pipe(torch.nn.Sequential(*layers), balance=lengths, devices=self._devices(len(lengths)),
                          chunks=self.chunks, checkpoint="never")
        self.optimizer = optimizer.build(self.model.parameters())

    def _devices(self, stages: int) -> list[torch.device]:
        device = self.context.device
        if device.type == "cuda" and torch.cuda.device_count() >= stages:
            return [torch.device("cuda", i) for i in range(stages)]
        return [device] * stages

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        return super().train_step(micro_batches, self._pipeline_loss)

    def count_correct(self, workload: Workload, batch: Batch) -> tuple[float, float]:
        inputs, labels = workload.pipeline_io(batch)
        with self.forward_context():
            outputs = self.model(inputs)
        return (outputs.argmax(-1) == labels.to(outputs.device)).sum().item(), float(len(labels))

    def _pipeline_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        inputs, labels = self.workload.pipeline_io(batch)
        outputs = model(inputs)
        return self.workload.pipeline_loss(outputs, labels.to(outputs.device))

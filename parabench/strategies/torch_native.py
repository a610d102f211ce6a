"""The strategies PyTorch itself ships: one process, DDP (± autocast), ZeRO-1, FSDP2 (± its mixed precision) and
FSDP1; and the one-process reference of the strategies that train low-precision weights from fp32 master weights."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch

from parabench.cases.optimizers import OptimizerSpec
from parabench.cases.requirements import Requirements
from parabench.measure.memory import optimizer_state_tensors
from parabench.strategies.base import Strategy, block_classes
from parabench.strategies.precision import dtype_of
from parabench.workloads import Workload


class Single(Strategy):
    """One process, the whole global batch: the reference every parallel strategy is checked against."""

    name = "single"
    family = "torch"
    requires = Requirements(max_world_size=1)
    precisions = ("fp32", "bf16", "fp16")

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        self.model = model.to(self.context.device)
        self.optimizer = optimizer.build(self.model.parameters())


class SingleMaster(Single):
    """One process computing with bf16/fp16 weights and updating fp32 master copies of them.

    The reference of the strategies that train so (``Strategy.master_weights``: DeepSpeed's ZeRO stages,
    ColossalAI's LowLevelZero, Gemini, HybridParallel and TorchFSDP mixed precision), which ``single`` is
    not: under autocast the weights stay fp32 and only some ops compute in bf16, while these cast the
    module (norms, softmax, the weights' gradients) to bf16 and keep the fp32 copy for the optimizer.
    The master copies start from the cast weights, as DeepSpeed's and LowLevelZero's do.
    """

    name = "single-master"
    precisions = ("bf16", "fp16")

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        self.dtype = dtype_of(self.precision)
        self.model = model.to(self.context.device, self.dtype)
        self.master = [p.detach().float().requires_grad_(True) for p in self.model.parameters()]
        self.optimizer = optimizer.build(self.master)

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the weights themselves are low-precision

    def cast_inputs(self, batch):
        return {key: value.to(self.dtype) if value.is_floating_point() else value for key, value in batch.items()}

    def optimizer_step(self) -> None:
        # The low-precision gradients become the master's; the stepped master, rounded, the weights.
        for weight, master in zip(self.model.parameters(), self.master):
            master.grad = None if weight.grad is None else weight.grad.float()
            weight.grad = None  # the step's zero_grad clears the master's; these would accumulate
        self.autocast.step(self.optimizer)  # fp16: the gradient scaler unscales the master gradients
        with torch.no_grad():
            for weight, master in zip(self.model.parameters(), self.master):
                weight.copy_(master)

    def state_tensors(self) -> dict[str, Iterable[object]]:
        tensors = super().state_tensors()
        tensors["master"] = list(self.master)
        tensors["grads"] = list(tensors["grads"]) + [m.grad for m in self.master]
        return tensors

    def teardown(self) -> None:
        self.__dict__.pop("master", None)
        super().teardown()


class TorchDDP(Strategy):
    """``DistributedDataParallel``: full replicas, gradients all-reduced in buckets."""

    name = "torch-ddp"
    family = "torch"
    # One rank is the scaling module's N = 1 point (bench/test_scaling.py); the matrix asks for 2 or more elsewhere.
    requires = Requirements(min_world_size=1)

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        self.model = self.wrap(model)
        self.optimizer = optimizer.build(self.model.parameters())

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(self.context.device)
        device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync()


class TorchDDPAmp(TorchDDP):
    """DDP under autocast: bf16 (CPU or CUDA), or fp16 with a gradient scaler (CUDA)."""

    name = "torch-ddp-amp"
    precisions = ("bf16", "fp16")


class TorchZero(TorchDDP):
    """DDP with ``ZeroRedundancyOptimizer``: optimizer state sharded across ranks (ZeRO-1)."""

    name = "torch-zero"

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        self.model = self.wrap(model)
        self.optimizer = ZeroRedundancyOptimizer(self.model.parameters(), optimizer_class=optimizer.cls,
                                                 **optimizer.kwargs)

    def state_tensors(self) -> dict[str, Iterable[object]]:
        tensors = super().state_tensors()
        # The wrapper's own ``state`` is empty; this rank's shard lives in the local optimizer.
        tensors["optimizer"] = optimizer_state_tensors(self.optimizer.optim)
        return tensors


class TorchFSDP(Strategy):
    """FSDP2 (``fully_shard``): each workload block, then the root, sharded over a 1-D device mesh."""

    name = "torch-fsdp"
    family = "torch"
    requires = Requirements(min_world_size=1)  # the scaling module's N = 1 point, as torch-ddp

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = model.to(self.context.device)
        mesh = init_device_mesh(self.context.device.type, (self.context.world_size,))
        blocks = block_classes(model, workload.block_types)
        for module in model.modules():
            if type(module) in blocks:
                fully_shard(module, mesh=mesh, **self.shard_options())
        self.model = fully_shard(model, mesh=mesh, **self.shard_options())
        self.optimizer = optimizer.build(self.model.parameters())

    def shard_options(self) -> dict[str, object]:
        """``fully_shard``'s keyword arguments besides the mesh (none: fp32 throughout)."""
        return {}

    @contextlib.contextmanager
    def no_sync(self):
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)


class TorchFSDPMixed(TorchFSDP):
    """FSDP2 with its own mixed precision (``MixedPrecisionPolicy``): the sharded parameters stay fp32, each
    all-gather casts them to bf16/fp16 for forward and backward, and gradients are reduced into fp32 shards.

    The weights it computes with are 16-bit copies of fp32 masters, as ``single-master``'s are, and no autocast
    runs around the forward (the policy casts the model's floating-point inputs). fp16 losses are scaled at the
    static ``FP16_LOSS_SCALE`` (``StaticGradScaler``), as its reference's.
    """

    name = "torch-fsdp-mp"
    precisions = ("bf16", "fp16")
    master_weights = True

    def shard_options(self) -> dict[str, object]:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return {"mp_policy": MixedPrecisionPolicy(param_dtype=dtype_of(self.precision), reduce_dtype=torch.float32)}

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the policy computes with 16-bit weights; no autocast on top


class TorchFSDP1(Strategy):
    """FSDP1 (``FullyShardedDataParallel``), one flat parameter per workload block."""

    name = "torch-fsdp1"
    family = "torch"

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = block_classes(model, workload.block_types)
        self.model = FullyShardedDataParallel(
            model, device_id=self.context.device,
            auto_wrap_policy=ModuleWrapPolicy(blocks) if blocks else None)
        self.optimizer = optimizer.build(self.model.parameters())

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync()

"""DeepSpeed: ZeRO stages 0–3 through ``deepspeed.initialize``, and a 2-stage ``PipelineModule``.

The DeepSpeed config is built from the case (``DeepSpeedZero.config``). Case options, as they read in ids:

- ``offload``: ``offload_optimizer`` to the CPU (master weights and optimizer state; ZeRO-1/2/3)
- ``offload_param``: ``offload_param`` to the CPU (ZeRO-3)
- ``ckpt``: activation checkpointing (the workload's, non-reentrant ``torch.utils.checkpoint``)
- ``hpz2``: ZeRO++ hierarchical partitioning, a secondary weight partition of 2 ranks (ZeRO-3)
- ``qw`` / ``qg``: ZeRO++ quantized weights / gradients (ZeRO-3; CUDA-only kernels)
- ``bucketN``: reduce and all-gather buckets of N elements (DeepSpeed's default, 5e8, makes ZeRO-1/2
  allocate a 2 GB fp32 gradient bucket in every step whatever the model's size)

Gradient clipping is off (DeepSpeed's default is 1.0) so that every stage computes the same update
as one process and as ``torch-ddp``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Iterable, Mapping

import torch

from parabench.cases.optimizers import OptimizerSpec
from parabench.cases.requirements import Requirements
from parabench.measure.memory import optimizer_state_tensors
from parabench.strategies.base import LossFn, RankContext, Strategy
from parabench.strategies.options import Chunked, check_integer, check_known
from parabench.strategies.precision import FP16_LOSS_SCALE, dtype_of
from parabench.workloads import Batch, Workload, concatenated

# The ZeRO++ quantizers are CUDA kernels (DeepSpeed's QuantizerBuilder); they fail to build on CPU.
_CUDA_ONLY_OPTIONS = {"qw": "ZeRO++ quantized weights", "qg": "ZeRO++ quantized gradients"}
_STAGE3_OPTIONS = ("offload_param", "hpz", "qw", "qg")
# Gradient buffers the ZeRO optimizers keep between steps, by attribute (absent ones are skipped).
_GRADIENT_BUFFERS = ("averaged_gradients", "grads_in_partition", "grad_partitions_flat_buffer",
                     "fp32_groups_gradients_flat", "ipg_buffer")


def avoid_shared_memory_allreduce() -> None:
    """Keep DeepSpeed from JIT-building its shared-memory all-reduce (~90 s cold) when it wraps our group.

    That op serves only ``inference_all_reduce``; training collectives go through the process group.
    ``deepspeed.ops.__compatible_ops__`` is probed once per process and kept, so marking the op
    incompatible there makes ``build_shm_op`` return None.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def ensure_deepspeed_comm(context: RankContext) -> None:
    """DeepSpeed's communication layer, wrapping the process group the rank already joined."""
    import deepspeed
    import deepspeed.comm as ds_comm

    # DeepSpeed reads the launcher's variables: this rank's own, set over any a launcher around a spawned session
    # left (in a launched session they are the same values).
    for name, value in (("RANK", context.rank), ("WORLD_SIZE", context.world_size),
                        ("LOCAL_RANK", context.local_rank)):
        os.environ[name] = str(value)
    if not ds_comm.is_initialized():
        if context.device.type == "cpu":
            avoid_shared_memory_allreduce()
        deepspeed.init_distributed(dist_backend=context.backend)


class DeepSpeedZero(Strategy):
    """``deepspeed.initialize`` with ZeRO at ``stage``; the registry's optimizer is handed over as a client optimizer."""

    family = "deepspeed"
    stage: ClassVar[int]
    requires = Requirements(packages=("deepspeed",), min_world_size=1)  # N = 1: the scaling module's first point
    precisions = ("fp32", "bf16", "fp16")
    master_weights = True  # bf16/fp16: the module is cast, the optimizer steps fp32 partitions
    option_names: ClassVar[tuple[str, ...]] = ("offload", "offload_param", "ckpt", "hpz", "qw", "qg", "bucket",
                                               "inject")

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)
        for key in _STAGE3_OPTIONS:
            if options.get(key) and cls.stage != 3:
                raise ValueError(f"{cls.name}: option {key!r} is a ZeRO-3 option; use deepspeed-zero3")
        if options.get("offload") and cls.stage == 0:
            raise ValueError(f"{cls.name}: offload_optimizer needs ZeRO ≥ 1; use deepspeed-zero1, -zero2 or -zero3")
        check_integer(cls, options, "hpz", 2, "the secondary partition's size in ranks")
        check_integer(cls, options, "bucket", 1, "the reduce/all-gather bucket size in elements")

    @classmethod
    def requirements(cls, precision: str, options: Mapping[str, object] = ()) -> Requirements:
        needs = super().requirements(precision, options)
        options = dict(options)
        for key, what in _CUDA_ONLY_OPTIONS.items():
            if options.get(key):
                needs = needs + Requirements(cuda=True, why_cuda=(f"{what}: DeepSpeed's kernel is CUDA-only",))
        if options.get("hpz"):
            needs = needs + Requirements(world_size_multiple_of=int(options["hpz"]))
        return needs

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        import deepspeed

        ensure_deepspeed_comm(self.context)
        if self.options.get("ckpt"):
            workload.enable_checkpointing(model)
        self.dtype = dtype_of(self.precision)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer.build(model.parameters()),
                                               config=self.config())
        self.model = self.engine
        self.optimizer = self.engine.optimizer

    def config(self) -> dict[str, Any]:
        """The DeepSpeed config of this case; its batch sizes are the ones ``train.CaseData`` feeds."""
        options, cuda = self.options, self.context.device.type == "cuda"
        zero: dict[str, Any] = {"stage": self.stage}
        if self.stage == 3:
            # The workloads' parameters are small: without this, ZeRO-3 keeps them all unpartitioned.
            zero["stage3_param_persistence_threshold"] = 0
        if options.get("offload"):
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
        if options.get("offload_param"):
            zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
        if options.get("hpz"):
            zero["zero_hpz_partition_size"] = int(options["hpz"])
        if options.get("bucket"):
            zero["reduce_bucket_size"] = zero["allgather_bucket_size"] = int(options["bucket"])
        if options.get("qw"):
            zero["zero_quantized_weights"] = True
        if options.get("qg"):
            zero["zero_quantized_gradients"] = True
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": 0.0,
            "steps_per_print": 1 << 30,
            "zero_optimization": zero,
            # The registry's optimizers (SGD, Adafactor, …) are not on DeepSpeed's tested list.
            "zero_allow_untested_optimizer": True,
            # Offload with a torch optimizer is allowed (slower than DeepSpeedCPUAdam, which ``ds-cpuadam`` selects).
            "zero_force_ds_cpu_optimizer": False,
        }
        if self.precision == "bf16":
            config["bf16"] = {"enabled": True}
        elif self.precision == "fp16":
            config["fp16"] = {"enabled": True, "loss_scale": FP16_LOSS_SCALE}  # static: its reference's too
        return config

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        losses = []
        for batch in micro_batches:
            loss = loss_fn(self.engine, self.cast_inputs(batch))
            self.engine.backward(loss)  # scaled by 1/accumulation inside
            self.engine.step()  # steps the optimizer at the accumulation boundary only
            losses.append(loss.detach().float())
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    def cast_inputs(self, batch: Batch) -> Batch:
        # DeepSpeed's bf16/fp16 modes cast the model, not its inputs.
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in batch.items()}

    def stepping_optimizer(self) -> torch.optim.Optimizer:
        return self.engine.basic_optimizer  # the client optimizer, stepping the (fp32) partitions

    def state_tensors(self) -> dict[str, Iterable[object]]:
        """What this rank holds between steps, read from DeepSpeed's own partitions.

        params: the module's parameters as held (ZeRO-3: each parameter's ``ds_tensor`` partition);
        master: the tensors the underlying optimizer updates (fp32 partitions under ZeRO, in fp32 too, the
        fp32 flat copy under ZeRO-0 with bf16/fp16; under fp32 ZeRO-0 they are the parameters);
        grads: parameter gradients, the master partitions' gradients and the ZeRO gradient buffers;
        optimizer: the underlying optimizer's state. Views of one storage count once.
        """
        params = list(self.engine.module.parameters())
        held = [p.data for p in params] + [getattr(p, "ds_tensor", None) for p in params]
        base = self.stepping_optimizer()
        master = [p for group in base.param_groups for p in group["params"]]
        # ZeRO-3 empties the optimizer's param_groups after each step (it puts each sub-group's fp32 partition in
        # for its step only): its fp32 partitions are read from the optimizer itself. In fp32 too they are their own
        # storage (DeepSpeed 0.19.8 copies them; parabench.measure.formulas, deepspeed-zero3), 4Ψ/N a rank; a partition that
        # were the parameters' own storage would be counted once, among params (state_bytes dedupes storages)
        master.extend(getattr(self.engine.optimizer, "fp32_partitioned_groups_flat", ()))
        grads: list[object] = [p.grad for p in params] + [p.grad for p in master]
        for name in _GRADIENT_BUFFERS:
            grads.extend(_tensors(getattr(self.engine.optimizer, name, None)))
        return {"params": held, "grads": grads, "optimizer": list(optimizer_state_tensors(base)), "master": master}

    def teardown(self) -> None:
        engine = self.__dict__.pop("engine", None)
        if engine is not None:
            engine.destroy()
        super().teardown()


def _tensors(value: object) -> Iterable[object]:
    """Every tensor in a nest of lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class DeepSpeedZero0(DeepSpeedZero):
    """ZeRO disabled: DeepSpeed's data parallelism (and, in bf16/fp16, its fp32 master copy)."""

    name = "deepspeed-zero0"
    stage = 0


class DeepSpeedZero1(DeepSpeedZero):
    """ZeRO-1: master weights and optimizer state partitioned."""

    name = "deepspeed-zero1"
    stage = 1


class DeepSpeedZero2(DeepSpeedZero):
    """ZeRO-2: gradients partitioned too."""

    name = "deepspeed-zero2"
    stage = 2


class DeepSpeedZero3(DeepSpeedZero):
    """ZeRO-3: parameters partitioned too, gathered around each module's forward and backward."""

    name = "deepspeed-zero3"
    stage = 3


class DeepSpeedPipe(Chunked, DeepSpeedZero):
    """A ``PipelineModule`` of the workload's layers, one stage per rank (no data parallelism).

    Every rank feeds the whole global batch, split into ``chunks`` micro-batches (option, default 4)
    that flow through the stages on DeepSpeed's 1F1B schedule (``engine.train_batch``).
    """

    name = "deepspeed-pipe"
    stage = 0
    precisions = ("fp32", "bf16")
    option_names = ("chunks", "inject")

    def data_parallel(self) -> tuple[int, int]:
        return 0, 1  # every stage sees the whole batch: the first takes inputs, the last labels

    def set_batching(self, micro_batch: int, grad_accum: int) -> None:
        super().set_batching(self.whole_batch(micro_batch, grad_accum) // self.chunks, self.chunks)

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        import deepspeed
        from deepspeed.pipe import PipelineModule

        ensure_deepspeed_comm(self.context)
        self.workload = workload
        self.dtype = dtype_of(self.precision)
        # Every rank built the whole model from the same seed; each keeps its own stage's layers.
        module = PipelineModule(layers=workload.pipeline_layers(model), num_stages=self.context.world_size,
                                loss_fn=workload.pipeline_loss, partition_method="parameters")
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer.build(module.parameters()),
                                               config=self.config())
        self.model = self.engine
        self.optimizer = self.engine.optimizer

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        whole = concatenated(micro_batches)
        size = self.micro_batch
        chunks = [self.workload.pipeline_io(self.cast_inputs({k: v[i * size:(i + 1) * size] for k, v in whole.items()}))
                  for i in range(self.chunks)]
        # The mean loss over the chunks, sent from the last stage to every rank.
        return self.engine.train_batch(data_iter=iter(chunks)).detach().float()

    def teardown(self) -> None:
        # The pipeline engine publishes its grid as DeepSpeed's process-wide ``groups.mpu``; the next
        # engine in this rank would take it for model parallelism.
        from deepspeed.utils import groups

        super().teardown()
        groups.mpu = None

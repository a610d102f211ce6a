"""ColossalAI's booster plugins: TorchDDP, TorchFSDP, LowLevelZero 1/2, Gemini and HybridParallel.

Every strategy builds its plugin, hands model and optimizer to ``Booster.boost`` and trains through the
booster's ``backward`` (and ``execute_pipeline`` when the hybrid plugin pipelines). A case on the CPU first
applies ``parabench.upstream.colossalai_cpu``'s patches in its ranks (recorded in the result).

Case options, as they read in ids:

- ``offload`` (LowLevelZero): master weights, gradients and optimizer state on the CPU (``cpu_offload``)
- ``placement`` (Gemini): ``static`` (default) or ``auto``; ``shard``, ``offload_optim``, ``offload_param``:
  Gemini's static fractions (``shard_param_frac``, ``offload_optim_frac``, ``offload_param_frac``), 0…1
- ``tp``, ``pp``, ``zero`` (hybrid): tensor- and pipeline-parallel sizes and the ZeRO stage of the
  data-parallel ranks that remain; ``chunks``: micro-batches per step under ``pp`` (default 4)
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterable, Mapping

import torch
import torch.distributed as dist

from parabench.cases.optimizers import OptimizerSpec
from parabench.cases.requirements import Requirements
from parabench.measure.memory import optimizer_state_tensors
from parabench.strategies.base import LossFn, Strategy, block_classes
from parabench.strategies.options import check_integer, check_known
from parabench.strategies.precision import FP16_LOSS_SCALE, StaticGradScaler, dtype_of
from parabench.workloads import Batch, Workload, concatenated


class ColossalAIBooster(Strategy):
    """A ColossalAI plugin behind ``Booster``; subclasses build the plugin."""

    family = "colossalai"
    requires = Requirements(packages=("colossalai",), min_world_size=2)
    option_names: ClassVar[tuple[str, ...]] = ("inject",)
    # The booster's own mixed precision (``Booster(mixed_precision=…)``) for the plugins that do not
    # control precision themselves, by case precision.
    booster_precision: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)

    def plugin(self, model: torch.nn.Module, workload: Workload):
        """The plugin of this case (``model`` is the unwrapped model, built from the case's seed)."""
        raise NotImplementedError

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        from colossalai.booster import Booster

        from parabench.upstream.colossalai_cpu import ensure_cpu_patches

        ensure_cpu_patches(self.context.device)
        self.workload = workload
        model = model.to(self.context.device)
        self.plugin_instance = self.plugin(model, workload)
        self.booster = Booster(plugin=self.plugin_instance, mixed_precision=self.booster_precision.get(self.precision))
        self.model, self.optimizer, *_ = self.booster.boost(model, optimizer.build(model.parameters()))

    def loss_scale_options(self) -> dict[str, float]:
        """The plugin's loss scaler held at ``FP16_LOSS_SCALE`` in fp16 (its reference's scale): its minimum and
        maximum pin the scale wherever it would grow or back off; nothing in bf16 and fp32."""
        if self.precision != "fp16":
            return {}
        return {"initial_scale": FP16_LOSS_SCALE, "min_scale": FP16_LOSS_SCALE, "max_scale": FP16_LOSS_SCALE}

    def no_sync(self) -> contextlib.AbstractContextManager:
        if self.plugin_instance.support_no_sync():
            return self.booster.no_sync(self.model, self.optimizer)
        return contextlib.nullcontext()  # the plugin reduces in every backward; gradients still accumulate

    # The plugin (or the booster's mixed precision) owns precision: no autocast around its forward.
    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.booster.backward(loss, self.optimizer)

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def stepping_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that holds the state and steps the (master) weights, inside ColossalAI's wrapper."""
        return getattr(self.optimizer, "optim", self.optimizer)

    def state_tensors(self) -> dict[str, Iterable[object]]:
        """params: the module's parameters as held; master: what the inner optimizer updates (LowLevelZero:
        this rank's fp32 flat shards); grads: both kinds' gradients; optimizer: the inner optimizer's state."""
        module = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        params = list(module.parameters())
        base = self.stepping_optimizer()
        master = [p for group in base.param_groups for p in group["params"]]
        return {"params": params, "master": master, "grads": [p.grad for p in params + master],
                "optimizer": list(optimizer_state_tensors(base))}

    def teardown(self) -> None:
        for attribute in ("booster", "plugin_instance", "workload"):
            self.__dict__.pop(attribute, None)
        super().teardown()


class ColossalAITorchDDP(ColossalAIBooster):
    """``TorchDDPPlugin``: torch DDP behind the booster; fp16 through the booster's torch AMP (CUDA), bf16 through
    torch's autocast around the forward (0.5.0's booster bf16, ``BF16MixedPrecision``, is an empty placeholder):
    the seeds' torch_ddp with mixed precision on a machine whose kernels run bf16."""

    name = "colossalai-torch-ddp"
    precisions = ("fp32", "bf16", "fp16")
    booster_precision = {"fp16": "fp16"}

    def forward_context(self) -> contextlib.AbstractContextManager:
        return self.autocast.context() if self.precision == "bf16" else contextlib.nullcontext()

    def plugin(self, model: torch.nn.Module, workload: Workload):
        from colossalai.booster.plugin import TorchDDPPlugin

        return TorchDDPPlugin()

    def setup(self, model: torch.nn.Module, optimizer: OptimizerSpec, workload: Workload) -> None:
        super().setup(model, optimizer, workload)
        if self.precision == "fp16":
            hold_loss_scale(self.optimizer)


def hold_loss_scale(optimizer) -> None:
    """The booster's torch AMP optimizer (``TorchAMPOptimizer``) scaled at ``FP16_LOSS_SCALE``, held static.

    ColossalAI 0.5.0's FP16TorchMixedPrecision hands its arguments to torch's GradScaler, whose backoff factor
    must be below 1, so it cannot keep a scale static; its scaler is replaced. Remove when ColossalAI's torch
    AMP takes a static scale.
    """
    optimizer.scaler = StaticGradScaler()


class ColossalAITorchFSDP(ColossalAIBooster):
    """``TorchFSDPPlugin``: torch FSDP1, one flat parameter per workload block; bf16/fp16 as FSDP mixed precision.

    The plugin re-initialises the optimizer on FSDP's parameters with ``**optimizer.defaults``.
    """

    name = "colossalai-torch-fsdp"
    precisions = ("fp32", "bf16", "fp16")
    master_weights = True  # MixedPrecision computes with bf16/fp16 copies of the fp32 flat parameters

    def plugin(self, model: torch.nn.Module, workload: Workload):
        from colossalai.booster.plugin import TorchFSDPPlugin
        from torch.distributed.fsdp import MixedPrecision
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        kwargs: dict[str, Any] = {}
        blocks = block_classes(model, workload.block_types)
        if blocks:
            kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        if self.precision != "fp32":
            dtype = dtype_of(self.precision)
            kwargs["mixed_precision"] = MixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype)
        return TorchFSDPPlugin(**kwargs)


class ColossalAILowLevelZero(ColossalAIBooster):
    """``LowLevelZeroPlugin``: ZeRO over the data-parallel ranks, flat fp32 master shards per rank."""

    stage: ClassVar[int]
    # One rank is the one-device check's point (bench/test_one_device.py); the matrix asks for 2 or more elsewhere.
    requires = Requirements(packages=("colossalai",), min_world_size=1)
    precisions = ("fp32", "bf16", "fp16")
    master_weights = True
    option_names = ("offload", "inject")

    def plugin(self, model: torch.nn.Module, workload: Workload):
        from colossalai.booster.plugin import LowLevelZeroPlugin

        # Overlapping communication needs CUDA streams; on CPU it would be ordered anyway.
        overlap = self.context.device.type == "cuda"
        return LowLevelZeroPlugin(stage=self.stage, precision=self.precision, overlap_communication=overlap,
                                  cpu_offload=bool(self.options.get("offload")), **self.loss_scale_options())


class ColossalAILowLevelZero1(ColossalAILowLevelZero):
    """LowLevelZero stage 1: optimizer state and master weights partitioned."""

    name = "colossalai-lowlevelzero1"
    stage = 1


class ColossalAILowLevelZero2(ColossalAILowLevelZero):
    """LowLevelZero stage 2: gradients partitioned too."""

    name = "colossalai-lowlevelzero2"
    stage = 2


_FRACTIONS = {"shard": "shard_param_frac", "offload_optim": "offload_optim_frac",
              "offload_param": "offload_param_frac"}


def gemini_chunk_search(parameters: int) -> dict[str, float]:
    """GeminiPlugin's chunk-size search for a model of ``parameters`` elements.

    Gemini keeps parameters that add up to less than ``min_chunk_size_m`` Mi elements in one chunk that is
    never sharded (``search_chunk_configuration``: "let small parameters keep gathered"). At its default of
    32 Mi every workload here (< 1 Mi parameters) trained replicated, as DDP: each rank held the whole
    model, masters and optimizer state. The floor is scaled to a quarter of the model, so its chunks are
    sharded as a large model's are; from 128 Mi parameters on, Gemini's defaults apply.
    """
    floor = min(32.0, parameters / 4 / 2**20)
    return {"min_chunk_size_m": floor, "search_range_m": floor}


class ColossalAIGemini(ColossalAIBooster):
    """``GeminiPlugin``: chunk-based ZeRO-3 with static (fractions) or ``auto`` (memory-tracing) placement."""

    name = "colossalai-gemini"
    requires = ColossalAILowLevelZero.requires  # one rank: the one-device check's point, as LowLevelZero
    precisions = ("bf16", "fp16")  # Gemini keeps fp32 master chunks and computes in half precision
    master_weights = True
    option_names = ("placement", "shard", "offload_optim", "offload_param", "inject")

    @classmethod
    def requirements(cls, precision: str, options: Mapping[str, object] = ()) -> Requirements:
        """On CPU (``parabench.upstream.colossalai_cpu``'s Gemini patches) static placement with nothing offloaded runs;
        ``auto`` placement and the offload fractions need a CUDA device."""
        options = dict(options)
        needs = super().requirements(precision, options)
        if options.get("placement", "static") == "auto":
            needs += Requirements(cuda=True, why_cuda=("placement=auto: Gemini's memory monitor "
                                                       "(SyncCudaMemoryMonitor) calls torch.cuda.synchronize()",))
        offloaded = [key for key in ("offload_optim", "offload_param") if float(options.get(key) or 0) > 0]
        if offloaded:
            needs += Requirements(cuda=True, why_cuda=(
                f"{', '.join(offloaded)}: offloading moves chunks from device memory to the CPU; on a CPU machine "
                "there is none to offload from, so the offload path would not be exercised",))
        return needs

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)
        placement = options.get("placement", "static")
        if placement not in ("static", "auto"):
            raise ValueError(f"{cls.name}: placement is 'static' or 'auto', got {placement!r}")
        for key in _FRACTIONS:
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not 0 <= value <= 1):
                raise ValueError(f"{cls.name}: {key} is a fraction from 0 to 1, got {value!r}")
            if value is not None and placement == "auto":
                raise ValueError(f"{cls.name}: {key} is a static-placement fraction; drop it or placement=auto")

    def plugin(self, model: torch.nn.Module, workload: Workload):
        from colossalai.booster.plugin import GeminiPlugin

        fractions = {_FRACTIONS[key]: float(self.options[key]) for key in _FRACTIONS if key in self.options}
        # Asynchronous reduction overlaps on a side stream and stages shards in pinned memory: CUDA only (pinned
        # memory needs an accelerator's allocator; on CPU the reduction is in program order anyway).
        return GeminiPlugin(placement_policy=self.options.get("placement", "static"), precision=self.precision,
                            enable_async_reduce=self.context.device.type == "cuda",
                            **gemini_chunk_search(sum(p.numel() for p in model.parameters())), **fractions,
                            **self.loss_scale_options())

    def state_tensors(self) -> dict[str, Iterable[object]]:
        """Gemini's storage, each once: params are the half-precision chunks this rank holds (its shard of each
        sharded chunk, the whole of a chunk kept gathered; a scattered chunk's global buffer has no storage),
        grads the gradient chunks where Gemini does not reuse the parameter chunks for them (with fp32 masters
        it does: nothing more), master the paired fp32 chunks' shards, optimizer the inner optimizer's state
        (kept per shard, keyed by Gemini's placeholder parameters)."""
        ddp = self.model
        manager = ddp.chunk_manager

        def held(chunk) -> list[object]:
            return [chunk.cuda_global_chunk, chunk.cuda_shard, chunk.cpu_shard]

        compute = list(dict.fromkeys(manager.get_chunk(p) for p in ddp.fp16_params))
        masters = list(dict.fromkeys(c.paired_chunk for c in compute if c.paired_chunk is not None))
        grads = [] if manager.reuse_fp16_chunk else [t for c in compute if c.grad_chunk is not None
                                                     for t in held(c.grad_chunk)]
        return {"params": [t for c in compute for t in held(c)], "grads": grads,
                "master": [t for c in masters for t in held(c)],
                "optimizer": list(optimizer_state_tensors(self.stepping_optimizer()))}


class ColossalAIHybrid(ColossalAIBooster):
    """``HybridParallelPlugin``: shardformer tensor parallelism (``tp``), pipeline stages (``pp``) and
    data parallelism over the remaining ranks, with ZeRO stage ``zero`` (bf16/fp16 only) on those.

    The plugin swaps optimizers that have a distributed form (Adafactor, LAMB, CAME, GaLore) for it
    and sets it up on the tensor- and data-parallel groups.
    """

    name = "colossalai-hybrid"
    precisions = ("fp32", "bf16", "fp16")
    master_weights = True
    option_names = ("tp", "pp", "zero", "chunks", "inject")
    default_chunks = 4

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)
        for key, what in (("tp", "the tensor-parallel size"), ("pp", "the number of pipeline stages"),
                          ("chunks", "the number of micro-batches per step")):
            check_integer(cls, options, key, 1, what)
        check_integer(cls, options, "zero", 0, "the ZeRO stage of the data-parallel ranks (0, 1 or 2)")
        if options.get("zero", 0) > 2:
            raise ValueError(f"{cls.name}: zero is 0, 1 or 2 (the plugin's ZeRO stages), got {options['zero']}")

    @classmethod
    def requirements(cls, precision: str, options: Mapping[str, object] = ()) -> Requirements:
        options = dict(options)
        model_parallel = int(options.get("tp", 1)) * int(options.get("pp", 1))
        return super().requirements(precision, options) + Requirements(world_size_multiple_of=model_parallel)

    @property
    def sizes(self) -> tuple[int, int, int]:
        tp, pp = int(self.options.get("tp", 1)), int(self.options.get("pp", 1))
        return tp, pp, self.context.world_size // (tp * pp)

    def data_parallel(self) -> tuple[int, int]:
        tp, pp, dp = self.sizes
        return self.context.rank // (tp * pp), dp  # the plugin's mesh is (dp, pp, tp), dp outermost

    @property
    def chunks(self) -> int:
        return int(self.options.get("chunks", self.default_chunks))

    def set_batching(self, micro_batch: int, grad_accum: int) -> None:
        if self.sizes[1] > 1 and (micro_batch * grad_accum) % self.chunks:
            raise ValueError(f"{self.name}: a replica's batch of {micro_batch * grad_accum} does not split into "
                             f"{self.chunks} pipeline chunks; choose a global batch divisible by "
                             f"{self.chunks * self.sizes[2]}")
        super().set_batching(micro_batch, grad_accum)

    def plugin(self, model: torch.nn.Module, workload: Workload):
        from colossalai.booster.plugin import HybridParallelPlugin

        tp, pp, _ = self.sizes
        zero = int(self.options.get("zero", 0))
        if zero and self.precision == "fp32":
            raise ValueError(f"{self.name}: ZeRO under the hybrid plugin needs bf16 or fp16 (the plugin asserts it)")
        kwargs: dict[str, Any] = {}
        if pp > 1:
            kwargs["num_microbatches"] = self.chunks
        return HybridParallelPlugin(tp_size=tp, pp_size=pp, zero_stage=zero, precision=self.precision,
                                    overlap_communication=self.context.device.type == "cuda",
                                    overlap_p2p=self.context.device.type == "cuda", **kwargs,
                                    **self.loss_scale_options())

    def train_step(self, micro_batches: list[Batch], loss_fn: LossFn) -> torch.Tensor:
        if self.sizes[1] == 1:
            # Shardformer's forwards take the model's own keyword inputs (GPT-2's needs its attention mask).
            return super().train_step(micro_batches, self._loss)
        whole = concatenated(micro_batches)
        inputs = self.workload.model_inputs(whole)
        self.optimizer.zero_grad()
        out = self.booster.execute_pipeline(iter([inputs]), self.model, self.workload.loss_of_outputs,
                                            self.optimizer, return_loss=True)
        self.optimizer.step()
        # Only the last stage computes the loss (the mean over the micro-batches).
        loss = out["loss"]
        return loss.detach().float() if loss is not None else torch.tensor(float("nan"))

    def _loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        inputs = self.workload.model_inputs(batch)
        return self.workload.loss_of_outputs(model(**inputs), inputs)

    def global_loss(self, local_loss: torch.Tensor) -> float:
        """The mean over the ranks that computed a loss (the last pipeline stage of each replica)."""
        has_loss = not torch.isnan(local_loss)
        totals = torch.tensor([local_loss.item() if has_loss else 0.0, float(has_loss)],
                              dtype=torch.float64, device=self.context.device)
        dist.all_reduce(totals)
        return (totals[0] / totals[1]).item()

    def teardown(self) -> None:
        plugin = self.__dict__.get("plugin_instance")
        super().teardown()
        if plugin is not None:  # the plugin's mesh made tp/pp/dp groups; free them for the next case
            plugin.pg_mesh.destroy_mesh_process_groups()

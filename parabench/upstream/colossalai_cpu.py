"""What ColossalAI 0.5.0 lacks on a CPU-only machine (and with transformers 4.51), patched in the ranks.

ColossalAI's code paths assume a CUDA (or NPU) device in places where a CPU run needs nothing:
stream and event calls around communication, device asserts, ``torch.cuda`` calls. Each patch below
names the upstream behaviour and when it can go. ``ensure_cpu_patches(device)`` applies ``CPU_PATCHES`` only
to a case that runs on the CPU (on a GPU host too, under ``--bench-device=cpu``), so a CUDA case is never
patched by them; ``VERSION_PATCHES`` (a mismatch with the pinned transformers, on any device) always apply.
The patches in force are recorded in every case result.
GeminiPlugin runs on CPU with static placement and nothing offloaded (two chunk patches below); its
``auto`` placement and offload fractions need CUDA (``ColossalAIGemini.requirements``).
"""

from __future__ import annotations

import contextlib

import torch

from parabench.upstream.patches import Patch

_WHEN = "ColossalAI's CpuAccelerator implements it (it raises in 0.5.0)"


class _NoStream:
    """A CPU stand-in for a CUDA stream: CPU kernels run in program order, so there is nothing to order."""

    def wait_stream(self, stream: object) -> None: ...
    def wait_event(self, event: object) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool: return True

    def record_event(self, event: object = None) -> object:
        return event if event is not None else _NoEvent()


class _NoEvent:
    """A CPU stand-in for a CUDA event (already complete when recorded)."""

    def record(self, stream: object = None) -> None: ...
    def wait(self, stream: object = None) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool: return True


def _accelerator():
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    return CpuAccelerator


def _streams() -> None:
    cls = _accelerator()
    cls.Stream = lambda self, *args, **kwargs: _NoStream()
    cls.Event = lambda self, *args, **kwargs: _NoEvent()
    cls.current_stream = lambda self, *args, **kwargs: _NoStream()
    cls.default_stream = lambda self, *args, **kwargs: _NoStream()
    cls.set_stream = lambda self, stream: None
    cls.stream = lambda self, stream: contextlib.nullcontext()
    cls.synchronize = lambda self, *args, **kwargs: None


def _memory() -> None:
    cls = _accelerator()
    cls.empty_cache = lambda self: None
    for name in ("reset_peak_memory_stats", "reset_max_memory_allocated", "reset_max_memory_cached"):
        setattr(cls, name, lambda self, *args, **kwargs: None)
    # The harness measures CPU memory itself (parabench.measure.memory); ColossalAI only logs these.
    cls.memory_allocated = lambda self, *args, **kwargs: 0
    cls.max_memory_allocated = lambda self, *args, **kwargs: 0


def _device_and_seed() -> None:
    cls = _accelerator()
    cls.current_device = lambda self: 0
    cls.device_count = lambda self: 1
    cls.set_device = lambda self, device=None: None
    cls.manual_seed = lambda self, seed: torch.manual_seed(seed)
    cls.manual_seed_all = lambda self, seed: torch.manual_seed(seed)
    cls.get_rng_state_all = lambda self: [torch.get_rng_state()]
    cls.set_rng_state_all = lambda self, states: torch.set_rng_state(states[0])


def _rng_state() -> None:
    cls = _accelerator()
    cls.get_rng_state = lambda self, device=None: torch.get_rng_state()


def _zero_device_check() -> None:
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    def sanity_checks(self) -> None:  # upstream's checks, less the device assert
        for group in self.optim.param_groups:
            for param in group["params"]:
                if not getattr(param, "skip_zero_check", False):
                    assert param.dtype == self._dtype, (
                        f"Parameters are expected to have the same dtype `{self._dtype}`, but got `{param.dtype}`")

    LowLevelZeroOptimizer._sanity_checks = sanity_checks


def _fsdp_current_device() -> None:
    from unittest import mock

    from colossalai.booster.plugin.torch_fsdp_plugin import TorchFSDPPlugin

    configure = TorchFSDPPlugin.configure

    def configure_on_cpu(self, *args, **kwargs):
        with mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu")):
            return configure(self, *args, **kwargs)

    TorchFSDPPlugin.configure = configure_on_cpu


def _cuda_set_device() -> None:
    original = torch.cuda.set_device

    def set_device(device) -> None:
        if isinstance(device, torch.device) and device.type == "cpu":
            return
        original(device)

    torch.cuda.set_device = set_device


def _hccl_available() -> None:
    import torch.distributed

    if not hasattr(torch.distributed, "is_hccl_available"):
        torch.distributed.is_hccl_available = lambda: False


def _cpu_adam_kernel() -> None:
    from colossalai.kernel.extensions.pybind.cpu_adam.cpu_adam_arm import CpuAdamArmExtension

    CpuAdamArmExtension.is_available = lambda self: True
    CpuAdamArmExtension.assert_compatible = lambda self: None


def _eager_attention_under_shardformer() -> None:
    from colossalai.booster.plugin import HybridParallelPlugin

    configure = HybridParallelPlugin.configure

    def configure_eager(self, model, *args, **kwargs):
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) == "gpt2" and config._attn_implementation == "sdpa":
            config._attn_implementation = "eager"
        return configure(self, model, *args, **kwargs)

    HybridParallelPlugin.configure = configure_eager


# GeminiPlugin. Its chunk manager names where a chunk lives by device type: the accelerator's name
# ("cuda", "npu") means resident for compute, "cpu" means offloaded. On a CPU machine the accelerator's name
# is "cpu", so every chunk reads as offloaded and the first access fails in shard_move. With offload fractions
# of 0 (the only static placement that runs here) a chunk is never offloaded, so the patches below report a
# compute-resident chunk under the name the manager tests for and move shards towards compute only.
_GEMINI_WHEN = "ColossalAI's Gemini asks the accelerator, not the device type, whether a chunk is resident for compute"
_COMPUTE = "cuda"  # the name ChunkManager, GeminiManager and GeminiOptimizer test for a compute-resident chunk


def _gemini_device_type() -> None:
    from colossalai.zero.gemini.chunk.chunk import Chunk

    def device_type(self) -> str:
        # Still being filled (on the compute device), gathered, or holding its compute shard.
        if self.chunk_temp is not None or self.is_gathered or self.cuda_shard is not None:
            return _COMPUTE
        return "cpu"  # the shard kept in cpu_shard only: after close_chunk, until first accessed

    Chunk.device_type = property(device_type)


def _gemini_shard_placement() -> None:
    from colossalai.zero.gemini.chunk.chunk import Chunk

    close_chunk = Chunk.close_chunk
    paired_move = Chunk._Chunk__paired_shard_move

    def to_compute(chunk) -> None:
        """The host-memory shard becomes the compute shard: the same tensor, nothing copied."""
        if chunk.cuda_shard is None and chunk.cpu_shard is not None:
            chunk.cuda_shard = chunk.cpu_shard
            if not chunk.pin_memory:
                chunk.cpu_shard = None

    def close_on_cpu(self) -> None:
        close_chunk(self)  # a shard whose device is the CPU is put aside as "offloaded" (cpu_shard) ...
        if not self.keep_gathered:
            to_compute(self)  # ... but the CPU is where this machine computes: it stays the compute shard

    def shard_move(self, device: torch.device, force_copy: bool = False, non_blocking: bool = False) -> None:
        assert not self.is_gathered
        if not self.optim_sync_flag:  # the fp32 master shard was updated apart: take it, in this chunk's dtype
            paired_move(self, non_blocking=non_blocking)
            self.optim_sync_flag = True
            return
        to_compute(self)  # a move "to the CPU" would be an offload from host memory to host memory: none

    Chunk.close_chunk = close_on_cpu
    Chunk.shard_move = shard_move


VERSION_PATCHES = (
    Patch("colossalai-shardformer-eager-attention",
          "shardformer's GPT-2 forward (0.5.0) passes transformers 4.51's sdpa attention a padding mask, which "
          "turns causal masking off: at initialisation position 0's logits differ from the model's own by 0.69 "
          "(gpt2-text); with eager attention they agree to 6e-7. HybridParallelPlugin now configures GPT-2 "
          "models with eager attention (ViT under sdpa matched one process to 1e-5 and is left alone)",
          "shardformer's forwards keep the causal mask under sdpa (a ColossalAI release for transformers ≥ 4.48)",
          _eager_attention_under_shardformer),
)


CPU_PATCHES = (
    Patch("colossalai-cpu-streams",
          "CpuAccelerator.Stream/Event/current_stream/stream/synchronize raise RuntimeError; LowLevelZero and the "
          "pipeline schedules call them around communication", _WHEN, _streams),
    Patch("colossalai-cpu-memory",
          "CpuAccelerator.empty_cache/reset_peak_memory_stats/memory_allocated raise RuntimeError", _WHEN, _memory),
    Patch("colossalai-cpu-device-seed",
          "CpuAccelerator.current_device/device_count/set_device/manual_seed*/get_rng_state_all raise RuntimeError",
          _WHEN, _device_and_seed),
    Patch("colossalai-cpu-rng-state",
          "CpuAccelerator.get_rng_state(device) passes the device to torch.get_rng_state(), which takes none "
          "(TypeError in shardformer's dropout/TP RNG tracker)",
          "CpuAccelerator.get_rng_state ignores its device argument", _rng_state),
    Patch("colossalai-zero-device-assert",
          "LowLevelZeroOptimizer._sanity_checks asserts the accelerator is 'cuda' or 'npu'",
          "the assert admits 'cpu'", _zero_device_check),
    Patch("colossalai-fsdp-current-device",
          "TorchFSDPPlugin.configure passes torch.cuda.current_device() as FSDP's device_id unconditionally",
          "the plugin asks the accelerator for its device", _fsdp_current_device),
    Patch("colossalai-shardformer-set-device",
          "shardformer's pipeline forwards (gpt2, opt, t5, gptj) call torch.cuda.set_device(hidden_states.device), "
          "which fails for a CPU device (here it is ignored for CPU devices only)",
          "shardformer stops calling torch.cuda.set_device on the activations' device", _cuda_set_device),
    Patch("colossalai-hccl-available",
          "colossalai/pipeline/p2p.py calls torch.distributed.is_hccl_available, which torch 2.13 does not define",
          "ColossalAI stops calling it, or torch defines it again", _hccl_available),
    Patch("colossalai-cpu-adam-kernel",
          "the x86 CPUAdam kernel is built as a CUDA extension (includes CUDA headers) and is unavailable "
          "without CUDA; the plain C++ kernel (written for aarch64, with scalar fallbacks) builds on x86 "
          "(JIT, ~90 s once, cached under ~/.cache/colossalai)",
          "ColossalAI ships a CPU-only x86 CPUAdam kernel", _cpu_adam_kernel),
    Patch("colossalai-gemini-chunk-device-type",
          "Chunk.device_type (zero/gemini/chunk/chunk.py) names a chunk resident for compute by the accelerator's "
          "name, 'cpu' on a CPU machine, which ChunkManager.access_chunk, GeminiManager and GeminiOptimizer read "
          "as offloaded: the first forward fails in shard_move ('assert not self.is_gathered'). A compute-resident "
          "chunk (being filled, gathered, or holding its compute shard) is reported as 'cuda', the name they test",
          _GEMINI_WHEN, _gemini_device_type),
    Patch("colossalai-gemini-shard-placement",
          "Chunk.close_chunk keeps a shard whose device is the CPU as an offloaded copy (cpu_shard, no compute "
          "shard), and Chunk.shard_move asserts 'cuda'/'npu' before a chunk's first use and moves shards by "
          "device type; on a CPU machine master (fp32) chunks then stayed 'offloaded' while their bf16 pairs were "
          "resident, and the first optimizer step failed in optim_update ('assert self.device_type == \"cpu\"'). "
          "Here the shard stays the compute shard when a chunk closes, a move towards compute adopts the host "
          "shard without a copy, a move 'to the CPU' does nothing, and a paired fp32 shard is taken as upstream",
          _GEMINI_WHEN, _gemini_shard_placement),
)


def ensure_cpu_patches(device: torch.device | str) -> None:
    """Apply the version patches, and every CPU patch when the case runs on the CPU (``device``: the rank's)."""
    for patch in VERSION_PATCHES + (CPU_PATCHES if torch.device(device).type == "cpu" else ()):
        patch.ensure()

"""DeepSpeed strategies without spawning: the config each case builds, option checks, skip reasons."""

from __future__ import annotations

import pytest
import torch

import parabench.cases.requirements as requirements_module
from parabench.cases import matrix
from parabench.cases.case import Case
from parabench.cases.requirements import Machine
from parabench.measure.relative import rows
from parabench.strategies import STRATEGIES, RankContext

CPU = Machine(cuda_devices=0, max_cpu_world_size=4)
TWO_GPUS = Machine(cuda_devices=2, max_cpu_world_size=4)


def config(strategy: str, precision: str = "fp32", micro_batch: int = 8, grad_accum: int = 1, device="cpu",
           **options) -> dict:
    context = RankContext(rank=0, world_size=2, local_rank=0, device=torch.device(device), backend="gloo")
    instance = STRATEGIES.get(strategy)(context, precision, options)
    instance.set_batching(micro_batch, grad_accum)
    return instance.config()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_stage_gets_its_stage_and_no_clipping(stage):
    built = config(f"deepspeed-zero{stage}", micro_batch=4, grad_accum=2)
    assert built["zero_optimization"]["stage"] == stage
    assert built["gradient_clipping"] == 0.0  # DeepSpeed's default 1.0 would break parity
    assert (built["train_micro_batch_size_per_gpu"], built["gradient_accumulation_steps"]) == (4, 2)
    assert "bf16" not in built and "fp16" not in built
    # Tiny models would otherwise stay unpartitioned under ZeRO-3.
    assert ("stage3_param_persistence_threshold" in built["zero_optimization"]) == (stage == 3)


def test_options_map_to_their_config_entries():
    zero = config("deepspeed-zero3", "bf16", offload=True, offload_param=True, hpz=2, bucket=1000)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["zero_hpz_partition_size"] == 2
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 1000
    assert config("deepspeed-zero3", "bf16")["bf16"] == {"enabled": True}
    assert config("deepspeed-zero1", "fp16", device="cuda")["fp16"]["enabled"] is True
    cuda_offload = config("deepspeed-zero2", device="cuda", offload=True)["zero_optimization"]["offload_optimizer"]
    assert cuda_offload["pin_memory"] is True
    quantized = config("deepspeed-zero3", qw=True, qg=True)["zero_optimization"]
    assert quantized["zero_quantized_weights"] and quantized["zero_quantized_gradients"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fp16_scales_its_loss_statically_at_its_references_scale(stage):
    from deepspeed.runtime.precision_config import get_float16_config

    from parabench.strategies.precision import FP16_LOSS_SCALE, StaticGradScaler

    fp16 = get_float16_config({"fp16": config(f"deepspeed-zero{stage}", "fp16", device="cuda")["fp16"]})
    assert fp16.enabled and fp16.loss_scale == FP16_LOSS_SCALE  # DeepSpeed's static scaler: loss_scale > 0
    reference = matrix.reference_of(Case(f"deepspeed-zero{stage}", "adam", "gpt2-text", 2, precision="fp16"))
    context = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0), backend="nccl")
    scaler = STRATEGIES.get(reference.strategy)(context, "fp16").autocast.scaler
    assert isinstance(scaler, StaticGradScaler) and scaler.static_scale == FP16_LOSS_SCALE


@pytest.mark.parametrize("strategy, options, message", [
    ("deepspeed-zero2", {"offload_param": True}, "ZeRO-3 option"),
    ("deepspeed-zero1", {"hpz": 2}, "ZeRO-3 option"),
    ("deepspeed-zero0", {"offload": True}, "ZeRO ≥ 1"),
    ("deepspeed-zero3", {"hpz": 1}, "integer ≥ 2"),
    ("deepspeed-zero3", {"bucket": True}, "integer ≥ 1"),
    ("deepspeed-zero3", {"offlaod": True}, "unknown option"),
    ("deepspeed-pipe", {"chunks": 0}, "integer ≥ 1"),
    ("deepspeed-pipe", {"offload": True}, "unknown option"),
])
def test_bad_options_fail_at_collection_naming_the_fix(strategy, options, message):
    with pytest.raises(ValueError, match=message):
        matrix.cases([strategy], ["adamw"], ["gpt2-text"], options=options)


def test_quantized_zero_plus_plus_skips_on_cpu_with_its_reason():
    case = Case("deepspeed-zero3", "adamw", "gpt2-text", 2, "bf16", options={"qw": True})
    reason = matrix.skip_reason(case, CPU)
    assert reason == ("deepspeed-zero3 needs a CUDA device "
                      "(ZeRO++ quantized weights: DeepSpeed's kernel is CUDA-only)")
    assert matrix.skip_reason(case, TWO_GPUS) is None
    assert matrix.skip_reason(Case("deepspeed-zero3", "adamw", "gpt2-text", 2, options={"hpz": 2}), CPU) is None


def test_hpz_needs_a_world_size_it_divides():
    reason = matrix.skip_reason(Case("deepspeed-zero3", "adamw", "gpt2-text", 3, options={"hpz": 2}), CPU)
    assert "divisible by 2" in reason


def test_fused_adam_needs_cuda_and_a_missing_deepspeed_names_the_install(monkeypatch):
    reason = matrix.skip_reason(Case("deepspeed-zero2", "ds-fusedadam", "gpt2-text", 2, "bf16"), CPU)
    assert reason == "ds-fusedadam needs a CUDA device (FusedAdam is a CUDA kernel)"
    monkeypatch.setattr(requirements_module, "package_available", lambda name: name != "deepspeed")
    reason = matrix.skip_reason(Case("deepspeed-zero1", "adamw", "gpt2-text", 2), CPU)
    assert "'deepspeed'" in reason and ".[deepspeed]" in reason


def test_pipeline_splits_the_whole_batch_into_chunks():
    context = RankContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend="gloo")
    pipe = STRATEGIES.get("deepspeed-pipe")(context, "fp32", {"chunks": 4})
    assert pipe.data_parallel() == (0, 1)  # every stage sees the whole batch
    pipe.set_batching(32, 1)
    assert (pipe.micro_batch, pipe.grad_accum) == (8, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        pipe.set_batching(30, 1)


def test_relative_rows_report_ratios_to_the_same_run_peer():
    bench = {"name": "test_train[x]", "extra_info": {
        "case": {"id": "deepspeed-zero3-adamw-gpt2_text-w2-fp32"}, "step_seconds": [0.05, 0.04, 0.06],
        "state_bytes": [{"total": 3_500_000}, {"total": 3_400_000}], "peak_allocated_bytes": [24_000_000, None],
        "relative": {"torch-ddp-adamw-gpt2_text-w2-fp32": {
            "step_time": 1.5, "state_bytes": 0.5, "high_water_bytes": 1.25, "loss_max_abs_difference": 0.0}}}}
    plain = {"name": "test_train[y]", "extra_info": {"case": {"id": "torch-ddp-adamw-gpt2_text-w2-fp32"}}}
    found = rows([bench, plain])
    assert found == [["deepspeed-zero3-adamw-gpt2_text-w2-fp32", "50.0", "3.500", "24.00",
                      "torch-ddp-adamw-gpt2_text-w2-fp32", "1.50", "0.50", "1.25", "0.0e+00"]]
    assert rows([bench], "zero1") == []

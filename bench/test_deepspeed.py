"""DeepSpeed ZeRO stages 0–3 with their options, against one process and against torch DDP."""

from dataclasses import replace

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import cases, params
from parabench.measure.checks import PARITY, assert_loss_decreases, assert_parity

STAGES = ["deepspeed-zero0", "deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3"]
SHARDED = STAGES[1:]

CASES = (
    # Every stage × precision (fp16 selects itself on CUDA) on a language and a vision model.
    params(cases(STAGES, ["adamw"], ["gpt2-text"]))
    + params(cases(STAGES, ["adamw"], ["vit-digits"], steps=40))
    # SGD is not invariant to the gradient's scale: a wrong 1/world_size in the reduction shows.
    + params(cases(STAGES, ["sgd"], ["gpt2-text"], precisions=["fp32"]))
    + params(cases(STAGES, ["adamw"], ["gpt2-text"], precisions=["fp32"], grad_accum=2))
    # bf16 weights stepped through fp32 masters, on a model cheap enough for hosts where bf16 is slow.
    + params(cases(["deepspeed-zero2"], ["sgd"], ["mlp-digits"], precisions=["bf16"]))
    + params(cases(SHARDED, ["adamw"], ["gpt2-text"], precisions=["fp32"], options={"offload": True}))
    + params(cases(["deepspeed-zero3"], ["adamw"], ["gpt2-text"], precisions=["fp32"],
                   options={"offload": True, "offload_param": True}))
    + params(cases(["deepspeed-zero2", "deepspeed-zero3"], ["adamw"], ["gpt2-text"], precisions=["fp32"],
                   options={"ckpt": True}))
    + params(cases(["deepspeed-zero2", "deepspeed-zero3"], ["adamw"], ["vit-digits"], precisions=["fp32"], steps=40,
                   options={"ckpt": True}))
    # Buckets sized for the model instead of DeepSpeed's 5e8-element default.
    + params(cases(["deepspeed-zero1", "deepspeed-zero2"], ["adamw"], ["gpt2-text"], precisions=["fp32"],
                   options={"bucket": 500_000}))
    # ZeRO++: hierarchical partitioning runs anywhere; the quantized ones need CUDA kernels.
    + params(cases(["deepspeed-zero3"], ["adamw"], ["gpt2-text"], precisions=["fp32"], options={"hpz": 2}))
    + params(cases(["deepspeed-zero3"], ["adamw"], ["gpt2-text"], precisions=["bf16", "fp16"],
                   options={"qw": True}))
    + params(cases(["deepspeed-zero3"], ["adamw"], ["gpt2-text"], precisions=["bf16", "fp16"],
                   options={"qg": True}))
    # DeepSpeed's own optimizers: CPU Adam is what offload is built for; FusedAdam is a CUDA kernel.
    + params(cases(["deepspeed-zero2", "deepspeed-zero3"], ["ds-cpuadam"], ["gpt2-text"], precisions=["fp32"],
                   options={"offload": True}))
    + params(cases(["deepspeed-zero2"], ["ds-fusedadam"], ["gpt2-text"], precisions=["bf16", "fp16"]))
    # A 2-stage pipeline (one stage per rank), 4 micro-batches per step.
    + params(cases(["deepspeed-pipe"], ["adamw", "sgd"], ["mlp-digits"], precisions=["fp32"]))
    + params(cases(STAGES, ["adamw"], ["gpt2-text"], world_sizes=[4], precisions=["fp32"]), pytest.mark.full)
)


def torch_ddp_peer(case: Case) -> Case:
    """The torch DDP case that computes the same update (fp32; DeepSpeed's bf16 keeps bf16 weights, DDP does not)."""
    return replace(case, strategy="torch-ddp", precision="fp32", options=())


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity, relative_to):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    check_parity(result)
    ddp = relative_to(result, torch_ddp_peer(case))
    if case.precision == "fp32":
        assert_parity(result.losses, ddp.losses, PARITY["fp32"], what=f"loss (against {ddp.case.id})")


@pytest.mark.deepspeed
@pytest.mark.parametrize("world_size", [2, pytest.param(4, marks=pytest.mark.full)], ids=lambda n: f"w{n}")
@pytest.mark.parametrize("strategy", SHARDED)
def test_partitioned_state(strategy, world_size, measured, record_property):
    """Per rank, ZeRO-1/2/3 hold 1/world of ZeRO-0's optimizer state, and ZeRO-3 1/world of its parameters."""
    zero0 = measured(Case("deepspeed-zero0", "adamw", "gpt2-text", world_size))
    sharded = measured(Case(strategy, "adamw", "gpt2-text", world_size))
    categories = ["optimizer"] + (["params"] if strategy == "deepspeed-zero3" else [])
    for mine, full in zip(sharded.ranks, zero0.ranks):
        for category in categories:
            ratio = mine.state_bytes[category] / full.state_bytes[category]
            record_property(f"rank{mine.rank}_{category}_ratio", round(ratio, 6))  # in --junitxml reports
            assert ratio == pytest.approx(1 / world_size, rel=0.01), (
                f"rank {mine.rank} {category}: {mine.state_bytes[category]} B under {strategy}, "
                f"{full.state_bytes[category]} B under ZeRO-0: ratio {ratio:.4f}, expected 1/{world_size}")

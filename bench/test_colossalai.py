"""ColossalAI's booster plugins and optimizers, against one process (and LowLevelZero against TorchDDP)."""

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import cases, params
from parabench.measure.checks import assert_loss_decreases

DDP, FSDP = "colossalai-torch-ddp", "colossalai-torch-fsdp"
ZERO = ["colossalai-lowlevelzero1", "colossalai-lowlevelzero2"]
GEMINI, HYBRID = "colossalai-gemini", "colossalai-hybrid"
CPU_PLUGINS = [DDP, FSDP, *ZERO]

CASES = (
    # The seed: ViT under each plugin (torch_ddp, torch_ddp_fp16, low_level_zero, gemini, hybrid_parallel).
    params(cases(CPU_PLUGINS, ["adamw"], ["vit-digits"], steps=40))
    + params(cases([FSDP], ["adam"], ["vit-digits"], steps=40))
    + params(cases([GEMINI], ["hybrid-adam"], ["vit-digits"], steps=40))
    + params(cases([HYBRID], ["adamw"], ["vit-digits"], steps=40, options={"tp": 2}))
    # A language model under every plugin and precision; SGD shows a wrong gradient scale.
    + params(cases(CPU_PLUGINS, ["adamw", "sgd"], ["gpt2-text"]))
    + params(cases([FSDP], ["adam"], ["gpt2-text"]))
    + params(cases(["colossalai-lowlevelzero2"], ["adamw"], ["gpt2-text"], precisions=["fp32"],
                   options={"offload": True}))
    + params(cases([DDP, *ZERO], ["sgd"], ["gpt2-text"], precisions=["fp32"], grad_accum=2))
    # Gemini (GeminiOptimizer takes ColossalAI's Adam kernels only: HybridAdam, in AdamW mode): static
    # placement, every chunk resharded after use (default) or half kept gathered within a step; 4 ranks in full. On CPU
    # through parabench/upstream/colossalai_cpu.py's chunk patches; auto placement and offloading need CUDA.
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"]))
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"], precisions=["bf16"], options={"shard": 0.5}))
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text", "vit-digits"], world_sizes=[4], precisions=["bf16"]),
             pytest.mark.full)
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"], options={"placement": "auto"}))
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"],
                   options={"shard": 1.0, "offload_optim": 1.0, "offload_param": 1.0}))
    # HybridParallel: tensor parallel, pipeline (4 micro-batches) and ZeRO-1 over the data-parallel ranks.
    + params(cases([HYBRID], ["adamw"], ["gpt2-text"], options={"tp": 2}))
    + params(cases([HYBRID], ["adamw"], ["gpt2-text"], precisions=["fp32", "bf16"], options={"pp": 2}))
    + params(cases([HYBRID], ["adamw"], ["gpt2-text"], precisions=["bf16", "fp16"], options={"zero": 1}))
    + params(cases([HYBRID], ["adamw"], ["gpt2-text"], world_sizes=[4], precisions=["bf16"],
                   options={"tp": 2, "zero": 1}), pytest.mark.full)
    + params(cases([HYBRID], ["adamw"], ["gpt2-text"], world_sizes=[4], precisions=["fp32"],
                   options={"tp": 2, "pp": 2}), pytest.mark.full)
    # ColossalAI's optimizers with the plugins they fit. HybridParallel swaps Adafactor, LAMB and CAME for
    # their distributed forms on its tensor-parallel shards; the dist-* entries are those forms built directly.
    + params(cases([DDP], ["hybrid-adam", "cpu-adam", "lamb", "lars", "galore-adamw", "galore"],
                   ["gpt2-text"], precisions=["fp32"]))
    # CAME's drift under DDP first passes 1e-5 at step 29 (parabench/upstream/known.py): it runs long enough to show.
    + params(cases([DDP], ["came"], ["gpt2-text"], precisions=["fp32"], steps=40))
    + params(cases(["colossalai-lowlevelzero2"], ["hybrid-adam", "lamb"], ["gpt2-text"], precisions=["fp32"]))
    + params(cases([HYBRID], ["dist-lamb", "dist-came"], ["gpt2-text"], precisions=["fp32"], options={"tp": 2}))
    # Adafactor's relative step (scaled by each parameter's RMS) is small: it needs more steps to learn.
    + params(cases([DDP], ["colossalai-adafactor"], ["gpt2-text"], precisions=["fp32"], steps=60))
    + params(cases(["colossalai-lowlevelzero2"], ["dist-adafactor"], ["gpt2-text"], precisions=["fp32"], steps=60))
    + params(cases([HYBRID], ["colossalai-adafactor", "dist-adafactor"], ["gpt2-text", "vit-digits"],
                   precisions=["fp32"], steps=60, options={"tp": 2}))
)


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    check_parity(result)


@pytest.mark.colossalai
@pytest.mark.parametrize("stage", ZERO)
def test_lowlevelzero_partitions_optimizer_state(stage, measured, record_property):
    """Per rank, LowLevelZero holds half of TorchDDP's optimizer state on 2 ranks (its flat shards are padded)."""
    ddp = measured(Case(DDP, "adamw", "gpt2-text", 2))
    zero = measured(Case(stage, "adamw", "gpt2-text", 2))
    for mine, full in zip(zero.ranks, ddp.ranks):
        ratio = mine.state_bytes["optimizer"] / full.state_bytes["optimizer"]
        record_property(f"rank{mine.rank}_optimizer_ratio", round(ratio, 6))
        assert ratio == pytest.approx(0.5, rel=0.01), (
            f"rank {mine.rank}: {mine.state_bytes['optimizer']} B of optimizer state under {stage}, "
            f"{full.state_bytes['optimizer']} B under {DDP}: ratio {ratio:.4f}, expected 1/2")


@pytest.mark.colossalai
def test_gemini_shards_its_chunks(measured, record_property):
    """Gemini on 2 ranks holds a shard of every chunk: its bf16 parameters and fp32 masters per rank are one
    shard of the chunks (the same size on every rank, chunk padding included), and HybridAdam's state, kept
    for each rank's own elements only, adds up over the ranks to one model's 2 x 4 bytes per parameter. A
    Gemini that kept its chunks gathered (replicated, as DDP) holds 2 bytes per parameter per rank and twice
    the optimizer state in all."""
    ddp = measured(Case(DDP, "adamw", "gpt2-text", 2))
    gemini = measured(Case(GEMINI, "hybrid-adam", "gpt2-text", 2, "bf16"))
    parameters = ddp.ranks[0].state_bytes["params"] // 4  # fp32, replicated
    masters = {rank.state_bytes["master"] for rank in gemini.ranks}
    assert len(masters) == 1, f"ranks hold shards of different sizes: {sorted(masters)}"
    master, = masters
    for rank in gemini.ranks:
        assert rank.state_bytes["params"] * 2 == master, rank.state_bytes  # bf16 and fp32 shards of one chunk
        assert rank.state_bytes["grads"] == 0, rank.state_bytes  # gradients reuse the bf16 chunks
    optimizer = sum(rank.state_bytes["optimizer"] for rank in gemini.ranks)
    assert optimizer == 8 * parameters, f"HybridAdam state over the ranks: {optimizer} B, expected 8 x {parameters}"
    share = master / (4 * parameters)
    record_property("gemini_master_share", round(share, 6))  # 1/N plus the chunks' padding
    assert 0.5 <= share < 1.0, f"per-rank fp32 masters are {share:.3f} of the model: not sharded"


"""Every framework family on one device (world size 1), in bf16 and fp16: the cases of the one-GPU check.

One GPU holds one NCCL rank, so a machine with one GPU runs each family's world-size-1 case: its wrapping,
mixed precision, loss scaling, kernels and memory accounting on that device, against the one-process
reference (``python -m parabench.gpucheck``; ``--bench-profile=gpu`` selects this module). fp16 needs CUDA;
Gemini's auto placement too. On a CPU the bf16 cases run (``python -m parabench.gpucheck --dry-run``).
"""

import pytest

from parabench.cases.matrix import cases, params
from parabench.measure.checks import assert_loss_decreases

# One strategy per family and way of training: autocast (single, DDP), FSDP2's mixed-precision policy, DeepSpeed
# ZeRO-2 and ZeRO-3, ColossalAI's LowLevelZero and Gemini (GeminiOptimizer takes ColossalAI's HybridAdam only).
AUTOCAST = ["single", "torch-ddp-amp"]
MASTER_WEIGHTS = ["torch-fsdp-mp", "deepspeed-zero2", "deepspeed-zero3", "colossalai-lowlevelzero2"]
GEMINI = "colossalai-gemini"
PRECISIONS = ["bf16", "fp16"]

CASES = (
    params(cases(AUTOCAST + MASTER_WEIGHTS, ["adamw"], ["gpt2-text"], world_sizes=[1], precisions=PRECISIONS))
    # Auto placement moves chunks by the memory it traces on the GPU; static placement is the half a CPU runs.
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"], world_sizes=[1], precisions=PRECISIONS,
                   options={"placement": "auto"}))
    + params(cases([GEMINI], ["hybrid-adam"], ["gpt2-text"], world_sizes=[1], precisions=PRECISIONS))
)


def assert_measured(result) -> None:
    """Each rank recorded its step's memory rise and its costs (parabench.runtime.train), and on CUDA the high-water."""
    for rank in result.ranks:
        assert rank.peak_allocated_bytes and rank.peak_allocated_bytes > 0, (
            f"rank {rank.rank}: no step peak recorded ({rank.peak_allocated_bytes!r})")
        assert rank.state_bytes["total"] > 0, f"rank {rank.rank}: no state counted ({rank.state_bytes})"
        assert rank.flops and rank.flops > 0, f"rank {rank.rank}: the costs profiler counted no FLOPs ({rank.flops!r})"
        assert rank.comm is not None, f"rank {rank.rank}: the costs profiler recorded no collectives"
        if result.environment.get("device") == "cuda":
            # The absolute high-water of the peak's step holds the step's rise above what it started with.
            assert rank.cuda_max_allocated_bytes is not None and rank.cuda_max_allocated_bytes >= \
                rank.peak_allocated_bytes, (f"rank {rank.rank}: cuda_max_allocated_bytes "
                                            f"{rank.cuda_max_allocated_bytes!r} < the step's rise "
                                            f"{rank.peak_allocated_bytes}")


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    if case.strategy != "single":  # single is the autocast cases' reference itself
        check_parity(result)
    assert_measured(result)

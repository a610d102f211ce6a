"""Model size × world size: what a rank holds and moves, against the formulas (parabench.measure.formulas, .costs).

ZeRO-3 shards parameters, gradients and optimizer state, so its state per rank × N is the same at every N; DDP
all-reduces every gradient once a step, 2(n−1)/n × 4Ψ bus bytes. Two model sizes run here (gpt2-text, 0.44 M
parameters; gpt2-text-3m, 3.2 M), GPT-2 small (124 M) and ViT-Base/16 at 224 px (86 M) in the full profile and on GPUs.
"""

import pytest

from parabench.cases.matrix import cases, params
from parabench.measure.formulas import expected_state

SIZES = ["gpt2-text", "gpt2-text-3m"]
STRATEGIES = ["torch-ddp", "deepspeed-zero3", "torch-fsdp"]
CASES = (params(cases(STRATEGIES, ["adamw"], SIZES, world_sizes=[1, 2, 4], precisions=["fp32"], steps=5))
         + params(cases(STRATEGIES, ["adamw"], ["gpt2-124m-text", "vit-base-digits"], world_sizes=[1, 2, 4],
                        precisions=["fp32"], steps=5), pytest.mark.full))
# ZeRO-3 pads each parameter's partition to a multiple of N elements and Adam keeps one 4-byte step per tensor:
# 0.003 % of gpt2-text's state at N = 4 (measured). Beyond 1 %, a rank holds something the formula leaves out.
STATE_RTOL = 0.01


@pytest.mark.parametrize("case", CASES)
def test_scaling(case, run_case):
    result = run_case(case)
    info = result.extra_info()
    psi, n = info["parameters"], case.world_size
    expected = expected_state(case.strategy, case.optimizer, case.precision, psi, n)
    for rank in result.ranks:
        for category in ("params", "optimizer", "master"):
            assert rank.state_bytes[category] == pytest.approx(expected[category], rel=STATE_RTOL, abs=64), (
                f"rank {rank.rank} {category}: {rank.state_bytes[category]} B measured, {expected[category]} B by "
                f"the formula (Ψ {psi}, N {n})")
        if case.strategy == "torch-ddp":
            # every gradient all-reduced once: 2(n−1)/n × 4Ψ bus bytes (nccl-tests); buffers' broadcasts aside
            assert rank.comm.get("all_reduce", {}).get("bus_bytes", 0) == 2 * (n - 1) * 4 * psi // n

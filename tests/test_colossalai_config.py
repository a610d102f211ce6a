"""ColossalAI strategies' option checks, the distributed optimizers' twins, patches and the step table's inputs."""

from __future__ import annotations

import pytest

from parabench.case import Case
from parabench.matrix import cases, reference_of
from parabench.optimizer_step import StepBench, parse_shape
from parabench.patches import Patch, in_force
from parabench.strategies import STRATEGIES


@pytest.mark.parametrize("strategy, options, message", [
    ("colossalai-gemini", {"placement": "dynamic"}, "placement is 'static' or 'auto'"),
    ("colossalai-gemini", {"shard": 1.5}, "fraction from 0 to 1"),
    ("colossalai-gemini", {"placement": "auto", "offload_optim": 0.5}, "static-placement fraction"),
    ("colossalai-hybrid", {"zero": 3}, "zero is 0, 1 or 2"),
    ("colossalai-hybrid", {"tp": 0}, "tensor-parallel size"),
    ("colossalai-lowlevelzero2", {"offload_param": True}, "unknown option"),
    ("colossalai-torch-ddp", {"tp": 2}, "unknown option"),
])
def test_bad_options_fail_at_collection_naming_the_fix(strategy, options, message):
    with pytest.raises(ValueError, match=message):
        cases([strategy], ["adamw"], ["gpt2-text"], options=options)


def test_hybrid_needs_a_world_size_its_model_parallel_size_divides():
    needs = STRATEGIES.get("colossalai-hybrid").requirements("fp32", {"tp": 2, "pp": 2})
    assert needs.world_size_multiple_of == 4


def test_hybrid_data_parallel_rank_follows_the_plugins_mesh():
    from parabench.strategies.base import RankContext

    import torch

    ranks = []
    for rank in range(4):
        context = RankContext(rank, 4, rank, torch.device("cpu"), "gloo")
        ranks.append(STRATEGIES.get("colossalai-hybrid")(context, "fp32", {"tp": 2}).data_parallel())
    assert ranks == [(0, 2), (0, 2), (1, 2), (1, 2)]  # (dp, pp, tp) mesh: tp innermost


def test_a_distributed_optimizer_is_checked_against_its_one_process_twin():
    case = Case("colossalai-hybrid", "dist-adafactor", "gpt2-text", 2, options={"tp": 2})
    assert reference_of(case) == Case("single", "colossalai-adafactor", "gpt2-text", 1)
    plain = Case("colossalai-torch-ddp", "lamb", "gpt2-text", 2)
    assert reference_of(plain) == plain.reference()


def test_a_patch_applies_once_and_is_recorded():
    calls = []
    patch = Patch("test-only-patch", "upstream does X", "when upstream stops", lambda: calls.append(1))
    patch.ensure()
    patch.ensure()
    assert calls == [1]
    assert "test-only-patch" in in_force()


@pytest.mark.parametrize("text", ["4096", "0x8", "axb", "4096x"])
def test_weight_shape_must_read_out_by_in(text):
    with pytest.raises(ValueError, match="OUTxIN"):
        parse_shape(text)


def test_step_table_rows_must_split_evenly():
    assert parse_shape("1024x512") == (1024, 512)
    StepBench("row", 6, 8, "fp32", 4)  # rows split the input features: 8 / 4
    with pytest.raises(ValueError, match="divisible by the world size"):
        StepBench("col", 6, 8, "fp32", 4)

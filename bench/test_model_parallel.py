"""PyTorch's tensor parallelism, pipeline schedules and hand-made model parallelism, against one process."""

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import cases, params
from parabench.measure.checks import assert_loss_decreases

STAGED = ["torch-mp", "torch-pp-gpipe", "torch-pp-1f1b"]

CASES = (
    params(cases(["torch-tp"], ["adamw", "sgd"], ["mlp-digits", "gpt2-text"]))
    + params(cases(["torch-tp"], ["adamw"], ["vit-digits"], steps=40))
    + params(cases(STAGED, ["adamw", "sgd"], ["mlp-digits"]))
    + params(cases(STAGED, ["adamw"], ["vit-digits"], steps=40))
    # Accumulation by hand (torch-mp) and more micro-batches than the default (the schedules).
    + params(cases(["torch-mp"], ["sgd"], ["mlp-digits"], precisions=["fp32"], grad_accum=2))
    + params(cases(STAGED[1:], ["sgd"], ["mlp-digits"], precisions=["fp32"], options={"chunks": 8}))
    + params(cases(["torch-tp", *STAGED], ["adamw"], ["vit-digits"], world_sizes=[4], precisions=["fp32"],
                   steps=40), pytest.mark.full)
)


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    check_parity(result)


@pytest.mark.torch
@pytest.mark.parametrize("strategy", ["torch-tp", *STAGED])
def test_parameters_are_split(strategy, measured, record_property):
    """Each rank holds its part of the model: tensor parallel half of each split layer (mlp-digits: both
    64→256 weights and biases and the 256→256 weight; the row layer's bias and the 256→10 layer whole),
    the staged strategies their own layers, together exactly one copy."""
    whole = measured(Case("single", "adamw", "mlp-digits", 1)).ranks[0].state_bytes["params"]
    split = [rank.state_bytes["params"] for rank in measured(Case(strategy, "adamw", "mlp-digits", 2)).ranks]
    for rank, held in enumerate(split):
        record_property(f"rank{rank}_params_ratio", round(held / whole, 6))
    if strategy == "torch-tp":
        per_rank = 4 * ((64 * 256 + 256) // 2 + 256 * 256 // 2 + 256 + (256 * 10 + 10))
        assert split == [per_rank, per_rank], f"parameter bytes per rank {split}, expected {per_rank} each"
    else:
        assert sum(split) == whole and max(split) < whole, f"parameter bytes per rank {split} of {whole}"

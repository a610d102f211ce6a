"""PyTorch's own strategies: every one against the one-process reference, on every workload."""

import pytest

from parabench.cases.matrix import cases, params
from parabench.measure.checks import assert_loss_decreases

STRATEGIES = ["single", "torch-ddp", "torch-ddp-amp", "torch-zero", "torch-fsdp", "torch-fsdp1"]
OPTIMIZERS = ["sgd", "adam", "adamw", "adafactor"]

CASES = (
    params(cases(STRATEGIES, OPTIMIZERS, ["gpt2-text"]))
    + params(cases(STRATEGIES, ["sgd", "adamw"], ["mlp-digits"]))
    # A ViT from scratch needs more steps than the others before its loss clearly falls.
    + params(cases(STRATEGIES, ["adamw"], ["vit-digits"], steps=40))
    # Accumulation: no_sync on all but the last micro-batch must still give the one-process step.
    + params(cases(["torch-ddp", "torch-zero", "torch-fsdp", "torch-fsdp1"], ["sgd"], ["gpt2-text"], grad_accum=2))
    + params(cases(STRATEGIES[1:], ["adamw"], ["gpt2-text"], world_sizes=[4]), pytest.mark.full)
    + params(cases(["single", "torch-ddp", "torch-fsdp"], ["adamw"], ["vit-beans"], steps=10), pytest.mark.full)
)


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    if case.strategy != "single":
        check_parity(result)

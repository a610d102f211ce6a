"""fairscale: OSS under DDP, ShardedDataParallel, FullyShardedDataParallel, Pipe and AdaScale."""

from dataclasses import replace

import pytest

from parabench.cases.case import Case
from parabench.cases.matrix import cases, params
from parabench.measure.checks import assert_loss_decreases

OSS, SDP, FSDP, PIPE = "fairscale-oss", "fairscale-sdp", "fairscale-fsdp", "fairscale-pipe"
# ShardedDataParallel reducing each gradient on its own: right under zero_grad(set_to_none=True).
UNBUCKETED = {"buffer": 0}

CASES = (
    params(cases([OSS, FSDP], ["adamw", "sgd"], ["gpt2-text"]))
    + params(cases([OSS, FSDP], ["adamw"], ["vit-digits"], steps=40))
    # ShardedDataParallel with fairscale's defaults drifts (a strict expected failure, parabench/upstream/known.py);
    # the unbucketed configuration is the one benchmarked.
    + params(cases([SDP], ["adamw", "sgd"], ["gpt2-text"], precisions=["fp32"]))
    + params(cases([SDP], ["adamw", "sgd"], ["gpt2-text"], options=UNBUCKETED))
    + params(cases([SDP], ["adamw"], ["vit-digits"], steps=40, options=UNBUCKETED))
    # Accumulation: no_sync on all but the last micro-batch.
    + params(cases([OSS, FSDP], ["sgd"], ["gpt2-text"], precisions=["fp32"], grad_accum=2))
    + params(cases([SDP], ["sgd"], ["gpt2-text"], precisions=["fp32"], grad_accum=2, options=UNBUCKETED))
    # Pipe: the layers over two devices of one process, 4 micro-batches.
    + params(cases([PIPE], ["adamw", "sgd"], ["mlp-digits"]))
    + params(cases([PIPE], ["adamw"], ["vit-digits"], steps=40))
    # AdaScale scales SGD's step by its gain, estimated from the replicas' gradients.
    + params(cases(["torch-ddp"], ["adascale"], ["gpt2-text", "mlp-digits"]))
    + params(cases([OSS, SDP, FSDP], ["adamw"], ["gpt2-text"], world_sizes=[4], precisions=["fp32"]),
           pytest.mark.full)
)


def ddp_peer(case: Case) -> Case:
    """The torch DDP case with the same optimizer and data: what the sharding is measured against."""
    return replace(case, strategy="torch-ddp", options=(), precision="fp32")


@pytest.mark.parametrize("case", CASES)
def test_train(case, run_case, check_parity, relative_to):
    result = run_case(case)
    assert_loss_decreases(result.losses)
    check_parity(result)
    if case.strategy in (OSS, SDP, FSDP) and case.precision == "fp32":
        relative_to(result, ddp_peer(case))


@pytest.mark.fairscale
@pytest.mark.parametrize("world_size", [2, pytest.param(4, marks=pytest.mark.full)], ids=lambda n: f"w{n}")
@pytest.mark.parametrize("strategy,options", [(OSS, {}), (SDP, UNBUCKETED), (FSDP, {})],
                         ids=[OSS, SDP, FSDP])
def test_sharded_state(strategy, options, world_size, measured, record_property):
    """Per rank, OSS and ShardedDataParallel hold about 1/world of DDP's optimizer state (whole tensors go
    to one rank each, so the split is uneven), FSDP exactly 1/world of its parameters and optimizer state."""
    ddp = measured(Case("torch-ddp", "adamw", "gpt2-text", world_size))
    sharded = measured(Case(strategy, "adamw", "gpt2-text", world_size, options=options))
    ratios = {category: [mine.state_bytes[category] / full.state_bytes[category]
                         for mine, full in zip(sharded.ranks, ddp.ranks)]
              for category in (["optimizer", "params"] if strategy == FSDP else ["optimizer"])}
    for category, values in ratios.items():
        for rank, ratio in enumerate(values):
            record_property(f"rank{rank}_{category}_ratio", round(ratio, 6))
        # Together the ranks hold one copy (FSDP pads its flat shards by at most world-1 elements each).
        assert sum(values) == pytest.approx(1.0, rel=1e-3), f"{category}: per-rank ratios {values} do not sum to 1"
        tolerance = 1e-3 if strategy == FSDP else 0.25
        assert max(values) == pytest.approx(1 / world_size, rel=tolerance), (
            f"{category}: the largest rank holds {max(values):.4f} of DDP's, expected about 1/{world_size}")

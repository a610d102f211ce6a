"""The parts model and pipeline parallelism are built from: stage balance, activations between ranks,
GPT-2's tensor-parallel rewrite, held-out splits, and the fairscale entries' configuration."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.cases.case import Case
from parabench.cases.matrix import cases, reference_of
from parabench.measure.converge import Target, holdout_split
from parabench.strategies.pipeline import balance, stage_slice


def _layers(sizes: list[int]) -> list[torch.nn.Module]:
    return [torch.nn.Linear(size, 1, bias=False) if size else torch.nn.ReLU() for size in sizes]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=7), st.integers(1, 7))
def test_balance_is_contiguous_non_empty_and_no_worse_than_any_other_split(sizes, stages):
    layers = _layers(sizes)
    if stages > len(layers):
        with pytest.raises(ValueError, match="non-empty stages"):
            balance(layers, stages)
        return
    lengths = balance(layers, stages)
    assert len(lengths) == stages and min(lengths) >= 1 and sum(lengths) == len(layers)
    largest = max(sum(sizes[stage_slice(lengths, i)]) for i in range(stages))
    for cuts in itertools.combinations(range(1, len(sizes)), stages - 1):
        bounds = (0, *cuts, len(sizes))
        assert largest <= max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))


def test_mlp_digits_splits_where_the_parameters_balance():
    from parabench.workloads import WORKLOADS

    workload = WORKLOADS.get("mlp-digits")
    layers = workload.pipeline_layers(workload.build_model())
    lengths = balance(layers, 2)
    # Linear 64→256 (16 640) | Linear 256→256 (65 792) + Linear 256→10 (2 570), the ReLUs on either side.
    held = [sum(p.numel() for layer in layers[stage_slice(lengths, i)] for p in layer.parameters()) for i in (0, 1)]
    assert held == [16_640, 68_362]


def test_activations_cross_ranks_with_their_dtype_and_shape(pools):
    from tests.rank_tasks import send_and_receive

    answers = pools.run(2, send_and_receive, timeout_s=60)
    assert answers[1] == [("torch.bfloat16", (3, 5, 7)), ("torch.float32", (4,))]


def test_gpt2_rewritten_for_tensor_parallelism_computes_the_same_logits():
    """Conv1D → Linear and the fused q/k/v split into three: the model is the same function."""
    from parabench.workloads import WORKLOADS
    from parabench.workloads.text import _as_linear, _SplitQKV

    workload = WORKLOADS.get("gpt2-text")
    torch.manual_seed(0)
    model = workload.build_model()
    ids = workload.batch(torch.arange(4))["input_ids"]
    before = model(input_ids=ids).logits
    for block in model.transformer.h:
        block.attn.c_attn = _SplitQKV(block.attn.c_attn, block.attn.split_size)
        block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj = (
            _as_linear(m) for m in (block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_vit_pipeline_layers_are_the_models_own_forward():
    from parabench.workloads import WORKLOADS

    workload = WORKLOADS.get("vit-digits")
    torch.manual_seed(0)
    model = workload.build_model()
    batch = workload.batch(torch.arange(8))
    staged = torch.nn.Sequential(*workload.pipeline_layers(model))
    torch.testing.assert_close(staged(batch["pixels"]), workload.logits(model, batch), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 3000), st.floats(0.01, 0.9), st.integers(0, 5))
def test_holdout_split_is_disjoint_complete_and_fixed(n, fraction, seed):
    train, held = holdout_split(n, fraction, seed)
    assert len(set(train.tolist()) | set(held.tolist())) == n == len(train) + len(held)
    assert len(held) == max(1, round(n * fraction))
    assert torch.equal(holdout_split(n, fraction, seed)[1], held)


@pytest.mark.parametrize("bad", [dict(accuracy=0.0), dict(accuracy=1.5), dict(holdout=1.0),
                                 dict(eval_every=0), dict(eval_every=50, max_steps=10)])
def test_a_target_that_cannot_be_met_is_refused(bad):
    with pytest.raises(ValueError, match="need"):
        Target(**bad)


def test_adascale_is_checked_against_one_process_accumulating_one_micro_batch_per_replica():
    case = Case("torch-ddp", "adascale", "gpt2-text", 2)
    reference = reference_of(case)
    assert (reference.strategy, reference.world_size, reference.grad_accum) == ("single", 1, 2)
    assert reference_of(Case("torch-ddp", "adamw", "gpt2-text", 2)).grad_accum == 1


@pytest.mark.parametrize("strategy,options,message", [
    ("fairscale-sdp", {"bucket": 1}, "unknown option"),
    ("fairscale-sdp", {"buffer": 1.5}, "reduce_buffer_size"),
    ("fairscale-pipe", {"chunks": 0}, "micro-batches"),
    ("torch-pp-1f1b", {"stages": 2}, "unknown option"),
])
def test_bad_options_are_refused_at_collection(strategy, options, message):
    with pytest.raises(ValueError, match=message):
        cases([strategy], ["sgd"], ["mlp-digits"], options=options)


def test_the_fairscale_fsdp_shim_names_the_version_it_was_written_for(monkeypatch):
    import importlib.metadata

    from parabench.upstream import fairscale_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.0")
    reason = fairscale_cpu.shim_unavailable()
    assert "needs CUDA" in reason and "written for fairscale 0.4.13, found 0.5.0" in reason


def test_the_fairscale_cpu_shim_is_keyed_on_the_cases_device_not_the_hosts(monkeypatch):
    import importlib.metadata

    from parabench.cases.requirements import Machine, unmet
    from parabench.strategies import STRATEGIES
    from parabench.upstream import fairscale_cpu

    class Recorded:
        def ensure(self) -> None:
            applied.append(self)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host
    applied: list[Recorded] = []
    monkeypatch.setattr(fairscale_cpu, "CPU_PATCHES", (Recorded(), Recorded()))
    fairscale_cpu.ensure_cpu_shim(torch.device("cuda", 0))
    assert applied == []
    fairscale_cpu.ensure_cpu_shim(torch.device("cpu"))  # --bench-device=cpu on that host
    assert applied == list(fairscale_cpu.CPU_PATCHES)
    # Its fit to the installed fairscale is asked of a CPU case only.
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.0")
    needs = STRATEGIES.get("fairscale-fsdp").requirements("fp32")
    cpu_case = unmet("fairscale-fsdp", needs, 2, Machine(cuda_devices=0, max_cpu_world_size=2))
    assert cpu_case is not None and "written for fairscale 0.4.13, found 0.5.0" in cpu_case
    assert unmet("fairscale-fsdp", needs, 2, Machine(cuda_devices=2, max_cpu_world_size=2)) is None

"""Registries, requirements turned into skip reasons, and the case matrix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import parabench.cases.requirements as requirements_module
from parabench.cases import matrix
from parabench.cases.case import PRECISIONS, Case
from parabench.cases.optimizers import OPTIMIZERS, OptimizerSpec
from parabench.cases.registry import Registry, UnknownNameError
from parabench.cases.requirements import Machine, Requirements, unmet
from parabench.strategies import STRATEGIES
from parabench.workloads import WORKLOADS, Workload

CPU = Machine(cuda_devices=0, max_cpu_world_size=4)
TWO_GPUS = Machine(cuda_devices=2, max_cpu_world_size=4)


# --------------------------------------------------------------------------- Registry

def test_unknown_name_lists_the_known_names():
    registry: Registry[int] = Registry("widget")
    registry.add("zeta", 1)
    registry.add("alpha", 2)
    with pytest.raises(UnknownNameError) as info:
        registry.get("gamma")
    message = str(info.value)
    assert "widget" in message and "'gamma'" in message
    assert "known: alpha, zeta" in message  # sorted
    assert isinstance(info.value, LookupError)


def test_unknown_name_in_an_empty_registry():
    with pytest.raises(UnknownNameError, match="known: none"):
        Registry("widget").get("anything")


def test_duplicate_registration_raises_and_keeps_the_first():
    registry: Registry[int] = Registry("widget")
    registry.add("one", 1)
    with pytest.raises(ValueError, match="'one'.*twice"):
        registry.add("one", 2)
    assert registry.get("one") == 1

    @registry.register("two")
    class Two:
        pass

    with pytest.raises(ValueError, match="twice"):
        registry.register("two")(object)
    assert registry.get("two") is Two


def test_registry_lookup_membership_and_order():
    registry: Registry[str] = Registry("widget")
    for name in ("b", "a", "c"):
        assert registry.add(name, name.upper()) == name.upper()
    assert registry.names() == ["b", "a", "c"]  # registration order
    assert list(registry) == ["b", "a", "c"]
    assert "a" in registry and "z" not in registry
    assert registry.get("c") == "C"


@pytest.mark.parametrize("registry, expected", [
    (STRATEGIES, {"single", "torch-ddp", "torch-ddp-amp", "torch-zero", "torch-fsdp", "torch-fsdp1"}),
    (OPTIMIZERS, {"sgd", "adam", "adamw", "adafactor"}),
    (WORKLOADS, {"mlp-digits", "vit-digits", "gpt2-text", "vit-beans"}),
])
def test_real_registries_contain_the_expected_names(registry, expected):
    assert expected <= set(registry.names())


def test_registry_entries_answer_to_their_names():
    for name in STRATEGIES:
        assert STRATEGIES.get(name).name == name
        assert set(STRATEGIES.get(name).precisions) <= set(PRECISIONS)
    for name in OPTIMIZERS:
        spec = OPTIMIZERS.get(name)
        assert isinstance(spec, OptimizerSpec) and spec.name == name
    for name in WORKLOADS:
        workload = WORKLOADS.get(name)
        assert isinstance(workload, Workload) and workload.name == name


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adafactor"])
def test_optimizer_specs_build_working_optimizers(name):
    import torch

    spec = OPTIMIZERS.get(name)
    weight = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = spec.build([weight])
    assert isinstance(optimizer, spec.cls)
    assert optimizer.defaults["lr"] == spec.kwargs["lr"]
    weight.sum().backward()
    optimizer.step()
    assert not torch.equal(weight.detach(), torch.ones(4, 4))


# --------------------------------------------------------------------------- requirements.unmet

def test_nothing_required_is_met():
    assert unmet("x", Requirements(), 1, CPU) is None


def test_missing_package_names_it_with_an_install_hint():
    reason = unmet("my-strategy", Requirements(packages=("json", "no_such_package_xyz")), 2, CPU)
    assert reason is not None
    assert reason.startswith("my-strategy")
    assert "'no_such_package_xyz'" in reason
    assert "pip install no_such_package_xyz" in reason


def test_missing_known_package_gets_its_specific_hint(monkeypatch):
    monkeypatch.setattr(requirements_module, "package_available", lambda name: False)
    reason = unmet("ds-zero", Requirements(packages=("deepspeed",)), 2, CPU)
    assert "'deepspeed'" in reason and ".[deepspeed]" in reason


def test_cuda_needed_on_a_machine_without_cuda():
    reason = unmet("amp", Requirements(cuda=True), 2, Machine(cuda_devices=0, max_cpu_world_size=8))
    assert reason == "amp needs a CUDA device"
    assert unmet("amp", Requirements(cuda=True), 2, TWO_GPUS) is None


def test_world_size_too_small():
    reason = unmet("ddp", Requirements(min_world_size=2), 1, CPU)
    assert "at least 2 ranks" in reason and "has 1" in reason and reason.startswith("ddp")


def test_world_size_too_large_for_the_strategy():
    reason = unmet("single", Requirements(max_world_size=1), 2, CPU)
    assert "at most 1" in reason and "has 2" in reason and reason.startswith("single")


def test_world_size_not_a_multiple():
    reason = unmet("tp", Requirements(world_size_multiple_of=4), 6, Machine(0, 8))
    assert "divisible by 4" in reason
    assert unmet("tp", Requirements(world_size_multiple_of=4), 8, Machine(0, 8)) is None


def test_more_ranks_than_the_cpu_machine_allows():
    reason = unmet("ddp", Requirements(min_world_size=2), 8, CPU)
    assert "8 ranks" in reason and "limited to 4" in reason and "--bench-max-ranks" in reason
    assert unmet("ddp", Requirements(min_world_size=2), 4, CPU) is None


def test_more_ranks_than_cuda_devices():
    reason = unmet("ddp", Requirements(min_world_size=2), 4, TWO_GPUS)
    assert "4 ranks" in reason and "2 CUDA device" in reason
    assert unmet("ddp", Requirements(min_world_size=2), 2, TWO_GPUS) is None


def test_probe_reasons_are_prefixed_and_first_unmet_wins():
    calls = []

    def failing():
        calls.append("failing")
        return "needs the moon"

    def passing():
        calls.append("passing")
        return None

    assert unmet("w", Requirements(probes=(passing, failing)), 1, CPU) == "w needs the moon"
    assert calls == ["passing", "failing"]
    # a package failure comes before (and prevents) the probes
    calls.clear()
    reason = unmet("w", Requirements(packages=("no_such_package_xyz",), probes=(failing,)), 1, CPU)
    assert "no_such_package_xyz" in reason and calls == []


def test_machine_device_and_limit():
    assert CPU.device == "cpu" and CPU.max_world_size() == 4
    assert TWO_GPUS.device == "cuda" and TWO_GPUS.max_world_size() == 2


def test_requirements_add_combines_every_field():
    def probe_a():
        return None

    def probe_b():
        return None

    a = Requirements(packages=("x", "y"), min_world_size=2, max_world_size=8, world_size_multiple_of=4,
                     probes=(probe_a,))
    b = Requirements(packages=("y", "z"), cuda=True, min_world_size=3, max_world_size=None,
                     world_size_multiple_of=6, probes=(probe_b,))
    combined = a + b
    assert combined.packages == ("x", "y", "z")
    assert combined.cuda is True
    assert combined.min_world_size == 3
    assert combined.max_world_size == 8
    assert combined.world_size_multiple_of == 12
    assert combined.probes == (probe_a, probe_b)
    assert (Requirements(max_world_size=4) + Requirements(max_world_size=2)).max_world_size == 2
    assert (Requirements() + Requirements()).max_world_size is None


size_requirements = st.builds(
    Requirements,
    cuda=st.booleans(),
    min_world_size=st.integers(1, 8),
    max_world_size=st.one_of(st.none(), st.integers(1, 8)),
    world_size_multiple_of=st.integers(1, 6),
)
machines = st.builds(Machine, cuda_devices=st.integers(0, 4), max_cpu_world_size=st.integers(1, 8))


@settings(max_examples=300)
@given(size_requirements, size_requirements, st.integers(1, 12), machines)
def test_sum_of_requirements_is_met_exactly_when_both_are(a, b, world_size, machine):
    both = unmet("a", a, world_size, machine) is None and unmet("b", b, world_size, machine) is None
    assert (unmet("a+b", a + b, world_size, machine) is None) == both


# --------------------------------------------------------------------------- matrix.skip_reason

def test_skip_reason_for_an_unsupported_precision():
    reason = matrix.skip_reason(Case("torch-ddp", "sgd", "mlp-digits", 2, "bf16"), TWO_GPUS)
    assert reason == "torch-ddp does not run in bf16; it supports fp32"
    reason = matrix.skip_reason(Case("torch-ddp-amp", "sgd", "mlp-digits", 2, "fp32"), TWO_GPUS)
    assert "torch-ddp-amp does not run in fp32" in reason and "bf16" in reason and "fp16" in reason


@pytest.mark.parametrize("strategy, world_size", [("single", 1), ("torch-ddp-amp", 2)])
def test_skip_reason_for_fp16_on_cpu(strategy, world_size):
    reason = matrix.skip_reason(Case(strategy, "sgd", "mlp-digits", world_size, "fp16"), CPU)
    assert reason == f"{strategy} needs a CUDA device (fp16: CPU kernels run bf16, use bf16 here)"
    assert matrix.skip_reason(Case(strategy, "sgd", "mlp-digits", world_size, "fp16"), TWO_GPUS) is None


def test_skip_reason_none_for_a_runnable_cpu_case():
    assert matrix.skip_reason(Case("torch-ddp", "sgd", "mlp-digits", 2), CPU) is None
    assert matrix.skip_reason(Case("torch-ddp-amp", "adamw", "gpt2-text", 2, "bf16"), CPU) is None


def test_skip_reason_for_world_sizes():
    assert "at least 2" in matrix.skip_reason(Case("torch-fsdp1", "sgd", "mlp-digits", 1), CPU)
    assert "at most 1" in matrix.skip_reason(Case("single", "sgd", "mlp-digits", 2), CPU)
    assert "limited to 4" in matrix.skip_reason(Case("torch-fsdp", "sgd", "mlp-digits", 8), CPU)


def test_skip_reason_unknown_names_raise():
    with pytest.raises(UnknownNameError, match="strategy 'nope'"):
        matrix.skip_reason(Case("nope", "sgd", "mlp-digits", 2), CPU)
    with pytest.raises(UnknownNameError, match="optimizer 'nope'"):
        matrix.skip_reason(Case("torch-ddp", "nope", "mlp-digits", 2), CPU)
    with pytest.raises(UnknownNameError, match="workload 'nope'"):
        matrix.skip_reason(Case("torch-ddp", "sgd", "nope", 2), CPU)


# --------------------------------------------------------------------------- matrix.cases

def test_cases_single_gets_world_size_one_and_every_precision():
    found = matrix.cases(["single", "torch-ddp", "torch-ddp-amp"], ["sgd"], ["mlp-digits"], world_sizes=(2, 4))
    single = [c for c in found if c.strategy == "single"]
    assert {(c.world_size, c.precision) for c in single} == {(1, "fp32"), (1, "bf16"), (1, "fp16")}
    ddp = [c for c in found if c.strategy == "torch-ddp"]
    assert {(c.world_size, c.precision) for c in ddp} == {(2, "fp32"), (4, "fp32")}
    amp = [c for c in found if c.strategy == "torch-ddp-amp"]
    assert {(c.world_size, c.precision) for c in amp} == {(2, "bf16"), (4, "bf16"), (2, "fp16"), (4, "fp16")}
    assert len(found) == 9


def test_cases_precision_filter_and_fields():
    found = matrix.cases(["single", "torch-ddp", "torch-ddp-amp"], ["sgd", "adam"], ["mlp-digits"],
                         precisions=("bf16",), global_batch=32, grad_accum=2)
    assert {c.precision for c in found} == {"bf16"}
    assert {c.strategy for c in found} == {"single", "torch-ddp-amp"}
    assert all(c.global_batch == 32 and c.grad_accum == 2 for c in found)
    assert len(found) == 4


def test_cases_unknown_names_fail():
    for args in ((["nope"], ["sgd"], ["mlp-digits"]), (["single"], ["nope"], ["mlp-digits"]),
                 (["single"], ["sgd"], ["nope"])):
        with pytest.raises(UnknownNameError):
            matrix.cases(*args)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(STRATEGIES.names()), min_size=1, max_size=6, unique=True),
       st.lists(st.sampled_from(["sgd", "adam", "adamw", "adafactor"]), min_size=1, max_size=4, unique=True),
       st.lists(st.sampled_from(["mlp-digits", "vit-digits", "gpt2-text"]), min_size=1, max_size=3, unique=True),
       st.lists(st.integers(1, 8), min_size=1, max_size=3),
       st.one_of(st.none(), st.lists(st.sampled_from(PRECISIONS), min_size=1, unique=True)))
def test_cases_property(strategies, optimizers, workloads, world_sizes, precisions):
    found = matrix.cases(strategies, optimizers, workloads, world_sizes=world_sizes, precisions=precisions)
    assert len({c.id for c in found}) == len(found)
    expected = 0
    for strategy in strategies:
        cls = STRATEGIES.get(strategy)
        supported = [p for p in cls.precisions if precisions is None or p in precisions]
        sizes = {1} if cls.requires.max_world_size == 1 else set(world_sizes)
        expected += len(supported) * len(sizes) * len(optimizers) * len(workloads)
    assert len(found) == expected
    for case in found:
        cls = STRATEGIES.get(case.strategy)
        assert cls.supports(case.precision)
        assert precisions is None or case.precision in precisions
        if cls.requires.max_world_size == 1:  # one-process strategies: single, fairscale-pipe
            assert case.world_size == 1
        else:
            assert case.world_size in world_sizes


def test_params_carry_ids_and_family_marks():
    found = matrix.cases(["single", "torch-ddp"], ["sgd"], ["mlp-digits"])
    extra = pytest.mark.full
    parameters = matrix.params(found, extra)
    assert [p.id for p in parameters] == [c.id for c in found]
    for parameter, built in zip(parameters, found):
        assert parameter.values == (built,)
        names = [m.name for m in parameter.marks]
        assert names == ["torch", "full"]


# --------------------------------------------------------------------------- references in bf16

@pytest.mark.parametrize("strategy", ["deepspeed-zero2", "colossalai-lowlevelzero2", "colossalai-torch-fsdp",
                                      "colossalai-gemini", "colossalai-hybrid"])
def test_strategies_that_train_bf16_weights_are_held_against_a_one_process_run_that_does(strategy):
    assert STRATEGIES.get(strategy).master_weights
    bf16 = Case(strategy, "adamw", "gpt2-text", 2, "bf16", grad_accum=2)
    assert matrix.reference_of(bf16) == Case("single-master", "adamw", "gpt2-text", 1, "bf16")
    # In fp32 there are no master weights to keep: the plain one-process run.
    assert matrix.reference_of(Case(strategy, "adamw", "gpt2-text", 2)).strategy == "single"


@pytest.mark.parametrize("strategy", ["torch-ddp-amp", "torch-tp", "fairscale-oss", "torch-pp-1f1b"])
def test_autocast_strategies_are_held_against_the_autocast_reference(strategy):
    assert not STRATEGIES.get(strategy).master_weights
    assert matrix.reference_of(Case(strategy, "adamw", "mlp-digits", 2, "bf16")).strategy == "single"


def test_the_equivalent_runs_split_the_reference_batch_into_micro_batches():
    reference = Case("single", "sgd", "gpt2-text", 1, "bf16", steps=20)
    assert matrix.equivalents_of(reference) == [Case("single", "sgd", "gpt2-text", 1, "bf16", grad_accum=2, steps=20),
                                                Case("single", "sgd", "gpt2-text", 1, "bf16", grad_accum=4, steps=20)]
    # AdaScale's reference accumulates one micro-batch per replica already; the splits go further.
    accumulating = Case("single", "adascale", "mlp-digits", 1, "bf16", grad_accum=2)
    assert [c.grad_accum for c in matrix.equivalents_of(accumulating)] == [4, 8]
    assert [c.grad_accum for c in matrix.equivalents_of(Case("single", "sgd", "mlp-digits", 1, "bf16",
                                                              global_batch=6))] == [2]
    with pytest.raises(ValueError, match="global batch 3 splits into none of"):
        matrix.equivalents_of(Case("single", "sgd", "mlp-digits", 1, "bf16", global_batch=3))

"""Case ids, validation, reference cases and batch/shard arithmetic."""

from __future__ import annotations

import pickle
import re
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from parabench.cases.case import PRECISIONS, Case, shard_bounds, split_batch

STRATEGY_NAMES = ["single", "torch-ddp", "torch-ddp-amp", "torch-zero", "torch-fsdp", "torch-fsdp1"]
OPTIMIZER_NAMES = ["sgd", "adam", "adamw", "adafactor"]
WORKLOAD_NAMES = ["mlp-digits", "vit-digits", "gpt2-text", "vit-beans"]
# Option keys a strategy could plausibly take: none is a prefix of another, none looks like b<N>/ga<N>/w<N>.
OPTION_KEYS = ["offload", "bucket_mb", "reshard_after_forward", "cpu_offload", "stage", "overlap_comm"]


# --------------------------------------------------------------------------- golden ids

# (not named "case": the suite's collection hook treats a "case" parameter as a benchmark case)
@pytest.mark.parametrize("built, expected", [
    (Case("torch-zero", "adamw", "gpt2-text", 2), "torch-zero-adamw-gpt2_text-w2-fp32"),
    (Case("single", "sgd", "mlp-digits", 1), "single-sgd-mlp_digits-w1-fp32"),
    (Case("torch-ddp-amp", "adam", "vit-digits", 4, "bf16"), "torch-ddp-amp-adam-vit_digits-w4-bf16"),
    (Case("torch-ddp", "sgd", "mlp-digits", 2, global_batch=64), "torch-ddp-sgd-mlp_digits-w2-fp32-b64"),
    (Case("torch-ddp", "sgd", "mlp-digits", 2, grad_accum=4), "torch-ddp-sgd-mlp_digits-w2-fp32-ga4"),
    (Case("torch-fsdp", "adamw", "gpt2-text", 2, "bf16", global_batch=32, grad_accum=2),
     "torch-fsdp-adamw-gpt2_text-w2-bf16-b32-ga2"),
    # options: sorted by key; True renders as the bare key, False as no_<key>, other values appended
    (Case("torch-fsdp", "adam", "vit-beans", 2, options=(("reshard_after_forward", False), ("offload", True))),
     "torch-fsdp-adam-vit_beans-w2-fp32-offload-no_reshard_after_forward"),
    (Case("torch-zero", "sgd", "mlp-digits", 2, options={"bucket_mb": 25, "offload": True}),
     "torch-zero-sgd-mlp_digits-w2-fp32-bucket_mb25-offload"),
])
def test_golden_ids(built, expected):
    assert built.id == expected
    assert str(built) == expected


def test_grad_accum_one_and_default_batch_are_not_rendered():
    case = Case("torch-ddp", "sgd", "mlp-digits", 2, global_batch=None, grad_accum=1)
    assert "-b" not in case.id.split("fp32", 1)[1]
    assert "ga" not in case.id


def test_steps_and_warmup_do_not_change_the_id_but_a_seed_does():
    # Step counts come from the command line (--bench-steps): a stored result must still match.
    case = Case("torch-ddp", "sgd", "mlp-digits", 2)
    assert Case("torch-ddp", "sgd", "mlp-digits", 2, seed=3).id == case.id + "-seed3"
    assert case.with_steps(7, 0).id == case.id
    assert case.with_steps(7, 0).total_steps == 7
    assert case.with_steps(warmup_steps=5).steps == case.steps


# --------------------------------------------------------------------------- properties

option_values = st.one_of(st.booleans(), st.integers(min_value=2, max_value=512),
                          st.sampled_from(["cpu", "full", "none"]))
options_st = st.dictionaries(st.sampled_from(OPTION_KEYS), option_values, max_size=3)

cases_st = st.builds(
    Case,
    strategy=st.sampled_from(STRATEGY_NAMES),
    optimizer=st.sampled_from(OPTIMIZER_NAMES),
    workload=st.sampled_from(WORKLOAD_NAMES),
    world_size=st.integers(min_value=1, max_value=16),
    precision=st.sampled_from(PRECISIONS),
    global_batch=st.one_of(st.none(), st.integers(min_value=1, max_value=1024)),
    grad_accum=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=5),
    options=options_st.map(lambda d: tuple(d.items())),
)


def _identity(case: Case) -> tuple:
    """Everything the id is meant to encode (steps and warm-up deliberately are not)."""
    return (case.strategy, case.optimizer, case.workload, case.world_size, case.precision,
            case.global_batch, case.grad_accum, case.seed, case.options)


@settings(max_examples=300)
@given(st.lists(cases_st, min_size=2, max_size=8))
def test_ids_unique_across_distinct_cases(found):
    by_id: dict[str, tuple] = {}
    for case in found:
        identity = _identity(case)
        if case.id in by_id:
            assert by_id[case.id] == identity, f"two distinct cases share the id {case.id}"
        by_id[case.id] = identity


@settings(max_examples=100)
@given(cases_st, st.randoms(use_true_random=False))
def test_id_is_deterministic_and_independent_of_options_order(case, rnd):
    shuffled = list(case.options)
    rnd.shuffle(shuffled)
    again = Case(case.strategy, case.optimizer, case.workload, case.world_size, case.precision,
                 case.global_batch, case.grad_accum, seed=case.seed, options=tuple(shuffled))
    assert again.id == case.id
    assert again == case
    assert hash(again) == hash(case)
    assert case.id == case.id
    # options are stored sorted, whatever order they came in
    assert list(case.options) == sorted(case.options)


@settings(max_examples=100)
@given(cases_st)
def test_id_parts_start_with_the_identity(case):
    parts = case.id.split("-")
    prefix = f"{case.strategy}-{case.optimizer}-{case.workload.replace('-', '_')}-w{case.world_size}-{case.precision}"
    assert case.id.startswith(prefix)
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", case.id)
    assert all(parts)  # no empty component (no '--')


@settings(max_examples=100)
@given(cases_st)
def test_case_is_hashable_and_picklable(case):
    copy = pickle.loads(pickle.dumps(case))
    assert copy == case
    assert hash(copy) == hash(case)
    assert copy.id == case.id
    assert {case: 1}[copy] == 1
    assert copy.to_dict() == case.to_dict()


@settings(max_examples=100)
@given(cases_st)
def test_reference_is_the_single_process_case(case):
    ref = case.reference()
    assert ref.strategy == "single"
    assert ref.world_size == 1
    assert ref.grad_accum == 1
    assert ref.options == ()
    for name in ("optimizer", "workload", "precision", "global_batch", "warmup_steps", "steps", "seed"):
        assert getattr(ref, name) == getattr(case, name), name
    assert ref.reference() == ref


def test_to_dict_has_options_as_dict_and_the_id():
    case = Case("torch-zero", "adamw", "gpt2-text", 2, options=(("offload", True),))
    data = case.to_dict()
    assert data["options"] == {"offload": True}
    assert data["id"] == case.id
    assert data["world_size"] == 2


def test_option_lookup():
    case = Case("torch-zero", "adamw", "gpt2-text", 2, options={"offload": True})
    assert case.option("offload") is True
    assert case.option("missing") is None
    assert case.option("missing", 3) == 3


def test_case_is_frozen():
    case = Case("torch-zero", "adamw", "gpt2-text", 2)
    with pytest.raises(AttributeError):
        case.world_size = 4  # type: ignore[misc]


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, field_pattern", [
    ({"precision": "fp8"}, r"precision"),
    ({"precision": "FP32"}, r"precision"),
    ({"world_size": 0}, r"world.size"),
    ({"world_size": -2}, r"world.size"),
    ({"grad_accum": 0}, r"grad_accum"),
    ({"steps": 0}, r"steps"),
    ({"warmup_steps": -1}, r"warmup_steps"),
    ({"global_batch": 0}, r"global.batch"),
])
def test_invalid_values_raise_naming_the_field(changes, field_pattern):
    arguments = dict(strategy="torch-ddp", optimizer="sgd", workload="mlp-digits", world_size=2)
    arguments.update(changes)
    with pytest.raises(ValueError, match=field_pattern):
        Case(**arguments)


def test_invalid_precision_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        Case("torch-ddp", "sgd", "mlp-digits", 2, precision="fp8")
    for precision in PRECISIONS:
        assert precision in str(info.value)


def test_replace_validates_too():
    case = Case("torch-ddp", "sgd", "mlp-digits", 2)
    with pytest.raises(ValueError, match="world.size"):
        replace(case, world_size=0)
    with pytest.raises(ValueError, match="steps"):
        case.with_steps(0)


# --------------------------------------------------------------------------- arithmetic

def test_split_batch_examples():
    assert split_batch(32, 2, 1) == 16
    assert split_batch(32, 2, 4) == 4
    assert split_batch(7, 1, 1) == 7


def test_split_batch_non_divisible_names_the_divisor():
    with pytest.raises(ValueError, match=r"divisible by 6\b"):
        split_batch(16, 3, 2)


@settings(max_examples=200)
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 16))
def test_split_batch_times_parts_is_the_global_batch(micro, ranks, accum):
    global_batch = micro * ranks * accum
    assert split_batch(global_batch, ranks, accum) == micro
    assert split_batch(global_batch, ranks, accum) * ranks * accum == global_batch


@settings(max_examples=200)
@given(st.integers(1, 4096), st.integers(1, 16), st.integers(1, 16))
def test_split_batch_raises_exactly_when_not_divisible(global_batch, ranks, accum):
    parts = ranks * accum
    if global_batch % parts:
        with pytest.raises(ValueError) as info:
            split_batch(global_batch, ranks, accum)
        assert f"divisible by {parts}" in str(info.value)
        assert str(global_batch) in str(info.value)
    else:
        assert split_batch(global_batch, ranks, accum) * parts == global_batch


def test_shard_bounds_examples():
    assert shard_bounds(10, 0, 2) == (0, 5)
    assert shard_bounds(10, 1, 2) == (5, 10)
    assert shard_bounds(12, 2, 3) == (8, 12)


@settings(max_examples=200)
@given(st.integers(0, 200), st.integers(1, 16))
def test_shards_tile_the_range(size, parts):
    n = size * parts
    bounds = [shard_bounds(n, rank, parts) for rank in range(parts)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))  # disjoint, contiguous, in order, exactly [0, n)
    assert {stop - start for start, stop in bounds} == {size}
    assert bounds[0][0] == 0 and bounds[-1][1] == n


@settings(max_examples=200)
@given(st.integers(1, 1000), st.integers(2, 16))
def test_shard_bounds_non_divisible_names_the_divisor(n, parts):
    assume(n % parts)
    with pytest.raises(ValueError) as info:
        shard_bounds(n, 0, parts)
    assert str(parts) in str(info.value)
    assert str(n) in str(info.value)


# --------------------------------------------------------------------------- known id ambiguities

def test_option_keys_with_hyphens_or_reserved_names_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="no '-'"):
        Case("torch-ddp", "sgd", "mlp-digits", 2, options={"no-sync": True})
    for reserved in ("b", "ga", "seed"):
        with pytest.raises(ValueError, match="not one of"):
            Case("torch-ddp", "sgd", "mlp-digits", 2, options={reserved: 16})
    with pytest.raises(ValueError, match="leave the option out"):
        Case("torch-ddp", "sgd", "mlp-digits", 2, options={"offload": None})
    with pytest.raises(ValueError, match="not starting with 'no_'"):
        Case("torch-ddp", "sgd", "mlp-digits", 2, options={"no_offload": True})
    assert Case("torch-ddp", "sgd", "mlp-digits", 2, options={"offload": False}).id.endswith("-no_offload")
    with pytest.raises(ValueError, match="letters"):
        Case("torch-ddp", "sgd", "mlp-digits", 2, options={"mode": "a-b"})


def test_cases_are_equal_exactly_when_their_ids_and_step_counts_are():
    flag = Case("torch-zero", "sgd", "mlp-digits", 2, options={"offload": True})
    one = Case("torch-zero", "sgd", "mlp-digits", 2, options={"offload": 1})
    assert flag.id != one.id and flag != one
    again = Case("torch-zero", "sgd", "mlp-digits", 2, options=(("offload", True),))
    assert again == flag and hash(again) == hash(flag)
    assert flag.with_steps(7) != flag

"""State bytes (each storage once), the profiler-replay peak, and step timing."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.measure.memory import STATE_CATEGORIES, optimizer_state_tensors, profiled_peak_bytes, state_bytes
from parabench.measure.timing import StepTimer

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool,
          torch.complex64, torch.uint8]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)

# Ways to refer to a storage without copying it.
VIEWS = {
    "same": lambda t: t,
    "flat": lambda t: t.view(-1),
    "slice": lambda t: t.view(-1)[1:],
    "transpose": lambda t: t.transpose(0, -1) if t.dim() else t,
    "detach": lambda t: t.detach(),
    "unsqueeze": lambda t: t.unsqueeze(0),
    "as_strided": lambda t: t.as_strided((min(t.numel(), 1),), (1,)),
}

# An entry: (category, index of the base tensor or a non-tensor, view name)
entries = st.lists(
    st.tuples(st.sampled_from(STATE_CATEGORIES),
              st.one_of(st.integers(0, 5), st.sampled_from([None, 3, 2.5, "step"])),
              st.sampled_from(sorted(VIEWS))),
    max_size=20)


def _fresh(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), min_size=6, max_size=6), entries)
def test_state_bytes_counts_each_storage_once_in_its_first_category(bases_spec, chosen):
    bases = [_fresh(shape, dtype) for shape, dtype in bases_spec]
    tensors: dict[str, list[object]] = {}
    for category, which, view in chosen:
        item = VIEWS[view](bases[which]) if isinstance(which, int) else which
        tensors.setdefault(category, []).append(item)

    # Independent oracle: a fresh contiguous tensor's storage holds numel × element size bytes;
    # a base belongs to the first category (in STATE_CATEGORIES order) that mentions it.
    expected = {c: 0 for c in STATE_CATEGORIES}
    claimed: set[int] = set()
    for category in STATE_CATEGORIES:
        for cat, which, _ in chosen:
            if cat == category and isinstance(which, int) and which not in claimed:
                claimed.add(which)
                expected[category] += bases[which].numel() * bases[which].element_size()
    expected["total"] = sum(expected[c] for c in STATE_CATEGORIES)

    # dict order must not matter: reverse it
    assert state_bytes(dict(reversed(list(tensors.items())))) == expected


def test_views_of_one_storage_are_counted_once():
    flat = torch.zeros(1000)  # 4000 bytes
    weight, bias = flat[:900].view(30, 30), flat[900:]
    result = state_bytes({"params": [flat, weight, weight.t(), bias, bias.view(10, 10)]})
    assert result["params"] == 4000
    assert result["total"] == 4000


def test_tied_weights_are_counted_once():
    embedding = torch.nn.Embedding(100, 16)
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head})
    params = [model["embedding"].weight, model["head"].weight]
    assert state_bytes({"params": params})["params"] == 100 * 16 * 4


def test_a_tensor_in_two_categories_counts_in_the_first_only():
    shared = torch.zeros(10, dtype=torch.float64)  # 80 bytes
    own = torch.zeros(5)  # 20 bytes
    result = state_bytes({"master": [shared], "optimizer": [shared, own], "grads": [shared]})
    assert result == {"params": 0, "grads": 80, "optimizer": 20, "master": 0, "buffers": 0, "total": 100}
    result = state_bytes({"master": [shared], "params": [shared.view(2, 5)]})
    assert result["params"] == 80 and result["master"] == 0 and result["total"] == 80


def test_non_tensors_and_none_are_ignored():
    t = torch.zeros(3)
    result = state_bytes({"params": [None, 1, 2.0, "x", t], "grads": [None, None], "optimizer": iter([5, t])})
    assert result == {"params": 12, "grads": 0, "optimizer": 0, "master": 0, "buffers": 0, "total": 12}
    assert state_bytes({}) == {"params": 0, "grads": 0, "optimizer": 0, "master": 0, "buffers": 0, "total": 0}


def test_ddp_buckets_rebuilt_after_the_first_backward_are_the_ones_counted(monkeypatch):
    from torch.nn.parallel import DistributedDataParallel

    from parabench.measure.memory import ddp_buckets

    # As two ranks log it (one rank never rebuilds): built as one bucket, rebuilt in gradient order as two
    logged = {"bucket_sizes": "6026040", "rebuilt_bucket_sizes": "2022040, 4004000", "has_rebuilt_buckets": 1,
              "gradient_as_bucket_view": 0}
    ddp = DistributedDataParallel.__new__(DistributedDataParallel)
    torch.nn.Module.__init__(ddp)
    monkeypatch.setattr(DistributedDataParallel, "_get_ddp_logging_data", lambda self: logged)
    assert [b.nbytes for b in ddp_buckets(ddp)] == [2_022_040, 4_004_000]
    logged["has_rebuilt_buckets"] = 0
    assert [b.nbytes for b in ddp_buckets(ddp)] == [6_026_040]


def test_ddp_holds_its_reducer_buckets_beside_the_gradients(tmp_path):
    """DDP's reducer keeps a flat buffer per bucket, as large as the gradients (gradient_as_bucket_view off);
    with the gradients as views of the buckets, the gradients count them and the buckets add nothing."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from parabench.measure.memory import Held, ddp_buckets

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 10))  # 62,210 parameters
        wrapped = DistributedDataParallel(model)
        built = ddp_buckets(wrapped)
        assert sum(b.nbytes for b in built) == 4 * 62_210  # one bucket of every gradient, as it was built
        wrapped(torch.randn(4, 300)).sum().backward()
        buckets = ddp_buckets(torch.nn.ModuleDict({"outer": wrapped}))  # found inside a wrapper too
        assert sum(b.nbytes for b in buckets) == 4 * 62_210
        params = list(model.parameters())
        held = state_bytes({"params": params, "grads": [p.grad for p in params], "buffers": buckets})
        assert held["buffers"] == held["grads"] == 4 * 62_210 and held["total"] == 3 * 4 * 62_210
        assert state_bytes({"buffers": [Held(7, "x")]})["total"] == 7
        as_views = DistributedDataParallel(torch.nn.Linear(3, 2), gradient_as_bucket_view=True)
        assert ddp_buckets(as_views) == [] and ddp_buckets(None) == []
    finally:
        dist.destroy_process_group()


def test_empty_tensors_hold_nothing():
    assert state_bytes({"params": [torch.zeros(0), torch.zeros(3, 0)]})["total"] == 0


def test_unknown_category_raises():
    with pytest.raises(ValueError, match="activations") as info:
        state_bytes({"params": [], "activations": [torch.zeros(1)]})
    for category in STATE_CATEGORIES:
        assert category in str(info.value)


def test_optimizer_state_of_adam_after_a_step():
    model = torch.nn.Linear(10, 5)  # 55 parameters, 220 bytes
    optimizer = torch.optim.Adam(model.parameters())
    assert list(optimizer_state_tensors(optimizer)) == []
    model(torch.ones(2, 10)).sum().backward()
    optimizer.step()
    state = list(optimizer_state_tensors(optimizer))
    expected_optimizer = sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))
    params = list(model.parameters())
    result = state_bytes({"params": params, "grads": [p.grad for p in params],
                          "optimizer": optimizer_state_tensors(optimizer)})
    assert result["params"] == 220 and result["grads"] == 220
    assert result["optimizer"] == expected_optimizer >= 2 * 220  # exp_avg and exp_avg_sq at least
    assert result["total"] == 440 + expected_optimizer


# --------------------------------------------------------------------------- profiled peak

SIZE = 4_000_000  # float32: 16 MB


def test_peak_of_one_large_allocation():
    def step():
        x = torch.empty(SIZE)
        x.fill_(1.0)
        del x

    peak = profiled_peak_bytes(step)
    assert 4 * SIZE <= peak < 2 * 4 * SIZE


def test_peak_replays_frees_in_order():
    # Two 16 MB tensors one after the other: the peak is one of them, not their sum.
    def sequential():
        a = torch.empty(SIZE)
        del a
        b = torch.empty(SIZE)
        del b

    # Two alive at once: the peak is their sum.
    def together():
        a = torch.empty(SIZE)
        b = torch.empty(SIZE)
        del a, b

    assert 4 * SIZE <= profiled_peak_bytes(sequential) < 2 * 4 * SIZE
    assert 2 * 4 * SIZE <= profiled_peak_bytes(together) < 3 * 4 * SIZE


def test_peak_is_relative_to_what_existed_before():
    existing = torch.ones(SIZE)

    def step():
        return existing.sum()

    assert profiled_peak_bytes(step) < 4 * SIZE // 10


def test_kept_result_still_counts():
    kept = []
    peak = profiled_peak_bytes(lambda: kept.append(torch.zeros(SIZE)))
    assert 4 * SIZE <= peak < 2 * 4 * SIZE
    assert kept[0].numel() == SIZE


# --------------------------------------------------------------------------- timing

def test_step_timer_returns_the_value_and_the_duration():
    timer = StepTimer(torch.device("cpu"))
    value, seconds = timer.time(lambda: (time.sleep(0.01), "done")[1])
    assert value == "done"
    assert 0.01 <= seconds < 1.0


def test_step_timer_measures_a_trivial_step_as_positive():
    value, seconds = StepTimer(torch.device("cpu")).time(lambda: 42)
    assert value == 42
    assert 0 < seconds < 0.5


def test_rss_bytes():
    pytest.importorskip("psutil")
    from parabench.measure.memory import rss_bytes

    sizes = rss_bytes()
    assert sizes["rss"] > 0
    assert sizes["max_rss"] >= sizes["rss"] * 0.9

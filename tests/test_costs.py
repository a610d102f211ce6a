"""parabench.measure.costs: every collective's calls, bytes and bus bytes by the nccl-tests convention, and FLOPs."""

from __future__ import annotations

import pytest
import torch

from parabench.gate.verdict import BytesRule, Verdict, judge_comm
from parabench.measure.costs import BUS_FACTOR, CommCounter, total
from parabench.runtime.pool import PoolManager
from tests import rank_tasks


@pytest.fixture(scope="module")
def counted():
    pools = PoolManager(process_group_timeout_s=120)
    try:
        yield pools.run(2, rank_tasks.count_collectives, timeout_s=120)
    finally:
        pools.close()


def test_each_collective_has_its_size_and_bus_bytes(counted):
    (per_rank, _), (other, _) = counted
    assert per_rank["collectives"] == other["collectives"], "both ranks put the same into every collective"
    c = per_rank["collectives"]
    # all-reduce: 400 B over 2 ranks (bus 2(n-1)/n = 1×), 40 B over one rank (bus 0), 32 B functional (bus 1×)
    assert c["all_reduce"] == {"calls": 3, "bytes": 472, "bus_bytes": 432, "group_sizes": [1, 2]}
    assert c["all_gather"] == {"calls": 1, "bytes": 512, "bus_bytes": 256, "group_sizes": [2]}  # output, (n-1)/n
    assert c["reduce_scatter"] == {"calls": 1, "bytes": 256, "bus_bytes": 128, "group_sizes": [2]}  # input
    assert c["broadcast"] == {"calls": 1, "bytes": 20, "bus_bytes": 20, "group_sizes": [2]}


def test_a_ddp_step_all_reduces_every_gradient_once(counted):
    (per_rank, flops), _ = counted
    parameters = 16 * 8 + 8 + 8 * 4 + 4
    assert per_rank["ddp"]["all_reduce"]["bytes"] == 4 * parameters
    assert per_rank["ddp"]["all_reduce"]["bus_bytes"] == 4 * parameters  # 2(n-1)/n = 1 at n = 2
    # Forward: 2·m·n·k per linear; backward: the weight gradients of both and the input gradient of the second
    # (the first layer's input needs none): 2·6·(16·8 + 8·4) + 2·6·(16·8 + 8·4) + 2·6·8·4.
    assert flops == 2 * 6 * (16 * 8 + 8 * 4) * 2 + 2 * 6 * 8 * 4


@pytest.mark.parametrize("n", [2, 4, 8])
def test_bus_factors_are_nccl_tests(n):
    assert BUS_FACTOR["all_reduce"](n) == (2 * (n - 1), n)
    assert BUS_FACTOR["all_gather"](n) == BUS_FACTOR["reduce_scatter"](n) == (n - 1, n)
    assert BUS_FACTOR["broadcast"](n) == (1, 1)


def entry(calls, nbytes):
    return {"calls": calls, "bytes": nbytes, "bus_bytes": nbytes, "group_sizes": [2]}


def test_comm_judgement_is_exact_and_names_what_changed():
    base = {"all_reduce": entry(2, 4000)}
    assert judge_comm(base, dict(base), BytesRule()).verdict is Verdict.UNCHANGED
    more = judge_comm(base, {"all_reduce": entry(3, 4004)}, BytesRule())
    assert more.verdict is Verdict.REGRESSED and "all_reduce 2×" in more.detail
    # within a byte tolerance, one more call is still a regression; one fewer an improvement
    loose = BytesRule(rtol=0.01)
    assert judge_comm(base, {"all_reduce": entry(3, 4004)}, loose).verdict is Verdict.REGRESSED
    assert judge_comm(base, {"all_reduce": entry(1, 3996)}, loose).verdict is Verdict.IMPROVED
    assert total({"a": entry(1, 5), "b": entry(2, 7)}, "calls") == 3


class _Wrapping(torch.Tensor):
    """A tensor subclass whose ``__torch_function__`` rewraps every result and runs ``backward`` on a plain view,
    as ColossalAI's ``ColoTensor`` (Gemini's parameters and activations) does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            return torch.Tensor(args[0]).backward(**kwargs)
        with torch._C.DisableTorchFunction():
            out = func(*args, **kwargs)
        if type(out) is torch.Tensor:
            with torch._C.DisableTorchFunction():
                return out.as_subclass(cls)
        return out


def test_a_tensor_subclass_that_rewraps_its_results_is_counted():
    # Under the counting mode an op inside __torch_dispatch__ must not call the subclass' __torch_function__ again:
    # it did, and ColoTensor's backward, given its own rewrapped result, recursed until Python's limit.
    weight = torch.Tensor._make_subclass(_Wrapping, torch.ones(4, 3), True)
    with CommCounter() as counter:
        (torch.ones(2, 4) @ weight).sum().backward()
    assert counter.counts() == {}
    assert torch.equal(weight.grad, torch.full((4, 3), 2.0))


def test_the_profiler_records_cuda_kernels_for_a_cuda_case_only(monkeypatch):
    from torch.profiler import ProfilerActivity

    from parabench.measure.costs import profiler_activities

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host; --bench-device=cpu runs CPU cases
    assert profiler_activities(torch.device("cpu")) == [ProfilerActivity.CPU]
    assert profiler_activities(torch.device("cuda", 0)) == [ProfilerActivity.CPU, ProfilerActivity.CUDA]

"""Rank pools under faults: a raising rank, a hung collective, a killed rank, skips, clean shutdown."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from parabench.runtime.pool import CaseTimeout, PoolManager, RankFailure, RankMemoryLimit, RankSkip
from tests import rank_tasks
from tests.rank_tasks import process_gone as gone


@pytest.fixture(scope="module")
def manager():
    pools = PoolManager(process_group_timeout_s=120)
    yield pools
    pools.close()


def test_collective_runs_on_every_rank(manager):
    assert manager.run(2, rank_tasks.all_reduce_rank, timeout_s=60) == [1.0, 1.0]


def fail_then_recover(manager, task, timeout_s: float, expected: type[RankFailure]) -> tuple[RankFailure, float]:
    """Run a failing task; check its ranks are gone and the next task passes. Returns (error, seconds)."""
    before = manager.get(2).pids
    started = time.monotonic()
    with pytest.raises(expected) as failure:
        manager.run(2, task, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert all(gone(pid) for pid in before)
    assert manager.run(2, rank_tasks.all_reduce_rank, timeout_s=60) == [1.0, 1.0]
    assert set(manager.get(2).pids).isdisjoint(before)
    return failure.value, elapsed


def test_rank_exception_fails_with_its_traceback_and_the_next_task_passes(manager):
    error, elapsed = fail_then_recover(manager, rank_tasks.raise_on_rank1, 60, RankFailure)
    message = str(error)
    assert not isinstance(error, CaseTimeout)
    assert "rank 1 raised ValueError: injected failure on rank 1" in message
    assert 'rank_tasks.py", line' in message and "raise_on_rank1" in message  # rank 1's traceback
    assert "rank 0 still running" in message and "all_reduce" in message  # rank 0's stack, blocked on its peer
    assert elapsed < 60, "the failure must not wait for the time-out"


def test_hung_collective_times_out_with_stacks_and_the_next_task_passes(manager):
    error, elapsed = fail_then_recover(manager, rank_tasks.hang_in_collective, 4, CaseTimeout)
    message = str(error)
    assert "timed out after" in message and "limit 4 s" in message
    assert "rank 0 still running after 4 s" in message
    assert "hang_in_collective" in message and "all_reduce" in message  # where rank 0 is stuck
    assert 4 <= elapsed < 30


def test_killed_rank_is_named_with_its_signal(manager):
    error, _ = fail_then_recover(manager, rank_tasks.die_on_rank1, 60, RankFailure)
    assert "rank 1 was killed by SIGKILL" in str(error)


def test_skip_in_every_rank_becomes_a_skip_and_keeps_the_pool(manager):
    pids = manager.get(2).pids
    with pytest.raises(RankSkip, match="nothing to do on this machine"):
        manager.run(2, rank_tasks.skip_everywhere, timeout_s=60)
    assert manager.get(2).pids == pids


def test_pools_are_reused_and_close_leaves_no_process():
    pools = PoolManager()
    first = pools.run(2, rank_tasks.pid, timeout_s=60)
    again = pools.run(2, rank_tasks.pid, timeout_s=60)
    assert first == again and pools.started == 1
    single = pools.run(1, rank_tasks.pid, timeout_s=60)
    pools.close()
    assert all(gone(pid) for pid in first + single)


def test_families_get_their_own_ranks_and_the_least_recent_pool_is_closed_first():
    pools = PoolManager(max_pools=2)
    torch_pids = pools.get(1, "torch").pids
    deepspeed_pids = pools.get(1, "deepspeed").pids
    assert set(torch_pids).isdisjoint(deepspeed_pids)
    assert pools.get(1, "torch").pids == torch_pids  # reused; now the most recently used
    other = pools.get(1, "fairscale").pids  # a third pool: the least recently used (deepspeed) goes
    assert all(gone(pid) for pid in deepspeed_pids)
    assert pools.get(1, "torch").pids == torch_pids and pools.started == 3
    pools.close()
    assert all(gone(pid) for pid in torch_pids + other)


def test_on_wait_sees_the_steps_rank_0_reports_and_each_task_starts_from_none(manager):
    pool = manager.get(2)
    for done, total in [(3, 7), (1, 5)]:
        seen: list[tuple[int, int]] = []
        elapsed: list[float] = []

        def on_wait(done_steps: int, total_steps: int, elapsed_s: float) -> None:
            seen.append((done_steps, total_steps))
            elapsed.append(elapsed_s)

        pool.run(rank_tasks.report_progress_between_waits, done, total, 3.0, timeout_s=60, on_wait=on_wait)
        assert (done, total) in seen
        assert set(seen) <= {(0, 0), (done, total)}  # not rank 1's numbers, not the previous task's
        assert elapsed == sorted(elapsed)
    assert manager.get(2) is pool  # a callback does not break the pool


def test_a_rank_over_its_memory_limit_is_killed_named_and_the_pool_rebuilt():
    pools = PoolManager(process_group_timeout_s=120, rank_memory=RankMemoryLimit(per_rank_bytes=1024**3))
    try:
        error, elapsed = fail_then_recover(pools, rank_tasks.grow_on_rank1, 120, RankFailure)
    finally:
        pools.close()
    message = str(error)
    assert "rank 1 was killed: its resident memory reached" in message
    assert "over the limit of 1.00 GiB per rank (--bench-rank-memory" in message
    assert re.search(r"rank 0 (raised|still running after its peers failed)", message)  # its story, not a hang
    assert elapsed < 60


class _Options:
    """The command line as ``BenchOptions.from_config`` reads it: the suite's defaults, some given."""

    DEFAULTS = {"--bench-launcher": "spawn", "--bench-inject": None, "--bench-device": "cpu",
                "--bench-profile": "default", "--bench-bf16": "auto", "--bench-steps": None, "--bench-warmup": None,
                "--bench-timeout": 600.0, "--bench-max-ranks": 4, "--bench-threads": 1, "--bench-pin": "auto",
                "--profile": False, "--profile-steps": 3, "--bench-rank-memory": None}

    def __init__(self, **given) -> None:
        self.values = {**self.DEFAULTS, **{f"--{key.replace('_', '-')}": value for key, value in given.items()}}
        self.rootpath = Path(__file__).resolve().parents[1]

    def getoption(self, name: str, default=None):
        return self.values.get(name, default)


def test_the_default_memory_limit_is_the_budget_over_the_ranks_of_the_case(monkeypatch):
    """A 2-rank case on a machine that allows 4 ranks gets half of the budget per rank, not a quarter; the limit
    --bench-rank-memory gives is every rank's, whatever the world size."""
    import psutil

    import parabench.runtime.pool
    from fixtures.options import RANK_MEMORY_SHARE, BenchOptions

    total = 24 * 1024**3
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"total": total})())
    made: dict[int, int | None] = {}

    class Pool:  # what PoolManager.get builds, without spawning ranks
        def __init__(self, world_size, device_type, backend, memory_limit_bytes=None, **options):
            made[world_size] = memory_limit_bytes
            self.broken = False

        def close(self) -> None:
            pass

    monkeypatch.setattr(parabench.runtime.pool, "RankPool", Pool)
    budget = int(RANK_MEMORY_SHARE * total)
    pools = PoolManager(rank_memory=BenchOptions.from_config(_Options(bench_max_ranks=4)).rank_memory)
    for world_size in (1, 2, 4):
        pools.get(world_size)
    assert made == {1: budget, 2: budget // 2, 4: budget // 4}
    made.clear()
    pools = PoolManager(rank_memory=BenchOptions.from_config(_Options(bench_rank_memory=9.0)).rank_memory)
    for world_size in (1, 2, 4):
        pools.get(world_size)
    assert made == {1: 9 * 1024**3, 2: 9 * 1024**3, 4: 9 * 1024**3}
    assert BenchOptions.from_config(_Options(bench_rank_memory=0)).rank_memory.for_world_size(2) is None


# --------------------------------------------------------------------------- CUDA and the fork server

# The fork server's imports on a CUDA build, as the calls that would initialise CUDA see them: each records
# whether torch.cuda would ask NVML (PYTORCH_NVML_BASED_CUDA_CHECK=1) or initialise the CUDA driver.
_SERVER_IMPORTS = """
import importlib, json, os, sys
import torch

calls = []

def recording(name, value):
    def call(*args, **kwargs):
        calls.append([name, os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")])
        return value
    return call

torch.cuda.is_available = recording("is_available", False)
torch.cuda.device_count = recording("device_count", 0)
torch.cuda._lazy_init = recording("_lazy_init", None)
torch.cuda.init = recording("init", None)
import parabench.runtime.rank_imports
print("calls:", json.dumps(calls))
torch.cuda.is_initialized = lambda: True  # had an import initialised it
try:
    importlib.reload(parabench.runtime.rank_imports)
except RuntimeError as error:
    print("refused:", error)
"""


def test_the_fork_server_never_initialises_cuda_and_refuses_to_fork_once_it_is():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")  # its accelerator detection asks torch.cuda at import
    repo = Path(__file__).resolve().parents[1]
    environ = {name: value for name, value in os.environ.items() if name != "DS_ACCELERATOR"}
    # A session's environment that turns the NVML check off (DeepSpeed's own default of 1 keeps it).
    environ.update(PYTORCH_NVML_BASED_CUDA_CHECK="0", PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-c", _SERVER_IMPORTS], cwd=repo, env=environ, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    calls = json.loads(next(line for line in lines if line.startswith("calls:"))[len("calls:"):])
    assert calls, "nothing asked torch.cuda: the recording does not see DeepSpeed's detection any more"
    assert not [name for name, _ in calls if name in ("_lazy_init", "init")]
    assert all(nvml == "1" for _, nvml in calls), calls  # every question went to NVML, none to the CUDA driver
    refused = next(line for line in lines if line.startswith("refused:"))
    assert "CUDA was initialised in the process that forks the ranks" in refused
    assert "PYTORCH_NVML_BASED_CUDA_CHECK=1" in refused


def test_a_cuda_rank_forked_after_cuda_was_touched_says_so(monkeypatch):
    import torch

    from parabench.runtime import worker

    worker.require_cuda_forkable()  # this process has not forked after touching CUDA
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.raises(RuntimeError, match="forked from a process that had initialised CUDA"):
        worker.require_cuda_forkable()

"""``--profile``: a Chrome trace per rank of extra steps after the measurements, which stay as they were."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from parabench.cases.case import Case
from parabench.measure.trace import TraceRequest
from parabench.runtime.pool import PoolManager
from parabench.runtime.train import run_case
from tests.test_end_to_end import outcome, pytest_run

CASE = Case("torch-ddp", "adamw", "mlp-digits", 2, steps=4)


@pytest.fixture(scope="module")
def manager():
    pools = PoolManager(process_group_timeout_s=120)
    yield pools
    pools.close()


def trace_step_names(path: str) -> set[str]:
    """The names of the profiled steps' markers in a Chrome trace (it must parse and hold events)."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert events, path
    return {e["name"] for e in events if e.get("name", "").startswith("parabench step")}


def test_a_traced_case_writes_one_trace_per_rank_and_the_same_measurements(manager, tmp_path):
    plain = manager.run(2, run_case, CASE, None, timeout_s=300)
    request = TraceRequest(str(tmp_path / "traces" / CASE.id), steps=2)
    traced = manager.run(2, run_case, CASE, None, request, timeout_s=300)

    assert [r.losses for r in traced] == [r.losses for r in plain]
    assert [len(r.step_seconds) for r in traced] == [len(r.step_seconds) for r in plain] == [4, 4]
    assert [r.state_bytes for r in traced] == [r.state_bytes for r in plain]
    for rank in range(2):
        assert trace_step_names(request.path(rank)) == {"parabench step 0", "parabench step 1"}
    assert sorted(os.listdir(request.directory)) == ["rank0.json", "rank1.json"]  # no temporary file left

    # A second run replaces each trace whole.
    manager.run(2, run_case, CASE, None, TraceRequest(request.directory, steps=1), timeout_s=300)
    for rank in range(2):
        assert trace_step_names(request.path(rank)) == {"parabench step 0"}
    assert sorted(os.listdir(request.directory)) == ["rank0.json", "rank1.json"]


def test_a_trace_request_names_its_fix():
    with pytest.raises(ValueError, match="absolute path"):
        TraceRequest("reports/traces", steps=3)
    with pytest.raises(ValueError, match="use 1 or more"):
        TraceRequest(str(Path("/tmp").resolve()), steps=0)
    assert TraceRequest("/r/traces/x", steps=1).path(1) == "/r/traces/x/rank1.json"


def test_profile_steps_below_one_is_a_usage_error():
    result = pytest_run("--profile", "--profile-steps=0", "--collect-only", "-q", "tests/test_case.py")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, outcome(result)
    assert "--profile-steps=0: use 1 or more" in result.stderr, outcome(result)

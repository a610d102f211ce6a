"""Known deviations: a case passes as one only by failing the way, and by no more than, its entry documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parabench.case import Case
from parabench.inject import InjectedFault
from parabench.known import (DRIFT_MARGIN, KNOWN_DEVIATIONS, Crash, Drift, KnownDeviation, Stall, drift_beyond,
                             known_deviation)
from parabench.launcher import MemoryLimitExceeded, TaskTimedOut, _failed

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
FAIRSCALE_ADAMW = Case("fairscale-sdp", "adamw", "gpt2-text", 2)
TORCH_FSDP_ADAMW = Case("colossalai-torch-fsdp", "adamw", "vit-digits", 2)


def entry(case: Case):
    found = known_deviation(case, "cpu")
    assert found is not None, f"no known deviation for {case.id}"
    return found


def curves(drift: Drift, scale: float = 1.0, first_step: int | None = None) -> tuple[list[float], list[float]]:
    """A reference and a run that leaves it from ``first_step`` and reaches ``scale`` × the recorded max |Δ|."""
    first = drift.first_step if first_step is None else first_step
    reference = [5.0 - 0.1 * step for step in range(drift.steps)]
    losses = list(reference)
    for step in range(first, drift.steps):
        losses[step] += drift.max_abs_difference * scale * (step - first + 1) / (drift.steps - first)
    return losses, reference


# --------------------------------------------------------------------------- entries


def test_every_entry_documents_a_failure_and_each_drift_its_size():
    for deviation in KNOWN_DEVIATIONS:
        assert isinstance(deviation.failure, (Drift, Stall, Crash)), deviation.pattern
        if isinstance(deviation.failure, Drift):
            assert deviation.failure.steps > deviation.failure.first_step, deviation.pattern


def test_every_entry_names_the_device_it_was_measured_on():
    for deviation in KNOWN_DEVIATIONS:
        assert deviation.device in ("cpu", "cuda"), f"{deviation.pattern}: measured on {deviation.device!r}"
    with pytest.raises(TypeError, match="device"):
        KnownDeviation("torch-ddp-*", "no device", Crash("RuntimeError", "x"))  # type: ignore[call-arg]


# A drift (kernels' rounding) and crashes (upstream exceptions), each recorded on CPU.
MEASURED_ON_CPU = [FAIRSCALE_ADAMW, TORCH_FSDP_ADAMW, Case("torch-fsdp", "adafactor", "gpt2-text", 2),
                   Case("colossalai-hybrid", "dist-adafactor", "vit-digits", 2, options={"tp": 2})]


# (Not parametrized by a Case named ``case``: the bench's collection would take these tests for the cases.)
@pytest.mark.parametrize("measured", MEASURED_ON_CPU, ids=lambda case: case.id)
def test_an_entry_measured_on_cpu_is_not_expected_on_cuda(measured):
    assert known_deviation(measured, "cpu") is not None
    assert known_deviation(measured, "cuda") is None  # a case that passes on a GPU must not fail as an unexpected pass


# --------------------------------------------------------------------------- drift


def test_the_recorded_drift_is_the_known_deviation_and_twice_it_is_not():
    drift = entry(FAIRSCALE_ADAMW).failure
    assert drift.regression(*curves(drift), first_step_off=drift.first_step) is None
    assert drift.regression(*curves(drift, 1 + DRIFT_MARGIN / 2), first_step_off=drift.first_step) is None
    why = drift.regression(*curves(drift, 2.0), first_step_off=drift.first_step)
    assert why is not None and f"{2 * drift.max_abs_difference:.3e}" in why
    assert f"{drift.max_abs_difference:.3e} recorded" in why


def test_a_drift_that_starts_earlier_is_not_the_known_deviation():
    drift = entry(FAIRSCALE_ADAMW).failure
    why = drift.regression(*curves(drift, first_step=drift.first_step - 1), first_step_off=drift.first_step - 1)
    assert why is not None and f"first step off {drift.first_step - 1}, before step {drift.first_step}" in why
    assert drift.regression(*curves(drift), first_step_off=drift.first_step + 3) is None  # later is smaller


def test_a_longer_run_than_recorded_is_not_the_known_deviation():
    drift = Drift(0.01, 2, 10, "test")
    reference = [1.0] * 20
    losses = [1.0, 1.0] + [1.01] * 18  # within the recorded drift all along, but beyond step 10 nothing is recorded
    why = drift.regression(losses, reference, 2)
    assert why is not None and "documents its drift over 10" in why and "measure the drift over 20 steps" in why
    assert drift.regression(losses[:10], reference[:10], 2) is None
    assert drift.regression(losses[:6], reference[:6], 2) is None  # a shorter run: within what is recorded


def test_the_margin_is_relative_to_the_recorded_drift():
    assert drift_beyond(0.1, 2, 0.1 * (1 + DRIFT_MARGIN), 2) is None
    assert "max |Δloss|" in drift_beyond(0.1, 2, 0.1 * (1 + DRIFT_MARGIN) * 1.001, 2)
    assert drift_beyond(0.1, 2, 0.05, None) is None


def test_a_stall_that_learns_less_than_recorded_is_not_the_known_deviation():
    stall = entry(Case("colossalai-lowlevelzero2", "dist-adafactor", "gpt2-text", 2, steps=60)).failure
    assert isinstance(stall, Stall)
    recorded = [5.31413] * 15 + [5.3] * 32 + [5.31413 * (1 - stall.relative_fall)] * 15  # 62 steps, as measured
    assert stall.regression(recorded) is None
    halved = [5.31413] * 15 + [5.3] * 32 + [5.31413 * (1 - stall.relative_fall / 2)] * 15
    why = stall.regression(halved)
    assert why is not None and "the loss fell less" in why


# --------------------------------------------------------------------------- crashes


def story(rank: int, error: BaseException) -> str:
    """A rank failure's text as the test sees it (``fixtures.cases.on_ranks``: the case id, then ``RankFailure``)."""
    try:
        raise error
    except BaseException as raised:  # noqa: BLE001 — formatted with its traceback, as a rank does
        text = _failed(rank, raised)[2]
    peer = "rank 0 raised RuntimeError: Connection closed by peer\nTraceback (most recent call last):\n  ..."
    return f"{TORCH_FSDP_ADAMW.id}: run_case failed on 2 ranks:\n{text}\n\n{peer}"


DOCUMENTED = TypeError("AdamW.__init__() got an unexpected keyword argument 'decoupled_weight_decay'")


def test_the_documented_exception_is_the_known_crash():
    assert entry(TORCH_FSDP_ADAMW).failure.mismatch(story(1, DOCUMENTED)) is None


@pytest.mark.parametrize("error, named", [
    (InjectedFault("injected failure on rank 1 at step 1"), "raised InjectedFault"),
    (TaskTimedOut("still running after 2 s (--bench-timeout); where it was is below"), "timed out"),
    (MemoryLimitExceeded("its resident memory reached 9.00 GiB, over the limit"), "was stopped"),
    (TypeError("unsupported operand type(s) for +: 'int' and 'str'"), "does not match"),
])
def test_any_other_failure_is_not_the_known_crash(error, named):
    why = entry(TORCH_FSDP_ADAMW).failure.mismatch(story(1, error))
    assert why is not None and named in why


def test_only_the_cause_counts_not_a_peer_that_failed_after_it():
    # A time-out first (pool.py puts the cause first), the documented TypeError on a peer after it.
    text = story(1, TaskTimedOut("still running after 2 s")) + "\n\n" + story(0, DOCUMENTED).split("\n", 1)[1]
    assert entry(TORCH_FSDP_ADAMW).failure.mismatch(text) is not None
    timed_out = "case timed out after 2.0 s (limit 2 s)\n\nrank 0 still running after 2 s; its Python stacks:\n..."
    assert "still running" in entry(TORCH_FSDP_ADAMW).failure.mismatch(timed_out)


# --------------------------------------------------------------------------- the pytest hook

SESSION = '''
import pytest
from parabench.checks import ConvergenceError, Tolerance, assert_parity, first_divergence
from parabench.known import Crash, Drift, KnownDeviation

DRIFT = Drift(0.01, 2, 6, "test")
CRASH = Crash("TypeError", r"decoupled_weight_decay")
REFERENCE = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5]


class Benchmark:
    def __init__(self):
        self.extra_info = {}


@pytest.fixture
def benchmark():
    return Benchmark()


@pytest.fixture
def reference():
    return lambda case: type("Result", (), {"losses": REFERENCE})()


def drifting(benchmark, scale):
    losses = [r + (0.01 * scale if step >= 2 else 0.0) for step, r in enumerate(REFERENCE)]
    benchmark.extra_info.update(loss=losses, parity={
        "max_abs_difference": 0.01 * scale, "first_divergence": first_divergence(losses, REFERENCE, Tolerance(1e-5))})
    assert_parity(losses, REFERENCE, Tolerance(1e-5))


@pytest.mark.parametrize("case", ["drift-recorded"])
def test_drift_recorded(case, benchmark, reference):
    drifting(benchmark, 1.0)


@pytest.mark.parametrize("case", ["drift-doubled"])
def test_drift_doubled(case, benchmark, reference):
    drifting(benchmark, 2.0)


@pytest.mark.parametrize("case", ["drift-no-fall"])
def test_drift_no_fall(case, benchmark, reference):
    raise ConvergenceError("loss did not fall by 5%")


@pytest.mark.parametrize("case", ["drift-timed-out"])
def test_drift_timed_out(case, benchmark, reference):
    pytest.fail("x: run_case timed out after 2.0 s (limit 2 s)", pytrace=False)


@pytest.mark.parametrize("case", ["crash-documented"])
def test_crash_documented(case):
    pytest.fail("x: run_case failed on 2 ranks:\\nrank 1 raised TypeError: no 'decoupled_weight_decay'", pytrace=False)


@pytest.mark.parametrize("case", ["crash-injected"])
def test_crash_injected(case):
    pytest.fail("x: run_case failed on 2 ranks:\\nrank 1 raised InjectedFault: injected", pytrace=False)
'''

CONFTEST = '''
import sys
sys.path.insert(0, {repo!r})
pytest_plugins = ["fixtures.known"]


def pytest_collection_modifyitems(items):
    from fixtures.known import expect
    from parabench.known import KnownDeviation
    import test_session

    for item in items:
        kind = item.callspec.params["case"].split("-")[0]
        expect(item, KnownDeviation(item.name, "test", test_session.DRIFT if kind == "drift" else test_session.CRASH,
                                    device="cpu"))
'''


def test_the_hook_fails_an_expected_failure_that_is_not_the_documented_one(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST.format(repo=str(REPO)))
    pytester.makepyfile(test_session=SESSION)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark", "-rxf")
    result.assert_outcomes(xfailed=2, failed=4)
    text = result.stdout.str()
    for name in ("drift_recorded", "crash_documented"):
        assert any(line.startswith("XFAIL") and name in line for line in text.splitlines()), text
    for name in ("drift_doubled", "drift_no_fall", "drift_timed_out", "crash_injected"):
        assert any(line.startswith("FAILED") and name in line for line in text.splitlines()), text
    assert "the drift grew: max |Δloss| 2.000e-02 > 1.000e-02 recorded" in text
    assert "not the parity drift it documents: loss did not fall" in text
    assert "raised InjectedFault" in text and "not TypeError" in text


# --------------------------------------------------------------------------- end to end


def test_a_known_parity_deviation_that_times_out_fails_and_one_that_drifts_as_recorded_still_xfails():
    case = "fairscale-sdp-adamw-gpt2_text-w2-fp32 and not buffer0"

    def run(*options: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "bench/", "-q", "-rxf",
                               "-k", case, *options], cwd=REPO, capture_output=True, text=True, timeout=300)
        return done.stdout[-6000:] + done.stderr[-2000:]

    timed_out = run("--bench-timeout", "2")
    assert "1 failed" in timed_out and "xfailed" not in timed_out, timed_out
    assert "known deviation 'fairscale-sdp-adamw-gpt2_text-w2-fp32' documents parity drift" in timed_out, timed_out
    unchanged = run()
    assert "1 xfailed" in unchanged and "failed" not in unchanged.replace("xfailed", ""), unchanged

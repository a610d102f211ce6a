"""The replay clock: pytest-benchmark records exactly the durations measured elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parabench.measure.clock import REPLAY_CLOCK, ReplayClock, replay

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[1]

BENCH_MODULE = """
import pytest

from parabench.measure.clock import REPLAY_CLOCK, replay


@pytest.mark.benchmark(timer=REPLAY_CLOCK)
def test_replayed(benchmark):
    replay(benchmark, [0.010, 0.020, 0.030, 0.040])


@pytest.mark.benchmark(timer=REPLAY_CLOCK)
def test_replayed_unsorted(benchmark):
    replay(benchmark, [0.5, 0.1, 0.3])
"""


def test_replayed_durations_become_the_benchmark_stats(pytester: pytest.Pytester):
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\n")
    pytester.makepyfile(test_bench=BENCH_MODULE)
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "out.json").read_text())
    by_name = {b["name"]: b for b in report["benchmarks"]}
    assert set(by_name) == {"test_replayed", "test_replayed_unsorted"}

    stats = by_name["test_replayed"]["stats"]
    assert stats["rounds"] == 4
    assert stats["iterations"] == 1
    assert stats["min"] == pytest.approx(0.010)
    assert stats["max"] == pytest.approx(0.040)
    assert stats["mean"] == pytest.approx(0.025)
    assert stats["median"] == pytest.approx(0.025)
    assert by_name["test_replayed"]["options"]["timer"] == "parabench.clock.REPLAY_CLOCK"

    stats = by_name["test_replayed_unsorted"]["stats"]
    assert stats["rounds"] == 3
    assert stats["min"] == pytest.approx(0.1)
    assert stats["max"] == pytest.approx(0.5)
    assert stats["median"] == pytest.approx(0.3)
    assert stats["mean"] == pytest.approx(0.3)


CASE_MODULE = """
import pytest

from parabench.cases.case import Case
from parabench.measure.clock import replay


@pytest.mark.benchmark(group="named_by_the_module")
@pytest.mark.parametrize("case", [Case("single", "adamw", "mlp-digits", 1)])
def test_case_with_its_own_group(case, benchmark):
    replay(benchmark, [0.010, 0.020, 0.030])
"""


def test_a_case_whose_module_names_its_group_keeps_the_replay_clock(pytester: pytest.Pytester):
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\n"
                          "pytest_plugins = ['fixtures.options', 'fixtures.collection']\n")
    pytester.makepyfile(test_bench=CASE_MODULE)
    result = pytester.runpytest_subprocess("--benchmark-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads((pytester.path / "out.json").read_text())["benchmarks"]
    assert bench["group"] == "named_by_the_module"
    assert bench["options"]["timer"] == "parabench.clock.REPLAY_CLOCK"
    assert bench["stats"]["median"] == pytest.approx(0.020)


def test_replay_of_nothing_raises():
    with pytest.raises(ValueError, match="no durations"):
        replay(object(), [])


class FakeBenchmark:
    """Does what pytest-benchmark's pedantic does with a custom timer: read, call, read."""

    def __init__(self, clock: ReplayClock) -> None:
        self.clock = clock
        self.durations: list[float] = []

    def pedantic(self, target, rounds, iterations, warmup_rounds):
        assert iterations == 1 and warmup_rounds == 0
        for _ in range(rounds):
            start = self.clock()
            target()
            self.durations.append(self.clock() - start)


def test_replay_advances_the_given_clock_once_per_round():
    clock = ReplayClock()
    fake = FakeBenchmark(clock)
    replay(fake, [0.25, 0.5, 0.125], clock=clock)
    assert fake.durations == [0.25, 0.5, 0.125]
    assert clock() == 0.875


def test_replay_clock_reads_and_advances():
    clock = ReplayClock()
    assert clock() == 0.0
    clock.advance(1.5)
    clock.advance(0.25)
    assert clock() == 1.75
    assert repr(REPLAY_CLOCK) == "parabench.clock.REPLAY_CLOCK"

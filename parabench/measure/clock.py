"""A clock that replays durations measured elsewhere, so pytest-benchmark records rank-side step times.

pytest-benchmark has no API for foreign timings, but ``benchmark.pedantic`` with a custom
``timer`` never calibrates: each round reads the clock, calls the target, reads it again.
Advancing the clock by one measured duration per round reproduces the durations exactly.
"""

from __future__ import annotations

from typing import Sequence


class ReplayClock:
    """A virtual clock: ``advance`` moves it; calling it reads it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __repr__(self) -> str:
        return "parabench.clock.REPLAY_CLOCK"


REPLAY_CLOCK = ReplayClock()


def replay(benchmark, durations: Sequence[float], clock: ReplayClock = REPLAY_CLOCK) -> None:
    """Feed ``durations`` (seconds) to ``benchmark`` as its rounds; the benchmark must use ``clock``."""
    if not durations:
        raise ValueError("no durations to record: the case measured no steps")
    pending = iter(durations)
    benchmark.pedantic(lambda: clock.advance(next(pending)), rounds=len(durations), iterations=1, warmup_rounds=0)

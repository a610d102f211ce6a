"""Correctness checks a benchmark makes on its own run: the loss falls, and matches the reference."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence


class ConvergenceError(AssertionError):
    """Training did not behave like training: no decrease, non-finite loss, or a parity break."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed |loss − reference| at a step: ``atol + rtol·|reference|``."""

    atol: float
    rtol: float = 0.0

    def allows(self, value: float, reference: float) -> bool:
        return abs(value - reference) <= self.atol + self.rtol * abs(reference)


# fp32 data parallelism reorders only the gradient all-reduce: ≤ 1e-6 was seen (DESIGN §6).
# Under bf16 autocast the forward itself rounds differently on split batches.
PARITY = {"fp32": Tolerance(atol=1e-5), "bf16": Tolerance(atol=2e-2, rtol=1e-2),
          "fp16": Tolerance(atol=1e-2, rtol=5e-3)}


def assert_finite(losses: Sequence[float]) -> None:
    bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        raise ConvergenceError(f"loss is not finite from step {bad[0]} on ({losses[bad[0]]})")


def assert_loss_decreases(losses: Sequence[float], min_relative_drop: float = 0.05) -> None:
    """The mean loss of the last quarter of steps is at least ``min_relative_drop`` below the first quarter's."""
    assert_finite(losses)
    if len(losses) < 4:
        raise ValueError(f"need at least 4 steps to judge a decrease, got {len(losses)}")
    quarter = len(losses) // 4
    first, last = statistics.fmean(losses[:quarter]), statistics.fmean(losses[-quarter:])
    if not last < first * (1 - min_relative_drop):
        raise ConvergenceError(f"loss did not fall by {min_relative_drop:.0%}: first-quarter mean {first:.5f}, "
                               f"last-quarter mean {last:.5f} (curve {_short(losses)})")


def first_divergence(losses: Sequence[float], reference: Sequence[float], tolerance: Tolerance) -> int | None:
    """The first step at which ``losses`` leaves ``reference`` by more than ``tolerance``; None if never."""
    if len(losses) != len(reference):
        raise ValueError(f"curves of different lengths: {len(losses)} vs {len(reference)} steps")
    for step, (value, expected) in enumerate(zip(losses, reference)):
        if not tolerance.allows(value, expected):
            return step
    return None


def max_abs_difference(losses: Sequence[float], reference: Sequence[float]) -> float:
    return max(abs(a - b) for a, b in zip(losses, reference))


def assert_parity(losses: Sequence[float], reference: Sequence[float], tolerance: Tolerance,
                  what: str = "loss") -> None:
    step = first_divergence(losses, reference, tolerance)
    if step is not None:
        raise ConvergenceError(
            f"{what} left the one-process reference at step {step}: {losses[step]:.8f} vs {reference[step]:.8f} "
            f"(|Δ| {abs(losses[step] - reference[step]):.2e} > atol {tolerance.atol:g} + rtol {tolerance.rtol:g}); "
            f"max |Δ| over the run {max_abs_difference(losses, reference):.2e}")


def _short(values: Sequence[float]) -> str:
    shown = [f"{v:.4f}" for v in values[:3]] + ["…"] + [f"{v:.4f}" for v in values[-3:]]
    return "[" + ", ".join(shown if len(values) > 6 else [f"{v:.4f}" for v in values]) + "]"

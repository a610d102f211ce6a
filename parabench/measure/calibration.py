"""A fixed compute step timed on each rank, so step times can be judged relative to the machine's speed.

A shared machine runs faster or slower from hour to hour (other tenants, frequency scaling).
Timing the same small piece of work on the same ranks, right before each case, measures that
drift where and when the case runs; a step time divided by it is the *normalised* time the gate
can judge (policy ``time.basis``). Taken after a case too, it was skewed by what the case left
running (ZeRO's runs read 50 % slower), so it is taken before only.
"""

from __future__ import annotations

import statistics
import time

import torch

from parabench.measure.timing import synchronize

MATRIX_SIZE = 256   # a square fp32 matmul chain: ~270 MFLOP, a few ms on one core
CHAIN = 8
REPEATS = 7


def calibration_seconds(device: torch.device, repeats: int = REPEATS) -> float:
    """Median seconds of ``repeats`` runs of the fixed step on this rank (after one untimed run)."""
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(MATRIX_SIZE, MATRIX_SIZE, generator=generator) / MATRIX_SIZE ** 0.5).to(device)

    def work() -> None:
        x = weight
        for _ in range(CHAIN):
            x = torch.tanh(x @ weight)
        synchronize(device)

    work()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)

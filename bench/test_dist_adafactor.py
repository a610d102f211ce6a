"""ColossalAI's DistributedAdaFactor table: one optimizer step of a weight, Adafactor against its
column- and row-parallel distributed form, fp32 / fp16 / bf16, 2 and 4 ranks.

The weight shape is ``--bench-weight-shape`` (default 4096x4096 on CUDA, 1024x1024 on CPU). Each row
records the step times (pytest-benchmark) and, for the distributed rows, the speed-up over Adafactor at
the same shape, precision and world size measured in this session; the table prints at the end.
"""

import pytest

from parabench.cases.optimizer_step import StepBench
from parabench.measure.clock import REPLAY_CLOCK

# Rank-side step times, replayed into pytest-benchmark (see parabench.measure.clock).
pytestmark = pytest.mark.benchmark(timer=REPLAY_CLOCK, group="optimizer_step")

WORLD_SIZES = [2, 4]
PRECISIONS = ["fp32", "fp16", "bf16"]
LAYOUTS = ["full", "col", "row"]


@pytest.mark.colossalai
@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda n: f"w{n}")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_step(layout, precision, world_size, run_step_bench, weight_shape):
    bench = StepBench(layout, *weight_shape, precision, world_size)
    row = run_step_bench(bench)
    if layout != "full":
        # The distributed update is Adafactor's update: fp32 to 1e-5; half precision to its rounding.
        tolerance = 1e-5 if precision == "fp32" else 2e-2
        assert row.max_abs_difference <= tolerance, (
            f"{bench.id}: gathered weight differs from Adafactor's by {row.max_abs_difference:.3g} "
            f"after {bench.warmup_steps + bench.steps} steps (tolerance {tolerance})")

"""What the harness costs: its DDP step time against a hand-written loop, and its fixed cost per case.

Both are recorded (extra_info ``overhead_ratio``, ``fixed_cost_seconds``), not asserted: speed
belongs to the baselines and the gate, not to a timed assertion on a shared machine.
"""

import statistics

import pytest

from parabench.cases.case import Case
from parabench.cases.optimizers import OPTIMIZERS
from parabench.measure.yardstick import handwritten_ddp_step_seconds

CASE = Case("torch-ddp", "sgd", "gpt2-text", 2, steps=30)


@pytest.mark.harness
@pytest.mark.parametrize("case", [pytest.param(CASE, id=f"harness-vs-handwritten-{CASE.id}")])
def test_overhead(case, run_case, pools, benchmark):
    def handwritten() -> list[float]:
        ranks = pools.run(case.world_size, handwritten_ddp_step_seconds, case.workload,
                          OPTIMIZERS.get(case.optimizer).kwargs["lr"], case.steps, timeout_s=600)
        return [max(per_step) for per_step in zip(*ranks)]

    # Interleaved (loop, harness, loop), so drift of the machine hits both sides alike.
    handwritten_seconds = handwritten()
    result = run_case(case)
    handwritten_seconds += handwritten()
    ratio = result.median_step_seconds / statistics.median(handwritten_seconds)
    benchmark.extra_info.update(handwritten_step_seconds=handwritten_seconds, overhead_ratio=ratio)
    print(f"\n{case.id}: harness median step {result.median_step_seconds * 1e3:.2f} ms, hand-written "
          f"{statistics.median(handwritten_seconds) * 1e3:.2f} ms, ratio {ratio:.3f}; "
          f"fixed cost per case {result.fixed_cost_seconds:.3f} s")

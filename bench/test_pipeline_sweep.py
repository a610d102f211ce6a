"""The seeds' split-size sweep: step time as the global batch splits into more, smaller micro-batches.

Model parallelism by hand (``torch-mp``) runs the micro-batches one after another through the stages;
the pipeline schedules overlap them; ``fairscale-pipe`` schedules them inside one process. Every point
is also checked against one process on the same global batch.
"""

import pytest

from parabench.cases.case import Case

WORKLOAD, BATCH, STEPS = "vit-digits", 128, 20
SPLITS = [128, 64, 32, 16, 8]  # micro-batch sizes ("split size")
STAGED = ["torch-mp", "torch-pp-gpipe", "torch-pp-1f1b", "fairscale-pipe"]
SINGLE = Case("single", "adamw", WORKLOAD, 1, global_batch=BATCH, steps=STEPS)


def point(strategy: str, split: int) -> Case:
    chunks = BATCH // split
    if strategy == "torch-mp":  # no schedule: the micro-batches are accumulated one by one
        return Case(strategy, "adamw", WORKLOAD, 2, global_batch=BATCH, steps=STEPS, grad_accum=chunks)
    world = 1 if strategy == "fairscale-pipe" else 2
    return Case(strategy, "adamw", WORKLOAD, world, global_batch=BATCH, steps=STEPS, options={"chunks": chunks})


# 1F1B needs at least as many micro-batches as stages: no point at the unsplit batch.
CASES = [SINGLE] + [point(strategy, split) for strategy in STAGED for split in SPLITS
                    if not (strategy == "torch-pp-1f1b" and split == BATCH)]
TITLE = f"pipeline split-size sweep: {WORKLOAD}, global batch {BATCH}, 2 stages (median step, ms)"


@pytest.mark.benchmark(group="split_size_sweep")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_split_size(case, run_case, check_parity, measured, summary_table):
    result = run_case(case)
    single = measured(SINGLE)
    split = BATCH // (case.grad_accum * case.option("chunks", 1))
    table = summary_table(TITLE, ["strategy", *[f"split {s}" for s in SPLITS]],
                          note="each cell: median step time in ms (× one process on the whole batch); "
                               "torch-pp-1f1b needs at least as many micro-batches as stages")
    strategy = case.strategy if case.strategy != "single" else "single (no split)"
    row = table.rows.setdefault((strategy != "single (no split)", strategy), [strategy] + ["-"] * len(SPLITS))
    cell = f"{1e3 * result.median_step_seconds:.1f} (×{result.median_step_seconds / single.median_step_seconds:.2f})"
    if case.strategy == "single":
        row[1:] = [cell] * len(SPLITS)
    else:
        row[1 + SPLITS.index(split)] = cell
        check_parity(result)

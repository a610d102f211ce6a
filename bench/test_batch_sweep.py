"""The seeds' batch-size sweep: throughput, time for 20 steps and peak memory per rank of each strategy as the
global batch grows (ViT under DDP, FSDP, DeepSpeed ZeRO-2/3 and ColossalAI's plugins).

The sizes are ``--bench-batch-sizes`` (default 8…256 on CUDA, 8, 32, 128 on CPU); every point is also checked
against one process on the same global batch. ``python -m parabench report`` plots the sweep from a stored run.
"""

import pytest

from fixtures.sweeps import batch_sizes
from parabench.cases.case import Case
from parabench.cases.matrix import cases, params

WORKLOAD, STEPS = "vit-digits", 20
SERIES = [  # (strategies, optimizer, precisions, options)
    (["single", "torch-ddp", "torch-fsdp", "deepspeed-zero2", "deepspeed-zero3", "colossalai-lowlevelzero2"],
     "adamw", ["fp32"], {}),
    (["colossalai-torch-ddp"], "adamw", ["fp32", "fp16"], {}),   # the seeds' torch_ddp and torch_ddp_fp16
    (["colossalai-gemini"], "hybrid-adam", ["bf16"], {}),        # on CPU through the recorded chunk patches
    (["colossalai-hybrid"], "adamw", ["fp32"], {"tp": 2}),
]


def sweep(sizes) -> list[Case]:
    return [case for size in sizes for strategies, optimizer, precisions, options in SERIES
            for case in cases(strategies, [optimizer], [WORKLOAD], precisions=precisions, global_batch=size,
                              steps=STEPS, options=options)]


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_batch_size":
        metafunc.parametrize("case", params(sweep(batch_sizes(metafunc.config))))


@pytest.mark.benchmark(group="batch_size_sweep")
def test_batch_size(case, run_case, check_parity, summary_table, pytestconfig):
    result = run_case(case)
    sizes = batch_sizes(pytestconfig)
    table = summary_table(f"batch-size sweep: {WORKLOAD}, {STEPS} steps (samples/s | high-water of the largest "
                          "rank, MB)", ["case", *[f"batch {n}" for n in sizes]],
                          note="samples/s from the median step; high-water: CUDA max allocated, or on CPU the state "
                               "held plus the profiled step's peak rise")
    label = case.id.replace(f"-b{case.global_batch}", "")
    row = table.rows.setdefault((case.strategy != "single", label), [label] + ["-"] * len(sizes))
    row[1 + sizes.index(case.global_batch)] = (f"{result.samples_per_second:.0f} | "
                                               f"{result.max_high_water_bytes / 1e6:.1f}")
    if case.strategy != "single":
        check_parity(result)

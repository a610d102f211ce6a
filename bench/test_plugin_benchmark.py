"""ColossalAI's ViT plugin benchmark at its model: ViT-Base/16 at 224 px under torch_ddp, torch_ddp with mixed
precision, low_level_zero, gemini and hybrid_parallel, at 8 and 32 examples per data-parallel rank; 4 ranks on CUDA,
2 on a CPU machine (``parabench/cases/plugin_benchmark.py`` maps each plugin and says what differs from the published one).

The data is scikit-learn's digits scaled up to 224 × 224 with 3 channels (``vit-base-digits``): nothing is downloaded.
Each case asserts a finite loss and, where a formula exists (every plugin but hybrid_parallel's tensor-parallel split),
that every rank holds the state the formula predicts. The full profile runs these; ``--bench-profile=seeds`` runs
only these, and ``python -m parabench report`` puts the published plugin table beside them.
"""

import pytest

from parabench.cases.matrix import params
from parabench.cases.plugin_benchmark import point_of, points
from parabench.measure.checks import assert_finite


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_plugin":
        from fixtures.options import bench_options
        from parabench.runtime.env import device_type

        device = device_type(bench_options(metafunc.config).device)
        metafunc.parametrize("case", params([point.case for point in points(device)], pytest.mark.full))


@pytest.mark.benchmark(group="plugin_benchmark")
def test_plugin(case, run_case, benchmark):
    point = point_of(case)
    result = run_case(case)
    benchmark.extra_info["plugin_benchmark"] = {"plugin": point.plugin, "batch_per_rank": point.batch_per_rank}
    assert_finite(result.losses)
    info = result.extra_info()
    if "state_bytes_expected" in info:
        found = info.get("state_formula_findings")
        assert not found, (f"{case.id}: a rank's state is off the formula by more than 1 % in {found} (measured "
                           f"{[r.state_bytes for r in result.ranks]}, expected {info['state_bytes_expected']})")

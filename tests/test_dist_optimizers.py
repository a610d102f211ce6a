"""ColossalAI's distributed optimizers against their one-process twins, on 2 ranks (tensor parallel).

Each example builds a column- or row-parallel linear layer (with bias) from full weights, steps the
distributed optimizer on each rank's shard of a full gradient and the twin on the full tensors, and
compares the gathered weights after every step.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parabench.cases.requirements import package_available
from parabench.runtime.pool import PoolManager
from tests import rank_tasks

pytestmark = pytest.mark.skipif(not package_available("colossalai"),
                                reason="needs the package 'colossalai' (docs/getting-started.md, 'Set-up')")

WORLD_SIZE = 2
FP32_TOLERANCE = 1e-5
# Shapes whose split dimension the world size divides: multiples of 2, small enough for a CPU.
DIMENSION = st.integers(min_value=1, max_value=24).map(lambda n: WORLD_SIZE * n)
EXAMPLES = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def manager():
    pools = PoolManager(process_group_timeout_s=120)
    yield pools
    pools.close()


def parity(manager: PoolManager, optimizer: str, layout: str, out_features: int, in_features: int,
           steps: int) -> list[float]:
    per_rank = manager.get(WORLD_SIZE, "colossalai").run(
        rank_tasks.dist_optimizer_parity, optimizer, layout, out_features, in_features, steps, timeout_s=300)
    assert per_rank[0] == per_rank[1], "every rank gathers the same weights"
    return per_rank[0]


@pytest.mark.parametrize("layout", ["col", "row"])
@pytest.mark.parametrize("optimizer", ["dist-adafactor", "dist-lamb"])
@EXAMPLES
@given(out_features=DIMENSION, in_features=DIMENSION)
def test_distributed_optimizer_equals_its_twin(manager, optimizer, layout, out_features, in_features):
    """DistributedAdaFactor equals Adafactor, and DistributedLamb Lamb, on the same full weights."""
    differences = parity(manager, optimizer, layout, out_features, in_features, steps=5)
    assert max(differences) <= FP32_TOLERANCE, f"|Δ| per step {differences}"


@pytest.mark.parametrize("layout", ["col", "row"])
def test_dist_came_equals_came_on_the_first_step(manager, layout):
    differences = parity(manager, "dist-came", layout, 64, 32, steps=1)
    assert differences[0] <= FP32_TOLERANCE


@pytest.mark.xfail(strict=True, reason=(
    "colossalai 0.5.0 DistributedCAME drifts from CAME from step 2 on (upstream): distributed_came.py "
    "re-points state['exp_avg_res_row'/'_col'] at the exp_avg_sq_row/col tensors on every step after the "
    "first (lines 444-445), and updates 1-D parameters through `update = exp_avg` without a clone (line 548), "
    "so `update.mul_(lr)` rescales the stored momentum. Measured (64x32, lr 1e-3): |Δ| 1.5e-8 at step 1, "
    "~6e-2 at step 2, ~0.2 by step 10, with or without tensor parallelism. Remove when this passes."))
@pytest.mark.parametrize("layout", ["col", "row"])
def test_dist_came_equals_came(manager, layout):
    differences = parity(manager, "dist-came", layout, 64, 32, steps=10)
    assert max(differences) <= FP32_TOLERANCE, f"|Δ| per step {[f'{d:.2g}' for d in differences]}"

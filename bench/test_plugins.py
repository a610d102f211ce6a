"""What installed packages register through parabench's entry points (docs/plugins.md): their workloads, strategies
and optimizers in the matrix a built-in of their kind gets, and the cases they declare, each against the one-process
reference. Without such a package this module has no test."""

import pytest

from parabench.cases.matrix import params
from parabench.cases.plugins import plugin_cases
from parabench.measure.checks import assert_loss_decreases

CASES = params(plugin_cases())

if CASES:
    @pytest.mark.parametrize("case", CASES)
    # Not test_train: a stored result is named by its test and case id, and a package's cases must never share a name
    # (and so a baseline) with a built-in case of bench/.
    def test_plugin(case, run_case, check_parity):
        result = run_case(case)
        assert_loss_decreases(result.losses)
        if case.strategy != "single":
            check_parity(result)

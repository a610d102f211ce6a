"""The run's own correctness checks: the loss falls and matches the one-process reference."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from parabench.measure.checks import (
    PARITY,
    SPREAD_FACTOR,
    SPREAD_FLOOR,
    SPREAD_SPLITS,
    ConvergenceError,
    SpreadTolerance,
    Tolerance,
    assert_finite,
    assert_loss_decreases,
    assert_parity,
    first_divergence,
    max_abs_difference,
)

losses_st = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, allow_infinity=False)
tolerances = st.builds(Tolerance, atol=st.floats(0.0, 1.0), rtol=st.floats(0.0, 0.5))


# --------------------------------------------------------------------------- assert_loss_decreases

def test_falling_curve_passes():
    assert_loss_decreases([2.3 * 0.9 ** i for i in range(20)])
    assert_loss_decreases([1.0, 0.9, 0.5, 0.4])


@pytest.mark.parametrize("curve", [
    [1.0] * 20,                                 # flat
    [1.0 + 0.1 * i for i in range(20)],         # rising
    [1.0, 0.99, 0.98, 0.97, 0.985, 0.975, 0.99, 0.98],  # falls by less than 5%
])
def test_flat_or_rising_curve_raises(curve):
    with pytest.raises(ConvergenceError, match="did not fall"):
        assert_loss_decreases(curve)


def test_min_relative_drop_is_respected():
    curve = [1.0] * 5 + [0.92] * 5  # 8% lower
    assert_loss_decreases(curve, min_relative_drop=0.05)
    with pytest.raises(ConvergenceError, match="10%"):
        assert_loss_decreases(curve, min_relative_drop=0.10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_raises_naming_the_step(bad):
    curve = [2.0, 1.8, 1.5, 1.2, 1.0, bad, 0.5, 0.4]
    with pytest.raises(ConvergenceError, match=r"from step 5\b"):
        assert_loss_decreases(curve)
    with pytest.raises(ConvergenceError, match=r"from step 5\b"):
        assert_finite(curve)


def test_convergence_error_is_an_assertion_error():
    assert issubclass(ConvergenceError, AssertionError)


def test_too_short_curve_raises_value_error():
    with pytest.raises(ValueError, match="at least 4"):
        assert_loss_decreases([3.0, 2.0, 1.0])


@settings(max_examples=200)
@given(st.lists(st.floats(0.01, 100.0), min_size=4, max_size=50))
def test_sorted_ascending_never_passes_and_steep_descent_always_does(values):
    rising = sorted(values)
    with pytest.raises(ConvergenceError):
        assert_loss_decreases(rising)
    falling = [values[0] * 0.5 ** i for i in range(len(values))]
    assert_loss_decreases(falling)


# --------------------------------------------------------------------------- first_divergence / parity

def test_first_divergence_examples():
    tolerance = Tolerance(atol=0.01)
    reference = [1.0, 0.9, 0.8, 0.7]
    assert first_divergence(reference, reference, tolerance) is None
    assert first_divergence([1.0, 0.905, 0.8, 0.7], reference, tolerance) is None
    assert first_divergence([1.0, 0.9, 0.85, 0.9], reference, tolerance) == 2
    assert first_divergence([1.5, 0.9, 0.8, 0.7], reference, tolerance) == 0
    assert first_divergence([1.0, 0.9, 0.8, float("nan")], reference, tolerance) == 3


def test_first_divergence_rejects_different_lengths():
    with pytest.raises(ValueError, match="3 vs 2"):
        first_divergence([1.0, 2.0, 3.0], [1.0, 2.0], Tolerance(atol=1.0))


def test_relative_tolerance_scales_with_the_reference():
    tolerance = Tolerance(atol=0.0, rtol=0.01)
    assert tolerance.allows(100.5, 100.0)
    assert not tolerance.allows(101.5, 100.0)
    assert tolerance.allows(-100.5, -100.0)
    assert not tolerance.allows(0.001, 0.0)
    assert Tolerance(atol=0.0).allows(1.5, 1.5)


@settings(max_examples=200)
@given(st.lists(losses_st, max_size=30), tolerances)
def test_identical_curves_never_diverge(curve, tolerance):
    assert first_divergence(curve, list(curve), tolerance) is None
    assert_parity(curve, list(curve), tolerance)


@settings(max_examples=300)
@given(st.lists(losses_st, min_size=1, max_size=30), tolerances, st.data())
def test_perturbation_beyond_tolerance_is_found_at_its_step(reference, tolerance, data):
    k = data.draw(st.integers(0, len(reference) - 1), label="k")
    sign = data.draw(st.sampled_from([-1.0, 1.0]), label="sign")
    allowed = tolerance.atol + tolerance.rtol * abs(reference[k])
    excess = data.draw(st.floats(1e-3, 10.0), label="excess")
    losses = list(reference)
    losses[k] = reference[k] + sign * (allowed * (1 + excess) + excess)
    # steps after k: anything at all
    for i in range(k + 1, len(reference)):
        losses[i] = data.draw(losses_st, label=f"later{i}")
    assert first_divergence(losses, reference, tolerance) == k
    with pytest.raises(ConvergenceError, match=rf"at step {k}\b"):
        assert_parity(losses, reference, tolerance)


@settings(max_examples=300)
@given(st.lists(st.tuples(losses_st, st.floats(-1.0, 1.0)), min_size=1, max_size=30), tolerances)
def test_perturbations_within_tolerance_never_diverge(pairs, tolerance):
    reference = [r for r, _ in pairs]
    # scale each perturbation to at most half the allowed difference (rounding stays far inside)
    losses = [r + f * 0.5 * (tolerance.atol + tolerance.rtol * abs(r)) for r, f in pairs]
    assume(all(abs(a - r) <= 0.5 * (tolerance.atol + tolerance.rtol * abs(r)) * (1 + 1e-9) for a, r in
               zip(losses, reference)))
    assert first_divergence(losses, reference, tolerance) is None


@settings(max_examples=300)
@given(losses_st, losses_st, tolerances)
def test_tolerance_is_symmetric_in_the_sign_of_the_difference(value, reference, tolerance):
    # Negating both flips the sign of the difference exactly (no rounding).
    assert tolerance.allows(value, reference) == tolerance.allows(-value, -reference)
    # Mirroring the value about the reference, on dyadic numbers where r ± d is exact.
    r = round(reference * 1024) / 1024
    d = round((value - reference) * 1024) / 1024
    assert tolerance.allows(r + d, r) == tolerance.allows(r - d, r)


def test_assert_parity_message_names_the_step_and_values():
    reference = [2.0, 1.5, 1.0, 0.5]
    losses = [2.0, 1.5, 1.25, 0.5]
    with pytest.raises(ConvergenceError) as info:
        assert_parity(losses, reference, PARITY["fp32"], what="loss")
    message = str(info.value)
    assert "at step 2" in message
    assert "1.25000000" in message and "1.00000000" in message
    assert "atol 1e-05" in message


def test_assert_parity_passes_within_tolerance():
    assert_parity([1.0 + 5e-6, 0.5], [1.0, 0.5], PARITY["fp32"])


def test_max_abs_difference():
    assert max_abs_difference([1.0, 2.0, 3.0], [1.5, 2.0, 1.0]) == 2.0


# --------------------------------------------------------------------------- bf16: the reference's own spread

def test_the_spread_is_the_largest_gap_of_an_equivalent_run_so_far():
    reference = [2.0, 1.8, 1.6, 1.4, 1.2]
    split = {"ga2": [2.0, 1.81, 1.59, 1.43, 1.2], "ga4": [2.0, 1.8, 1.62, 1.4, 1.21]}
    tolerance = SpreadTolerance.measure(reference, split, factor=5.0, floor=Tolerance(atol=1e-3))
    assert tolerance.spread == pytest.approx((0.0, 0.01, 0.02, 0.03, 0.03))
    assert tolerance.runs == ("ga2", "ga4")
    assert tolerance.bound(0, 2.0) == pytest.approx(1e-3)       # before the runs part: the floor alone
    assert tolerance.bound(4, 1.2) == pytest.approx(1e-3 + 0.15)  # the spread never shrinks back
    assert tolerance.allows(1.2 + 0.15, 1.2, step=4) and not tolerance.allows(1.2 + 0.152, 1.2, step=4)


def test_the_floor_is_one_bf16_unit_of_the_loss():
    # A bf16 model's loss is a bf16 number: 1.57421875 and its neighbour 1.5703125 differ by one unit.
    assert SPREAD_FLOOR.allows(1.5703125, 1.57421875)
    assert SPREAD_FLOOR.rtol == 2 ** -7 and SPREAD_SPLITS == (2, 4) and SPREAD_FACTOR > 1


@given(st.lists(st.floats(0.5, 8.0), min_size=5, max_size=40), st.floats(0.0, 0.05))
def test_a_case_inside_the_spread_passes_and_a_drift_beyond_it_fails(reference, gap):
    split = [r + gap * (-1) ** i for i, r in enumerate(reference)]
    tolerance = SpreadTolerance.measure(reference, {"ga2": split})
    # A case as far from the reference as its own split run is always allowed ...
    assert first_divergence(split, reference, tolerance) is None
    # ... and one that leaves it by the floor plus more than factor × the spread is caught at that step.
    step = len(reference) // 2
    drifted = list(reference)
    drifted[step] += tolerance.bound(step, reference[step]) * 1.01
    assert first_divergence(drifted, reference, tolerance) == step


def test_a_spread_parity_failure_names_the_allowance_and_its_source():
    reference = [2.0, 1.8, 1.6, 1.4]
    tolerance = SpreadTolerance.measure(reference, {"single-x-ga2": [2.0, 1.8, 1.601, 1.4]})
    with pytest.raises(ConvergenceError) as info:
        assert_parity([2.0, 1.8, 1.7, 1.4], reference, tolerance)
    message = str(info.value)
    assert "at step 2" in message and "allowed there" in message
    assert "× the reference's own spread (max 1.00e-03, over 1 split runs)" in message


def test_the_spread_needs_runs_of_the_same_length():
    with pytest.raises(ValueError, match="at least one run"):
        SpreadTolerance.measure([1.0, 0.9], {})
    with pytest.raises(ValueError, match="different lengths"):
        SpreadTolerance.measure([1.0, 0.9], {"x": [1.0]})

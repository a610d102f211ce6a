"""The gate's verdict logic: time with significance, bytes, loss curves and parity (properties and cases)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.gate.verdict import (
    BytesRule,
    CurveRule,
    TimeRule,
    Verdict,
    judge_bytes,
    judge_bytes_range,
    judge_curve,
    judge_parity,
    judge_time,
)
from parabench.upstream.known import DRIFT_MARGIN

RULE = TimeRule(threshold=0.10, alpha=0.01, min_samples=5)
step_times = st.lists(st.floats(min_value=1e-3, max_value=1.0, allow_nan=False), min_size=5, max_size=40)
rules = st.builds(TimeRule, threshold=st.floats(0.0, 0.5), alpha=st.floats(1e-4, 0.2), min_samples=st.integers(3, 8))


def noisy(median: float, n: int, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


# --------------------------------------------------------------------------- properties (hypothesis)

@given(step_times, rules)
def test_identical_samples_never_regress(samples, rule):
    assert judge_time(samples, list(samples), rule).verdict is not Verdict.REGRESSED


@settings(max_examples=300)
@given(step_times, step_times, rules, st.floats(1.0, 3.0), st.floats(0.0, 2.0))
def test_a_larger_slowdown_never_turns_a_regression_into_a_pass(baseline, now, rule, factor, more):
    slower = [s * factor for s in now]
    slower_still = [s * factor * (1 + more) for s in now]
    if judge_time(baseline, slower, rule).verdict is Verdict.REGRESSED:
        assert judge_time(baseline, slower_still, rule).verdict is Verdict.REGRESSED


@given(step_times, step_times, rules, st.randoms(use_true_random=False))
def test_the_verdict_does_not_depend_on_the_order_of_samples(baseline, now, rule, rng):
    shuffled_baseline, shuffled_now = list(baseline), list(now)
    rng.shuffle(shuffled_baseline)
    rng.shuffle(shuffled_now)
    first, second = judge_time(baseline, now, rule), judge_time(shuffled_baseline, shuffled_now, rule)
    assert (first.verdict, first.change) == (second.verdict, second.change)


@given(st.integers(1, 10**10), st.floats(0.0, 0.2))
def test_bytes_within_tolerance_are_unchanged_and_beyond_it_regress(baseline, rtol):
    rule = BytesRule(rtol=rtol)
    assert judge_bytes(baseline, baseline, rule).verdict is Verdict.UNCHANGED
    grown = int(baseline * (1 + rtol)) + 1
    if grown - baseline > rtol * baseline:
        assert judge_bytes(baseline, grown, rule).verdict is Verdict.REGRESSED


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=50), st.data())
def test_exact_curves_name_the_first_step_that_differs(curve, data):
    assert judge_curve(curve, list(curve), CurveRule()).verdict is Verdict.UNCHANGED
    step = data.draw(st.integers(0, len(curve) - 1))
    changed = list(curve)
    changed[step] += 1e-3
    judgement = judge_curve(curve, changed, CurveRule())
    assert judgement.verdict is Verdict.REGRESSED
    assert f"diverged at step {step}:" in judgement.detail


# --------------------------------------------------------------------------- time

def test_a_clear_slowdown_regresses_and_a_clear_speedup_improves():
    baseline = noisy(0.040, 20, 0.03, seed=1)
    assert judge_time(baseline, noisy(0.048, 20, 0.03, seed=2), RULE).verdict is Verdict.REGRESSED
    assert judge_time(baseline, noisy(0.032, 20, 0.03, seed=3), RULE).verdict is Verdict.IMPROVED
    assert judge_time(baseline, noisy(0.041, 20, 0.03, seed=4), RULE).verdict is Verdict.UNCHANGED


def test_an_effect_above_the_threshold_without_significance_is_not_a_regression():
    # Medians 20 % apart, but the samples overlap almost entirely: noise, not a slowdown.
    baseline = [1.0, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0]
    now = [1.2, 5.0, 1.2, 5.0, 1.2, 5.0, 1.2]
    judgement = judge_time(baseline, now, RULE)
    assert judgement.change == pytest.approx(0.2)
    assert judgement.verdict is Verdict.UNCHANGED
    assert "Mann–Whitney p=" in judgement.detail


def test_a_significant_shift_below_the_threshold_is_not_a_regression():
    baseline = [1.0 + i * 1e-4 for i in range(20)]
    now = [s * 1.05 for s in baseline]
    assert judge_time(baseline, now, RULE).verdict is Verdict.UNCHANGED


def test_too_few_samples_are_reported_not_judged():
    judgement = judge_time([1.0] * 3, [2.0] * 3, RULE)
    assert judgement.verdict is Verdict.INFO and "too few steps" in judgement.detail


@pytest.mark.parametrize("bad", [dict(threshold=-0.1), dict(threshold=1.0), dict(alpha=0.0), dict(min_samples=2)])
def test_invalid_time_rules_are_refused(bad):
    with pytest.raises(ValueError, match="time rule"):
        TimeRule(**bad)


# --------------------------------------------------------------------------- bytes, curves, parity

def test_one_percent_more_bytes_regresses_under_the_default_tolerances():
    assert judge_bytes(4_387_000, 4_430_870, BytesRule(rtol=0.001)).verdict is Verdict.REGRESSED
    assert judge_bytes(4_387_000, 4_340_000, BytesRule(rtol=0.001)).verdict is Verdict.IMPROVED
    assert judge_bytes(4_387_000, 8_000_000, BytesRule(informational=True)).verdict is Verdict.INFO


def test_a_curve_within_tolerance_is_unchanged_and_beyond_it_names_the_step():
    rule = CurveRule(exact=False, atol=1e-5, rtol=0.0)
    baseline = [2.0, 1.5, 1.2, 1.0]
    assert judge_curve(baseline, [2.0, 1.500005, 1.2, 1.0], rule).verdict is Verdict.UNCHANGED
    judgement = judge_curve(baseline, [2.0, 1.5, 1.21, 1.0], rule)
    assert judgement.verdict is Verdict.REGRESSED and "diverged at step 2" in judgement.detail


def test_curves_of_different_lengths_are_not_comparable():
    assert judge_curve([1.0, 0.9], [1.0, 0.9, 0.8], CurveRule()).verdict is Verdict.NOT_COMPARABLE


def test_exact_curve_rules_take_no_tolerance():
    with pytest.raises(ValueError, match="exact takes no tolerance"):
        CurveRule(exact=True, atol=1e-6)


def test_parity_regresses_when_the_check_starts_to_fail_and_a_known_failure_stays_unchanged():
    good = {"reference": "single-sgd-x-w1-fp32", "atol": 1e-5, "rtol": 0.0, "max_abs_difference": 4.8e-7,
            "first_divergence": None}
    bad = {**good, "max_abs_difference": 0.19, "first_divergence": 1}
    assert judge_parity(good, good).verdict is Verdict.UNCHANGED
    judgement = judge_parity(good, bad)
    assert judgement.verdict is Verdict.REGRESSED and "at step 1" in judgement.detail
    assert judge_parity(bad, bad).verdict is Verdict.UNCHANGED  # a known deviation (strict xfail)
    assert judge_parity(bad, good).verdict is Verdict.IMPROVED


def test_a_known_deviation_that_drifts_further_or_earlier_than_in_its_baseline_regresses():
    # fairscale-sdp-adamw-gpt2_text-w2-fp32 as measured (parabench/upstream/known.py): 3.06e-2 from step 2.
    before = {"reference": "single-adamw-gpt2_text-w1-fp32", "atol": 1e-5, "rtol": 0.0,
              "max_abs_difference": 3.06e-2, "first_divergence": 2}
    within = {**before, "max_abs_difference": 3.06e-2 * (1 + DRIFT_MARGIN), "first_divergence": 3}
    assert judge_parity(before, within).verdict is Verdict.UNCHANGED
    doubled = judge_parity(before, {**before, "max_abs_difference": 6.12e-2})
    assert doubled.verdict is Verdict.REGRESSED
    assert "max |Δ| 3.060e-02" in doubled.detail and "max |Δ| 6.120e-02" in doubled.detail
    earlier = judge_parity(before, {**before, "first_divergence": 1})
    assert earlier.verdict is Verdict.REGRESSED and "first step off 1, before step 2" in earlier.detail


def test_an_absolute_byte_floor_covers_tiny_peaks_and_nothing_beyond():
    rule = BytesRule(rtol=0.25, atol=131_072)
    assert judge_bytes(0, 66_000, rule).verdict is Verdict.UNCHANGED
    assert judge_bytes(0, 140_000, rule).verdict is Verdict.REGRESSED
    assert judge_bytes(2_000_000, 2_600_000, rule).verdict is Verdict.UNCHANGED  # 131 072 + 500 000 allowed
    assert judge_bytes(2_000_000, 2_700_000, rule).verdict is Verdict.REGRESSED
    with pytest.raises(ValueError, match="atol"):
        BytesRule(atol=-1)


def test_a_peak_within_the_span_of_the_stored_runs_is_unchanged_and_below_it_improved():
    rule = BytesRule(rtol=0.002)
    assert judge_bytes_range([20_000_000, 20_000_000, 10_000_000], 19_900_000, rule).verdict is Verdict.UNCHANGED
    assert judge_bytes_range([20_000_000, 10_000_000], 9_000_000, rule).verdict is Verdict.IMPROVED
    assert judge_bytes_range([20_000_000, 10_000_000], 20_100_000, rule).verdict is Verdict.REGRESSED

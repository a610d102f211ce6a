"""The paired A/B step-time verdict (parabench/ab/paired.py): properties that must hold for any rounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.ab.paired import PairedRule, log_ratios, paired, session_verdicts
from parabench.gate.verdict import Verdict

RULE = PairedRule()
steps = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False, allow_infinity=False)
rounds = st.lists(st.tuples(steps, steps), min_size=2, max_size=16)


def verdict(pairs, rule=RULE, others=None):
    head, base = [h for h, _ in pairs], [b for _, b in pairs]
    cases = {"case": paired(log_ratios(head, base), rule.threshold), **(others or {})}
    return session_verdicts(cases, rule)["case"]


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=2, max_size=16))
def test_identical_sides_never_regress(times):
    result = verdict([(t, t) for t in times])
    assert result.verdict is Verdict.UNCHANGED and result.ratio == 1.0


@settings(max_examples=300, deadline=None)
@given(rounds, st.floats(min_value=1.0, max_value=5.0))
def test_a_larger_slowdown_never_turns_a_regression_into_a_pass(pairs, factor):
    before = verdict(pairs)
    after = verdict([(h * factor, b) for h, b in pairs])
    if before.verdict is Verdict.REGRESSED:
        assert after.verdict is Verdict.REGRESSED
    assert after.ratio >= before.ratio * (1 - 1e-12)


@settings(max_examples=300, deadline=None)
@given(rounds, st.randoms(use_true_random=False))
def test_the_verdict_does_not_depend_on_the_order_of_the_rounds(pairs, rng):
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    a, b = verdict(pairs), verdict(shuffled)
    assert a.verdict is b.verdict and math.isclose(a.ratio, b.ratio) and math.isclose(a.p_adjusted, b.p_adjusted)


def test_a_clear_slowdown_is_flagged_and_noise_is_not():
    noise = [1.00, 1.03, 0.98, 1.01, 0.99, 1.02, 0.97, 1.00]  # ±3 %, as rounds of unchanged code moved here
    slower = [(0.1 * 1.15 * n, 0.1 * m) for n, m in zip(noise, reversed(noise))]
    assert verdict(slower).verdict is Verdict.REGRESSED
    same = [(0.1 * n, 0.1 * m) for n, m in zip(noise, reversed(noise))]
    assert verdict(same).verdict is Verdict.UNCHANGED
    faster = [(0.1 * m, 0.1 * 1.15 * n) for n, m in zip(noise, reversed(noise))]
    assert verdict(faster).verdict is Verdict.IMPROVED


def test_the_session_holds_its_false_alarm_rate_over_many_cases():
    # One case alone, all 8 rounds 6 % slower: one-sided p = 2^-8 = 0.004, flagged. Beside 39 unchanged cases the
    # same evidence is adjusted over 80 p-values and no longer enough (BH: 0.004 x 80 > 0.05).
    pairs = [(0.106 * (1 + 0.001 * i), 0.1) for i in range(8)]
    assert verdict(pairs).verdict is Verdict.REGRESSED
    unchanged = paired(log_ratios([0.1] * 8, [0.1] * 8), RULE.threshold)
    others = {f"other{i}": unchanged for i in range(39)}
    assert verdict(pairs, others=others).verdict is Verdict.UNCHANGED


@pytest.mark.parametrize("head, base, message", [
    ([0.1], [0.1, 0.1], "as many head as base"),
    ([0.1, -1.0], [0.1, 0.1], "positive, finite"),
    ([], [], "and some"),
])
def test_bad_rounds_are_refused(head, base, message):
    with pytest.raises(ValueError, match=message):
        log_ratios(head, base)

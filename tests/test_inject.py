"""Self-test perturbations that exist to prove the gate and the known deviations say no."""

from __future__ import annotations

import pytest

from parabench.gate.inject import Perturbation


def test_drift_moves_the_loss_further_from_the_reference_at_every_step():
    reference = [5.0, 4.0, 3.0]
    losses = [5.0, 4.1, 2.8]
    drifted = Perturbation.parse("drift=1").drifted(losses, reference)
    assert drifted == pytest.approx([5.0, 4.2, 2.6])
    assert max(abs(a - b) for a, b in zip(drifted, reference)) == pytest.approx(2 * 0.2)
    assert Perturbation.parse("peak=0.3").drifted(losses, reference) == losses


def test_no_peak_records_none_as_a_broken_probe_would():
    assert Perturbation.parse("no-peak").recorded_peak(1234) is None
    assert str(Perturbation.parse("no-peak")) == "no-peak"


@pytest.mark.parametrize("text", ["drift", "drift=0", "no-peak=1"])
def test_amounts_are_required_or_refused_by_kind(text):
    with pytest.raises(ValueError, match="perturbation"):
        Perturbation.parse(text)

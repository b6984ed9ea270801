"""The overfitting alarm (rlft.algorithms.overfit_alarm): training success rising while held-out success falls,
on hand-computed windows."""

from __future__ import annotations

import logging

import pytest

from rlft.algorithms.overfit_alarm import OverfitAlarm, window_change


def test_window_change_is_the_least_squares_line_across_the_window():
    # x = 0..3 (mean 1.5), dx = -1.5, -0.5, 0.5, 1.5 (sum dx^2 = 5); y - 0.4 = -0.2, -0.1, 0.1, 0.2:
    # slope = (0.3 + 0.05 + 0.05 + 0.3) / 5 = 0.14, over 3 intervals 0.42
    assert window_change([0.2, 0.3, 0.5, 0.6]) == pytest.approx(0.42)
    # a straight line's change is its ends' difference; a flat one none
    assert window_change([0.9, 0.7, 0.5]) == pytest.approx(-0.4)
    assert window_change([0.5, 0.5, 0.5]) == pytest.approx(0.0)
    # one outlier in the middle moves the line less than it moves the ends' difference: y = 0, 0.6, 0, 0
    # -> dx*y = -0.5 * 0.6 = -0.3, slope -0.06, change -0.18 (the ends differ by 0)
    assert window_change([0.0, 0.6, 0.0, 0.0]) == pytest.approx(-0.18)


def test_fires_when_training_rises_and_validation_falls_past_the_margin(caplog):
    alarm = OverfitAlarm(window=3, margin=0.1)
    # train 0.5, 0.6, 0.7: a straight line, change 0.2; validation 0.5, 0.45, 0.35 (mean 0.4333): dx = -1, 0, 1,
    # sum dx * dy = -0.0667 - 0.0833 = -0.15, slope -0.15 / 2 = -0.075, change over 2 intervals -0.15
    evaluations = [(10, 0.5, 0.5), (20, 0.6, 0.45)]
    for step, train, validation in evaluations:
        assert alarm.observe(step, train, validation) is None
        assert alarm.last == {}  # the window is not full yet: nothing logged
    with caplog.at_level(logging.WARNING, logger="rlft.algorithms.overfit_alarm"):
        event = alarm.observe(30, 0.7, 0.35)
    assert event is not None and event.step == 30 and alarm.fired_at == 30
    assert event.train_rise == pytest.approx(0.2) and event.validation_fall == pytest.approx(0.15)
    assert alarm.last["generalisation/overfit_alarm"] == 1.0
    assert alarm.last["generalisation/train_rise"] == pytest.approx(0.2)
    assert alarm.last["generalisation/validation_fall"] == pytest.approx(0.15)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "step 30" in warning and "0.200" in warning and "0.150" in warning and "now 0.350" in warning
    # it keeps firing while the trends hold, but warns once
    with caplog.at_level(logging.WARNING, logger="rlft.algorithms.overfit_alarm"):
        assert alarm.observe(40, 0.8, 0.2) is not None
    assert len(caplog.records) == 1 and alarm.fired_at == 30


@pytest.mark.parametrize(
    ("train", "validation"),
    [
        ([0.5, 0.6, 0.7], [0.5, 0.5, 0.5]),  # training rises, validation flat: learning, not overfitting
        ([0.5, 0.5, 0.5], [0.5, 0.4, 0.3]),  # validation falls alone: a regression, not the gap growing
        ([0.5, 0.54, 0.58], [0.5, 0.4, 0.3]),  # training rises by 0.08: not more than the margin
        ([0.3, 0.4, 0.5], [0.3, 0.4, 0.5]),  # both rise: generalising
    ],
)
def test_silent_unless_both_changes_pass_the_margin(train, validation):
    alarm = OverfitAlarm(window=3, margin=0.1)
    events = [alarm.observe(step, t, v) for step, (t, v) in enumerate(zip(train, validation))]
    assert events == [None, None, None]
    assert alarm.last["generalisation/overfit_alarm"] == 0.0 and alarm.fired_at is None


def test_only_the_last_window_counts():
    alarm = OverfitAlarm(window=2, margin=0.1)
    # an early overfit stretch (0.2 -> 0.5 vs 0.6 -> 0.3) fires; then the window slides past it
    assert alarm.observe(0, 0.2, 0.6) is None
    assert alarm.observe(1, 0.5, 0.3) is not None
    assert alarm.observe(2, 0.5, 0.4) is None and alarm.last["generalisation/overfit_alarm"] == 0.0
    assert [h[0] for h in alarm.history] == [1, 2]


def test_non_finite_evaluations_are_skipped_and_a_window_below_two_is_refused():
    alarm = OverfitAlarm(window=2, margin=0.1)
    assert alarm.observe(0, float("nan"), 0.5) is None and alarm.history == []
    with pytest.raises(ValueError, match="at least 2"):
        OverfitAlarm(window=1)

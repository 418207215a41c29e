"""Metrics: AUC against a brute-force pair count, log loss, accuracy, the throughput meter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.metrics import Meter, accuracy, auc, log_loss, loss_curve


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins) / (pos.size * neg.size)


@pytest.mark.parametrize("size, levels", [(2, 0), (17, 3), (200, 0), (500, 5), (1000, 40)])
def test_auc_equals_pairwise_count(size, levels):
    rng = np.random.default_rng(size)
    for _ in range(5):
        labels = (rng.random(size) < 0.3).astype(np.float32)
        labels[0], labels[-1] = 0, 1
        scores = rng.random(size) + 0.3 * labels
        if levels:  # coarse scores: many ties, within and across classes
            scores = np.round(scores * levels) / levels
        assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_errors():
    labels = np.array([0, 0, 1, 1, 0, 1])
    assert auc(labels, labels * 2.0) == 1.0
    assert auc(labels, -labels * 1.0) == 0.0
    assert auc(labels, np.zeros(6)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auc(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match="finite"):
        auc(labels, np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5]))
    with pytest.raises(ValueError, match="0 or 1"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="equal length"):
        auc(labels, np.zeros(5))


def test_log_loss_and_accuracy():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.9, 0.2, 0.4, 0.6])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert log_loss(labels, probs) == pytest.approx(expected, rel=1e-12)
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert accuracy(labels, probs) == 0.5
    assert accuracy(labels, np.array([0.51, 0.5, 0.99, 0.01])) == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss(labels, np.array([1.5, 0, 0, 0]))


def test_meter_rates_with_a_fake_clock():
    now = [100.0]
    meter = Meter(clock=lambda: now[0])
    meter.update(500)
    now[0] = 102.0
    assert meter.rate() == 250.0
    assert meter.lap() == 250.0
    meter.update(300)
    now[0] = 103.0
    assert meter.lap() == 300.0
    assert meter.rate() == pytest.approx(800 / 3)
    with pytest.raises(ValueError):
        meter.update(-1)


def test_loss_curve_means_runs_of_sorted_points_and_merges_curves():
    # Two workers' steps, interleaved by position: sorted, cut into 3 runs of 2, each (last position, mean loss).
    curve = loss_curve([1, 3, 5, 2, 4, 6], [6.0, 4.0, 2.0, 5.0, 3.0, 1.0], points=3)
    assert curve == [(2.0, 5.5), (4.0, 3.5), (6.0, 1.5)]
    assert loss_curve([1, 2], [0.5, 0.25], points=10) == [(1.0, 0.5), (2.0, 0.25)]  # fewer steps than points
    assert loss_curve([], []) == []
    merged = loss_curve(*zip(*(curve + [(5.0, 2.0)]), strict=True), points=2)
    assert merged == [(4.0, (5.5 + 3.5) / 2), (6.0, (2.0 + 1.5) / 2)]
    with pytest.raises(ValueError, match="as many positions as losses"):
        loss_curve([1, 2], [0.5])
    with pytest.raises(ValueError, match="must be finite"):
        loss_curve([1, 2], [0.5, math.nan])
    with pytest.raises(ValueError, match="points >= 1"):
        loss_curve([1], [0.5], points=0)

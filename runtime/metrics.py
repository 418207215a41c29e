"""Evaluation metrics (AUC, log loss, accuracy), the training-loss curve of a run, and a throughput meter."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def _labels_and_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"metrics: expected 1-D labels and scores of equal length, found shapes {y.shape} and "
                         f"{s.shape}")
    if y.size == 0:
        raise ValueError("metrics: expected at least one example, found none")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("metrics: labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("metrics: scores must be finite")
    return y, s


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, exact: the Mann-Whitney U statistic with tied scores given their average rank.

    Equals the fraction of (positive, negative) pairs the scores order correctly, ties counting one half.
    """
    y, s = _labels_and_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auc: undefined without both classes ({n_pos} positives, {n_neg} negatives)")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    # Ranks 1..n; each run of equal scores gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.repeat(run_rank, ends - starts)
    positive_rank_sum = float(ranks[y[order] == 1.0].sum())
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities clipped to [eps, 1 - eps]."""
    y, p = _labels_and_scores(labels, probs)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("log_loss: probabilities must lie in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of examples whose prediction (prob > threshold) equals the label."""
    y, p = _labels_and_scores(labels, probs)
    return float(np.mean((p > threshold) == (y == 1.0)))


LOSS_CURVE_POINTS = 100


def loss_curve(positions: Sequence[float], losses: Sequence[float], points: int = LOSS_CURVE_POINTS
               ) -> list[tuple[float, float]]:
    """A training-loss curve of at most `points` points: the (position, loss) pairs sorted by position (samples
    seen, or the parameter version a step read), cut into `points` runs of consecutive pairs of near-equal length,
    each run given as (its last position, its mean loss). Merging several workers' curves and calling this again
    gives one curve of the whole job."""
    if len(positions) != len(losses):
        raise ValueError(f"loss_curve: expected as many positions as losses, found {len(positions)} and "
                         f"{len(losses)}")
    if points < 1:
        raise ValueError(f"loss_curve: expected points >= 1, found {points}")
    if not len(losses):
        return []
    x = np.asarray(positions, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("loss_curve: positions and losses must be finite")
    order = np.argsort(x, kind="stable")
    runs = np.array_split(np.arange(x.size), min(points, x.size))
    return [(float(x[order[run[-1]]]), float(y[order[run]].mean())) for run in runs]


class Meter:
    """Samples per second, overall and since the last `lap()`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.start = clock()
        self.samples = 0
        self._lap_time = self.start
        self._lap_samples = 0

    def update(self, samples: int) -> None:
        if samples < 0:
            raise ValueError(f"Meter.update: expected samples >= 0, found {samples}")
        self.samples += samples

    def rate(self) -> float:
        """Samples per second since construction."""
        elapsed = self._clock() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0

    def lap(self) -> float:
        """Samples per second since the previous lap (or construction); starts a new lap."""
        now = self._clock()
        elapsed = now - self._lap_time
        rate = (self.samples - self._lap_samples) / elapsed if elapsed > 0 else 0.0
        self._lap_time, self._lap_samples = now, self.samples
        return rate

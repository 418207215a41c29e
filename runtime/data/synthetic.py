"""Synthetic Criteo-format data with a planted logistic signal, for demos, tests and scale runs."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.data.criteo import transform_dense
from runtime.model.config import NUM_CATEGORICAL, NUM_DENSE, DLRMConfig

_WORLD_TAG = 0x574F524C44
_ROWS_TAG = 0x524F5753
_SYNTH_BLOCK = 8192
_CLICK_RATE = 0.25
_MISSING_INT = -(2**62)  # marks a missing integer field between sampling and formatting


class _PlantedModel:
    """The hidden 'true' click model: per-value weights for some tables, dense slopes, one pairwise term.

    Everything is a function of the seed only, so every partition and every run with that seed shares it.
    """

    def __init__(self, seed: int, config: DLRMConfig, max_vocab: int) -> None:
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, _WORLD_TAG])))
        self.dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
        self.dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self.dense_missing = rng.uniform(0.0, 0.4, NUM_DENSE)
        self.dense_slope = np.where(rng.random(NUM_DENSE) < 0.5, rng.normal(0.0, 0.8, NUM_DENSE), 0.0)
        self.cat_missing = rng.uniform(0.0, 0.2, NUM_CATEGORICAL)
        self.hashes: list[np.ndarray] = []
        self.popularity: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        informative = rng.random(NUM_CATEGORICAL) < 0.5
        for t, n in enumerate(config.table_sizes):
            # Values get distinct nonzero rows (raw mod n), so under this config no two values share a row and
            # none shares row 0 with "missing".
            vocab = max(1, min(max_vocab, n - 1))
            residues = rng.choice(n - 1, size=vocab, replace=False) + 1 if n > 1 else np.zeros(1, np.int64)
            multiples = rng.integers(0, (2**32 - 1 - residues) // n + 1)
            self.hashes.append((residues + multiples * n).astype(np.uint64))
            popularity = 1.0 / np.arange(1, vocab + 1) ** 1.3  # Zipf-like: a learnable head, a long tail
            self.popularity.append(popularity / popularity.sum())
            scale = 0.8 if informative[t] else 0.0
            weights = rng.normal(0.0, scale, vocab)
            # Centred under the value distribution, so a missing value (weight 0) is an average one.
            self.weights.append(weights - self.popularity[t] @ weights)
        self.pair = tuple(int(t) for t in rng.choice(np.flatnonzero(informative), 2, replace=False)) \
            if informative.sum() >= 2 else None
        self.pair_factors = [rng.normal(0.0, 0.7, self.hashes[t].size) for t in self.pair] if self.pair else []
        # Pick the bias that gives the target click rate (Kaggle's is ~0.26) on a pilot sample.
        self.bias = 0.0
        pilot_rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, _WORLD_TAG, 1])))
        pilot = self.sample(pilot_rng, 16384, 0.0)[3]
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1.0 / (1.0 + np.exp(-(pilot + mid)))) < _CLICK_RATE else (lo, mid)
        self.bias = (lo + hi) / 2

    def sample(self, rng: np.random.Generator, rows: int, noise: float) -> tuple[np.ndarray, ...]:
        """(labels [n], ints [n, 13] with missing as _MISSING_INT, hashes [n, 26] with missing as -1, true logits)."""
        counts = np.floor(np.exp(rng.normal(self.dense_mu, self.dense_sigma, (rows, NUM_DENSE)))) - 1.0
        raw = np.maximum(counts, 0.0).astype(np.int64)
        raw[rng.random(rows) < 0.05, 1] = -1  # I2 is -1 in some real rows
        dense_missing = rng.random((rows, NUM_DENSE)) < self.dense_missing
        seen = transform_dense(np.where(dense_missing, 0, raw)).astype(np.float64)
        logit = self.bias + ((seen - self.dense_mu) / self.dense_sigma * self.dense_slope).sum(axis=1)
        values = np.empty((rows, NUM_CATEGORICAL), dtype=np.int64)
        for t in range(NUM_CATEGORICAL):
            values[:, t] = rng.choice(self.hashes[t].size, size=rows, p=self.popularity[t])
        cat_missing = rng.random((rows, NUM_CATEGORICAL)) < self.cat_missing
        for t in range(NUM_CATEGORICAL):
            logit += np.where(cat_missing[:, t], 0.0, self.weights[t][values[:, t]])
        if self.pair:
            a, b = self.pair
            present = ~(cat_missing[:, a] | cat_missing[:, b])
            logit += np.where(present, self.pair_factors[0][values[:, a]] * self.pair_factors[1][values[:, b]], 0)
        noisy = logit + rng.normal(0.0, noise, rows)
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-noisy))).astype(np.int64)
        ints = np.where(dense_missing, _MISSING_INT, raw)
        hashes = np.stack([np.where(cat_missing[:, t], -1, self.hashes[t][values[:, t]].astype(np.int64))
                           for t in range(NUM_CATEGORICAL)], axis=1)
        return labels, ints, hashes, logit


def _format_rows(labels: np.ndarray, ints: np.ndarray, hashes: np.ndarray) -> str:
    int_cols = [["" if v == _MISSING_INT else str(v) for v in col] for col in ints.T.tolist()]
    hash_cols = [["" if v < 0 else f"{v:08x}" for v in col] for col in hashes.T.tolist()]
    label_col = [str(v) for v in labels.tolist()]
    return "".join("\t".join(fields) + "\n" for fields in zip(label_col, *int_cols, *hash_cols, strict=True))


def synth(path: str | os.PathLike[str], rows: int, seed: int, *, noise: float = 0.5,
          config: DLRMConfig | None = None, partitions: int | Sequence[int] = 1,
          max_vocab: int = 10_000) -> list[Path]:
    """Write `rows` synthetic Criteo lines with a planted logistic signal; returns the files written.

    The output depends only on (rows, seed, noise, config.table_sizes, max_vocab) and the numpy version
    (numpy's Generator streams are stable within a version). With partitions K > 1 the
    same row stream is cut into K contiguous, equal files path.0 .. path.{K-1}, so their concatenation equals
    the single-file output; a sequence of row counts (summing to rows) cuts it into files of those sizes, e.g.
    a training and a held-out part. `noise` is the std of Gaussian noise added to the true logit.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"synth: rows must be a positive integer, found {rows!r}")
    if isinstance(partitions, int) and not isinstance(partitions, bool):
        if not 1 <= partitions <= rows:
            raise ValueError(f"synth: partitions must be in [1, rows], found {partitions}")
        sizes = [rows * (k + 1) // partitions - rows * k // partitions for k in range(partitions)]
    else:
        sizes = list(partitions)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes) \
                or sum(sizes) != rows:
            raise ValueError(f"synth: partition sizes must be positive integers summing to rows {rows}, "
                             f"found {sizes}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"synth: noise must be a finite number >= 0, found {noise}")
    if isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 1:
        raise ValueError(f"synth: max_vocab must be a positive integer, found {max_vocab!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"synth: seed must be in [0, 2**64), found {seed}")
    config = config if config is not None else DLRMConfig.kaggle()
    if config.num_tables != NUM_CATEGORICAL:
        raise ValueError(f"synth: config must have {NUM_CATEGORICAL} tables, found {config.num_tables}")
    world = _PlantedModel(seed, config, max_vocab)
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, _ROWS_TAG])))
    base = Path(path)
    outputs = [base] if len(sizes) == 1 else [base.with_name(f"{base.name}.{k}") for k in range(len(sizes))]
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    handles = [open(p, "w", encoding="ascii", newline="\n") for p in outputs]  # noqa: SIM115 - closed below
    try:
        for start in range(0, rows, _SYNTH_BLOCK):
            block = world.sample(rng, min(_SYNTH_BLOCK, rows - start), noise)[:3]
            for k in range(len(sizes)):
                lo, hi = max(bounds[k], start) - start, min(bounds[k + 1], start + block[0].size) - start
                if lo < hi:
                    handles[k].write(_format_rows(*(part[lo:hi] for part in block)))
    finally:
        for handle in handles:
            handle.close()
    return outputs


def synthetic_partitions(directory: Path, workers: int, train_rows: int, eval_rows: int, seed: int,
                         config: DLRMConfig) -> tuple[list[Path], list[Path]]:
    """One synthetic stream (one planted signal) cut into a training and a held-out file per worker."""
    directory.mkdir(parents=True, exist_ok=True)
    files = synth(directory / "synthetic.tsv", workers * (train_rows + eval_rows), seed, config=config,
                  partitions=[train_rows] * workers + [eval_rows] * workers)
    return files[:workers], files[workers:]

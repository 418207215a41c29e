"""Combining the pushes of several workers into one update, reproducibly.

Gradients (combine): each worker's loss is the mean over its own batch, so the gradient of the mean over the
concatenated batch is sum_i (b_i / sum_j b_j) * g_i.

Model deltas (combine_deltas, FedAvg): every parameter gets the sample-weighted mean of the deltas of the workers
that pushed one for it: sum_i n_i * d_i / sum_i n_i over those workers (n_i: the samples behind worker i's delta).
Every delta covers all dense parameters, so the dense mean is over every worker of the round; an embedding row is
averaged over the workers whose batches touched it (the usual sparse FedAvg rule): a worker that never saw a row
has no opinion about it, and counting it as a zero delta would shrink the row's update by the share of workers
that did not see it.

Contributions are combined in worker-id order and duplicate rows are summed in that same order, so a given set of
pushes always produces the same bits, whatever order they arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.rows import RowSet


@dataclass
class Contribution:
    """One worker's validated push: the shard's dense gradients and row gradients of all tables (ids strictly
    increasing within each table, tables distinct)."""

    worker_id: str
    step: int
    batch_size: int
    dense: np.ndarray  # the shard's dense gradients, one flat vector
    rows: RowSet
    loss: float = 0.0
    wire_bytes: int = field(default=0, compare=False)


@dataclass
class Update:
    dense: np.ndarray  # flat, as Contribution.dense
    rows: RowSet  # distinct tables, strictly increasing ids within each, summed gradients
    examples: int
    loss: float  # example-weighted mean of the workers' reported losses


def combine(contributions: Sequence[Contribution]) -> Update:
    if not contributions:
        raise ValueError("combine: expected at least one contribution")
    ordered = sorted(contributions, key=lambda c: c.worker_id)
    total = sum(c.batch_size for c in ordered)
    weights = [np.float32(c.batch_size / total) for c in ordered]
    loss = sum(c.loss * c.batch_size for c in ordered) / total
    if len(ordered) == 1:
        only = ordered[0]
        return Update(only.dense, only.rows, total, loss)

    dense = ordered[0].dense * weights[0]
    for c, w in zip(ordered[1:], weights[1:], strict=True):
        dense += c.dense * w
    rows, _ = _sum_rows([(c.rows, w) for c, w in zip(ordered, weights, strict=True)])
    return Update(dense, rows, total, loss)


def combine_deltas(contributions: Sequence[Contribution]) -> Update:
    """FedAvg: the sample-weighted mean delta of every parameter over the workers that pushed a delta for it (the
    module's docstring says why rows are averaged over the workers that touched them)."""
    if not contributions:
        raise ValueError("combine_deltas: expected at least one contribution")
    ordered = sorted(contributions, key=lambda c: c.worker_id)
    total = sum(c.batch_size for c in ordered)
    loss = sum(c.loss * c.batch_size for c in ordered) / total
    # Sample counts are integers below 2**24: exact in float32, so the per-row weight sums are exact too.
    samples = [np.float32(c.batch_size) for c in ordered]
    dense = ordered[0].dense * samples[0]
    for c, n in zip(ordered[1:], samples[1:], strict=True):
        dense += c.dense * n
    dense /= np.float32(total)
    rows, row_samples = _sum_rows([(c.rows, n) for c, n in zip(ordered, samples, strict=True)])
    values = rows.values
    assert values is not None
    values /= row_samples[:, None]
    return Update(dense, rows, total, loss)


def _sum_rows(parts: Sequence[tuple[RowSet, np.float32]]) -> tuple[RowSet, np.ndarray]:
    """sum of weight * rows over parts, by (table, id), and the sum of the weights of the parts that have each row;
    tables and ids come out in increasing order."""
    row_tables = np.concatenate([rows.row_tables() for rows, _ in parts])
    ids = np.concatenate([rows.ids for rows, _ in parts]).astype(np.int64, copy=False)
    values = np.concatenate([_values(rows) * w for rows, w in parts])
    weights = np.concatenate([np.full(len(rows), w, dtype=np.float32) for rows, w in parts])
    if not ids.size:
        return RowSet([], np.zeros(0, dtype=np.int64), ids, values), weights
    keys = (row_tables << 32) | ids  # ids < MAX_TABLE_SIZE = 2**32
    # A stable sort keeps equal rows in worker order, so reduceat sums them in a fixed order.
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    summed = keys[starts]
    tables, counts = np.unique(summed >> 32, return_counts=True)
    return (RowSet(tables.tolist(), counts.astype(np.int64), summed & 0xFFFFFFFF,
                   np.add.reduceat(values[order], starts, axis=0)),
            np.add.reduceat(weights[order], starts))


def _values(rows: RowSet) -> np.ndarray:
    if rows.values is None:
        raise ValueError("combine: a contribution's rows carry no values")
    return rows.values

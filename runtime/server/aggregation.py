"""Combining the gradients of several workers into one update, reproducibly.

Each worker's loss is the mean over its own batch, so the gradient of the mean over the concatenated batch is
sum_i (b_i / sum_j b_j) * g_i. Contributions are combined in worker-id order and duplicate rows are summed
in that same order, so a given set of pushes always produces the same bits, whatever order they arrived in.
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
    return Update(dense, _sum_rows([(c.rows, w) for c, w in zip(ordered, weights, strict=True)]), total, loss)


def _sum_rows(parts: Sequence[tuple[RowSet, np.float32]]) -> RowSet:
    """sum of weight * rows over parts, by (table, id); tables and ids come out in increasing order."""
    row_tables = np.concatenate([rows.row_tables() for rows, _ in parts])
    ids = np.concatenate([rows.ids for rows, _ in parts]).astype(np.int64, copy=False)
    values = np.concatenate([_values(rows) * w for rows, w in parts])
    if not ids.size:
        return RowSet([], np.zeros(0, dtype=np.int64), ids, values)
    keys = (row_tables << 32) | ids  # ids < MAX_TABLE_SIZE = 2**32
    # A stable sort keeps equal rows in worker order, so reduceat sums them in a fixed order.
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    summed = keys[starts]
    tables, counts = np.unique(summed >> 32, return_counts=True)
    return RowSet(tables.tolist(), counts.astype(np.int64), summed & 0xFFFFFFFF,
                          np.add.reduceat(values[order], starts, axis=0))


def _values(rows: RowSet) -> np.ndarray:
    if rows.values is None:
        raise ValueError("combine: a contribution's rows carry no values")
    return rows.values

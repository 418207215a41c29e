"""Combining the gradients of several workers into one update, reproducibly.

Each worker's loss is the mean over its own batch, so the gradient of the mean over the concatenated batch is
sum_i (b_i / sum_j b_j) * g_i. Contributions are combined in worker-id order and duplicate rows are summed
in that same order, so a given set of pushes always produces the same bits, whatever order they arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Contribution:
    """One worker's validated push: dense gradients by name, row gradients by table as (ids, values)."""

    worker_id: str
    step: int
    batch_size: int
    dense: dict[str, np.ndarray]
    rows: dict[int, tuple[np.ndarray, np.ndarray]]
    loss: float = 0.0
    wire_bytes: int = field(default=0, compare=False)


@dataclass
class Update:
    dense: dict[str, np.ndarray]
    rows: dict[int, tuple[np.ndarray, np.ndarray]]  # table -> (strictly increasing ids, summed gradients)
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
        return Update(dict(only.dense), dict(only.rows), total, loss)

    dense: dict[str, np.ndarray] = {}
    for name in ordered[0].dense:
        acc = ordered[0].dense[name] * weights[0]
        for c, w in zip(ordered[1:], weights[1:], strict=True):
            acc += c.dense[name] * w
        dense[name] = acc

    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    tables = sorted({t for c in ordered for t in c.rows})
    for table in tables:
        parts = [(c.rows[table], w) for c, w in zip(ordered, weights, strict=True) if table in c.rows]
        ids = np.concatenate([table_ids for (table_ids, _), _ in parts])
        values = np.concatenate([table_values * w for (_, table_values), w in parts])
        # A stable sort keeps equal ids in worker order, so reduceat sums them in a fixed order.
        order = np.argsort(ids, kind="stable")
        ids_sorted = ids[order]
        starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
        rows[table] = (ids_sorted[starts], np.add.reduceat(values[order], starts, axis=0))
    return Update(dense, rows, total, loss)

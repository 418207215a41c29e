"""Minibatches, the embedding rows a batch touches (Lookup), and the flat layout of the dense parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.model.config import DLRMConfig
from runtime.rows import RowSet


@dataclass
class Batch:
    """One minibatch: dense [B, num_dense] float32 (log-transformed), cat [B, T] int64 row ids, labels [B]."""

    dense: np.ndarray
    cat: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        for name, arr, ndim, dtype in (("dense", self.dense, 2, np.float32), ("cat", self.cat, 2, np.int64),
                                       ("labels", self.labels, 1, np.float32)):
            if not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.dtype != dtype:
                found = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"Batch.{name}: expected a {ndim}-D {np.dtype(dtype)} array, found {found}")
        b = self.labels.shape[0]
        if self.dense.shape[0] != b or self.cat.shape[0] != b:
            raise ValueError(f"Batch: row counts differ: dense {self.dense.shape[0]}, "
                             f"cat {self.cat.shape[0]}, labels {b}")
        if b == 0:
            raise ValueError("Batch: expected at least one example, found 0")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check(self, config: DLRMConfig) -> None:
        """Raise ValueError unless this batch fits config (widths, table count, ids in range)."""
        if self.dense.shape[1] != config.num_dense:
            raise ValueError(f"Batch.dense: expected {config.num_dense} columns, found {self.dense.shape[1]}")
        if self.cat.shape[1] != config.num_tables:
            raise ValueError(f"Batch.cat: expected {config.num_tables} columns, found {self.cat.shape[1]}")
        sizes = np.asarray(config.table_sizes, dtype=np.int64)
        bad = (self.cat < 0) | (self.cat >= sizes[None, :])
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"Batch.cat[{row}, {col}]: expected a row id in [0, {sizes[col]}), "
                             f"found {self.cat[row, col]}")
        if not np.isfinite(self.dense).all():
            raise ValueError("Batch.dense: found a non-finite value")

    def unique_ids(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per table: (sorted unique row ids, int64 index of each example's id in them)."""
        lookup = self.lookup()
        offsets = lookup.offsets
        return [(ids, lookup.index[:, t] - offsets[t]) for t, ids in enumerate(lookup.ids)]

    def lookup(self) -> Lookup:
        # One sort for all tables: key (table, id) as table * span + id keeps tables apart and in order.
        tables = self.cat.shape[1]
        span = int(self.cat.max()) + 1
        keys = self.cat + np.arange(tables, dtype=np.int64) * span
        unique, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(unique // span, minlength=tables)  # >= 1 each: every example has a row per table
        rows = RowSet(list(range(tables)), counts.astype(np.int64), (unique % span).astype(np.int64, copy=False))
        return Lookup(rows, inverse.reshape(self.cat.shape).astype(np.int64, copy=False))

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Examples of all batches in order: the batch a synchronous step over several workers amounts to."""
        if not batches:
            raise ValueError("Batch.concat: expected at least one batch")
        return Batch(dense=np.concatenate([b.dense for b in batches]),
                     cat=np.concatenate([b.cat for b in batches]),
                     labels=np.concatenate([b.labels for b in batches]))


def split_flat(flat: np.ndarray, shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Named views of a flat vector holding tensors of these (name, shape)s one after another, in order."""
    views, start = {}, 0
    for name, shape in shapes:
        end = start + math.prod(shape)
        views[name] = flat[start:end].reshape(shape)
        start = end
    if start != flat.size:
        raise ValueError(f"flat vector: expected {start} values, found {flat.size}")
    return views


def join_flat(tensors: Mapping[str, np.ndarray], shapes: Iterable[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """The inverse of split_flat: tensors[name] for each (name, shape), in order, in one float32 vector."""
    shapes = list(shapes)
    flat = np.empty(sum(math.prod(shape) for _, shape in shapes), dtype=np.float32)
    for name, view in split_flat(flat, shapes).items():
        view[...] = tensors[name]
    return flat


@dataclass(frozen=True)
class Lookup:
    """The embedding rows a batch touches, as a worker pulls them: every table's sorted unique ids (a RowSet,
    tables in order), and for each example and table the position of its row in that stack of rows (table 0's
    rows, then table 1's, ...). The stack is what the model takes and what the PS sends back, so no per-table
    copies are made."""

    rows: RowSet
    index: np.ndarray  # [B, T] int64 positions in the stacked rows

    @property
    def ids(self) -> list[np.ndarray]:
        """Per table: its sorted unique row ids."""
        return self.rows.table_ids(self.index.shape[1])

    @property
    def offsets(self) -> np.ndarray:
        """Where each table's rows start in the stack, and (last entry) their total: T + 1 values."""
        return self.rows.offsets()

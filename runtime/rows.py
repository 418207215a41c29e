"""RowSet: the one shape of sparse embedding rows in the runtime (after ps-lite's single key-value type).

A batch's lookup, a client's per-shard split, a push's gradients, the PS's aggregation and parameters, and the
wire all carry rows as a RowSet, so none converts between shapes and the domain never needs the wire's types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowSet:
    """Rows of several embedding tables: the tables (distinct), how many rows each has (>= 1), every row's id
    (int64; table after table, in `tables` order) and, optionally, every row's values ([len(ids), dim] float32,
    in the same order). Whoever builds one from untrusted input checks it (runtime.wire.messages does)."""

    tables: list[int]
    counts: np.ndarray  # int64 [T']
    ids: np.ndarray  # int64 [N], N = counts.sum()
    values: np.ndarray | None = None  # float32 [N, dim] or None (ids only)

    @classmethod
    def from_tables(cls, per_table: Sequence[np.ndarray]) -> RowSet:
        """The rows of per_table[t] for every table t that has any, ids only."""
        counts = np.fromiter((ids.size for ids in per_table), dtype=np.int64, count=len(per_table))
        tables = np.flatnonzero(counts)
        ids = np.concatenate(per_table).astype(np.int64, copy=False) if per_table else np.zeros(0, np.int64)
        return cls(tables.tolist(), counts[tables], ids)

    @classmethod
    def empty(cls) -> RowSet:
        return cls([], np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def union(cls, sets: Sequence[RowSet]) -> RowSet:
        """Every row of any of the sets, once, ids only: tables increasing, ids increasing within each table."""
        keys = np.unique(np.concatenate([s._keys() for s in sets]))
        tables, counts = np.unique(keys >> 32, return_counts=True)
        return cls(tables.tolist(), counts.astype(np.int64), keys & 0xFFFFFFFF)

    def positions_of(self, subset: RowSet) -> np.ndarray:
        """Where each row of `subset` is among this set's rows (every one must be here; both ordered as union()
        orders them, as a batch's lookup is), increasing."""
        keys = self._keys()
        positions = np.searchsorted(keys, subset._keys())
        if positions.size and (positions[-1] >= keys.size or not (keys[positions] == subset._keys()).all()):
            raise ValueError("positions_of: some rows of the subset are not in this set")
        return positions

    def _keys(self) -> np.ndarray:
        """(table << 32) | id for every row: ids are below MAX_TABLE_SIZE = 2**32."""
        return (self.row_tables() << 32) | self.ids.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return int(self.ids.size)

    def row_tables(self) -> np.ndarray:
        """The table of each row (int64, one per id)."""
        return np.repeat(np.asarray(self.tables, dtype=np.int64), self.counts)

    def offsets(self) -> np.ndarray:
        """Where each of `tables` starts among the rows, and (last entry) their total: len(tables) + 1 values."""
        return np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    def table_ids(self, num_tables: int) -> list[np.ndarray]:
        """The ids of every table 0..num_tables-1 (empty for a table with no rows)."""
        out = [np.zeros(0, np.int64)] * num_tables
        offsets = self.offsets()
        for i, table in enumerate(self.tables):
            out[table] = self.ids[offsets[i]:offsets[i + 1]]
        return out

    def with_values(self, values: np.ndarray | None) -> RowSet:
        return RowSet(self.tables, self.counts, self.ids, values)

    def select(self, positions: np.ndarray, row_tables: np.ndarray | None = None) -> RowSet:
        """The rows at these positions (increasing), values included: a RowSet of the same shape. row_tables:
        this set's row_tables(), when the caller has it already (a split selects several times)."""
        row_tables = (self.row_tables() if row_tables is None else row_tables)[positions]
        # Selected rows of one table are contiguous and keep the tables' order: cut them into runs.
        starts = np.flatnonzero(np.r_[True, row_tables[1:] != row_tables[:-1]]) if row_tables.size \
            else np.zeros(0, np.int64)
        counts = np.diff(np.r_[starts, row_tables.size]).astype(np.int64)
        return RowSet(row_tables[starts].tolist(), counts, self.ids[positions],
                      None if self.values is None else self.values[positions])

"""The parameters one PS shard holds: its dense tensors, its rows of every embedding table, optimizer state.

Embedding rows are initialised lazily, on first pull or update, with the same deterministic values a
single-process run gives them (runtime.model.init_embedding_rows), so an untouched row costs no work and,
since the zero-filled row array is only materialised page by page, little memory.

The rows of all tables live in one stacked array (table t's local rows from row_offsets[t]), so reading,
initialising or updating the rows of a request takes a fixed number of numpy calls, not some per table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from runtime.model import (
    AdagradState,
    DLRMConfig,
    apply_sgd_rows,
    init_dense_params,
    init_embedding_rows,
    join_flat,
    split_flat,
)
from runtime.rows import RowSet
from runtime.server import sharding
from runtime.server.aggregation import Update

OPTIMIZERS = ("sgd", "adagrad")


class ShardParameters:
    def __init__(self, config: DLRMConfig, shard: int, num_shards: int, optimizer: str = "sgd",
                 adagrad_initial_accumulator: float = 0.1) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, found {optimizer!r}")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard: expected 0 <= shard < {num_shards}, found {shard}")
        self.config = config
        self.shard = shard
        self.num_shards = num_shards
        self.optimizer = optimizer
        owners = sharding.dense_owners(config, num_shards)
        self.dense_shapes = {name: shape for name, shape in config.layer_shapes() if owners[name] == shard}
        # One flat vector (what travels on the wire) with a named view per tensor (what optimizers and
        # checkpoints use). Each version's vector is a new array, never written once published, so a pull
        # reply references it without a copy while later updates are applied.
        self.dense_size = sum(int(np.prod(shape)) for shape in self.dense_shapes.values())
        initial = init_dense_params(config)
        self._publish_dense(join_flat(initial, self.dense_shapes.items()))
        self.local_rows = [sharding.local_table_rows(size, t, shard, num_shards)
                           for t, size in enumerate(config.table_sizes)]
        self.row_offsets = np.concatenate([[0], np.cumsum(self.local_rows)]).astype(np.int64)
        total = int(self.row_offsets[-1])
        self.rows = np.zeros((total, config.embedding_dim), dtype=np.float32)
        self.row_initialized = np.zeros(total, dtype=bool)
        # Per-table views of the stacked arrays, for checkpoints and inspection.
        spans = list(zip(self.row_offsets[:-1], self.row_offsets[1:], strict=True))
        self.tables = [self.rows[a:b] for a, b in spans]
        self.initialized = [self.row_initialized[a:b] for a, b in spans]
        self.adagrad = AdagradState(adagrad_initial_accumulator) if optimizer == "adagrad" else None

    def owns_rows(self, rows: RowSet) -> bool:
        """Whether this shard holds every row (ids are global)."""
        if self.num_shards == 1:
            return True
        return bool((sharding.row_shards(rows.row_tables(), rows.ids, self.num_shards) == self.shard).all())

    def _stacked(self, rows: RowSet) -> np.ndarray:
        """Indices into self.rows of rows this shard owns, initialising the fresh ones."""
        row_tables = rows.row_tables()
        index = sharding.local_index(rows.ids, self.num_shards) + self.row_offsets[row_tables]
        fresh = ~self.row_initialized[index]
        if fresh.any():
            fresh_index = index[fresh]
            self.rows[fresh_index] = init_embedding_rows(self.config, row_tables[fresh], rows.ids[fresh])
            self.row_initialized[fresh_index] = True
        return index

    def dense_views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of a flat vector laid out as dense_flat (dense_size float32 values)."""
        return split_flat(flat, self.dense_shapes.items())

    def read_rows(self, rows: RowSet) -> np.ndarray:
        """A copy of the values of rows this shard owns, in their order, as one [len(rows.ids), dim] array."""
        return self.rows[self._stacked(rows)]

    def _publish_dense(self, flat: np.ndarray) -> None:
        self.dense_flat = flat
        self.dense = self.dense_views(flat)

    def apply(self, update: Update, lr: float) -> None:
        """Parameters -= lr x the combined gradients (SGD), or Adagrad's step at lr."""
        if update.dense.shape != (self.dense_size,) or update.dense.dtype != np.float32:
            raise ValueError(f"update: expected {self.dense_size} float32 dense gradients, found "
                             f"{update.dense.dtype} {update.dense.shape}")
        if self.adagrad is None:
            self._publish_dense(self.dense_flat - np.float32(lr) * update.dense)
        else:
            dense = self.dense_flat.copy()
            self.adagrad.apply(self.dense_views(dense), self.dense_views(update.dense), lr)
            self._publish_dense(dense)
        rows = update.rows
        if not rows.ids.size:
            return
        index = self._stacked(rows)
        if self.adagrad is None:
            apply_sgd_rows(self.rows, index, rows.values, lr)
        else:
            self.adagrad.apply_rows("rows", self.rows, index, rows.values, lr)

    def add(self, update: Update) -> None:
        """FedAvg: parameters += the averaged model delta (server learning rate 1; SGD only, the optimizer ran on
        the workers)."""
        if update.dense.shape != (self.dense_size,) or update.dense.dtype != np.float32:
            raise ValueError(f"update: expected {self.dense_size} float32 dense deltas, found "
                             f"{update.dense.dtype} {update.dense.shape}")
        if self.adagrad is not None:
            raise ValueError("update: model deltas are averaged for SGD only")
        self._publish_dense(self.dense_flat + update.dense)
        rows = update.rows
        if rows.ids.size:
            self.rows[self._stacked(rows)] += rows.values

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as named arrays (only initialised rows are stored)."""
        arrays: dict[str, np.ndarray] = {f"dense/{name}": value for name, value in self.dense.items()}
        for t, table in enumerate(self.tables):
            local = np.flatnonzero(self.initialized[t])
            arrays[f"rows/{t}/local_ids"] = local
            arrays[f"rows/{t}/values"] = table[local]
            if self.adagrad is not None and "rows" in self.adagrad.accumulators:
                arrays[f"adagrad/rows/{t}"] = self.adagrad.accumulators["rows"][self.row_offsets[t] + local]
        if self.adagrad is not None:
            for name in self.dense:
                if name in self.adagrad.accumulators:
                    arrays[f"adagrad/dense/{name}"] = self.adagrad.accumulators[name]
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state with a checkpoint's; raises ValueError (changing nothing) if it does not fit."""
        dim = self.config.embedding_dim

        def get(name: str, shape: Iterable[int | None], dtype: type) -> np.ndarray:
            if name not in arrays:
                raise ValueError(f"checkpoint: missing array {name}")
            array = arrays[name]
            want = tuple(shape)
            if array.dtype != dtype or array.ndim != len(want) or any(
                    w is not None and w != g for w, g in zip(want, array.shape, strict=True)):
                raise ValueError(f"checkpoint {name}: expected {np.dtype(dtype)} {want}, found "
                                 f"{array.dtype} {array.shape}")
            return array

        dense = {name: get(f"dense/{name}", shape, np.float32) for name, shape in self.dense_shapes.items()}
        rows = []
        for t, n in enumerate(self.local_rows):
            local = get(f"rows/{t}/local_ids", (None,), np.int64)
            values = get(f"rows/{t}/values", (local.size, dim), np.float32)
            if local.size and (local.min() < 0 or local.max() >= n or np.unique(local).size != local.size):
                raise ValueError(f"checkpoint rows/{t}/local_ids: expected distinct ids in [0, {n})")
            acc = None
            if self.adagrad is not None and f"adagrad/rows/{t}" in arrays:
                acc = get(f"adagrad/rows/{t}", (local.size, dim), np.float32)
            rows.append((local, values, acc))
        dense_acc = {}
        if self.adagrad is not None:
            dense_acc = {name: get(f"adagrad/dense/{name}", shape, np.float32).copy()
                         for name, shape in self.dense_shapes.items() if f"adagrad/dense/{name}" in arrays}
        # Everything checked: now replace.
        self._publish_dense(join_flat(dense, self.dense_shapes.items()))
        self.rows[self.row_initialized] = 0.0  # an uninitialised row is zero, as in a new PS
        self.row_initialized[...] = False
        row_acc = None
        if self.adagrad is not None:
            self.adagrad.accumulators.pop("rows", None)
            if any(acc is not None for _, _, acc in rows):
                row_acc = np.full(self.rows.shape, self.adagrad.initial_accumulator, dtype=np.float32)
                self.adagrad.accumulators["rows"] = row_acc
        for t, (local, values, acc) in enumerate(rows):
            index = self.row_offsets[t] + local
            self.rows[index] = values
            self.row_initialized[index] = True
            if acc is not None and row_acc is not None:
                row_acc[index] = acc
        if self.adagrad is not None:
            for name in self.dense_shapes:
                self.adagrad.accumulators.pop(name, None)
            self.adagrad.accumulators.update(dense_acc)

"""The parameters one PS shard holds: its dense tensors, its rows of every embedding table, optimizer state.

Embedding rows are initialised lazily, on first pull or update, with the same deterministic values a
single-process run gives them (runtime.model.init_embedding_rows), so an untouched row costs no work and,
since the zero-filled table arrays are only materialised page by page, little memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from runtime import sharding
from runtime.aggregation import Update
from runtime.model import (
    AdagradState,
    DLRMConfig,
    apply_sgd,
    apply_sgd_rows,
    init_dense_params,
    init_embedding_rows,
    split_flat,
)

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
        # checkpoints use): a pull snapshots it with one copy.
        self.dense_size = sum(int(np.prod(shape)) for shape in self.dense_shapes.values())
        self.dense_flat = np.zeros(self.dense_size, dtype=np.float32)
        self.dense = self.dense_views(self.dense_flat)
        initial = init_dense_params(config)
        for name, view in self.dense.items():
            view[...] = initial[name]
        self.local_rows = [sharding.local_table_rows(size, t, shard, num_shards)
                           for t, size in enumerate(config.table_sizes)]
        self.tables = [np.zeros((n, config.embedding_dim), dtype=np.float32) for n in self.local_rows]
        self.initialized = [np.zeros(n, dtype=bool) for n in self.local_rows]
        self.adagrad = AdagradState(adagrad_initial_accumulator) if optimizer == "adagrad" else None

    def owns_rows(self, table: int, ids: np.ndarray) -> bool:
        if self.num_shards == 1:
            return True
        return bool((sharding.row_shards(table, ids, self.num_shards) == self.shard).all())

    def _ensure(self, table: int, local: np.ndarray) -> None:
        mask = self.initialized[table]
        fresh = local[~mask[local]]
        if fresh.size:
            ids = sharding.global_ids(fresh, table, self.shard, self.num_shards)
            self.tables[table][fresh] = init_embedding_rows(self.config, table, ids)
            mask[fresh] = True

    def dense_views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of a flat vector laid out as dense_flat (dense_size float32 values)."""
        return split_flat(flat, self.dense_shapes.items())

    def read_rows(self, table: int, ids: np.ndarray) -> np.ndarray:
        """A copy of rows `ids` (global ids this shard owns)."""
        return self.read_stacked([(table, 0, ids.size)], ids)

    def read_stacked(self, runs: Iterable[tuple[int, int, int]], ids: np.ndarray) -> np.ndarray:
        """Rows of several tables in one [len(ids), dim] array: for each (table, start, end), ids[start:end]."""
        out = np.empty((ids.size, self.config.embedding_dim), dtype=np.float32)
        for table, start, end in runs:
            local = sharding.local_index(ids[start:end], self.num_shards)
            self._ensure(table, local)
            np.take(self.tables[table], local, axis=0, out=out[start:end])
        return out

    def apply(self, update: Update) -> None:
        lr = self.config.learning_rate
        if self.adagrad is None:
            apply_sgd(self.dense, update.dense, lr)
        else:
            self.adagrad.apply(self.dense, update.dense, lr)
        for table, (ids, grads) in update.rows.items():
            local = sharding.local_index(ids, self.num_shards)
            self._ensure(table, local)
            if self.adagrad is None:
                apply_sgd_rows(self.tables[table], local, grads, lr)
            else:
                self.adagrad.apply_rows(f"table/{table}", self.tables[table], local, grads, lr)

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as named arrays (only initialised rows are stored)."""
        arrays: dict[str, np.ndarray] = {f"dense/{name}": value for name, value in self.dense.items()}
        for t, table in enumerate(self.tables):
            local = np.flatnonzero(self.initialized[t])
            arrays[f"rows/{t}/local_ids"] = local
            arrays[f"rows/{t}/values"] = table[local]
            if self.adagrad is not None and f"table/{t}" in self.adagrad.accumulators:
                arrays[f"adagrad/rows/{t}"] = self.adagrad.accumulators[f"table/{t}"][local]
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
        for name, value in dense.items():
            self.dense[name][...] = value
        for t, (local, values, acc) in enumerate(rows):
            self.tables[t] = np.zeros((self.local_rows[t], dim), dtype=np.float32)
            self.initialized[t] = np.zeros(self.local_rows[t], dtype=bool)
            self.tables[t][local] = values
            self.initialized[t][local] = True
            if self.adagrad is not None:
                self.adagrad.accumulators.pop(f"table/{t}", None)
                if acc is not None:
                    full = np.full((self.local_rows[t], dim), self.adagrad.initial_accumulator, dtype=np.float32)
                    full[local] = acc
                    self.adagrad.accumulators[f"table/{t}"] = full
        if self.adagrad is not None:
            for name in self.dense_shapes:
                self.adagrad.accumulators.pop(name, None)
            self.adagrad.accumulators.update(dense_acc)

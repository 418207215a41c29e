"""Initial parameter values: dense weights from a seeded generator, embedding rows as a pure function of (seed,
table, id), so any process holding any subset of rows initialises them as a single process would."""

from __future__ import annotations

import math

import numpy as np

from runtime.model.config import DLRMConfig


def init_dense_params(config: DLRMConfig) -> dict[str, np.ndarray]:
    """MLP weights as in the reference: W ~ N(0, sqrt(2/(fan_in+fan_out))), b ~ N(0, sqrt(1/fan_out))."""
    # Domain-separated from the embedding stream; SeedSequence hashing is stable across numpy versions.
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([config.seed, 0x44454E5345])))
    params: dict[str, np.ndarray] = {}
    for name, shape in config.layer_shapes():
        fan_out = shape[-1]
        if name.endswith("/kernel"):
            std = math.sqrt(2.0 / (shape[0] + fan_out))
        else:
            std = math.sqrt(1.0 / fan_out)
        params[name] = rng.normal(0.0, std, size=shape).astype(np.float32)
    return params


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_INIT_CHUNK_ROWS = 1 << 16


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea, Flood 2014) on uint64 arrays; wraps modulo 2**64."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _table_keys(seed: int, tables: np.ndarray) -> np.ndarray:
    """The SplitMix64 stream key of each table in `tables` (uint64)."""
    key = _mix64(np.array([seed], dtype=np.uint64) + _GOLDEN_GAMMA)
    return _mix64(key + (tables.astype(np.uint64) + np.uint64(1)) * _GOLDEN_GAMMA)


def init_embedding_rows(config: DLRMConfig, tables: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Initial values of rows `ids`: U(-sqrt(1/n), sqrt(1/n)), n = size of the row's table.

    `tables` is one table index for all ids, or an array with each id's table (so a PS initialises the fresh
    rows of all tables of a request in one pass). Each value is a pure function of (seed, table, id, column):
    element k = id*dim + column of the SplitMix64 stream keyed by (seed, table). Any process holding any subset
    of rows therefore initialises the same values as a process holding the whole table.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-D integer array, found dtype {ids.dtype} with shape {ids.shape}")
    sizes = np.asarray(config.table_sizes, dtype=np.int64)
    if isinstance(tables, (int, np.integer)) and not isinstance(tables, bool):
        if not 0 <= tables < config.num_tables:
            raise ValueError(f"table index: expected 0 <= table < {config.num_tables}, found {tables!r}")
        limit = sizes[tables]  # one number, not one per id: a whole table can be large
        tables = np.broadcast_to(np.int64(tables), ids.shape)
    elif not (isinstance(tables, np.ndarray) and tables.dtype.kind in "iu" and tables.shape == ids.shape):
        raise ValueError(f"tables: expected a table index or an integer array shaped like ids {ids.shape}, "
                         f"found {tables!r}")
    else:
        if tables.size and (tables.min() < 0 or tables.max() >= config.num_tables):
            raise ValueError(f"tables: expected values in [0, {config.num_tables}), found range "
                             f"[{tables.min()}, {tables.max()}]")
        limit = sizes[tables]
    outside = (ids < 0) | (ids >= limit)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f"ids for table {int(tables[k])}: expected values in [0, {int(sizes[tables[k]])}), "
                         f"found {int(ids[k])}")
    dim = config.embedding_dim
    keys = _table_keys(config.seed, np.arange(config.num_tables))
    bounds = np.sqrt(1.0 / sizes)
    out = np.empty((ids.size, dim), dtype=np.float32)
    columns = np.arange(dim, dtype=np.uint64)
    for start in range(0, ids.size, _INIT_CHUNK_ROWS):
        end = start + _INIT_CHUNK_ROWS
        chunk_tables = tables[start:end]
        counter = ids[start:end].astype(np.uint64)[:, None] * np.uint64(dim) + columns[None, :]
        bits = _mix64(keys[chunk_tables, None] + (counter + np.uint64(1)) * _GOLDEN_GAMMA)
        # The top 24 bits give a float in [0, 1) that float32 holds exactly.
        unit = (bits >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))
        out[start:end] = ((2.0 * unit - 1.0) * bounds[chunk_tables, None]).astype(np.float32)
    return out


def init_embedding_table(config: DLRMConfig, table: int) -> np.ndarray:
    """A whole table, equal row for row to init_embedding_rows."""
    return init_embedding_rows(config, table, np.arange(config.table_sizes[table], dtype=np.int64))

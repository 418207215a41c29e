"""How parameters are partitioned over several PS processes (shards).

Embedding rows: row `r` of table `t` lives on shard (r + t) mod n and is stored there at local index r // n.
Row ids are already hashes of the raw categorical values (or dense dictionary ids), so the modulus spreads
them evenly; adding the table index keeps the tiny tables (3, 4, 10 rows) from all landing on shard 0; and
the local index needs no lookup structure, so a shard holds exactly its rows.

Dense tensors: assigned whole, largest first, each to the shard with the fewest bytes so far (ties: lowest
index), in the config's canonical order. Both rules are pure functions of the config and n, so every worker
and every shard agree without talking.
"""

from __future__ import annotations

import numpy as np

from runtime.model import DLRMConfig
from runtime.rows import RowSet


def row_shards(table: int | np.ndarray, ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index of each row id of table `table` (or of each id's table)."""
    return (ids + table) % num_shards


def local_index(ids: np.ndarray, num_shards: int) -> np.ndarray:
    return ids if num_shards == 1 else ids // num_shards


def local_table_rows(table_size: int, table: int, shard: int, num_shards: int) -> int:
    """Number of rows of a table of `table_size` rows that shard `shard` holds."""
    first = (shard - table) % num_shards  # smallest global id on this shard
    return max(0, -(-(table_size - first) // num_shards))


def global_ids(local: np.ndarray, table: int, shard: int, num_shards: int) -> np.ndarray:
    return local * num_shards + (shard - table) % num_shards


def dense_owners(config: DLRMConfig, num_shards: int) -> dict[str, int]:
    """Dense tensor name -> owning shard."""
    load = [0] * num_shards
    owners: dict[str, int] = {}
    shapes = config.layer_shapes()
    order = sorted(range(len(shapes)), key=lambda i: (-int(np.prod(shapes[i][1])), i))
    for i in order:
        name, shape = shapes[i]
        shard = min(range(num_shards), key=lambda s: (load[s], s))
        owners[name] = shard
        load[shard] += int(np.prod(shape))
    return {name: owners[name] for name, _ in shapes}


def dense_slices(config: DLRMConfig, num_shards: int) -> list[list[tuple[int, int]]]:
    """Per shard, where its dense tensors lie in the flat vector of all of them: [start, end) ranges in canonical
    order. A shard's own flat vector (what it sends and receives) is these ranges concatenated."""
    owners = dense_owners(config, num_shards)
    slices: list[list[tuple[int, int]]] = [[] for _ in range(num_shards)]
    start = 0
    for name, shape in config.layer_shapes():
        end = start + int(np.prod(shape))
        slices[owners[name]].append((start, end))
        start = end
    return slices


def split_rows(rows: RowSet, num_shards: int) -> list[tuple[RowSet, np.ndarray | None]]:
    """Each shard's part of `rows` and the positions of its rows in `rows` (increasing; None when one shard has
    them all). Every part keeps the order of `rows`."""
    if num_shards == 1:
        return [(rows, None)]
    row_tables = rows.row_tables()
    shard_of = row_shards(row_tables, rows.ids, num_shards)
    parts = []
    for shard in range(num_shards):
        positions = np.flatnonzero(shard_of == shard)
        parts.append((rows.select(positions, row_tables), positions))
    return parts

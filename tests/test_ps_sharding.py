"""Several PS processes sharing the parameters give exactly the parameters of one PS (live gRPC servers in this
process, driven through the worker's sharded client)."""

from __future__ import annotations

import contextlib

import numpy as np
from runtime_tools import row_arrays

from runtime.client.ps import ShardedPS
from runtime.model import DLRMConfig
from runtime.rows import RowSet
from runtime.server import sharding
from runtime.server.service import start_server
from runtime.server.state import ParameterServer, PSOptions
from runtime.transport import InsecureTransport


@contextlib.contextmanager
def cluster(num_shards: int, config: DLRMConfig):
    net = InsecureTransport()
    servers = []
    try:
        for shard in range(num_shards):
            ps = ParameterServer(PSOptions(config=config, total_steps=3, workers=2, shard=shard,
                                           num_shards=num_shards, log_every=0))
            servers.append(start_server(ps, net, "127.0.0.1", 0))
        clients = [ShardedPS([s.endpoint for s in servers], net, f"w{i}", chunk_bytes=32 * 1024) for i in range(2)]
        for client in clients:
            client.connect_and_join()
        yield [s.ps for s in servers], clients
    finally:
        for client in clients:
            client.close()
        for s in servers:
            s.server.stop(0).wait(5)


def run_rounds(num_shards: int, config: DLRMConfig) -> tuple[list[ParameterServer], list[list[np.ndarray]]]:
    """Three synchronous rounds of two workers with fixed pseudo-random batches and gradients."""
    pulled_rows = []
    with cluster(num_shards, config) as (servers, clients):
        for step in range(3):
            for w, client in enumerate(clients):
                rng = np.random.default_rng(100 * step + w)
                unique = [np.unique(rng.integers(0, size, 40)) for size in config.table_sizes]
                pulled = client.pull([step] * num_shards, RowSet.from_tables(unique), wait_ms=10_000)
                assert pulled.ready and pulled.versions == [step] * num_shards
                pulled_rows.append(pulled.rows)
                assert pulled.dense is not None and pulled.dense.shape == (config.dense_size,)
                assert pulled.rows.shape == (sum(ids.size for ids in unique), config.embedding_dim)
                grad = rng.normal(0, 0.1, config.dense_size).astype(np.float32)
                row_grads = rng.normal(0, 0.1, pulled.rows.shape).astype(np.float32)
                client.push(pulled.versions, 16 + 16 * w, 0.5, grad, RowSet.from_tables(unique), row_grads)
        assert all(ps.version == 3 and ps.done for ps in servers)
        return servers, pulled_rows


def test_two_and_three_shards_equal_one():
    config = DLRMConfig.small()
    single, single_rows = run_rounds(1, config)
    for n in (2, 3):
        shards, rows = run_rounds(n, config)
        for a, b in zip(single_rows, rows, strict=True):
            np.testing.assert_array_equal(a, b)
        owners = sharding.dense_owners(config, n)
        for name, value in single[0].params.dense.items():
            np.testing.assert_array_equal(shards[owners[name]].params.dense[name], value)
        for t, size in enumerate(config.table_sizes):
            ids = np.arange(size)
            for s, ps in enumerate(shards):
                mine = ids[sharding.row_shards(t, ids, n) == s]
                np.testing.assert_array_equal(ps.params.read_rows(row_arrays({t: mine})),
                                              single[0].params.read_rows(row_arrays({t: mine})))
        assert sum(ps.params.initialized[t].sum() for ps in shards for t in range(config.num_tables)) == \
            sum(single[0].params.initialized[t].sum() for t in range(config.num_tables))

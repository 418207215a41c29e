"""The chief's clients: a worker's link to the chief (SDT: join, job spec, shard into memory, metrics), and the
chief's own pull of the final parameters from the PS."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import grpc
import numpy as np

from runtime import transport
from runtime.client.ps import ShardedPS
from runtime.data import DataError
from runtime.model import DLRMConfig, split_flat
from runtime.proto import chief_pb2, chief_pb2_grpc
from runtime.protocol import PROTOCOL_VERSION, RemoteError


class ChiefClient:
    """SDT: this worker's link to the chief (attested like every other link)."""

    def __init__(self, endpoint: transport.Endpoint, net: transport.Transport, worker_id: str) -> None:
        self.worker_id = worker_id
        self.channel = net.channel(endpoint, [("grpc.max_receive_message_length", 96 << 20)])
        self.stub = chief_pb2_grpc.ChiefStub(self.channel)
        self.shard_bytes = 0

    def _call(self, method: Any, request: Any, timeout: float = 60.0) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            raise RemoteError.from_rpc_error(error) from None

    def join_and_spec(self) -> Any:
        self._call(self.stub.Join, chief_pb2.ChiefJoinRequest(protocol_version=PROTOCOL_VERSION,
                                                               worker_id=self.worker_id))
        return self._call(self.stub.GetJobSpec, chief_pb2.JobSpecRequest(protocol_version=PROTOCOL_VERSION,
                                                                          worker_id=self.worker_id))

    def shard_to_memory(self, timeout: float = 600.0) -> int:
        """Streams this worker's shard into an anonymous in-memory file (memfd: never on disk); returns its
        descriptor, open for reading at /proc/self/fd/<fd>. Every chunk's offset and CRC-32 are checked."""
        fd = os.memfd_create(f"shard-{self.worker_id}", os.MFD_CLOEXEC)
        expected = 0
        try:
            chunks = self.stub.StreamShard(chief_pb2.ShardRequest(protocol_version=PROTOCOL_VERSION,
                                                                  worker_id=self.worker_id), timeout=timeout)
            last = None
            for chunk in chunks:
                if chunk.offset != expected:
                    raise DataError(f"shard chunk: offset expected {expected}, found {chunk.offset}")
                if zlib.crc32(chunk.data) != chunk.crc32:
                    raise DataError(f"shard chunk at offset {chunk.offset}: crc32 expected {chunk.crc32:#010x}, "
                                    f"found {zlib.crc32(chunk.data):#010x}")
                os.write(fd, chunk.data)
                expected += len(chunk.data)
                if chunk.last:
                    last = chunk
                    break
            if last is None or last.total_bytes != expected:
                raise DataError(f"shard ended after {expected} bytes without its last chunk")
        except grpc.RpcError as error:
            os.close(fd)
            raise RemoteError.from_rpc_error(error) from None
        except BaseException:
            os.close(fd)
            raise
        self.shard_bytes = expected
        return fd

    def report_metrics(self, report: dict[str, Any]) -> None:
        self._call(self.stub.ReportMetrics, chief_pb2.MetricsReport(
            protocol_version=PROTOCOL_VERSION, worker_id=self.worker_id, report_json=json.dumps(report)))

    def close(self) -> None:
        self.channel.close()


def pull_final_parameters(ps_addresses: str, net: transport.Transport, steps: int) -> tuple[
        DLRMConfig, dict[str, np.ndarray], list[np.ndarray]]:
    """Every parameter from the PS after training: the chief joins (only once the PS is done, so it never
    counts in a round), pulls the dense weights and each table's rows one table at a time, and leaves."""
    client = ShardedPS(transport.parse_endpoints(ps_addresses), net, "chief")
    try:
        client.connect_and_join()
        config = client.config
        assert config is not None
        dense: dict[str, np.ndarray] = {}
        tables: list[np.ndarray] = []
        empty = [np.zeros(0, np.int64)] * config.num_tables
        for t, size in enumerate(config.table_sizes):
            ids = list(empty)
            ids[t] = np.arange(size, dtype=np.int64)
            pulled = client.pull([steps] * client.num_shards, ids, dense=t == 0, wait_ms=0)
            if not pulled.ready or min(pulled.versions) < steps:
                raise RuntimeError(f"PS not done: versions {pulled.versions}, expected {steps}")
            if pulled.dense is not None:
                dense = split_flat(pulled.dense, config.layer_shapes())
            tables.append(pulled.rows)
        client.leave()
    finally:
        client.close()
    return config, dense, tables

"""The chief's clients: a worker's link to the chief (SDT: join, job spec, shard into memory, metrics), and the
chief's own pull of the final parameters from the PS."""

from __future__ import annotations

import json
import os
from typing import Any

import grpc
import numpy as np

from runtime import transport
from runtime.client.ps import Federation, ShardedPS
from runtime.client.remote import RemoteError
from runtime.data import DataError
from runtime.model import DLRMConfig, split_flat
from runtime.proto import chief_pb2, chief_pb2_grpc, ps_pb2
from runtime.protocol import MAX_CHUNK_BYTES, PROTOCOL_VERSION, Rejected
from runtime.rows import RowSet
from runtime.wire.chunks import ChunkStream, ChunkView

MAX_SHARD_BYTES = 1 << 40  # a shard is held in memory: far above any, a bound on a lying total_size


class ChiefClient:
    """SDT: this worker's link to the chief (attested like every other link)."""

    def __init__(self, endpoint: transport.Endpoint, net: transport.Transport, worker_id: str,
                 federation: Federation | None = None) -> None:
        self.worker_id = worker_id
        self.net = net
        self.federation = federation
        self.channel = net.channel(endpoint, [("grpc.max_receive_message_length", 96 << 20)])
        self.stub = chief_pb2_grpc.ChiefStub(self.channel)
        self.shard_bytes = 0

    def _call(self, method: Any, request: Any, timeout: float = 60.0) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            raise RemoteError.from_rpc_error(error) from None

    def join_and_spec(self) -> Any:
        """Joins (under a federation with the participant's proof over this connection) and fetches the job."""
        request = chief_pb2.ChiefJoinRequest(protocol_version=PROTOCOL_VERSION, worker_id=self.worker_id,
                                             role="worker")
        if self.federation is not None:
            challenge = self._call(self.stub.Challenge, ps_pb2.ChallengeRequest(protocol_version=PROTOCOL_VERSION))
            proof = self.federation.proof(self.worker_id, self.net, challenge.challenge)
            request.plan_digest, request.challenge, request.signature = (proof.plan_digest, proof.challenge,
                                                                         proof.signature)
        self._call(self.stub.Join, request)
        return self._call(self.stub.GetJobSpec, chief_pb2.JobSpecRequest(protocol_version=PROTOCOL_VERSION,
                                                                          worker_id=self.worker_id))

    def shard_to_memory(self, timeout: float = 600.0) -> int:
        """Streams this worker's shard into an anonymous in-memory file (memfd: never on disk); returns its
        descriptor, open for reading at /proc/self/fd/<fd>. Every chunk is checked as it arrives (order, sizes)
        and the whole shard's CRC-32C at the end."""
        fd = os.memfd_create(f"shard-{self.worker_id}", os.MFD_CLOEXEC)
        stream = ChunkStream(max_bytes=MAX_SHARD_BYTES, max_chunk_bytes=MAX_CHUNK_BYTES)
        try:
            chunks = self.stub.StreamShard(chief_pb2.ShardRequest(protocol_version=PROTOCOL_VERSION,
                                                                  worker_id=self.worker_id), timeout=timeout)
            for chunk in chunks:
                os.write(fd, stream.add(ChunkView.of(chunk)))
            stream.finish()
        except grpc.RpcError as error:
            os.close(fd)
            raise RemoteError.from_rpc_error(error) from None
        except Rejected as error:
            os.close(fd)
            raise DataError(f"shard from the chief after {stream.received} bytes: {error}") from None
        except BaseException:
            os.close(fd)
            raise
        self.shard_bytes = stream.received
        return fd

    def report_metrics(self, report: dict[str, Any]) -> None:
        self._call(self.stub.ReportMetrics, chief_pb2.MetricsReport(
            protocol_version=PROTOCOL_VERSION, worker_id=self.worker_id, report_json=json.dumps(report)))

    def close(self) -> None:
        self.channel.close()


# The worker id (participant name) the chief joins the PS under.
CHIEF_ID = "chief"


def pull_final_parameters(ps_addresses: str, net: transport.Transport, steps: int,
                          federation: Federation | None = None) -> tuple[
        DLRMConfig, dict[str, np.ndarray], list[np.ndarray]]:
    """Every parameter from the PS after training: the chief joins in the chief role (only once the PS is done,
    so it never counts in a round; under a plan as its participant, with its proof), pulls the dense weights and
    each table's rows one table at a time, and leaves."""
    client = ShardedPS(transport.parse_endpoints(ps_addresses), net, CHIEF_ID, federation=federation, role="chief")
    try:
        client.connect_and_join()
        config = client.config
        assert config is not None
        dense: dict[str, np.ndarray] = {}
        tables: list[np.ndarray] = []
        for t, size in enumerate(config.table_sizes):
            table = RowSet([t], np.array([size], np.int64), np.arange(size, dtype=np.int64))
            pulled = client.pull([steps] * client.num_shards, table, dense=t == 0, wait_ms=0)
            if not pulled.ready or min(pulled.versions) < steps:
                raise RuntimeError(f"PS not done: versions {pulled.versions}, expected {steps}")
            if pulled.dense is not None:
                dense = split_flat(pulled.dense, config.layer_shapes())
            tables.append(pulled.rows)
        client.leave()
    finally:
        client.close()
    return config, dense, tables

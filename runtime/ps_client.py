"""Client side of the parameter-server protocol: one connection per PS shard, and the sharded view a worker uses.

PSConnection speaks the raw protocol to one shard (chunking, byte counts, errors as RemoteError).
ShardedPS splits pulls and pushes over the shards by runtime.sharding and merges the replies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf.message import Message

from runtime import sharding
from runtime.model import DLRMConfig
from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import (
    CHUNK_OVERHEAD,
    DEFAULT_CHUNK_SIZE,
    PROTOCOL_VERSION,
    Payload,
    ProtocolError,
    RemoteError,
    assemble_payload,
    decode_tensor,
    named_tensor_payload,
    parse_payload,
    pull_reply_bound,
    sparse_rows_payload,
    table_ids_payload,
)
from runtime.transport import Endpoint, Transport

SERVICE = "/runtime.v1.ParameterServer/"
# The largest chunk a server may send us (its --chunk-bytes is at most this).
MAX_REPLY_CHUNK = 64 * 1024 * 1024
UNARY_TIMEOUT = 30.0
PUSH_REPLY_BOUND = 256  # a PushReply is a few varints
# Failures that mean "the server is gone or unreachable": reconnect (re-attesting) and join again.
CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _identity(value: bytes) -> bytes:
    return value


class PSConnection:
    """One PS shard over one channel."""

    def __init__(self, endpoint: Endpoint, net: Transport, chunk_bytes: int = DEFAULT_CHUNK_SIZE) -> None:
        self.endpoint = endpoint
        self.net = net
        self.chunk_bytes = chunk_bytes
        self.bytes_sent = 0
        self.bytes_received = 0
        self.channel: grpc.Channel | None = None

    def connect(self) -> None:
        self.close()
        options = [("grpc.max_receive_message_length", MAX_REPLY_CHUNK + CHUNK_OVERHEAD),
                   ("grpc.max_send_message_length", self.chunk_bytes + CHUNK_OVERHEAD)]
        self.channel = self.net.channel(self.endpoint, options)
        self._calls = {name: self.channel.unary_unary(SERVICE + name, request_serializer=_identity,
                                                      response_deserializer=_identity)
                       for name in ("Join", "Heartbeat", "Leave", "Status", "PullOne", "PushOne")}
        self._calls.update({name: self.channel.stream_stream(SERVICE + name, request_serializer=_identity,
                                                             response_deserializer=_identity)
                            for name in ("Pull", "Push")})

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def unary(self, method: str, request: Any, reply_type: type, timeout: float = UNARY_TIMEOUT) -> Any:
        """Send a raw request message (or bytes) and parse the reply; raises RemoteError."""
        if self.channel is None:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "not connected")
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        try:
            reply = self._calls[method](raw, timeout=timeout)
        except grpc.RpcError as error:
            raise RemoteError.from_rpc_error(error) from None
        except Exception as error:
            self._raise_transport_error(error)
        self.bytes_sent += len(raw)
        self.bytes_received += len(reply)
        return reply_type.FromString(reply)

    def _raise_transport_error(self, error: Exception) -> NoReturn:
        translated = self.net.call_error(error)
        if translated is None:
            raise error
        raise translated from None

    def bulk_raw(self, method: str, chunks: Sequence[bytes], reply_type: type, timeout: float,
                 reply_bound: int | None = None) -> Any:
        """Send pre-serialized Chunk messages and reassemble the chunked reply; raises RemoteError.
        reply_bound: the most bytes the reply can have, if known; a one-chunk request whose reply fits in one
        chunk goes as the unary <method>One call."""
        if self.channel is None:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "not connected")
        received = 0

        def replies(stream: Iterable[bytes]) -> Iterator[tensor_pb2.Chunk]:
            nonlocal received
            for raw in stream:
                received += len(raw)
                yield tensor_pb2.Chunk.FromString(raw)

        try:
            if len(chunks) == 1 and reply_bound is not None and reply_bound <= self.chunk_bytes:
                stream: Iterable[bytes] = (self._calls[method + "One"](chunks[0], timeout=timeout),)
            else:
                stream = self._calls[method](iter(chunks), timeout=timeout)
            payload = assemble_payload(replies(stream), max_bytes=1 << 34, max_chunk_bytes=MAX_REPLY_CHUNK)
            reply = parse_payload(reply_type, payload)
        except grpc.RpcError as error:
            raise RemoteError.from_rpc_error(error) from None
        except ProtocolError as error:
            raise RemoteError(grpc.StatusCode.INTERNAL, f"bad reply from {self.endpoint}: {error}") from None
        except Exception as error:
            self._raise_transport_error(error)
        finally:
            self.bytes_sent += sum(len(c) for c in chunks)
            self.bytes_received += received
        return reply

    def bulk(self, method: str, request: Message | Payload, reply_type: type, timeout: float,
             reply_bound: int | None = None) -> Any:
        payload = request if isinstance(request, Payload) else Payload(request)
        return self.bulk_raw(method, list(payload.chunks(self.chunk_bytes)), reply_type, timeout, reply_bound)

    def join(self, worker_id: str) -> ps_pb2.JoinReply:
        return self.unary("Join", ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id=worker_id),
                          ps_pb2.JoinReply)

    def heartbeat(self, worker_id: str) -> ps_pb2.HeartbeatReply:
        return self.unary("Heartbeat", ps_pb2.HeartbeatRequest(protocol_version=PROTOCOL_VERSION,
                                                               worker_id=worker_id), ps_pb2.HeartbeatReply)

    def leave(self, worker_id: str) -> ps_pb2.LeaveReply:
        return self.unary("Leave", ps_pb2.LeaveRequest(protocol_version=PROTOCOL_VERSION, worker_id=worker_id),
                          ps_pb2.LeaveReply)

    def status(self) -> ps_pb2.StatusReply:
        return self.unary("Status", ps_pb2.StatusRequest(protocol_version=PROTOCOL_VERSION), ps_pb2.StatusReply)

    def pull(self, request: Payload, wait_ms: int, reply_bound: int | None = None) -> ps_pb2.PullReply:
        return self.bulk("Pull", request, ps_pb2.PullReply, timeout=wait_ms / 1000.0 + UNARY_TIMEOUT,
                         reply_bound=reply_bound)

    def push(self, request: Payload) -> ps_pb2.PushReply:
        return self.bulk("Push", request, ps_pb2.PushReply, timeout=4 * UNARY_TIMEOUT, reply_bound=PUSH_REPLY_BOUND)


@dataclass
class Pulled:
    """Merged pull replies: per-shard versions, dense parameters, rows per table in the requested order."""

    versions: list[int]
    done: bool
    ready: bool
    dense: dict[str, np.ndarray]
    rows: list[np.ndarray]
    waited_seconds: float = 0.0


@dataclass
class Pushed:
    versions: list[int]
    duplicate: list[bool]
    stale: list[bool] = field(default_factory=list)


class ShardedPS:
    """A worker's view of all PS shards: join, heartbeat, leave, pull and push split by runtime.sharding."""

    def __init__(self, endpoints: Sequence[Endpoint], net: Transport, worker_id: str,
                 chunk_bytes: int = DEFAULT_CHUNK_SIZE, wire_dtype: int = tensor_pb2.FLOAT32) -> None:
        self.connections = [PSConnection(e, net, chunk_bytes) for e in endpoints]
        self.worker_id = worker_id
        self.wire_dtype = wire_dtype
        self.num_shards = len(endpoints)
        self.config: DLRMConfig | None = None
        self.dense_owners: dict[str, int] = {}
        self.join_replies: list[ps_pb2.JoinReply] = []
        self._pool = futures.ThreadPoolExecutor(max_workers=self.num_shards) if self.num_shards > 1 else None

    def _each(self, fn: Any) -> list[Any]:
        """fn(index, connection) on every shard, in parallel when there are several; raises the first error."""
        if self._pool is None:
            return [fn(0, self.connections[0])]
        jobs = [self._pool.submit(fn, i, c) for i, c in enumerate(self.connections)]
        return [job.result() for job in jobs]

    @property
    def bytes_sent(self) -> int:
        return sum(c.bytes_sent for c in self.connections)

    @property
    def bytes_received(self) -> int:
        return sum(c.bytes_received for c in self.connections)

    def connect_and_join(self) -> list[ps_pb2.JoinReply]:
        """(Re)connect every shard (re-attesting under ratls) and join; checks that the shards agree."""
        def join(index: int, connection: PSConnection) -> ps_pb2.JoinReply:
            connection.connect()
            return connection.join(self.worker_id)

        replies = self._each(join)
        configs = {r.model_config_json for r in replies}
        if len(configs) != 1:
            raise ValueError("PS shards disagree on the model config")
        for i, reply in enumerate(replies):
            if reply.shard_index != i or reply.num_shards != self.num_shards:
                raise ValueError(f"PS {self.connections[i].endpoint} is shard {reply.shard_index} of "
                                 f"{reply.num_shards}, but was given as shard {i} of {self.num_shards}")
        config = DLRMConfig.from_dict(json.loads(replies[0].model_config_json))
        if self.config is not None and config != self.config:
            raise ValueError("the PS model config changed across a reconnect")
        self.config = config
        self.dense_owners = sharding.dense_owners(config, self.num_shards)
        for c, reply in zip(self.connections, replies, strict=True):
            c.chunk_bytes = min(c.chunk_bytes, reply.max_chunk_bytes)
        self.join_replies = replies
        return replies

    def heartbeat(self) -> list[ps_pb2.HeartbeatReply]:
        return self._each(lambda i, c: c.heartbeat(self.worker_id))

    def leave(self) -> None:
        self._each(lambda i, c: c.leave(self.worker_id))

    def close(self) -> None:
        for c in self.connections:
            c.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def pull(self, min_versions: Sequence[int], unique_ids: Sequence[np.ndarray], *, dense: bool = True,
             wait_ms: int = 10_000) -> Pulled:
        """Dense parameters and rows unique_ids[t] of every table t (each sorted, distinct)."""
        config = self.config
        assert config is not None, "connect_and_join first"
        positions = [sharding.split_rows(t, ids, self.num_shards) for t, ids in enumerate(unique_ids)]

        def pull_one(shard: int, connection: PSConnection) -> ps_pb2.PullReply:
            request = Payload(ps_pb2.PullRequest(worker_id=self.worker_id, min_version=min_versions[shard],
                                                 dense=dense, wire_dtype=self.wire_dtype, wait_ms=wait_ms))
            counts = []
            for t, ids in enumerate(unique_ids):
                mine = positions[t][shard]
                if mine.size:
                    request.add_field(ps_pb2.PullRequest.ROWS_FIELD_NUMBER,
                                      table_ids_payload(t, ids if mine.size == ids.size else ids[mine]))
                    counts.append(mine.size)
            shapes = [shape for name, shape in config.layer_shapes() if dense and self.dense_owners[name] == shard]
            bound = pull_reply_bound(shapes, counts, config.embedding_dim, self.wire_dtype)
            return connection.pull(request, wait_ms, reply_bound=bound)

        replies = self._each(pull_one)
        pulled = Pulled(versions=[r.version for r in replies], done=any(r.done for r in replies),
                        ready=all(r.ready for r in replies), dense={},
                        rows=[], waited_seconds=max(r.waited_seconds for r in replies))
        if not pulled.ready or (pulled.done and not dense and not any(len(u) for u in unique_ids)):
            return pulled
        dim = config.embedding_dim
        shapes = dict(config.layer_shapes())
        rows: list[np.ndarray] = [np.empty((ids.size, dim), dtype=np.float32) for ids in unique_ids]
        for shard, reply in enumerate(replies):
            for entry in reply.dense:
                if entry.name not in shapes:
                    raise RemoteError(grpc.StatusCode.INTERNAL, f"shard {shard} sent unknown tensor {entry.name}")
                pulled.dense[entry.name] = decode_tensor(entry.tensor, entry.name, kind="float",
                                                         shape=shapes[entry.name])
            for entry in reply.rows:
                mine = positions[entry.table][shard] if entry.table < len(positions) else None
                if mine is None:
                    raise RemoteError(grpc.StatusCode.INTERNAL, f"shard {shard} sent rows of table {entry.table}")
                values = decode_tensor(entry.values, f"rows[{entry.table}]", kind="float", shape=(mine.size, dim))
                if mine.size == rows[entry.table].shape[0]:
                    rows[entry.table] = values
                else:
                    rows[entry.table][mine] = values
        if dense and set(pulled.dense) != set(shapes):
            raise RemoteError(grpc.StatusCode.INTERNAL, "the shards did not send every dense tensor")
        pulled.rows = rows
        return pulled

    def push(self, versions: Sequence[int], batch_size: int, loss: float, dense_grads: dict[str, np.ndarray],
             unique_ids: Sequence[np.ndarray], row_grads: Sequence[np.ndarray]) -> Pushed:
        """Push gradients computed at `versions` (per shard). Stale shards are reported, not raised."""
        config = self.config
        assert config is not None, "connect_and_join first"
        owners = self.dense_owners
        positions = [sharding.split_rows(t, ids, self.num_shards) for t, ids in enumerate(unique_ids)]

        def push_one(shard: int, connection: PSConnection) -> tuple[ps_pb2.PushReply | None, bool]:
            request = Payload(ps_pb2.PushRequest(worker_id=self.worker_id, step=versions[shard],
                                                 batch_size=batch_size, loss=loss))
            for name, grad in dense_grads.items():
                if owners[name] == shard:
                    request.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER,
                                      named_tensor_payload(name, grad, self.wire_dtype))
            for t, (ids, grads) in enumerate(zip(unique_ids, row_grads, strict=True)):
                mine = positions[t][shard]
                if mine.size:
                    whole = mine.size == ids.size
                    request.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER,
                                      sparse_rows_payload(t, ids if whole else ids[mine],
                                                          grads if whole else grads[mine], self.wire_dtype))
            try:
                return connection.push(request), False
            except RemoteError as error:
                if error.reason == "stale_step":
                    return None, True
                raise

        results = self._each(push_one)
        return Pushed(versions=[r.version if r is not None else -1 for r, _ in results],
                      duplicate=[bool(r is not None and r.duplicate) for r, _ in results],
                      stale=[stale for _, stale in results])

"""Client side of the parameter-server protocol: one connection per PS shard, and the sharded view a worker uses.

PSConnection speaks the raw protocol to one shard (chunking, byte counts, errors as RemoteError).
ShardedPS splits pulls and pushes over the shards by runtime.server.sharding and merges the replies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from runtime.model import DLRMConfig
from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import (
    CHUNK_OVERHEAD,
    DEFAULT_CHUNK_SIZE,
    PROTOCOL_VERSION,
    PUSH_PULL_REPLY_EXTRA,
    ChunkView,
    Payload,
    ProtocolError,
    PullReplyFields,
    RemoteError,
    assemble_payload,
    decode_tensor,
    parse_chunk,
    parse_payload,
    pull_reply_bound,
    read_pull_reply,
    read_push_pull_reply,
    table_rows_payload,
    tensor_payload,
)
from runtime.server import sharding
from runtime.transport import Endpoint, Transport

T = TypeVar("T")
SERVICE = "/runtime.v1.ParameterServer/"
# The largest chunk a server may send us (its --chunk-bytes is at most this).
MAX_REPLY_CHUNK = 64 * 1024 * 1024
UNARY_TIMEOUT = 30.0
PUSH_REPLY_BOUND = 256  # a PushReply is a few varints
# Failures that mean "the server is gone or unreachable": reconnect (re-attesting) and join again.
CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _identity(value: bytes) -> bytes:
    return value


def _parse_push_reply(payload: Any) -> ps_pb2.PushReply:
    return parse_payload(ps_pb2.PushReply, payload)


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
                       for name in ("Join", "Heartbeat", "Leave", "Status", "PullOne", "PushOne", "PushPullOne")}
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

    def bulk_raw(self, method: str, chunks: Sequence[bytes], read: Callable[[Any], Any], timeout: float,
                 reply_bound: int | None = None) -> Any:
        """Send pre-serialized Chunk messages and reassemble the chunked reply; raises RemoteError.
        reply_bound: the most bytes the reply can have, if known; a one-chunk request whose reply fits in one
        chunk goes as the unary <method>One call."""
        if self.channel is None:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "not connected")
        received = 0

        def replies(stream: Iterable[bytes]) -> Iterator[ChunkView]:
            nonlocal received
            for raw in stream:
                received += len(raw)
                yield parse_chunk(raw)

        try:
            if len(chunks) == 1 and reply_bound is not None and reply_bound <= self.chunk_bytes:
                stream: Iterable[bytes] = (self._calls[method + "One"](chunks[0], timeout=timeout),)
            else:
                stream = self._calls[method](iter(chunks), timeout=timeout)
            payload = assemble_payload(replies(stream), max_bytes=1 << 34, max_chunk_bytes=MAX_REPLY_CHUNK)
            reply = read(payload)
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

    def bulk(self, method: str, request: Message | Payload, read: Callable[[Any], Any], timeout: float,
             reply_bound: int | None = None) -> Any:
        """As bulk_raw; read parses the reassembled reply (a protobuf FromString or a protocol reader)."""
        payload = request if isinstance(request, Payload) else Payload(request)
        return self.bulk_raw(method, list(payload.chunks(self.chunk_bytes)), read, timeout, reply_bound)

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

    def pull(self, request: Payload, wait_ms: int, reply_bound: int | None = None) -> PullReplyFields:
        return self.bulk("Pull", request, read_pull_reply, timeout=wait_ms / 1000.0 + UNARY_TIMEOUT,
                         reply_bound=reply_bound)

    def push(self, request: Payload) -> ps_pb2.PushReply:
        return self.bulk("Push", request, _parse_push_reply, timeout=4 * UNARY_TIMEOUT,
                         reply_bound=PUSH_REPLY_BOUND)

    def push_pull(self, request: Payload, wait_ms: int,
                  reply_bound: int | None = None) -> tuple[ps_pb2.PushReply, PullReplyFields]:
        return self.bulk("PushPull", request, read_push_pull_reply, timeout=wait_ms / 1000.0 + 4 * UNARY_TIMEOUT,
                         reply_bound=reply_bound)


@dataclass
class Pulled:
    """Merged pull replies: per-shard versions, all dense parameters as one flat vector (canonical order; None
    when not requested or not ready) and the requested rows stacked [U, dim] (tables in order, ids in order)."""

    versions: list[int]
    done: bool
    ready: bool
    dense: np.ndarray | None
    rows: np.ndarray
    waited_seconds: float = 0.0


@dataclass
class Pushed:
    versions: list[int]
    duplicate: list[bool]
    stale: list[bool] = field(default_factory=list)


@dataclass
class _ShardRows:
    """The part of a stacked row set one shard owns: its TableRows fields and where its rows sit in the stack
    (None: all of them, in order)."""

    tables: list[int]
    counts: list[int]
    ids: np.ndarray
    positions: np.ndarray | None


class ShardedPS:
    """A worker's view of all PS shards: join, heartbeat, leave, pull and push split by runtime.server.sharding."""

    def __init__(self, endpoints: Sequence[Endpoint], net: Transport, worker_id: str,
                 chunk_bytes: int = DEFAULT_CHUNK_SIZE, wire_dtype: int = tensor_pb2.FLOAT32) -> None:
        self.connections = [PSConnection(e, net, chunk_bytes) for e in endpoints]
        self.worker_id = worker_id
        self.wire_dtype = wire_dtype
        self.num_shards = len(endpoints)
        self.config: DLRMConfig | None = None
        self.dense_slices: list[list[tuple[int, int]]] = []
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
        self.dense_slices = sharding.dense_slices(config, self.num_shards)
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

    def _split(self, unique_ids: Sequence[np.ndarray]) -> list[_ShardRows]:
        """The rows of each table's unique_ids (sorted, distinct), stacked table after table, split by shard."""
        if self.num_shards == 1:
            tables = [t for t, ids in enumerate(unique_ids) if ids.size]
            ids = np.concatenate(unique_ids) if unique_ids else np.zeros(0, np.int64)
            return [_ShardRows(tables, [unique_ids[t].size for t in tables], ids, None)]
        parts = [_ShardRows([], [], np.zeros(0, np.int64), None) for _ in range(self.num_shards)]
        pieces: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.num_shards)]
        offset = 0
        for t, ids in enumerate(unique_ids):
            for shard, mine in enumerate(sharding.split_rows(t, ids, self.num_shards)):
                if mine.size:
                    parts[shard].tables.append(t)
                    parts[shard].counts.append(mine.size)
                    pieces[shard].append((ids[mine], mine + offset))
            offset += ids.size
        for part, shard_pieces in zip(parts, pieces, strict=True):
            if shard_pieces:
                part.ids = np.concatenate([ids for ids, _ in shard_pieces])
                part.positions = np.concatenate([where for _, where in shard_pieces])
            else:
                part.positions = np.zeros(0, np.int64)
        return parts

    def pull(self, min_versions: Sequence[int], unique_ids: Sequence[np.ndarray], *, dense: bool = True,
             wait_ms: int = 10_000) -> Pulled:
        """Dense parameters and rows unique_ids[t] of every table t (each sorted, distinct)."""
        assert self.config is not None, "connect_and_join first"
        parts = self._split(unique_ids)

        def pull_one(shard: int, connection: PSConnection) -> PullReplyFields:
            request, bound = self._pull_request(shard, parts[shard], min_versions[shard], dense, wait_ms)
            return connection.pull(request, wait_ms, reply_bound=bound)

        return self._merge_pulls(self._each(pull_one), parts, dense)

    def _pull_request(self, shard: int, part: _ShardRows, min_version: int, dense: bool,
                      wait_ms: int) -> tuple[Payload, int]:
        """A shard's PullRequest and the most bytes its reply can have."""
        assert self.config is not None
        request = Payload(ps_pb2.PullRequest(worker_id=self.worker_id, min_version=min_version, dense=dense,
                                             wire_dtype=self.wire_dtype, wait_ms=wait_ms))
        if part.tables:
            request.add_field(ps_pb2.PullRequest.ROWS_FIELD_NUMBER,
                              table_rows_payload(part.tables, part.counts, part.ids))
        dense_values = sum(end - start for start, end in self.dense_slices[shard]) if dense else 0
        return request, pull_reply_bound(dense_values, part.ids.size, self.config.embedding_dim, self.wire_dtype)

    def _merge_pulls(self, replies: Sequence[PullReplyFields], parts: Sequence[_ShardRows], dense: bool) -> Pulled:
        """The shards' PullReplies as one Pulled: dense vector in canonical order, rows in request order."""
        config = self.config
        assert config is not None
        total_rows = sum(part.ids.size for part in parts)
        dim = config.embedding_dim
        pulled = Pulled(versions=[r.version for r in replies], done=any(r.done for r in replies),
                        ready=all(r.ready for r in replies), dense=None, rows=np.zeros((0, dim), np.float32),
                        waited_seconds=max(r.waited_seconds for r in replies))
        if not pulled.ready or (pulled.done and not dense and not total_rows):
            return pulled
        if self.num_shards == 1:
            reply = replies[0]
            if dense:
                pulled.dense = self._reply_tensor(reply, "dense", (config.dense_size,), 0)
            pulled.rows = self._reply_tensor(reply, "rows", (total_rows, dim), 0)
            return pulled
        pulled.dense = np.empty(config.dense_size, dtype=np.float32) if dense else None
        pulled.rows = np.empty((total_rows, dim), dtype=np.float32)
        for shard, (reply, part) in enumerate(zip(replies, parts, strict=True)):
            if dense:
                slices = self.dense_slices[shard]
                flat = self._reply_tensor(reply, "dense", (sum(e - s for s, e in slices),), shard)
                offset = 0
                for start, end in slices:
                    pulled.dense[start:end] = flat[offset:offset + end - start]
                    offset += end - start
            pulled.rows[part.positions] = self._reply_tensor(reply, "rows", (part.ids.size, dim), shard)
        return pulled

    @staticmethod
    def _reply_tensor(reply: PullReplyFields, name: str, shape: tuple[int, ...], shard: int) -> np.ndarray:
        tensor = getattr(reply, name)
        if tensor is None:
            if math.prod(shape) == 0:
                return np.zeros(shape, dtype=np.float32)
            raise RemoteError(grpc.StatusCode.INTERNAL, f"shard {shard} sent no {name} tensor")
        try:
            return decode_tensor(tensor, f"shard {shard} PullReply.{name}", kind="float", shape=shape)
        except ProtocolError as error:
            raise RemoteError(grpc.StatusCode.INTERNAL, str(error)) from None

    def push(self, versions: Sequence[int], batch_size: int, loss: float, dense_grad: np.ndarray,
             unique_ids: Sequence[np.ndarray], row_grads: np.ndarray) -> Pushed:
        """Push gradients computed at `versions` (per shard): dense_grad flat (canonical order), row_grads
        stacked as the rows of pull. Stale shards are reported, not raised."""
        assert self.config is not None, "connect_and_join first"
        parts = self._split(unique_ids)

        def push_one(shard: int, connection: PSConnection) -> ps_pb2.PushReply | None:
            request = self._push_request(shard, parts[shard], versions[shard], batch_size, loss, dense_grad,
                                         row_grads)
            return _unless_stale(lambda: connection.push(request))

        return _pushed(self._each(push_one))

    def push_pull(self, versions: Sequence[int], batch_size: int, loss: float, dense_grad: np.ndarray,
                  unique_ids: Sequence[np.ndarray], row_grads: np.ndarray, next_ids: Sequence[np.ndarray],
                  min_versions: Sequence[int], wait_ms: int = 10_000) -> tuple[Pushed, Pulled | None]:
        """push(...), then pull(min_versions, next_ids), in one round trip per shard. The pull is None when a
        shard found the push stale (that shard served no pull)."""
        assert self.config is not None, "connect_and_join first"
        parts, next_parts = self._split(unique_ids), self._split(next_ids)

        def push_pull_one(shard: int, connection: PSConnection) -> tuple[ps_pb2.PushReply, PullReplyFields] | None:
            request = Payload()
            request.add_field(ps_pb2.PushPullRequest.PUSH_FIELD_NUMBER, self._push_request(
                shard, parts[shard], versions[shard], batch_size, loss, dense_grad, row_grads))
            pull, bound = self._pull_request(shard, next_parts[shard], min_versions[shard], True, wait_ms)
            request.add_field(ps_pb2.PushPullRequest.PULL_FIELD_NUMBER, pull)
            return _unless_stale(lambda: connection.push_pull(request, wait_ms, bound + PUSH_PULL_REPLY_EXTRA))

        results = self._each(push_pull_one)
        pushed = _pushed([None if r is None else r[0] for r in results])
        if any(r is None for r in results):
            return pushed, None
        return pushed, self._merge_pulls([r[1] for r in results if r is not None], next_parts, True)

    def _push_request(self, shard: int, part: _ShardRows, version: int, batch_size: int, loss: float,
                      dense_grad: np.ndarray, row_grads: np.ndarray) -> Payload:
        """A shard's PushRequest: its slices of dense_grad and its rows of row_grads."""
        request = Payload(ps_pb2.PushRequest(worker_id=self.worker_id, step=version, batch_size=batch_size,
                                             loss=loss))
        slices = self.dense_slices[shard]
        if self.num_shards == 1:
            mine = dense_grad
        else:
            mine = np.concatenate([dense_grad[start:end] for start, end in slices]) if slices \
                else np.zeros(0, np.float32)
        request.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER, tensor_payload(mine, self.wire_dtype))
        if part.tables:
            values = row_grads if part.positions is None else row_grads[part.positions]
            request.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER,
                              table_rows_payload(part.tables, part.counts, part.ids, values, self.wire_dtype))
        return request


def _unless_stale(call: Callable[[], T]) -> T | None:
    """call(), or None when the shard refused the push as stale."""
    try:
        return call()
    except RemoteError as error:
        if error.reason == "stale_step":
            return None
        raise


def _pushed(replies: Sequence[ps_pb2.PushReply | None]) -> Pushed:
    """The shards' PushReplies (None: stale) as one Pushed."""
    return Pushed(versions=[r.version if r is not None else -1 for r in replies],
                  duplicate=[bool(r is not None and r.duplicate) for r in replies],
                  stale=[r is None for r in replies])

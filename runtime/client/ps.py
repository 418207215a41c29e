"""Client side of the parameter-server protocol: one connection per PS shard, and the sharded view a worker uses.

PSConnection speaks the raw protocol to one shard (chunking, byte counts, errors as RemoteError).
ShardedPS splits a request's rows over the shards (runtime.server.sharding), encodes, calls, decodes and merges.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from runtime.client.remote import RemoteError
from runtime.federation import ParticipantKey, Plan
from runtime.federation.admission import sign_join
from runtime.model import DLRMConfig
from runtime.proto import ps_pb2
from runtime.protocol import (
    BULK_METHODS,
    CHUNK_OVERHEAD,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_BYTES,
    PROTOCOL_VERSION,
    PUSH_PULL_REPLY_EXTRA,
    PUSH_REPLY_BOUND,
    SERVICE,
    UNARY_METHODS,
    JobInfo,
    JoinProof,
    PullReply,
    PullRequest,
    PushReply,
    PushRequest,
    Rejected,
)
from runtime.rows import RowSet
from runtime.server import sharding
from runtime.transport import Endpoint, Transport
from runtime.wire.chunks import ChunkView, assemble_payload, parse_chunk, payload_chunks
from runtime.wire.codec import Payload
from runtime.wire.messages import (
    decode_pull_reply,
    decode_push_pull_reply,
    decode_push_reply,
    encode_pull_request,
    encode_push_pull_request,
    encode_push_request,
    pull_reply_bound,
)

T = TypeVar("T")
UNARY_TIMEOUT = 30.0


def _identity(value: bytes) -> bytes:
    return value


@dataclass(frozen=True)
class Federation:
    """How this process proves at every Join that it speaks for its participant (runtime.federation): the plan
    it runs, the participant's key, and the role it joins in."""

    plan: Plan
    key: ParticipantKey
    role: str = "worker"

    def proof(self, name: str, net: Transport, challenge: bytes) -> JoinProof:
        """The signed join of participant `name` for a server's challenge, over net's own certificate."""
        fingerprint = net.own_fingerprint()
        if fingerprint is None:
            raise RemoteError(grpc.StatusCode.FAILED_PRECONDITION, "not_attested: a federation join needs an "
                              "attested (RA-TLS) connection")
        return sign_join(self.plan, self.key, name, self.role, fingerprint, challenge)


class PSConnection:
    """One PS shard over one channel."""

    def __init__(self, endpoint: Endpoint, net: Transport, chunk_bytes: int = DEFAULT_CHUNK_SIZE,
                 federation: Federation | None = None, role: str = "worker") -> None:
        self.endpoint = endpoint
        self.net = net
        self.chunk_bytes = chunk_bytes
        self.federation = federation
        self.role = federation.role if federation is not None else role
        self.bytes_sent = 0
        self.bytes_received = 0
        self.channel: grpc.Channel | None = None

    def connect(self) -> None:
        self.close()
        # A server's chunks are at most MAX_CHUNK_BYTES (the largest --chunk-bytes it accepts).
        options = [("grpc.max_receive_message_length", MAX_CHUNK_BYTES + CHUNK_OVERHEAD),
                   ("grpc.max_send_message_length", self.chunk_bytes + CHUNK_OVERHEAD)]
        self.channel = self.net.channel(self.endpoint, options)
        path = f"/{SERVICE}/"
        unary = [*UNARY_METHODS, *(name + "One" for name in BULK_METHODS)]
        self._calls = {name: self.channel.unary_unary(path + name, request_serializer=_identity,
                                                      response_deserializer=_identity) for name in unary}
        self._calls.update({name: self.channel.stream_stream(path + name, request_serializer=_identity,
                                                             response_deserializer=_identity)
                            for name in BULK_METHODS})

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def unary(self, method: str, request: Message, reply_type: type, timeout: float = UNARY_TIMEOUT) -> Any:
        """Send a small request message and parse the reply; raises RemoteError."""
        if self.channel is None:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "not connected")
        raw = request.SerializeToString()
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

    def bulk(self, method: str, request: Payload, decode: Callable[[Any], T], timeout: float,
             reply_bound: int | None = None) -> T:
        """Send a request in chunks and decode the reassembled reply; raises RemoteError. reply_bound: the most
        bytes the reply can have, if known; a one-chunk request whose reply fits in one chunk goes as the unary
        <method>One call."""
        if self.channel is None:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "not connected")
        chunks = list(payload_chunks(request, self.chunk_bytes))
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
            payload = assemble_payload(replies(stream), max_bytes=1 << 34, max_chunk_bytes=MAX_CHUNK_BYTES)
            reply = decode(payload)
        except grpc.RpcError as error:
            raise RemoteError.from_rpc_error(error) from None
        except Rejected as error:
            raise RemoteError(grpc.StatusCode.INTERNAL, f"bad reply from {self.endpoint}: {error}") from None
        except Exception as error:
            self._raise_transport_error(error)
        finally:
            self.bytes_sent += sum(len(c) for c in chunks)
            self.bytes_received += received
        return reply

    def join(self, worker_id: str) -> JobInfo:
        """Joins as worker_id; under a federation with a proof over a fresh challenge of this connection."""
        request = ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id=worker_id, role=self.role)
        if self.federation is not None:
            plan = self.federation.plan
            challenge = self.unary("Challenge", ps_pb2.ChallengeRequest(protocol_version=PROTOCOL_VERSION),
                                   ps_pb2.ChallengeReply).challenge
            proof = self.federation.proof(worker_id, self.net, challenge)
            request.plan_digest, request.challenge, request.signature = plan.digest, challenge, proof.signature
        reply = self.unary("Join", request, ps_pb2.JoinReply)
        try:
            config = DLRMConfig.from_dict(json.loads(reply.model_config_json))
        except ValueError as error:
            raise RemoteError(grpc.StatusCode.INTERNAL, f"bad reply from {self.endpoint}: JoinReply."
                              f"model_config_json: {error}") from None
        return JobInfo(version=reply.version, total_steps=reply.total_steps, shard=reply.shard_index,
                       num_shards=reply.num_shards, config=config, synchronous=reply.synchronous,
                       staleness=reply.staleness, heartbeat_interval=reply.heartbeat_interval_ms / 1000.0,
                       max_chunk_bytes=reply.max_chunk_bytes, local_steps=reply.local_steps or 1)

    def heartbeat(self, worker_id: str) -> tuple[int, bool]:
        """(version, done)."""
        reply = self.unary("Heartbeat", ps_pb2.HeartbeatRequest(protocol_version=PROTOCOL_VERSION,
                                                                worker_id=worker_id), ps_pb2.HeartbeatReply)
        return reply.version, reply.done

    def leave(self, worker_id: str) -> int:
        return self.unary("Leave", ps_pb2.LeaveRequest(protocol_version=PROTOCOL_VERSION, worker_id=worker_id),
                          ps_pb2.LeaveReply).version

    def pull(self, request: PullRequest, dense_size: int | None, embedding_dim: int,
             reply_bound: int | None = None) -> PullReply:
        return self.bulk("Pull", encode_pull_request(request), lambda raw: decode_pull_reply(
            raw, dense_size=dense_size, rows=len(request.rows), embedding_dim=embedding_dim),
            timeout=request.wait_ms / 1000.0 + UNARY_TIMEOUT, reply_bound=reply_bound)

    def push(self, request: PushRequest, precision: str) -> PushReply:
        return self.bulk("Push", encode_push_request(request, precision), decode_push_reply,
                         timeout=4 * UNARY_TIMEOUT, reply_bound=PUSH_REPLY_BOUND)

    def push_pull(self, push: PushRequest, pull: PullRequest, precision: str, dense_size: int | None,
                  embedding_dim: int, reply_bound: int | None = None) -> tuple[PushReply, PullReply]:
        request = encode_push_pull_request(encode_push_request(push, precision), encode_pull_request(pull))
        return self.bulk("PushPull", request, lambda raw: decode_push_pull_reply(
            raw, dense_size=dense_size, rows=len(pull.rows), embedding_dim=embedding_dim),
            timeout=pull.wait_ms / 1000.0 + 4 * UNARY_TIMEOUT, reply_bound=reply_bound)


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


class ShardedPS:
    """A worker's view of all PS shards: join, heartbeat, leave, pull and push split by runtime.server.sharding."""

    def __init__(self, endpoints: Sequence[Endpoint], net: Transport, worker_id: str,
                 chunk_bytes: int = DEFAULT_CHUNK_SIZE, precision: str = "fp32",
                 federation: Federation | None = None, role: str = "worker") -> None:
        self.connections = [PSConnection(e, net, chunk_bytes, federation, role) for e in endpoints]
        self.worker_id = worker_id
        self.precision = precision
        self.num_shards = len(endpoints)
        self.config: DLRMConfig | None = None
        self.dense_slices: list[list[tuple[int, int]]] = []
        self.jobs: list[JobInfo] = []
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

    def connect_and_join(self) -> list[JobInfo]:
        """(Re)connect every shard (re-attesting under ratls) and join; checks that the shards agree."""
        def join(index: int, connection: PSConnection) -> JobInfo:
            connection.connect()
            return connection.join(self.worker_id)

        jobs = self._each(join)
        if len({job.config for job in jobs}) != 1:
            raise ValueError("PS shards disagree on the model config")
        if len({job.local_steps for job in jobs}) != 1:
            raise ValueError(f"PS shards disagree on the local steps per push: {[job.local_steps for job in jobs]}")
        for i, job in enumerate(jobs):
            if job.shard != i or job.num_shards != self.num_shards:
                raise ValueError(f"PS {self.connections[i].endpoint} is shard {job.shard} of "
                                 f"{job.num_shards}, but was given as shard {i} of {self.num_shards}")
        config = jobs[0].config
        if self.config is not None and config != self.config:
            raise ValueError("the PS model config changed across a reconnect")
        self.config = config
        self.dense_slices = sharding.dense_slices(config, self.num_shards)
        for c, job in zip(self.connections, jobs, strict=True):
            c.chunk_bytes = min(c.chunk_bytes, job.max_chunk_bytes)
        self.jobs = jobs
        return jobs

    def heartbeat(self) -> list[tuple[int, bool]]:
        return self._each(lambda i, c: c.heartbeat(self.worker_id))

    def leave(self) -> None:
        self._each(lambda i, c: c.leave(self.worker_id))

    def close(self) -> None:
        for c in self.connections:
            c.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _dense_size(self, shard: int) -> int:
        return sum(end - start for start, end in self.dense_slices[shard])

    def _pull_request(self, shard: int, rows: RowSet, min_version: int, dense: bool,
                      wait_ms: int) -> tuple[PullRequest, int]:
        """A shard's pull and the most bytes its reply can have."""
        assert self.config is not None
        request = PullRequest(self.worker_id, min_version, dense, rows, wait_ms, self.precision)
        return request, pull_reply_bound(self._dense_size(shard) if dense else 0, len(rows),
                                         self.config.embedding_dim, self.precision)

    def pull(self, min_versions: Sequence[int], rows: RowSet, *, dense: bool = True,
             wait_ms: int = 10_000) -> Pulled:
        """Dense parameters and the values of `rows` (each table's ids sorted, distinct)."""
        assert self.config is not None, "connect_and_join first"
        parts = sharding.split_rows(rows, self.num_shards)
        dim = self.config.embedding_dim

        def pull_one(shard: int, connection: PSConnection) -> PullReply:
            request, bound = self._pull_request(shard, parts[shard][0], min_versions[shard], dense, wait_ms)
            return connection.pull(request, self._dense_size(shard) if dense else None, dim, reply_bound=bound)

        return self._merge_pulls(self._each(pull_one), parts, len(rows), dense)

    def _merge_pulls(self, replies: Sequence[PullReply], parts: Sequence[tuple[RowSet, np.ndarray | None]],
                     total_rows: int, dense: bool) -> Pulled:
        """The shards' replies as one Pulled: dense vector in canonical order, rows in request order."""
        config = self.config
        assert config is not None
        dim = config.embedding_dim
        pulled = Pulled(versions=[r.version for r in replies], done=any(r.done for r in replies),
                        ready=all(r.ready for r in replies), dense=None, rows=np.zeros((0, dim), np.float32),
                        waited_seconds=max(r.waited_seconds for r in replies))
        if not pulled.ready or (pulled.done and not dense and not total_rows):
            return pulled
        if self.num_shards == 1:
            pulled.dense, pulled.rows = replies[0].dense, replies[0].rows
            return pulled
        pulled.dense = np.empty(config.dense_size, dtype=np.float32) if dense else None
        pulled.rows = np.empty((total_rows, dim), dtype=np.float32)
        for shard, (reply, (_, positions)) in enumerate(zip(replies, parts, strict=True)):
            if pulled.dense is not None:
                offset = 0
                for start, end in self.dense_slices[shard]:
                    pulled.dense[start:end] = reply.dense[offset:offset + end - start]
                    offset += end - start
            pulled.rows[positions] = reply.rows
        return pulled

    def _push_request(self, shard: int, rows: RowSet, positions: np.ndarray | None, version: int,
                      batch_size: int, loss: float, dense_grad: np.ndarray, row_grads: np.ndarray,
                      local_steps: int) -> PushRequest:
        """A shard's push: its slices of dense_grad and its rows' gradients (or, FedAvg, deltas)."""
        if self.num_shards == 1:
            mine = dense_grad
        else:
            slices = self.dense_slices[shard]
            mine = np.concatenate([dense_grad[start:end] for start, end in slices]) if slices \
                else np.zeros(0, np.float32)
        values = row_grads if positions is None else row_grads[positions]
        return PushRequest(self.worker_id, version, batch_size, loss, mine, rows.with_values(values), local_steps)

    def push(self, versions: Sequence[int], batch_size: int, loss: float, dense_grad: np.ndarray, rows: RowSet,
             row_grads: np.ndarray, local_steps: int = 1) -> Pushed:
        """Push gradients computed at `versions` (per shard): dense_grad flat (canonical order), row_grads the
        gradients of `rows` in their order (as pull returns the rows). Stale shards are reported, not raised.
        local_steps > 1: they are the model deltas after that many local steps (FedAvg)."""
        assert self.config is not None, "connect_and_join first"
        parts = sharding.split_rows(rows, self.num_shards)

        def push_one(shard: int, connection: PSConnection) -> PushReply | None:
            part, positions = parts[shard]
            request = self._push_request(shard, part, positions, versions[shard], batch_size, loss, dense_grad,
                                         row_grads, local_steps)
            return _unless_stale(lambda: connection.push(request, self.precision))

        return _pushed(self._each(push_one))

    def push_pull(self, versions: Sequence[int], batch_size: int, loss: float, dense_grad: np.ndarray,
                  rows: RowSet, row_grads: np.ndarray, next_rows: RowSet, min_versions: Sequence[int],
                  wait_ms: int = 10_000, local_steps: int = 1) -> tuple[Pushed, Pulled | None]:
        """push(...), then pull(min_versions, next_rows), in one round trip per shard. The pull is None when a
        shard found the push stale (that shard served no pull)."""
        assert self.config is not None, "connect_and_join first"
        parts, next_parts = sharding.split_rows(rows, self.num_shards), sharding.split_rows(next_rows, self.num_shards)
        dim = self.config.embedding_dim

        def push_pull_one(shard: int, connection: PSConnection) -> tuple[PushReply, PullReply] | None:
            part, positions = parts[shard]
            push = self._push_request(shard, part, positions, versions[shard], batch_size, loss, dense_grad,
                                      row_grads, local_steps)
            pull, bound = self._pull_request(shard, next_parts[shard][0], min_versions[shard], True, wait_ms)
            return _unless_stale(lambda: connection.push_pull(push, pull, self.precision, self._dense_size(shard),
                                                              dim, bound + PUSH_PULL_REPLY_EXTRA))

        results = self._each(push_pull_one)
        pushed = _pushed([None if r is None else r[0] for r in results])
        if any(r is None for r in results):
            return pushed, None
        return pushed, self._merge_pulls([r[1] for r in results if r is not None], next_parts, len(next_rows), True)


def _unless_stale(call: Callable[[], T]) -> T | None:
    """call(), or None when the shard refused the push as stale."""
    try:
        return call()
    except RemoteError as error:
        if error.reason == "stale_step":
            return None
        raise


def _pushed(replies: Sequence[PushReply | None]) -> Pushed:
    """The shards' PushReplies (None: stale) as one Pushed."""
    return Pushed(versions=[r.version if r is not None else -1 for r in replies],
                  duplicate=[bool(r is not None and r.duplicate) for r in replies],
                  stale=[r is None for r in replies])

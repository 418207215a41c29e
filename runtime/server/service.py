"""The PS's gRPC service: the only place that knows status codes. Requests are reassembled from their chunks
and decoded here (runtime.wire), handed to the state machine, and its results encoded and chunked back."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from runtime import transport
from runtime.proto import ps_pb2
from runtime.protocol import (
    CHUNK_OVERHEAD,
    MAX_REQUEST_BYTES,
    MAX_STREAMS_PER_CALLER,
    PROTOCOL_VERSION,
    PUSH_PULL_REPLY_EXTRA,
    SERVICE,
    Caller,
    JoinProof,
    PullReply,
    PullRequest,
    Rejected,
    check_version,
)
from runtime.server.state import ParameterServer
from runtime.wire.chunks import ChunkView, assemble_payload, parse_chunk, payload_chunks
from runtime.wire.codec import Payload
from runtime.wire.messages import (
    Shapes,
    decode_pull_request,
    decode_push_pull_request,
    decode_push_request,
    encode_dense,
    encode_pull_reply,
    encode_push_pull_reply,
    encode_push_reply,
    parse_message,
    pull_reply_bound,
    request_bound,
)

# The status a refusal's reason maps to; every other reason is INVALID_ARGUMENT (a malformed or impossible
# request). ABORTED tells a worker to pull again; FAILED_PRECONDITION that the job's state does not allow it yet
# (or any more); RESOURCE_EXHAUSTED that a limit of this server was hit; PERMISSION_DENIED that a well-formed
# push was refused as poisoned (its step is spent).
STATUS_CODES = {
    "bad_protocol_version": grpc.StatusCode.FAILED_PRECONDITION,
    "unknown_worker": grpc.StatusCode.FAILED_PRECONDITION,
    "not_started": grpc.StatusCode.FAILED_PRECONDITION,
    "training_done": grpc.StatusCode.FAILED_PRECONDITION,
    "stale_step": grpc.StatusCode.ABORTED,
    "chunk_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "reply_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_many_streams": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "wrong_local_steps": grpc.StatusCode.FAILED_PRECONDITION,
    "batch_too_large": grpc.StatusCode.PERMISSION_DENIED,
    "gradient_too_large": grpc.StatusCode.PERMISSION_DENIED,
    # Who the caller is (runtime.federation): PERMISSION_DENIED for a caller that may not act so, and
    # FAILED_PRECONDITION for one that may once the current holder of the id is gone.
    "not_bound": grpc.StatusCode.PERMISSION_DENIED,
    "participant_live": grpc.StatusCode.FAILED_PRECONDITION,
    "plan_mismatch": grpc.StatusCode.PERMISSION_DENIED,
    "not_in_plan": grpc.StatusCode.PERMISSION_DENIED,
    "role_not_allowed": grpc.StatusCode.PERMISSION_DENIED,
    "role_policy": grpc.StatusCode.PERMISSION_DENIED,
    "bad_challenge": grpc.StatusCode.PERMISSION_DENIED,
    "bad_proof": grpc.StatusCode.PERMISSION_DENIED,
    "not_attested": grpc.StatusCode.UNAUTHENTICATED,
}


# A bulk call's handler: (reassembled request, its bytes, the most reply bytes allowed or None, caller) -> reply.
BulkHandler = Callable[[Any, int, "int | None", Caller], Payload]


def status_code(reason: str) -> grpc.StatusCode:
    return STATUS_CODES.get(reason, grpc.StatusCode.INVALID_ARGUMENT)


class ParameterServerService:
    """gRPC adapter: raw bytes in (decoded here, so malformed input gets a clear status), chunks for bulk calls."""

    def __init__(self, ps: ParameterServer, net: transport.Transport) -> None:
        self.ps = ps
        self.net = net
        self.chunk_bytes = ps.options.chunk_bytes
        config = ps.config
        self.shapes = Shapes(config.table_sizes, config.embedding_dim, ps.params.dense_size)
        self.max_request_bytes = ps.options.max_message_bytes or min(request_bound(self.shapes), MAX_REQUEST_BYTES)
        self._streams_lock = threading.Lock()
        self._open_streams: Counter[str] = Counter()  # caller -> streamed calls open
        # precision -> (version, that version's dense parameters serialized), shared by every pull of a version.
        self._dense_cache: dict[str, tuple[int, Payload]] = {}

    def _fail(self, context: grpc.ServicerContext, error: Rejected) -> None:
        self.ps.reject(error.reason)
        context.abort(status_code(error.reason), str(error))

    def _admit(self, context: grpc.ServicerContext) -> Caller:
        """Every call: the caller must be the very certificate an attestation admitted (TLS alone would also let
        through a certificate that an attested key signed: the trust set's certificates are served as roots).
        Returns who it is, for the state machine's binding of worker ids to connections."""
        try:
            return self.net.caller(context)
        except transport.PeerRejected as error:
            self.ps.reject(error.reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise AssertionError("abort returns only by raising") from None

    # -- unary calls ---------------------------------------------------------------------------------------

    def _challenge(self, raw: bytes, caller: Caller) -> ps_pb2.ChallengeReply:
        request = parse_message(ps_pb2.ChallengeRequest, raw)
        check_version(request.protocol_version, "ChallengeRequest")
        challenge, federation, plan_digest = self.ps.challenge(caller)
        return ps_pb2.ChallengeReply(challenge=challenge, federation=federation, plan_digest=plan_digest)

    def _join(self, raw: bytes, caller: Caller) -> ps_pb2.JoinReply:
        request = parse_message(ps_pb2.JoinRequest, raw)
        check_version(request.protocol_version, "JoinRequest")
        proof = JoinProof(role=request.role, plan_digest=request.plan_digest, challenge=request.challenge,
                          signature=request.signature)
        job = self.ps.join(request.worker_id, caller, proof)
        plan = self.ps.options.plan
        return ps_pb2.JoinReply(
            protocol_version=PROTOCOL_VERSION, version=job.version, total_steps=job.total_steps,
            shard_index=job.shard, num_shards=job.num_shards,
            model_config_json=json.dumps(job.config.to_dict(), sort_keys=True), synchronous=job.synchronous,
            staleness=job.staleness, heartbeat_interval_ms=int(job.heartbeat_interval * 1000),
            max_chunk_bytes=job.max_chunk_bytes, plan_digest=plan.digest if plan else b"",
            local_steps=job.local_steps)

    def _heartbeat(self, raw: bytes, caller: Caller) -> ps_pb2.HeartbeatReply:
        request = parse_message(ps_pb2.HeartbeatRequest, raw)
        check_version(request.protocol_version, "HeartbeatRequest")
        version, done = self.ps.heartbeat(request.worker_id, caller)
        return ps_pb2.HeartbeatReply(version=version, done=done)

    def _leave(self, raw: bytes, caller: Caller) -> ps_pb2.LeaveReply:
        request = parse_message(ps_pb2.LeaveRequest, raw)
        check_version(request.protocol_version, "LeaveRequest")
        return ps_pb2.LeaveReply(version=self.ps.leave(request.worker_id, caller))

    def _status(self, raw: bytes, _caller: Caller) -> ps_pb2.StatusReply:
        request = parse_message(ps_pb2.StatusRequest, raw)
        check_version(request.protocol_version, "StatusRequest")
        status = self.ps.status()
        return ps_pb2.StatusReply(
            protocol_version=PROTOCOL_VERSION, version=status.version, total_steps=status.total_steps,
            done=status.done, shard_index=status.shard, num_shards=status.num_shards,
            live_workers=status.live_workers, rounds=status.rounds, short_rounds=status.short_rounds,
            pushes=status.pushes, duplicate_pushes=status.duplicate_pushes, rejected_calls=status.rejected_calls,
            bytes_received=status.bytes_received, bytes_sent=status.bytes_sent,
            resumed_from_version=status.resumed_from_version)

    def _unary(self, handler: Callable[[bytes, Caller], Any]) -> Callable:
        def call(raw: bytes, context: grpc.ServicerContext) -> bytes:
            caller = self._admit(context)
            try:
                reply = handler(raw, caller)
            except Rejected as error:
                self._fail(context, error)
            out = reply.SerializeToString()
            self.ps.count(caller, bytes_received=len(raw), bytes_sent=len(out))
            return out
        return call

    # -- bulk calls ----------------------------------------------------------------------------------------

    def _check_reply_fits(self, request: PullRequest, max_reply_bytes: int | None) -> None:
        """Refuse, before any work, a pull whose reply could be larger than max_reply_bytes."""
        if max_reply_bytes is None:
            return
        bound = pull_reply_bound(self.shapes.dense_size if request.dense else 0, len(request.rows),
                                 self.shapes.embedding_dim, request.precision)
        if bound > max_reply_bytes:
            raise Rejected("reply_too_large", f"reply: up to {bound} bytes, more than one chunk of "
                           f"{max_reply_bytes}; use the streaming call")

    def _encode_pull(self, reply: PullReply, precision: str) -> Payload:
        dense = None
        if reply.dense is not None:
            cached = self._dense_cache.get(precision)
            if cached is None or cached[0] != reply.version:
                cached = (reply.version, encode_dense(reply.dense, precision))
                self._dense_cache[precision] = cached
            dense = cached[1]
        return encode_pull_reply(reply, dense, precision)

    def _pull(self, payload: memoryview | bytearray, _received: int, max_reply_bytes: int | None,
              caller: Caller) -> Payload:
        request = decode_pull_request(payload, self.shapes)
        self._check_reply_fits(request, max_reply_bytes)
        return self._encode_pull(self.ps.pull(request, caller), request.precision)

    def _push(self, payload: memoryview | bytearray, received: int, _max_reply_bytes: int | None,
              caller: Caller) -> Payload:
        return Payload(encode_push_reply(self.ps.push(decode_push_request(payload, self.shapes), received, caller)))

    def _push_pull(self, payload: memoryview | bytearray, received: int, max_reply_bytes: int | None,
                   caller: Caller) -> Payload:
        push, pull = decode_push_pull_request(payload, self.shapes)
        # The PushReply and framing around the PullReply must fit in the one chunk too.
        self._check_reply_fits(pull, None if max_reply_bytes is None else max_reply_bytes - PUSH_PULL_REPLY_EXTRA)
        pushed, pulled = self.ps.push_pull(push, pull, received, caller)
        return encode_push_pull_reply(pushed, self._encode_pull(pulled, pull.precision))

    def _bulk_reply(self, handler: BulkHandler, chunks: Iterator[bytes], context: grpc.ServicerContext,
                    max_reply_bytes: int | None,
                    arrived: Callable[[], None] = lambda: None) -> tuple[Payload, int, Caller]:
        """Reassemble, decode and handle one chunked request (arrived() once it is all in); returns the reply,
        the request's bytes and the caller."""
        caller = self._admit(context)
        ps = self.ps
        received = 0

        def parsed() -> Iterator[ChunkView]:
            nonlocal received
            for raw in chunks:
                received += len(raw)
                if len(raw) > self.chunk_bytes + CHUNK_OVERHEAD:
                    raise Rejected("chunk_too_large", f"chunk message: expected at most "
                                   f"{self.chunk_bytes + CHUNK_OVERHEAD} bytes, found {len(raw)}")
                yield parse_chunk(raw)

        try:
            payload = assemble_payload(parsed(), max_bytes=self.max_request_bytes, max_chunk_bytes=self.chunk_bytes)
            arrived()
            reply = handler(payload, received, max_reply_bytes, caller)
        except Rejected as error:
            ps.count(caller, bytes_received=received)
            self._fail(context, error)
        return reply, received, caller

    @staticmethod
    def _stream_owner(context: grpc.ServicerContext) -> str:
        """Who is calling, for per-caller limits: the client certificate where there is one (ratls, tls), else the
        connection."""
        pems = (context.auth_context() or {}).get("x509_pem_cert")
        return hashlib.sha256(pems[0]).hexdigest() if pems else context.peer()

    def _bulk(self, handler: BulkHandler) -> Callable:
        """Pull / Push / PushPull: request and reply streamed in chunks. A caller has at most
        MAX_STREAMS_PER_CALLER open, and a request must arrive within the stream timeout: idle or slow streams
        hold neither memory (chunks are kept as they arrive) nor the server's threads for long."""
        def call(chunks: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            owner = self._stream_owner(context)
            with self._streams_lock:
                open_now = self._open_streams[owner]
                if open_now < MAX_STREAMS_PER_CALLER:
                    self._open_streams[owner] += 1
            if open_now >= MAX_STREAMS_PER_CALLER:
                self._fail(context, Rejected("too_many_streams", f"this caller already has {open_now} streamed "
                                             f"calls open, the most allowed"))
            # The request must arrive in time; handling it (a pull may wait for a version) is not limited here.
            deadline = threading.Timer(self.ps.options.stream_timeout, context.cancel)
            deadline.daemon = True
            deadline.start()
            try:
                try:
                    reply, received, caller = self._bulk_reply(handler, chunks, context, None, deadline.cancel)
                except grpc.RpcError:  # cancelled: the deadline passed or the client went away; nothing applied
                    self.ps.reject("stream_cancelled")
                    return
                finally:
                    deadline.cancel()
                sent = 0
                for raw in payload_chunks(reply, self.chunk_bytes):
                    sent += len(raw)
                    yield raw
                self.ps.count(caller, bytes_received=received, bytes_sent=sent)
            finally:
                with self._streams_lock:
                    self._open_streams[owner] -= 1
                    if not self._open_streams[owner]:
                        del self._open_streams[owner]
        return call

    def _bulk_one(self, handler: BulkHandler) -> Callable:
        """<method>One: one chunk each way, without a stream's per-call threads and iterators. A pull whose reply
        could exceed one chunk is refused; a PushReply is a few bytes."""
        def call(raw: bytes, context: grpc.ServicerContext) -> bytes:
            reply, received, caller = self._bulk_reply(handler, iter((raw,)), context, self.chunk_bytes)
            (only,) = payload_chunks(reply, max(reply.size, 1))
            self.ps.count(caller, bytes_received=received, bytes_sent=len(only))
            return only
        return call

    def handler(self) -> grpc.GenericRpcHandler:
        unary = {"Challenge": self._challenge, "Join": self._join, "Heartbeat": self._heartbeat,
                 "Leave": self._leave, "Status": self._status}
        bulk = {"Pull": self._pull, "Push": self._push, "PushPull": self._push_pull}
        methods = {name: grpc.unary_unary_rpc_method_handler(self._unary(fn)) for name, fn in unary.items()}
        for name, fn in bulk.items():
            methods[name] = grpc.stream_stream_rpc_method_handler(self._bulk(fn))
            methods[name + "One"] = grpc.unary_unary_rpc_method_handler(self._bulk_one(fn))
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def server_options(chunk_bytes: int) -> list[tuple[str, Any]]:
    limit = chunk_bytes + CHUNK_OVERHEAD
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


@dataclass
class RunningServer:
    server: grpc.Server
    ps: ParameterServer
    endpoint: transport.Endpoint


def start_server(ps: ParameterServer, net: transport.Transport, host: str, port: int,
                 attestation_port: int | None = None) -> RunningServer:
    threads = max(16, 4 * ps.options.workers + 8)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ps"),
                         options=server_options(ps.options.chunk_bytes) + net.server_options())
    server.add_generic_rpc_handlers((ParameterServerService(ps, net).handler(),))
    endpoint = net.add_port(server, host, port, attestation_port)
    server.start()
    return RunningServer(server, ps, endpoint)

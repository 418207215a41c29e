"""The PS's gRPC service: the only place that knows status codes. Requests are decoded here, handed to the state
machine, and its replies encoded; chunked calls are reassembled and split here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from runtime import transport
from runtime.proto import ps_pb2
from runtime.protocol import (
    CHUNK_OVERHEAD,
    ChunkView,
    Payload,
    ProtocolError,
    assemble_payload,
    parse_chunk,
    parse_payload,
    read_pull_request,
    read_push_pull_request,
    read_push_request,
)
from runtime.server.state import SERVICE, ParameterServer


class ParameterServerService:
    """gRPC adapter: raw bytes in (parsed here, so malformed input gets a clear status), chunks for bulk calls."""

    def __init__(self, ps: ParameterServer) -> None:
        self.ps = ps
        self.chunk_bytes = ps.options.chunk_bytes

    def _fail(self, context: grpc.ServicerContext, error: ProtocolError) -> None:
        self.ps.reject(error.reason)
        context.abort(error.code, str(error))

    def _unary(self, message_type: type, handler: Callable[[Any], Any]) -> Callable:
        def call(raw: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                reply = handler(parse_payload(message_type, raw))
            except ProtocolError as error:
                self._fail(context, error)
            out = reply.SerializeToString()
            self.ps.count(bytes_received=len(raw), bytes_sent=len(out))
            return out
        return call

    def _bulk_reply(self, read: Callable[[Any], Any], handler: Callable[[Any, int], Any], chunks: Iterator[bytes],
                    context: grpc.ServicerContext) -> tuple[Payload, int]:
        """Reassemble, parse and handle one chunked request; returns the reply and the request's bytes."""
        ps = self.ps
        received = 0

        def parsed() -> Iterator[ChunkView]:
            nonlocal received
            for raw in chunks:
                received += len(raw)
                if len(raw) > self.chunk_bytes + CHUNK_OVERHEAD:
                    raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk_too_large",
                                        f"chunk message: expected at most {self.chunk_bytes + CHUNK_OVERHEAD}"
                                        f" bytes, found {len(raw)}")
                yield parse_chunk(raw)

        try:
            payload = assemble_payload(parsed(), max_bytes=ps.options.max_message_bytes,
                                       max_chunk_bytes=self.chunk_bytes)
            reply = handler(read(payload), received)
        except ProtocolError as error:
            ps.count(bytes_received=received)
            self._fail(context, error)
        return (reply if isinstance(reply, Payload) else Payload(reply)), received

    def _bulk(self, read: Callable[[Any], Any], handler: Callable[[Any, int], Any]) -> Callable:
        """Pull / Push: request and reply streamed in chunks."""
        def call(chunks: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            reply, received = self._bulk_reply(read, handler, chunks, context)
            sent = 0
            for raw in reply.chunks(self.chunk_bytes):
                sent += len(raw)
                yield raw
            self.ps.count(bytes_received=received, bytes_sent=sent)
        return call

    def _bulk_one(self, read: Callable[[Any], Any], handler: Callable[[Any, int], Any]) -> Callable:
        """PullOne / PushOne: one chunk each way, without a stream's per-call threads and iterators."""
        def call(raw: bytes, context: grpc.ServicerContext) -> bytes:
            reply, received = self._bulk_reply(read, handler, iter((raw,)), context)
            # One chunk: the PullOne handler refuses larger replies, and a PushReply is a few bytes.
            (only,) = reply.chunks(max(reply.size, 1))
            self.ps.count(bytes_received=received, bytes_sent=len(only))
            return only
        return call

    def handler(self) -> grpc.GenericRpcHandler:
        ps = self.ps
        methods = {
            "Join": grpc.unary_unary_rpc_method_handler(self._unary(ps_pb2.JoinRequest, ps.join)),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(self._unary(ps_pb2.HeartbeatRequest, ps.heartbeat)),
            "Leave": grpc.unary_unary_rpc_method_handler(self._unary(ps_pb2.LeaveRequest, ps.leave)),
            "Status": grpc.unary_unary_rpc_method_handler(self._unary(ps_pb2.StatusRequest, ps.status)),
            "Pull": grpc.stream_stream_rpc_method_handler(self._bulk(read_pull_request,
                                                                     lambda r, _n: ps.pull(r))),
            "Push": grpc.stream_stream_rpc_method_handler(self._bulk(read_push_request, ps.push)),
            "PullOne": grpc.unary_unary_rpc_method_handler(self._bulk_one(
                read_pull_request, lambda r, _n: ps.pull(r, max_reply_bytes=self.chunk_bytes))),
            "PushOne": grpc.unary_unary_rpc_method_handler(self._bulk_one(read_push_request, ps.push)),
            "PushPull": grpc.stream_stream_rpc_method_handler(self._bulk(read_push_pull_request, ps.push_pull)),
            "PushPullOne": grpc.unary_unary_rpc_method_handler(self._bulk_one(
                read_push_pull_request, lambda r, n: ps.push_pull(r, n, max_reply_bytes=self.chunk_bytes))),
        }
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
                         options=server_options(ps.options.chunk_bytes))
    server.add_generic_rpc_handlers((ParameterServerService(ps).handler(),))
    endpoint = net.add_port(server, host, port, attestation_port)
    server.start()
    return RunningServer(server, ps, endpoint)

"""A grpc.Channel pinned to an attested server certificate that re-attests by itself.

gRPC cannot change a channel's credentials, and a restarted server has a new key, so the pinned inner channel
is replaced when re-attestation finds a new server certificate. Multicallables made from this channel look up
the current inner channel on every call, so stubs built once keep working across a server restart.

When it re-attests: before a call, once half of the server's trust TTL has passed (so the server's trust in us
never lapses while we are in use), and after any call failed with UNAVAILABLE. A blocking unary-request call
that failed because its connection could not be established and found a new server certificate is retried once
on the new pin: with the old pin it could not have reached the new server, and the old one is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ratls._trust import Attested
from ratls.errors import Reason, VerificationError
from ratls.evidence import Evidence

_LOGGER = logging.getLogger("ratls")
RETRY_BACKOFF_S = 1.0
# How gRPC reports an RPC that never got a connection (so it was never sent to any server).
_NOT_CONNECTED = "failed to connect to all addresses"
_Serializer = Callable[[Any], bytes] | None
_Deserializer = Callable[[bytes], Any] | None


class PinnedChannel(grpc.Channel):
    """What Credentials.secure_channel returns: a grpc.Channel to an attested server (see the module docstring),
    with the attestation state: server_evidence, server_certificate_der, repins, and reattest() to force one."""

    def __init__(self, attest: Callable[[], Attested], open_pinned: Callable[[Attested], grpc.Channel]) -> None:
        self._attest = attest
        self._open_pinned = open_pinned
        self._lock = threading.RLock()
        self._inner: grpc.Channel | None = None
        self._attested: Attested | None = None
        self._generation = 0
        self._refresh_at = 0.0
        self._suspect = False
        self._subscriptions: list[tuple[Callable, bool]] = []
        self._closed = False
        self._install(attest())

    # -- attestation state

    @property
    def server_evidence(self) -> Evidence:
        """The Evidence of the server this channel is pinned to."""
        assert self._attested is not None
        return self._attested.evidence

    @property
    def server_certificate_der(self) -> bytes:
        """The attested server certificate this channel is pinned to (DER)."""
        assert self._attested is not None
        return self._attested.certificate_der

    @property
    def repins(self) -> int:
        """How many times the channel moved to a new server certificate (0 until the first server restart)."""
        return self._generation - 1

    def reattest(self) -> bool:
        """Attests the server again now and re-pins if its certificate changed (the one-call recovery after a
        server restart). Returns True if it re-pinned. Raises VerificationError if attestation fails."""
        with self._lock:
            if self._closed:
                raise ValueError("the channel is closed")
            return self._install(self._attest())

    def _install(self, attested: Attested) -> bool:
        self._refresh_at = time.monotonic() + attested.trust_ttl / 2
        self._suspect = False
        if self._attested is not None and attested.certificate_der == self._attested.certificate_der:
            self._attested = attested
            return False
        new = self._open_pinned(attested)
        old = self._inner
        for callback, try_to_connect in self._subscriptions:
            if old is not None:
                old.unsubscribe(callback)
            new.subscribe(callback, try_to_connect)
        self._inner, self._attested = new, attested
        self._generation += 1
        if old is not None:
            old.close()  # pinned to a server that is gone
        return True

    def _try_reattest(self) -> bool:
        try:
            return self.reattest()
        except VerificationError as e:
            self._refresh_at = time.monotonic() + RETRY_BACKOFF_S
            self._suspect = False
            _LOGGER.warning("ratls: re-attesting the server failed, keeping the current pin: %s", e)
            if e.reason in (Reason.IO, Reason.TIMEOUT):
                return False
            raise

    def _current(self) -> tuple[int, grpc.Channel]:
        with self._lock:
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            if self._suspect or time.monotonic() >= self._refresh_at:
                self._try_reattest()
            assert self._inner is not None
            return self._generation, self._inner

    def _failed(self, error: grpc.RpcError) -> bool:
        """Called when a blocking call failed: re-attests on UNAVAILABLE; True if the call should be retried."""
        if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        with self._lock:
            if self._closed:
                return False
            try:
                repinned = self._try_reattest()
            except VerificationError as e:
                raise e from error
        details = error.details() or ""
        return repinned and _NOT_CONNECTED in details

    def _note_done(self, call: Any) -> None:
        """Done-callback of non-blocking calls: an UNAVAILABLE makes the next call re-attest first."""
        try:
            if call.code() == grpc.StatusCode.UNAVAILABLE:
                self._suspect = True
        except Exception:  # a cancelled future has no code; nothing to learn from it
            pass

    # -- grpc.Channel

    def subscribe(self, callback: Callable, try_to_connect: bool = False) -> None:
        with self._lock:
            self._subscriptions.append((callback, try_to_connect))
            assert self._inner is not None
            self._inner.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable) -> None:
        with self._lock:
            self._subscriptions = [(c, t) for c, t in self._subscriptions if c is not callback]
            assert self._inner is not None
            self._inner.unsubscribe(callback)

    def unary_unary(self, method: str, request_serializer: _Serializer = None,
                    response_deserializer: _Deserializer = None,
                    _registered_method: bool = False) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, "unary_unary", method, request_serializer, response_deserializer, _registered_method)

    def unary_stream(self, method: str, request_serializer: _Serializer = None,
                     response_deserializer: _Deserializer = None,
                     _registered_method: bool = False) -> grpc.UnaryStreamMultiCallable:
        return _Streaming(self, "unary_stream", method, request_serializer, response_deserializer, _registered_method)

    def stream_unary(self, method: str, request_serializer: _Serializer = None,
                     response_deserializer: _Deserializer = None,
                     _registered_method: bool = False) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, "stream_unary", method, request_serializer, response_deserializer,
                            _registered_method)

    def stream_stream(self, method: str, request_serializer: _Serializer = None,
                      response_deserializer: _Deserializer = None,
                      _registered_method: bool = False) -> grpc.StreamStreamMultiCallable:
        return _Streaming(self, "stream_stream", method, request_serializer, response_deserializer,
                          _registered_method)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._inner is not None:
                self._inner.close()

    def __enter__(self) -> PinnedChannel:
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        self.close()
        return False


class _MultiCallable:
    """Resolves the inner channel's multicallable for the current pin on every call."""

    def __init__(self, channel: PinnedChannel, kind: str, method, serializer, deserializer, registered) -> None:
        self._channel = channel
        self._kind = kind
        self._args = (method, serializer, deserializer)
        self._registered = registered
        self._cached: tuple[int, Any] = (-1, None)

    def _get(self) -> Any:
        generation, inner = self._channel._current()
        cached_generation, multicallable = self._cached
        if cached_generation != generation:
            multicallable = getattr(inner, self._kind)(*self._args, _registered_method=self._registered)
            self._cached = (generation, multicallable)
        return multicallable

    def _blocking(self, invoke: Callable[[Any], Any], *, retry: bool) -> Any:
        try:
            return invoke(self._get())
        except grpc.RpcError as e:
            if not self._channel._failed(e) or not retry:
                raise
        return invoke(self._get())

    def _nonblocking(self, call: Any) -> Any:
        add = getattr(call, "add_done_callback", None)
        if add is not None:
            add(self._channel._note_done)
        return call


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):
    def __call__(self, request, *args, **kwargs):
        return self._blocking(lambda mc: mc(request, *args, **kwargs), retry=True)

    def with_call(self, request, *args, **kwargs):
        return self._blocking(lambda mc: mc.with_call(request, *args, **kwargs), retry=True)

    def future(self, request, *args, **kwargs):
        return self._nonblocking(self._get().future(request, *args, **kwargs))


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):
    # The request iterator is consumed by the first attempt: re-attest for the next call, never retry.
    def __call__(self, request_iterator, *args, **kwargs):
        return self._blocking(lambda mc: mc(request_iterator, *args, **kwargs), retry=False)

    def with_call(self, request_iterator, *args, **kwargs):
        return self._blocking(lambda mc: mc.with_call(request_iterator, *args, **kwargs), retry=False)

    def future(self, request_iterator, *args, **kwargs):
        return self._nonblocking(self._get().future(request_iterator, *args, **kwargs))


class _Streaming(_MultiCallable, grpc.UnaryStreamMultiCallable, grpc.StreamStreamMultiCallable):
    def __call__(self, request, *args, **kwargs):
        return self._nonblocking(self._get()(request, *args, **kwargs))

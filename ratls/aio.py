"""A grpc.aio.Channel pinned to an attested server certificate: what Credentials.aio_secure_channel returns.

The asyncio counterpart of ratls._grpc_channel.PinnedChannel, with gRPC's lazy semantics:

- Creating the channel does nothing on the network, so it never fails because the server is down. The first call
  (or channel_ready(), or an explicit `await channel.reattest()`) attests the server; concurrent first calls share
  one attestation. The blocking native handshake runs in a worker thread (asyncio.to_thread): the event loop keeps
  running while it waits.
- It re-attests before a call once half of the server's trust TTL has passed, after a unary-response call failed
  with UNAVAILABLE (at once, inside that call), and before the next call after a streaming-response call ended with
  UNAVAILABLE. A unary-request, unary-response call that failed because its connection could not be established
  ("failed to connect to all addresses") on a pin that has since been replaced is retried once on the new pin:
  with the old pin it could not have reached the new server, so it was never sent.

What a caller sees:

- Attestation fails (the server is down, IO / TIMEOUT; its certificate fails our policy; it refuses us,
  PEER_REFUSED with .peer_reason): the call fails with AioAttestationError, which is both a
  grpc.aio.AioRpcError with code UNAVAILABLE (gRPC code that handles "server unavailable" keeps working) whose
  details carry the reason, and a ratls.VerificationError with `.reason` (ratls-aware code can tell a refusal
  from an outage). Awaiting the call, reading from it, iterating it or writing to it raises it; code(),
  details() and trailing_metadata() report it.
  A call with wait_for_ready=True instead keeps retrying an attestation that failed with IO or TIMEOUT (backing off
  from 0.1 s to 1 s) until its deadline; a refusal still fails it at once.
- Its deadline passes while it waits for attestation: grpc.aio.AioRpcError with DEADLINE_EXCEEDED. The deadline
  (timeout=) covers attestation and the RPC together.
- Re-attestation of a channel that already has a pin fails with IO or TIMEOUT: the pin is kept, a warning is
  logged on the "ratls" logger, the next attempt is made no sooner than 1 s later, and the call proceeds (and
  fails with gRPC's own error if the server is really gone). Any other failure (the restarted server is not what
  the policy admits) fails the call with AioAttestationError.
- The channel is closed: calls raise grpc.aio.UsageError at once; reattest() raises ValueError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

import grpc
import grpc.aio

from ratls._trust import Attested
from ratls.errors import Reason, VerificationError
from ratls.evidence import Evidence

__all__ = ["AioAttestationError", "AioPinnedChannel"]

_LOGGER = logging.getLogger("ratls")
RETRY_BACKOFF_S = 1.0  # the earliest re-attestation after one failed with IO or TIMEOUT
WAIT_FOR_READY_BACKOFF_S = (0.1, 1.0)  # first and largest pause between attestations of a wait_for_ready call
# How gRPC reports an RPC that never got a connection (so it was never sent to any server).
_NOT_CONNECTED = "failed to connect to all addresses"
_UNREACHABLE = (Reason.IO, Reason.TIMEOUT)
_Serializer = Callable[[Any], bytes] | None
_Deserializer = Callable[[bytes], Any] | None
_T = TypeVar("_T")


class AioAttestationError(VerificationError, grpc.aio.AioRpcError):
    """A call on an AioPinnedChannel failed because attesting the server failed. It is a grpc.aio.AioRpcError
    (code() UNAVAILABLE; details() names the attestation target and the reason) and a ratls.VerificationError
    (reason, message: those of the underlying failure, which is also its __cause__)."""

    def __init__(self, error: VerificationError, attestation_target: str) -> None:
        # Not VerificationError.__init__: its Exception args would become AioRpcError's status code.
        grpc.aio.AioRpcError.__init__(self, grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                      details=f"ratls: attesting the server at {attestation_target} failed: {error}")
        self.__dict__.update(vars(error))  # reason, message, and whatever else the error carries
        self.reason, self.message = error.reason, error.message


def _retrieve(task: asyncio.Future) -> None:
    """Done-callback: marks a task's exception as seen (its awaiters, if any, got it)."""
    if not task.cancelled():
        task.exception()


class AioPinnedChannel(grpc.aio.Channel):
    """A grpc.aio.Channel to an attested server (see the module docstring for when it attests and what a caller
    sees), with the attestation state: server_evidence, server_certificate_der, repins, and reattest()."""

    def __init__(self, attest: Callable[[], Attested], open_pinned: Callable[[Attested], grpc.aio.Channel],
                 attestation_target: str) -> None:
        self._attest = attest
        self._open_pinned = open_pinned
        self.attestation_target = attestation_target
        self._inner: grpc.aio.Channel | None = None
        self._attested: Attested | None = None
        self._generation = 0
        self._refresh_at = 0.0
        self._suspect = False
        self._closed = False
        self._attesting: asyncio.Task[bool] | None = None
        self._background: set[asyncio.Task] = set()

    # -- attestation state

    @property
    def server_evidence(self) -> Evidence | None:
        """The Evidence of the server this channel is pinned to; None until the first attestation."""
        return None if self._attested is None else self._attested.evidence

    @property
    def server_certificate_der(self) -> bytes | None:
        """The attested server certificate this channel is pinned to (DER); None until the first attestation."""
        return None if self._attested is None else self._attested.certificate_der

    @property
    def repins(self) -> int:
        """How many times the channel moved to a new server certificate (0 until the first server restart)."""
        return max(0, self._generation - 1)

    async def reattest(self) -> bool:
        """Attests the server now (in a worker thread) and pins it, or re-pins if its certificate changed: the
        eager first attestation, or the one-call recovery after a server restart. Returns True if it (re-)pinned.
        Raises VerificationError if attestation fails (the current pin, if any, is kept), ValueError if the
        channel is closed. Joins an attestation already in progress instead of starting a second one."""
        if self._closed:
            raise ValueError("the channel is closed")
        return await self._attest_shared()

    def _spawn(self, coroutine: Awaitable[_T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)
        return task

    async def _attest_shared(self) -> bool:
        task = self._attesting
        if task is None or task.done():
            task = self._attesting = self._spawn(self._attest_and_install())
        # Shielded: a caller that gives up (cancelled, deadline) leaves the attestation to the others.
        return await asyncio.shield(task)

    async def _attest_and_install(self) -> bool:
        attested = await asyncio.to_thread(self._attest)  # blocking native handshake, off the event loop
        self._refresh_at = time.monotonic() + attested.trust_ttl / 2
        self._suspect = False
        if self._closed:
            return False
        if self._attested is not None and attested.certificate_der == self._attested.certificate_der:
            self._attested = attested
            return False
        old = self._inner
        self._inner, self._attested = self._open_pinned(attested), attested
        self._generation += 1
        if old is not None:
            self._spawn(old.close())  # pinned to a server that is gone
        return True

    async def _refresh(self) -> bool:
        """Re-attests a channel that has a pin; True if it re-pinned. IO and TIMEOUT keep the pin (and back off);
        other failures raise VerificationError."""
        try:
            return await self._attest_shared()
        except VerificationError as e:
            self._refresh_at = time.monotonic() + RETRY_BACKOFF_S
            self._suspect = False
            _LOGGER.warning("ratls: re-attesting the server at %s failed, keeping the current pin: %s",
                            self.attestation_target, e)
            if e.reason in _UNREACHABLE:
                return False
            raise

    async def _current(self) -> tuple[int, grpc.aio.Channel]:
        """The pinned inner channel (attesting first if needed) and its generation. Raises VerificationError."""
        if self._inner is None:
            await self._attest_shared()
        elif self._suspect or time.monotonic() >= self._refresh_at:
            await self._refresh()
        if self._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        assert self._inner is not None
        return self._generation, self._inner

    async def _failed(self, error: grpc.aio.AioRpcError, generation: int) -> bool:
        """A unary-response call made on pin `generation` failed: re-attest on UNAVAILABLE. True if the call never
        reached a server and the pin has changed since, so it should be retried. Raises VerificationError."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or self._closed:
            return False
        if self._generation == generation:
            await self._refresh()
        return self._generation != generation and _NOT_CONNECTED in (error.details() or "")

    def _note_done(self, call: grpc.aio.Call, generation: int) -> None:
        """Done-callback of streaming-response calls: an UNAVAILABLE makes the next call re-attest first."""
        async def check() -> None:
            if await call.code() == grpc.StatusCode.UNAVAILABLE and generation == self._generation:
                self._suspect = True

        self._spawn(check())

    def _check_open(self) -> None:
        if self._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")

    # -- grpc.aio.Channel

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The inner channel's state; IDLE before the first attestation (try_to_connect starts one)."""
        if self._inner is not None:
            return self._inner.get_state(try_to_connect)
        if try_to_connect and not self._closed and self._attesting is None:
            self._spawn(self._attest_shared())  # needs a running event loop, as grpc.aio does
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Before the first attestation, waits for it (raising VerificationError if it fails)."""
        if self._inner is None:
            await self._attest_shared()
        assert self._inner is not None
        if self._inner.get_state() == last_observed_state:
            await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Waits until the server is attested and the pinned channel is READY. Keeps retrying an attestation that
        fails with IO or TIMEOUT (the server is not up yet); raises AioAttestationError on any other failure."""
        self._check_open()
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        while True:
            try:
                _, inner = await self._current()
                break
            except VerificationError as e:
                if e.reason not in _UNREACHABLE:
                    raise AioAttestationError(e, self.attestation_target) from e
            await asyncio.sleep(pause)
            pause = min(2 * pause, longest)
        await inner.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Closes the pinned channel (its active calls end as gRPC ends them) and stops waiting for attestation."""
        self._closed = True
        if self._attesting is not None:
            self._attesting.cancel()
        if self._inner is not None:
            await self._inner.close(grace)

    async def __aenter__(self) -> AioPinnedChannel:
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb) -> None:
        await self.close(None)

    def unary_unary(self, method: str, request_serializer: _Serializer = None,
                    response_deserializer: _Deserializer = None,
                    _registered_method: bool | None = False) -> grpc.aio.UnaryUnaryMultiCallable:
        return _UnaryUnaryMultiCallable(self, "unary_unary", method, request_serializer, response_deserializer,
                                        _registered_method)

    def unary_stream(self, method: str, request_serializer: _Serializer = None,
                     response_deserializer: _Deserializer = None,
                     _registered_method: bool | None = False) -> grpc.aio.UnaryStreamMultiCallable:
        return _UnaryStreamMultiCallable(self, "unary_stream", method, request_serializer, response_deserializer,
                                         _registered_method)

    def stream_unary(self, method: str, request_serializer: _Serializer = None,
                     response_deserializer: _Deserializer = None,
                     _registered_method: bool | None = False) -> grpc.aio.StreamUnaryMultiCallable:
        return _StreamUnaryMultiCallable(self, "stream_unary", method, request_serializer, response_deserializer,
                                         _registered_method)

    def stream_stream(self, method: str, request_serializer: _Serializer = None,
                      response_deserializer: _Deserializer = None,
                      _registered_method: bool | None = False) -> grpc.aio.StreamStreamMultiCallable:
        return _StreamStreamMultiCallable(self, "stream_stream", method, request_serializer, response_deserializer,
                                          _registered_method)


class _MultiCallable:
    """Resolves the inner channel's multicallable for the current pin when a call starts."""

    def __init__(self, channel: AioPinnedChannel, kind: str, method: str, serializer: _Serializer,
                 deserializer: _Deserializer, registered: bool | None) -> None:
        self._channel = channel
        self._kind = kind
        self._args = (method, serializer, deserializer)
        self._registered = registered
        self._cached: tuple[int, Any] = (-1, None)

    async def _get(self) -> tuple[int, Any]:
        generation, inner = await self._channel._current()
        cached_generation, multicallable = self._cached
        if cached_generation != generation:
            multicallable = getattr(inner, self._kind)(*self._args, _registered_method=self._registered)
            self._cached = (generation, multicallable)
        return generation, multicallable

    def _options(self, timeout: float | None, metadata: Any, credentials: grpc.CallCredentials | None,
                 wait_for_ready: bool | None, compression: grpc.Compression | None) -> dict[str, Any]:
        self._channel._check_open()
        return {"timeout": timeout, "metadata": metadata, "credentials": credentials, "wait_for_ready": wait_for_ready,
                "compression": compression}


class _Call:
    """A call that starts its inner grpc.aio call once the channel has a pin. Implements grpc.aio.Call."""

    _retry = False

    def __init__(self, multicallable: _MultiCallable, request: Any, options: dict[str, Any]) -> None:
        self._multicallable = multicallable
        self._channel = multicallable._channel
        self._request = request
        self._options = options
        timeout = options["timeout"]
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._inner: grpc.aio.Call | None = None
        self._generation = -1
        self._failure: grpc.aio.AioRpcError | None = None  # how the call ended before an inner call could
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._finished = False
        self._started = asyncio.ensure_future(self._start())
        self._started.add_done_callback(_retrieve)

    # -- starting

    def _fail(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        self._failure = error
        return error

    async def _bounded(self, awaitable: Awaitable[_T]) -> _T:
        if self._deadline is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(0.0, self._deadline - time.monotonic()))
        except TimeoutError:
            raise self._fail(grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                details=f"Deadline Exceeded while attesting the server at {self._channel.attestation_target}"),
            ) from None

    async def _pin(self) -> tuple[int, Any]:
        """The current pin's multicallable, waiting for attestation (bounded by the deadline; retried while the
        server is unreachable for wait_for_ready calls). Raises AioAttestationError or DEADLINE_EXCEEDED."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        while True:
            try:
                return await self._bounded(self._multicallable._get())
            except VerificationError as e:
                if not (self._options["wait_for_ready"] and e.reason in _UNREACHABLE):
                    raise self._fail(AioAttestationError(e, self._channel.attestation_target)) from e
            await self._bounded(asyncio.sleep(pause))
            pause = min(2 * pause, longest)

    def _invoke(self, generation: int, multicallable: Any) -> grpc.aio.Call:
        options = dict(self._options)
        if self._deadline is not None:
            options["timeout"] = max(0.0, self._deadline - time.monotonic())
        call = multicallable(self._request, **options)
        self._inner, self._generation = call, generation
        return call

    async def _start(self) -> grpc.aio.Call:
        try:
            return self._invoke(*await self._pin())
        except BaseException:
            self._finish()
            raise

    async def _call(self) -> grpc.aio.Call:
        """The inner call (raising the failure that ended the call before one started)."""
        if self._cancelled:
            raise asyncio.CancelledError()
        return await asyncio.shield(self._started)

    # -- completion

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for callback in self._callbacks:
            callback(self)

    async def _settle(self) -> grpc.aio.Call | None:
        """Waits for the call to end; the inner call that carries its outcome, or None if it ended without one."""
        await asyncio.wait([self._started])
        if self._failure is not None or self._inner is None:
            return None
        await self._inner.code()
        return self._inner

    # -- grpc.aio.Call

    def cancelled(self) -> bool:
        return self._cancelled or (self._inner is not None and self._inner.cancelled())

    def done(self) -> bool:
        if self._inner is not None:
            return self._inner.done()
        return self._started.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()
        self._started.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._finished:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await asyncio.wait([self._started])
        if self._inner is None:
            return grpc.aio.Metadata()
        return await self._inner.initial_metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        inner = await self._settle()
        if inner is None:
            return self._failure.trailing_metadata() if self._failure is not None else grpc.aio.Metadata()
        return await inner.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        inner = await self._settle()
        if inner is None:
            return self._failure.code() if self._failure is not None else grpc.StatusCode.CANCELLED
        return await inner.code()

    async def details(self) -> str:
        inner = await self._settle()
        if inner is None:
            return (self._failure.details() or "") if self._failure is not None else "Locally cancelled by application!"
        return await inner.details()

    async def wait_for_connection(self) -> None:
        await (await self._call()).wait_for_connection()


class _UnaryResponseCall(_Call):
    """Awaiting the call gives the response; the whole call (attestation, attempts) runs in one task."""

    def __init__(self, multicallable: _MultiCallable, request: Any, options: dict[str, Any]) -> None:
        super().__init__(multicallable, request, options)
        self._outcome = asyncio.ensure_future(self._run())
        self._outcome.add_done_callback(_retrieve)
        self._outcome.add_done_callback(lambda _: self._finish())

    async def _run(self) -> Any:
        call = await self._call()
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            try:
                retry = await self._channel._failed(e, self._generation)
            except VerificationError as v:
                raise self._fail(AioAttestationError(v, self._channel.attestation_target)) from e
            if not (retry and self._retry):
                raise
        return await self._invoke(*await self._pin())

    async def _start(self) -> grpc.aio.Call:
        return self._invoke(*await self._pin())  # completion is the outcome task's, not the start's

    def __await__(self) -> Generator[Any, None, Any]:
        return (yield from self._outcome)

    def done(self) -> bool:
        return self._outcome.done()

    def cancel(self) -> bool:
        if self._outcome.done():
            return False
        super().cancel()
        self._outcome.cancel()
        return True

    async def _settle(self) -> grpc.aio.Call | None:
        await asyncio.wait([self._outcome])
        if self._failure is not None or self._inner is None:
            return None
        return self._inner


class _StreamingResponseCall(_Call):
    """Reading or iterating gives the responses; an UNAVAILABLE end makes the channel re-attest before its next
    call."""

    def _invoke(self, generation: int, multicallable: Any) -> grpc.aio.Call:
        call = super()._invoke(generation, multicallable)
        call.add_done_callback(self._inner_done)
        return call

    def _inner_done(self, call: grpc.aio.Call) -> None:
        self._channel._note_done(call, self._generation)
        self._finish()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for response in await self._call():
            yield response

    async def read(self) -> Any:
        return await (await self._call()).read()


class _RequestStream(_Call):
    """write() and done_writing() of stream-request calls, once the inner call exists."""

    async def write(self, request: Any) -> None:
        await (await self._call()).write(request)

    async def done_writing(self) -> None:
        await (await self._call()).done_writing()


class _UnaryUnaryCall(_UnaryResponseCall, grpc.aio.UnaryUnaryCall):
    _retry = True


class _StreamUnaryCall(_RequestStream, _UnaryResponseCall, grpc.aio.StreamUnaryCall):
    pass  # the request stream is consumed by the first attempt: re-attest for the next call, never retry


class _UnaryStreamCall(_StreamingResponseCall, grpc.aio.UnaryStreamCall):
    pass


class _StreamStreamCall(_RequestStream, _StreamingResponseCall, grpc.aio.StreamStreamCall):
    pass


class _UnaryUnaryMultiCallable(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):
    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _UnaryUnaryCall:
        return _UnaryUnaryCall(self, request, self._options(timeout, metadata, credentials, wait_for_ready,
                                                            compression))


class _UnaryStreamMultiCallable(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):
    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _UnaryStreamCall:
        return _UnaryStreamCall(self, request, self._options(timeout, metadata, credentials, wait_for_ready,
                                                             compression))


class _StreamUnaryMultiCallable(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):
    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _StreamUnaryCall:
        return _StreamUnaryCall(self, request_iterator, self._options(timeout, metadata, credentials, wait_for_ready,
                                                                      compression))


class _StreamStreamMultiCallable(_MultiCallable, grpc.aio.StreamStreamMultiCallable):
    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> _StreamStreamCall:
        return _StreamStreamCall(self, request_iterator, self._options(timeout, metadata, credentials,
                                                                       wait_for_ready, compression))

"""A grpc.aio.Channel to attested servers: what Credentials.aio_secure_channel returns (AioPinnedChannel).

The asyncio counterpart of ratls._grpc_channel.PinnedChannel, with the same replicas (ratls._replicas), the same
laziness and the same outcomes; only the errors are grpc.aio's. The blocking native handshake and host name
lookups run in worker threads (asyncio.to_thread): the event loop keeps running while they wait. Concurrent calls
share one attestation per replica.

When it attests: before the first call (or channel_ready(), get_state(try_to_connect=True), or `await
channel.reattest()`, the eager path, which raises VerificationError); before a call once half of the server's
trust TTL has passed; after a unary-response call failed with UNAVAILABLE (inside that call), and before the next
call after a streaming-response call ended with UNAVAILABLE or the pinned connection was lost; and while a
wait_for_ready call waits on a channel that cannot connect. timeout= covers attestation and the RPC together.

What a caller sees:

- Server down at channel creation: nothing; the channel is made.
- Server down at the first call: the call fails with AioAttestationError, which is both a grpc.aio.AioRpcError
  with code UNAVAILABLE whose details name the attestation target and the reason, and a ratls.VerificationError
  (.reason IO or TIMEOUT; .verification_error is the underlying error). Awaiting the call, reading from it,
  iterating it or writing to it raises it; code(), details() and trailing_metadata() report it. The next call
  tries again. With wait_for_ready=True the call instead waits, attesting again with backoff (0.1 s doubling to
  1 s), and completes once the server is up, or ends with DEADLINE_EXCEEDED at its deadline.
- Its deadline passes while it waits for attestation: grpc.aio.AioRpcError with DEADLINE_EXCEEDED.
- Refused by policy (the server fails our policy, or refuses us: PEER_REFUSED with .peer_reason): the call fails
  with AioAttestationError with code UNAUTHENTICATED, at once, wait_for_ready or not. No RPC reaches the server.
- Server restarted with a new key, call without wait_for_ready: a unary-request, unary-response call that fails
  to connect on the old pin re-attests, re-pins and is sent again once on the new pin (with the old pin it
  reached no server); if the re-attestation fails too, it fails with AioAttestationError (UNAVAILABLE). A
  stream-request call is never sent twice: it fails with gRPC's UNAVAILABLE and the next call re-attests first.
- Server restarted with a new key, wait_for_ready=True: a unary-request, unary-response call waiting on the old
  pin re-attests in the background while the pinned channel cannot connect; once the replica re-pinned it is
  issued again on the new pin (no server saw it) and completes on the new server within its deadline. Calls made
  after the restart (streams too) attest before they start, once the channel has seen the connection go (each
  call looks at its replica's connectivity first; a connection gRPC has not yet seen closed fails, as above).
  Streaming-response calls already waiting on the old pin end CANCELLED when the replica re-pins (the old pin's
  channel is closed); streams already open on a server that died fail with UNAVAILABLE, as gRPC fails them.
- The restarted server fails our policy: the replica loses its pin and calls fail with AioAttestationError
  UNAUTHENTICATED until it passes again.
- TTL/2 refresh: invisible (the call waits for its replica's re-attestation; other replicas take calls
  meanwhile). If the server is unreachable then, the pin is kept, a warning is logged on the "ratls" logger, and
  the call proceeds on the old pin.
- Several replicas: calls go round-robin to replicas whose attestation holds; a failed replica is skipped and
  attested again with backoff (1 s doubling to 30 s); with none attested, a call fails with AioAttestationError
  naming each replica's failure (UNAVAILABLE if any was unreachable, else UNAUTHENTICATED).
- The attestation target and the gRPC port reach different servers (an L4 balancer without client affinity, a
  wrong attestation_target): AioAttestationError (UNAVAILABLE, reason HANDSHAKE) saying so.
- server_evidence / server_certificate_der: None until the first attestation; with several replicas, the first
  pinned replica's (replicas has each one's status). The channel is closed: calls raise grpc.aio.UsageError at
  once; reattest() raises ValueError.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

import grpc
import grpc.aio

from ratls._replicas import (
    NOT_CONNECTED,
    UNREACHABLE,
    WAIT_FOR_READY_BACKOFF_S,
    Member,
    ReplicaSet,
    ReplicaStatus,
    failure_details,
    status_code,
)
from ratls._trust import Attested
from ratls.address import Replica, ReplicaTargets
from ratls.errors import VerificationError
from ratls.evidence import Evidence

__all__ = ["AioAttestationError", "AioPinnedChannel"]

_Serializer = Callable[[Any], bytes] | None
_Deserializer = Callable[[bytes], Any] | None
_T = TypeVar("_T")


class AioAttestationError(VerificationError, grpc.aio.AioRpcError):
    """A call on an AioPinnedChannel failed because attesting the server failed. It is a grpc.aio.AioRpcError:
    code() UNAVAILABLE when the attestation could not be completed (the server down or slow), or UNAUTHENTICATED
    when it ended with a verdict (the server failed our policy, or refused us); details() name the attestation
    target and the reason. It is also a ratls.VerificationError with the underlying failure's reason, message and
    peer_reason; verification_error is that failure (also its __cause__)."""

    def __init__(self, error: VerificationError, where: str) -> None:
        # Not VerificationError.__init__: its Exception args would become AioRpcError's status code.
        grpc.aio.AioRpcError.__init__(self, status_code(error), grpc.aio.Metadata(), grpc.aio.Metadata(),
                                      details=failure_details(error, where))
        self.__dict__.update(vars(error))  # reason, message, peer_reason, and whatever else the error carries
        self.verification_error = error


def _retrieve(task: asyncio.Future) -> None:
    """Done-callback: marks a task's exception as seen (its awaiters, if any, got it)."""
    if not task.cancelled():
        task.exception()


class AioPinnedChannel(grpc.aio.Channel):
    """A grpc.aio.Channel to attested servers (the module docstring says when it attests and what a caller sees),
    with the attestation state: server_evidence, server_certificate_der, replicas, repins, and reattest()."""

    def __init__(self, targets: ReplicaTargets, attest: Callable[[str], Attested],
                 open_pinned: Callable[[Replica, Attested], grpc.aio.Channel]) -> None:
        self._attest = attest
        self._open_pinned = open_pinned
        self._replicas = ReplicaSet(targets, self._open)
        self._closed = False
        self._background: set[asyncio.Task] = set()
        self._changes: asyncio.Event | None = None  # set (and replaced) when the connectivity may have changed

    # -- attestation state

    @property
    def server_evidence(self) -> Evidence | None:
        """The Evidence of the server this channel is pinned to (with several replicas, of the first pinned one);
        None until the first attestation."""
        attested = self._replicas.first_pinned()
        return None if attested is None else attested.evidence

    @property
    def server_certificate_der(self) -> bytes | None:
        """The attested server certificate this channel is pinned to (DER; as server_evidence)."""
        attested = self._replicas.first_pinned()
        return None if attested is None else attested.certificate_der

    @property
    def replicas(self) -> list[ReplicaStatus]:
        """Each replica's target, attestation target, pin (Evidence, certificate) and last failure."""
        return [m.status() for m in self._replicas.members]

    @property
    def repins(self) -> int:
        """How many times a replica moved to a new server certificate (0 until the first server restart)."""
        return self._replicas.repins()

    async def reattest(self) -> bool:
        """Attests every replica now (in worker threads) and pins it, or re-pins it if its certificate changed:
        the eager first attestation, or the one-call recovery after a server restart. Returns True if a replica
        (re-)pinned. Raises VerificationError if no replica has a pin afterwards (replicas says why each failed),
        ValueError if the channel is closed. Joins attestations already in progress."""
        if self._closed:
            raise ValueError("the channel is closed")
        await self._resolve_if_due()
        outcomes = await asyncio.gather(*(asyncio.shield(self._start(m)) for m in self._replicas.members),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, VerificationError):
                raise outcome
        if not any(m.channel is not None for m in self._replicas.members):
            raise self._replicas.no_replica_error()
        return any(outcome is True for outcome in outcomes)

    # -- attesting

    def _spawn(self, coroutine: Awaitable[_T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)
        return task

    def _check_open(self) -> None:
        if self._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")

    async def _resolve_if_due(self) -> None:
        if not self._replicas.resolution_due(time.monotonic()):
            return
        targets = self._replicas.targets
        # Name lookups block: in a worker thread (a target of addresses only needs none).
        replicas, errors = await asyncio.to_thread(targets.resolve) if targets.looks_up_names else targets.resolve()
        for channel in self._replicas.resolved(replicas, errors, time.monotonic()):
            self._spawn(channel.close())

    def _open(self, member: Member, attested: Attested) -> grpc.aio.Channel:
        channel = self._open_pinned(member.replica, attested)
        self._spawn(self._watch(member, channel))
        return channel

    async def _watch(self, member: Member, channel: grpc.aio.Channel) -> None:
        """Follows a pinned channel's connectivity until it is closed."""
        with contextlib.suppress(Exception):
            state = channel.get_state()
            while state is not grpc.ChannelConnectivity.SHUTDOWN and channel is member.channel:
                self._replicas.note_state(member, channel, state)
                self._changed()
                await channel.wait_for_state_change(state)
                state = channel.get_state()

    def _changed(self) -> None:
        if self._changes is not None:
            self._changes.set()
            self._changes = None

    def _start(self, member: Member) -> asyncio.Task[bool]:
        """The member's attestation in progress, started if none is."""
        if member.attesting is None:
            member.attesting = self._spawn(self._attest_member(member))
            self._changed()
        return member.attesting

    async def _attest_member(self, member: Member) -> bool:
        try:
            try:
                attested = await asyncio.to_thread(self._attest, member.replica.attestation_target)
            finally:
                member.attesting = None
            repinned, old = self._replicas.install(member, attested, time.monotonic())
        except VerificationError as e:
            had_pin = member.channel is not None
            old = self._replicas.failed(member, e, time.monotonic())
            self._replicas.log_failure(member, e, had_pin)
            raise
        finally:
            self._changed()
        if old is not None:
            self._spawn(old.close())  # pinned to a server that is gone (its waiting calls end CANCELLED)
        return repinned

    async def _pick(self) -> Member:
        """The replica a call goes to, attesting first as needed. Raises VerificationError when none can take it,
        grpc.aio.UsageError when the channel is closed."""
        retry_failed = True
        while True:
            self._check_open()
            await self._resolve_if_due()
            for m in self._replicas.members:  # as they are now: the watchers may not have run since a change
                if m.channel is not None:
                    self._replicas.note_state(m, m.channel, m.channel.get_state())
            member, start = self._replicas.plan(time.monotonic(), retry_failed)
            for m in start:
                self._start(m)
            if member is not None:
                return member
            pending = [m.attesting for m in self._replicas.members if m.attesting is not None]
            if not pending:
                raise self._replicas.no_replica_error()
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            retry_failed = False

    async def _failed(self, member: Member, generation: int, error: grpc.aio.AioRpcError) -> bool:
        """A unary-response call on the member's pin `generation` failed: on UNAVAILABLE, re-attests the replica.
        True if the call should be sent again (it never reached a server, and the replica re-pinned or another
        replica can take it). Raises VerificationError if the re-attestation failed."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or self._closed:
            return False
        details = error.details() or ""
        resend = self._replicas.after_failure(member, generation, details, time.monotonic())
        if resend is not None:
            return resend
        return await asyncio.shield(self._start(member)) and NOT_CONNECTED in details

    def _note_done(self, member: Member, generation: int, call: grpc.aio.Call) -> None:
        """Done-callback of streaming-response calls: an UNAVAILABLE makes the replica attest again first."""
        async def check() -> None:
            if await call.code() == grpc.StatusCode.UNAVAILABLE:
                self._replicas.mark_failed(member, generation, await call.details() or "")

        self._spawn(check())

    # -- grpc.aio.Channel

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY when a replica's pinned channel is, CONNECTING while one connects or attests, TRANSIENT_FAILURE
        after failures, IDLE before anything happened. try_to_connect=True starts the attestations that are due
        (needs a running event loop, as grpc.aio does) and has pinned channels connect."""
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if try_to_connect:
            self._spawn(self._connect())
        return self._replicas.connectivity()

    async def _connect(self) -> None:
        with contextlib.suppress(grpc.aio.UsageError, VerificationError):
            await self._resolve_if_due()
            _, start = self._replicas.plan(time.monotonic(), retry_failed=True)
            for m in start:
                self._start(m)
            for m in self._replicas.members:
                if m.channel is not None:
                    m.channel.get_state(try_to_connect=True)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state:
            if self._changes is None:
                self._changes = asyncio.Event()
            await self._changes.wait()

    async def channel_ready(self) -> None:
        """Waits until a replica is attested and its pinned channel is READY. Keeps attesting while servers are
        unreachable (or the pinned channel cannot connect: a new key?); raises AioAttestationError on a verdict."""
        self._check_open()
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        while True:
            try:
                await self._pick()
            except VerificationError as e:
                if e.reason not in UNREACHABLE:
                    raise AioAttestationError(e, self._replicas.where()) from e
            else:
                state = self.get_state(try_to_connect=True)
                if state is grpc.ChannelConnectivity.READY:
                    return
                for m in self._replicas.members:
                    if m.state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and m.attesting is None:
                        self._start(m)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_for_state_change(self.get_state()), pause)
            pause = min(2 * pause, longest)

    async def close(self, grace: float | None = None) -> None:
        """Closes the pinned channels (their active calls end as gRPC ends them) and stops attesting."""
        self._closed = True
        for member in self._replicas.members:
            if member.attesting is not None:
                member.attesting.cancel()
        for channel in self._replicas.close():
            await channel.close(grace)
        self._changed()

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
    """Resolves a replica's multicallable for its current pin when a call starts."""

    def __init__(self, channel: AioPinnedChannel, kind: str, method: str, serializer: _Serializer,
                 deserializer: _Deserializer, registered: bool | None) -> None:
        self._channel = channel
        self._key = (kind, method, serializer, deserializer, registered)

    def _make(self, inner: grpc.aio.Channel) -> Any:
        kind, method, serializer, deserializer, registered = self._key
        return getattr(inner, kind)(method, serializer, deserializer, _registered_method=registered)

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
        self._member: Member | None = None  # the replica of the inner call, and its pin's generation then
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
                details=f"Deadline Exceeded while attesting the server at {self._channel._replicas.where()}"),
            ) from None

    async def _pin(self) -> tuple[Member, int, Any]:
        """The replica the call goes to, its pin's generation and multicallable, waiting for attestation (bounded
        by the deadline; retried while servers are unreachable for wait_for_ready calls). Raises
        AioAttestationError or DEADLINE_EXCEEDED."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        while True:
            try:
                member = await self._bounded(self._channel._pick())
                return member, member.generation, member.multicallable(self._multicallable._key,
                                                                       self._multicallable._make)
            except VerificationError as e:
                if not (self._options["wait_for_ready"] and e.reason in UNREACHABLE):
                    raise self._fail(AioAttestationError(e, self._channel._replicas.where())) from e
            await self._bounded(asyncio.sleep(pause))
            pause = min(2 * pause, longest)

    def _invoke(self, member: Member, generation: int, multicallable: Any) -> grpc.aio.Call:
        options = dict(self._options)
        if self._deadline is not None:
            options["timeout"] = max(0.0, self._deadline - time.monotonic())
        call = multicallable(self._request, **options)
        self._inner, self._member, self._generation = call, member, generation
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


async def _outcome(call: grpc.aio.Call) -> Any:
    return await call


def _cancelled(error: BaseException | None) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.CANCELLED


class _UnaryResponseCall(_Call):
    """Awaiting the call gives the response; the whole call (attestation, attempts) runs in one task."""

    def __init__(self, multicallable: _MultiCallable, request: Any, options: dict[str, Any]) -> None:
        super().__init__(multicallable, request, options)
        self._outcome = asyncio.ensure_future(self._run())
        self._outcome.add_done_callback(_retrieve)
        self._outcome.add_done_callback(lambda _: self._finish())

    async def _run(self) -> Any:
        call = await self._call()
        sent_again = False
        while True:
            member, generation = self._member, self._generation
            assert member is not None
            try:
                if self._retry and self._options["wait_for_ready"]:
                    return await self._reissuing(call)
                return await call
            except AioAttestationError:
                raise
            except grpc.aio.AioRpcError as e:
                try:
                    resend = await self._channel._failed(member, generation, e)
                except VerificationError as v:
                    raise self._fail(AioAttestationError(v, member.label)) from e
                if not (resend and self._retry) or sent_again:
                    raise
            sent_again = True
            call = self._invoke(*await self._pin())

    async def _reissuing(self, call: grpc.aio.Call) -> Any:
        """Awaits a wait_for_ready call. While its replica's pinned channel fails to connect, the replica is attested
        again (backing off). When it re-pinned, the replaced pin's channel is closed, which ends the call while it
        still waits for a connection (no server saw it), and the call is issued again on the new pin."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        while True:
            member, generation = self._member, self._generation
            assert member is not None
            outcome = asyncio.ensure_future(_outcome(call))
            outcome.add_done_callback(_retrieve)
            while True:
                done, _ = await asyncio.wait([outcome], timeout=pause)
                pause = min(2 * pause, longest)
                if self._channel._closed or (member.generation == generation and member.channel is not None):
                    if done:
                        return outcome.result()
                    if member.state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not self._channel._closed:
                        self._channel._start(member)
                    continue
                if member.channel is None and member.error is not None:  # the restarted server fails our policy
                    call.cancel()
                    raise self._fail(AioAttestationError(member.error, member.label))
                if done and not outcome.cancelled() and not _cancelled(outcome.exception()):
                    return outcome.result()  # it ended on its own (it may have reached the old server)
                break
            call.cancel()
            call = self._invoke(*await self._pin())

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

    def _invoke(self, member: Member, generation: int, multicallable: Any) -> grpc.aio.Call:
        call = super()._invoke(member, generation, multicallable)
        call.add_done_callback(lambda done: self._inner_done(member, generation, done))
        return call

    def _inner_done(self, member: Member, generation: int, call: grpc.aio.Call) -> None:
        self._channel._note_done(member, generation, call)
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

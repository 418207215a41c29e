"""A grpc.Channel to attested servers: what Credentials.secure_channel returns (PinnedChannel).

It keeps gRPC's semantics: making the channel does nothing on the network, so it never fails because the server
is down. The first call, or a subscription with try_to_connect=True (grpc.channel_ready_future), attests the
server; channel.reattest() does it at once, for whoever wants the eager path (it raises VerificationError).
Each attested replica gets a gRPC channel pinned to its certificate (ratls._replicas). gRPC cannot change a
channel's credentials, and a restarted server has a new key, so a replica's pinned channel is replaced when
re-attestation finds a new certificate; multicallables look the pin up on every call, so stubs made once keep
working across restarts.

When it attests: before the first call; before a call once half of the server's trust TTL has passed (so the
server's trust in us never lapses while we are in use); before the next call after a call failed with
UNAVAILABLE or the pinned connection was lost (the server may have restarted with a new key); and while a
wait_for_ready call waits on a channel that cannot connect. Calls wait for the attestation they need, within
their deadline (timeout= covers attestation and the call).

What a caller sees:

- Server down at channel creation: nothing; the channel is made.
- Server down at the first call: the call raises ratls.AttestationRpcError: a grpc.RpcError (and grpc.Call,
  grpc.Future) with code() UNAVAILABLE whose details() name the attestation target and the reason, and a
  VerificationError (.reason IO or TIMEOUT; .verification_error is the underlying error). future() returns it
  (done, failed) and streaming calls return it (iterating raises it). The next call tries again.
  With wait_for_ready=True a blocking call instead waits, attesting again with backoff (0.1 s doubling to 1 s),
  and completes once the server is up, or ends with DEADLINE_EXCEEDED at its deadline. (future() and streaming
  calls attest once, in the calling thread, before they return: they do not wait for an unreachable server.)
- Refused by policy (the server fails our policy, or refuses us: PEER_REFUSED with .peer_reason): the call raises
  AttestationRpcError with code UNAUTHENTICATED, at once, wait_for_ready or not. No RPC reaches the server.
- Server restarted with a new key, call without wait_for_ready: a blocking unary-unary call that fails to
  connect on the old pin re-attests, re-pins and is sent again once on the new pin (with the old pin it reached
  no server). If the re-attestation fails too, the call raises AttestationRpcError (UNAVAILABLE, from gRPC's
  error); a failure that is not a connection failure is raised as gRPC raised it. Other calls are never sent
  twice (a request iterator is spent; a streaming call is already the caller's): they fail with gRPC's
  UNAVAILABLE and the next call re-attests first.
- Server restarted with a new key, wait_for_ready=True: a blocking unary-unary call (__call__, with_call)
  waiting on the old pin re-attests in the background while the pinned channel cannot connect; once the
  replica re-pinned it is issued again on the new pin (it was still waiting for a connection, so no server saw
  it) and completes on the new server within its deadline. Calls made after the restart (streams too) attest
  before they start, once the channel has seen the connection go (gRPC's connectivity polling tells it within
  milliseconds; a call that comes sooner fails to connect, as above). future() and streaming calls already
  waiting on the old pin when the replica re-pins end CANCELLED ("Channel closed!"), as the old pin's channel is
  closed; streams already open on a server that died fail with UNAVAILABLE, as gRPC fails them.
- The restarted server fails our policy: the replica loses its pin (no call goes there) and calls raise
  AttestationRpcError UNAUTHENTICATED until it passes again.
- TTL/2 refresh: invisible (the call waits for the re-attestation of its replica; other replicas, if any, take
  calls meanwhile). If the server is unreachable then, the pin is kept, a warning is logged on the "ratls"
  logger, and the call proceeds on the old pin.
- Several replicas: calls go round-robin to replicas whose attestation holds; a replica that fails attestation
  or is down is skipped and attested again with backoff (1 s doubling to 30 s); with none attested, a call
  raises AttestationRpcError naming each replica's failure (UNAVAILABLE if any was unreachable, else
  UNAUTHENTICATED).
- The attestation target and the gRPC port reach different servers (an L4 balancer without client affinity, a
  wrong attestation_target): the call raises AttestationRpcError (UNAVAILABLE, reason HANDSHAKE) saying so,
  instead of failing at random.
- server_evidence / server_certificate_der: None until the first attestation; with several replicas, the first
  pinned replica's (replicas has each one's status). The channel is closed: calls raise ValueError.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

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

__all__ = ["AttestationRpcError", "PinnedChannel"]

_LOGGER = logging.getLogger("ratls")
_Serializer = Callable[[Any], bytes] | None
_Deserializer = Callable[[bytes], Any] | None


class _FailedCall(grpc.RpcError, grpc.Call, grpc.Future):
    """A call that ended before gRPC ran it. Like gRPC's own error of a call that never ran, it is the RpcError,
    the Call and its done Future; iterating it (the call of a streaming response) raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        Exception.__init__(self, details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple:
        return ()

    def trailing_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> _FailedCall:
        return self

    def __next__(self) -> Any:
        raise self


class AttestationRpcError(VerificationError, _FailedCall):
    """A call on a PinnedChannel failed because attesting the server failed. It is a grpc.RpcError (and grpc.Call,
    grpc.Future): code() UNAVAILABLE when the attestation could not be completed (the server down or slow), or
    UNAUTHENTICATED when it ended with a verdict (the server failed our policy, or refused us); details() name the
    attestation target and the reason. It is also a ratls.VerificationError with the underlying failure's reason,
    message and peer_reason; verification_error is that failure."""

    def __init__(self, error: VerificationError, where: str) -> None:
        _FailedCall.__init__(self, status_code(error), failure_details(error, where))
        self.__dict__.update(vars(error))  # reason, message, peer_reason, and whatever else the error carries
        self.verification_error = error


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _deadline_exceeded(where: str) -> _FailedCall:
    return _FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline Exceeded while attesting the server at {where}")


def _connect_now(channel: grpc.Channel) -> None:
    """Makes an idle grpc.Channel connect (the public API's only way: a subscription with try_to_connect)."""
    def ignore(_state: grpc.ChannelConnectivity) -> None:
        pass

    channel.subscribe(ignore, try_to_connect=True)
    channel.unsubscribe(ignore)


@dataclass
class _Subscriber:
    callback: Callable[[grpc.ChannelConnectivity], None]
    try_to_connect: bool
    delivered: grpc.ChannelConnectivity | None = None


class PinnedChannel(grpc.Channel):
    """What Credentials.secure_channel returns: a grpc.Channel to attested servers (the module docstring says
    when it attests and what a caller sees), with the attestation state: server_evidence,
    server_certificate_der, replicas, repins, and reattest() to attest now."""

    def __init__(self, targets: ReplicaTargets, attest: Callable[[str], Attested],
                 open_pinned: Callable[[Replica, Attested], grpc.Channel]) -> None:
        self._attest = attest
        self._open_pinned = open_pinned
        self._lock = threading.RLock()
        self._replicas = ReplicaSet(targets, self._open)
        self._subscribers: list[_Subscriber] = []
        self._delivering = False
        self._connecting = False
        self._closed = False

    # -- attestation state

    @property
    def server_evidence(self) -> Evidence | None:
        """The Evidence of the server this channel is pinned to (with several replicas, of the first pinned one);
        None until the first attestation."""
        with self._lock:
            attested = self._replicas.first_pinned()
        return None if attested is None else attested.evidence

    @property
    def server_certificate_der(self) -> bytes | None:
        """The attested server certificate this channel is pinned to (DER; as server_evidence)."""
        with self._lock:
            attested = self._replicas.first_pinned()
        return None if attested is None else attested.certificate_der

    @property
    def replicas(self) -> list[ReplicaStatus]:
        """Each replica's target, attestation target, pin (Evidence, certificate) and last failure."""
        with self._lock:
            return [m.status() for m in self._replicas.members]

    @property
    def repins(self) -> int:
        """How many times a replica moved to a new server certificate (0 until the first server restart)."""
        with self._lock:
            return self._replicas.repins()

    def reattest(self) -> bool:
        """Attests every replica now and pins it, or re-pins it if its certificate changed: the eager first
        attestation, or the one-call recovery after a server restart. Returns True if a replica (re-)pinned.
        Raises VerificationError if no replica has a pin afterwards (replicas says why each failed), ValueError
        if the channel is closed."""
        self._resolve_if_due()
        with self._lock:
            self._check_open()
            pending = [self._start(m) for m in self._replicas.members]
        futures.wait(pending)
        with self._lock:
            if not any(m.channel is not None for m in self._replicas.members):
                raise self._replicas.no_replica_error()
        return any(not f.exception() and f.result() for f in pending)

    # -- attesting

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("Cannot invoke RPC on closed channel!")

    def _resolve_if_due(self) -> None:
        with self._lock:
            due = self._replicas.resolution_due(time.monotonic())
        if not due:
            return
        replicas, errors = self._replicas.targets.resolve()  # name lookups: outside the lock
        with self._lock:
            stale = self._replicas.resolved(replicas, errors, time.monotonic())
        for channel in stale:
            channel.close()

    def _open(self, member: Member, attested: Attested) -> grpc.Channel:
        channel = self._open_pinned(member.replica, attested)
        channel.subscribe(functools.partial(self._state_changed, member, channel),
                          try_to_connect=self._wants_connection())
        return channel

    def _start(self, member: Member) -> futures.Future:
        """The member's attestation in progress, started (in a thread of its own) if none is. Call with the lock."""
        if member.attesting is None:
            member.attesting = futures.Future()
            threading.Thread(target=self._attest_member, args=(member, member.attesting), daemon=True,
                             name=f"ratls-attest-{member.label}").start()
            self._notify()
        return member.attesting

    def _attest_member(self, member: Member, outcome: futures.Future) -> None:
        error: VerificationError | None = None
        try:
            attested = self._attest(member.replica.attestation_target)
        except VerificationError as e:
            error = e
        except BaseException as e:  # a bug: fail whoever waits, never leave them waiting
            with self._lock:
                member.attesting = None
            outcome.set_exception(e)
            raise
        old = None
        with self._lock:
            member.attesting = None
            now = time.monotonic()
            repinned = False
            if error is None:
                try:
                    repinned, old = self._replicas.install(member, attested, now)
                except VerificationError as e:
                    error = e
            if error is not None:
                had_pin = member.channel is not None
                old = self._replicas.failed(member, error, now)
                self._replicas.log_failure(member, error, had_pin)
            self._notify()
        if old is not None:
            old.close()  # pinned to a server that is gone (its waiting calls end CANCELLED)
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(repinned)

    def _pick(self, deadline: float | None, wait_for_ready: bool, key: tuple,
              make: Callable[[grpc.Channel], Any]) -> tuple[Member, int, Any]:
        """The replica a call goes to, its pin's generation and multicallable, attesting first as needed (waiting
        until the deadline at most). Raises AttestationRpcError, or a DEADLINE_EXCEEDED RpcError."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        retry_failed = True
        while True:
            self._resolve_if_due()
            with self._lock:
                self._check_open()
                member, start = self._replicas.plan(time.monotonic(), retry_failed)
                for m in start:
                    self._start(m)
                if member is not None:
                    return member, member.generation, member.multicallable(key, make)
                pending = [m.attesting for m in self._replicas.members if m.attesting is not None]
                error = None if pending else self._replicas.no_replica_error()
                where = self._replicas.where()
            if pending:
                done, _ = futures.wait(pending, timeout=_remaining(deadline), return_when=futures.FIRST_COMPLETED)
                if not done:
                    raise _deadline_exceeded(where)
                retry_failed = False
                continue
            assert error is not None
            if not (wait_for_ready and error.reason in UNREACHABLE):
                raise AttestationRpcError(error, where)
            remaining = _remaining(deadline)
            if remaining == 0.0:
                raise _deadline_exceeded(where)
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(2 * pause, longest)
            retry_failed = True

    def _recover(self, member: Member, generation: int, error: grpc.RpcError, deadline: float | None) -> bool:
        """After a call on the member's pin `generation` failed: on UNAVAILABLE, re-attests the replica. True if
        the call should be sent again (it never reached a server, and the replica re-pinned or another replica
        can take it). Raises AttestationRpcError, from the call's error, if the re-attestation failed."""
        if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        details = error.details() or ""
        with self._lock:
            if self._closed:
                return False
            try:
                resend = self._replicas.after_failure(member, generation, details, time.monotonic())
            except VerificationError as e:
                raise AttestationRpcError(e, member.label) from error
            if resend is not None:
                return resend
            attestation = self._start(member)
        try:
            repinned = attestation.result(timeout=_remaining(deadline))
        except futures.TimeoutError:
            return False
        except VerificationError as e:
            raise AttestationRpcError(e, member.label) from error
        return repinned and NOT_CONNECTED in details

    def _wait_reissuing(self, member: Member, generation: int, issue: Callable[[Any], grpc.Future],
                        multicallable: Any, key: tuple, make: Callable[[grpc.Channel], Any],
                        deadline: float | None) -> grpc.Future:
        """Runs a wait_for_ready call (issue(multicallable) starts it) until it ends; returns its future, done.
        While the replica's pinned channel fails to connect, the replica is attested again (backing off). When it
        re-pinned, the replaced pin's channel is closed, which cancels the call while it still waits for a
        connection (no server saw it), and the call is issued again on the new pin."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        call = self._issue(member, generation, issue, multicallable)
        while True:
            remaining = _remaining(deadline)
            try:
                call.result(timeout=pause if remaining is None else min(pause, max(0.01, remaining)))
                return call
            except grpc.FutureTimeoutError:
                ended = False
            except (grpc.RpcError, grpc.FutureCancelledError):
                ended = True
            pause = min(2 * pause, longest)
            with self._lock:
                if self._closed or (member.generation == generation and member.channel is not None):
                    if ended:
                        return call
                    if member.state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not self._closed:
                        self._start(member)
                    continue
                if member.channel is None and member.error is not None:  # the restarted server fails our policy
                    raise AttestationRpcError(member.error, member.label) from None
                if ended and call.code() is not grpc.StatusCode.CANCELLED:
                    return call  # it ended on its own (it may have reached the old server): never sent twice
                call.cancel()
                self._check_open()
                generation = member.generation
                multicallable = member.multicallable(key, make) if member.channel is not None else None
            if multicallable is None:
                return call  # the replica left the target
            call = self._issue(member, generation, issue, multicallable)

    def _issue(self, member: Member, generation: int, issue: Callable[[Any], Any], multicallable: Any) -> Any:
        call = issue(multicallable)
        call.add_done_callback(functools.partial(self._note_done, member, generation))
        return call

    def _note_done(self, member: Member, generation: int, call: Any) -> None:
        """Done-callback of non-blocking calls: an UNAVAILABLE makes the replica attest again first."""
        try:
            failed = call.code() == grpc.StatusCode.UNAVAILABLE
        except Exception:  # a cancelled future has no code; nothing to learn from it
            return
        if failed:
            with self._lock:
                self._replicas.mark_failed(member, generation, call.details() or "")

    # -- connectivity

    def _state_changed(self, member: Member, channel: grpc.Channel, state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            self._replicas.note_state(member, channel, state)
            self._notify()

    def _connectivity(self) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.SHUTDOWN if self._closed else self._replicas.connectivity()

    def _wants_connection(self) -> bool:
        return any(s.try_to_connect for s in self._subscribers)

    def _notify(self) -> None:
        """Delivers a changed connectivity to the subscribers, from a thread of its own (as gRPC does). Call with
        the lock."""
        state = self._connectivity()
        if not self._delivering and any(s.delivered is not state for s in self._subscribers):
            self._delivering = True
            threading.Thread(target=self._deliver, daemon=True, name="ratls-connectivity").start()

    def _deliver(self) -> None:
        while True:
            with self._lock:
                state = self._connectivity()
                due = [s for s in self._subscribers if s.delivered is not state]
                for subscriber in due:
                    subscriber.delivered = state
                if not due:
                    self._delivering = False
                    return
            for subscriber in due:
                try:
                    subscriber.callback(state)
                except Exception:
                    _LOGGER.exception("ratls: a channel connectivity callback failed")

    def _connect(self) -> None:
        """For subscribers with try_to_connect: attests until a replica has a pin (backing off), and has the
        pinned channels connect; gRPC reconnects them from there."""
        pause, longest = WAIT_FOR_READY_BACKOFF_S
        retry_failed = True
        while True:
            self._resolve_if_due()
            with self._lock:
                if self._closed or not self._wants_connection():
                    break
                member, start = self._replicas.plan(time.monotonic(), retry_failed)
                for m in start:
                    self._start(m)
                pending = [m.attesting for m in self._replicas.members if m.attesting is not None]
                if member is not None and not pending:
                    for m in self._replicas.members:
                        if m.channel is not None:
                            _connect_now(m.channel)
                    break
            retry_failed = not pending
            if pending:
                futures.wait(pending)
            else:
                time.sleep(pause)
                pause = min(2 * pause, longest)
        with self._lock:
            self._connecting = False

    # -- grpc.Channel

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        """Calls back with the channel's connectivity: READY when a replica's pinned channel is, CONNECTING while
        one connects or attests, TRANSIENT_FAILURE after failures, IDLE before anything happened.
        try_to_connect=True attests (until a replica has a pin) and connects."""
        with self._lock:
            self._subscribers.append(_Subscriber(callback, try_to_connect))
            if try_to_connect and not self._connecting and not self._closed:
                self._connecting = True
                threading.Thread(target=self._connect, daemon=True, name="ratls-connect").start()
            self._notify()

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s.callback != callback]

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
            self._subscribers = []
            channels = self._replicas.close()
        for channel in channels:
            channel.close()

    def __enter__(self) -> PinnedChannel:
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        self.close()
        return False


class _MultiCallable:
    """Resolves a replica's multicallable for its current pin on every call."""

    def __init__(self, channel: PinnedChannel, kind: str, method: str, serializer: _Serializer,
                 deserializer: _Deserializer, registered: bool) -> None:
        self._channel = channel
        self._key = (kind, method, serializer, deserializer, registered)

    def _make(self, inner: grpc.Channel) -> Any:
        kind, method, serializer, deserializer, registered = self._key
        return getattr(inner, kind)(method, serializer, deserializer, _registered_method=registered)

    def _pick(self, deadline: float | None, wait_for_ready: bool | None) -> tuple[Member, int, Any]:
        return self._channel._pick(deadline, bool(wait_for_ready), self._key, self._make)

    def _blocking(self, invoke: Callable[[Any, float | None], Any], timeout: float | None,
                  wait_for_ready: bool | None, *, resendable: bool) -> Any:
        """Runs a blocking call: invoke(multicallable, timeout). A call that failed to connect is sent again once
        if it can be (resendable: a unary request) and the replica re-pinned or another replica can take it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sent_again = False
        while True:
            member, generation, multicallable = self._pick(deadline, wait_for_ready)
            try:
                return invoke(multicallable, _remaining(deadline))
            except grpc.RpcError as e:
                if not self._channel._recover(member, generation, e, deadline) or not resendable or sent_again:
                    raise
            sent_again = True

    def _reissuing(self, start: Callable[[Any, float | None], grpc.Future], timeout: float | None) -> grpc.Future:
        """A wait_for_ready unary-unary call, issued again on the replica's new pin after a restart (see
        PinnedChannel._wait_reissuing); the future of its last issue, done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        member, generation, multicallable = self._pick(deadline, True)
        return self._channel._wait_reissuing(member, generation, lambda mc: start(mc, _remaining(deadline)),
                                             multicallable, self._key, self._make, deadline)

    def _nonblocking(self, issue: Callable[[Any, float | None], Any], timeout: float | None) -> Any:
        """Starts a non-blocking call, attesting first (in this thread, once: a non-blocking call does not wait
        for an unreachable server, wait_for_ready or not); an attestation failure is returned as the call, failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            member, generation, multicallable = self._pick(deadline, False)
        except _FailedCall as failed:
            return failed
        return self._channel._issue(member, generation, lambda mc: issue(mc, _remaining(deadline)), multicallable)


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self.with_call(request, timeout, metadata, credentials, wait_for_ready, compression)[0]

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, grpc.Call]:
        def issue(multicallable: Any, remaining: float | None) -> grpc.Future:
            return multicallable.future(request, timeout=remaining, metadata=metadata, credentials=credentials,
                                        wait_for_ready=wait_for_ready, compression=compression)

        if wait_for_ready:
            call = self._reissuing(issue, timeout)
            return call.result(), call
        return self._blocking(lambda multicallable, remaining: multicallable.with_call(
            request, timeout=remaining, metadata=metadata, credentials=credentials, wait_for_ready=wait_for_ready,
            compression=compression), timeout, wait_for_ready, resendable=True)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> grpc.Future:
        return self._nonblocking(lambda multicallable, remaining: multicallable.future(
            request, timeout=remaining, metadata=metadata, credentials=credentials, wait_for_ready=wait_for_ready,
            compression=compression), timeout)


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):
    # The request iterator is spent by the first attempt: re-attest for the next call, never send again.
    def __call__(self, request_iterator: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self.with_call(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)[0]

    def with_call(self, request_iterator: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, grpc.Call]:
        return self._blocking(lambda multicallable, remaining: multicallable.with_call(
            request_iterator, timeout=remaining, metadata=metadata, credentials=credentials,
            wait_for_ready=wait_for_ready, compression=compression), timeout, wait_for_ready, resendable=False)

    def future(self, request_iterator: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> grpc.Future:
        return self._nonblocking(lambda multicallable, remaining: multicallable.future(
            request_iterator, timeout=remaining, metadata=metadata, credentials=credentials,
            wait_for_ready=wait_for_ready, compression=compression), timeout)


class _Streaming(_MultiCallable, grpc.UnaryStreamMultiCallable, grpc.StreamStreamMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._nonblocking(lambda multicallable, remaining: multicallable(
            request, timeout=remaining, metadata=metadata, credentials=credentials, wait_for_ready=wait_for_ready,
            compression=compression), timeout)

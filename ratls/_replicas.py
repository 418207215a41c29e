"""The replicas of a pinned channel and the decisions on them, shared by both channel kinds (ratls._grpc_channel
for grpc, ratls.aio for grpc.aio): which replica a call goes to, which to attest first, what a failed call or
attestation means, and what the caller is told. The channel kinds do the I/O (attesting, opening channels,
waiting), each in its own way; this module does none.

Each replica gets a pinned gRPC channel of its own: one gRPC channel cannot pin several replicas, because each
replica's certificate has its own CN (its own key) and a channel takes one ssl_target_name_override and one root;
and the channel connects to exactly the address that was attested, never to another address of the same name.
Calls are spread round-robin over the replicas whose attestation holds.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ratls._trust import Attested
from ratls.address import Replica, ReplicaTargets
from ratls.errors import Reason, VerificationError
from ratls.evidence import Evidence

_LOGGER = logging.getLogger("ratls")
# Attestation could not be completed (the server is down or slow, or went away mid-handshake): calls fail with
# UNAVAILABLE, wait_for_ready calls keep waiting, and a replica keeps its pin. Every other reason is a verdict.
UNREACHABLE = frozenset({Reason.IO, Reason.TIMEOUT, Reason.HANDSHAKE})
RETRY_BACKOFF_S = 1.0  # the pause before attesting a failed replica again, doubled per further failure ...
MAX_RETRY_BACKOFF_S = 30.0  # ... up to this
WAIT_FOR_READY_BACKOFF_S = (0.1, 1.0)  # first and largest pause between attempts of a wait_for_ready call
RERESOLVE_INTERVAL_S = 30.0  # the least time between two lookups of a target's host names
# A replica whose certificate was replaced: the old certificate coming back within this window means two servers
# answer the attestation target (a restarted server has a new key).
REPLACED_WINDOW_S = 600.0
# How gRPC's details say that an RPC never got a connection (so no server saw it), and that the TLS handshake
# refused the server's certificate (the gRPC port presented another certificate than the attested one).
NOT_CONNECTED = "failed to connect to all addresses"
CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
BALANCER_HINT = ("an L4 balancer without client affinity? use a multi-address target (each replica's own address), "
                 "or a balancer that keeps a client on one replica for both ports")


def status_code(error: VerificationError) -> grpc.StatusCode:
    """The status of a call that failed because attestation failed: UNAVAILABLE when it could not be completed
    (worth retrying), UNAUTHENTICATED when it ended with a verdict (the server failed our policy, or refused us)."""
    return grpc.StatusCode.UNAVAILABLE if error.reason in UNREACHABLE else grpc.StatusCode.UNAUTHENTICATED


def _backoff(failures: int) -> float:
    return min(RETRY_BACKOFF_S * 2 ** min(failures - 1, 16), MAX_RETRY_BACKOFF_S)


def failure_details(error: VerificationError, where: str) -> str:
    """The details of a call that failed because attesting `where` failed."""
    return f"ratls: attesting the server at {where} failed: {error}"


@dataclass(frozen=True)
class ReplicaStatus:
    """What a channel knows about one of its replicas (PinnedChannel.replicas, AioPinnedChannel.replicas)."""

    target: str
    attestation_target: str
    evidence: Evidence | None  # the server's, of the certificate the replica is pinned to; None: no pin
    certificate_der: bytes | None
    error: VerificationError | None  # why its last attestation failed; None after a success
    repins: int  # how many times it moved to a new server certificate


class Member:
    """One replica's state. The channel kind sets `attesting` (its Future or Task) while an attestation runs."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.attested: Attested | None = None
        self.channel: Any = None  # the gRPC channel pinned to attested.certificate_der
        self.generation = 0  # counts pins
        self.state: grpc.ChannelConnectivity | None = None  # the pinned channel's, as last seen
        self.attesting: Any = None
        self.refresh_at = 0.0  # time.monotonic() at half the server's trust TTL
        self.retry_at = 0.0  # no attestation before this (backoff after failures)
        self.failures = 0
        self.error: VerificationError | None = None
        self.suspect = False  # attest before the next call: a call failed UNAVAILABLE, or the connection was lost
        self.certificate_refused = False  # ... and the gRPC port presented a certificate other than the pinned one
        self.replaced: list[tuple[bytes, float]] = []  # certificates (SHA-256) it was pinned to, and when replaced
        self.dropped = False  # no longer in the target (re-resolution)
        self._multicallables: dict[tuple, Any] = {}

    @property
    def label(self) -> str:
        return self.replica.attestation_target

    def due(self, now: float) -> bool:
        """Whether it must be attested before it takes calls (and may be, its backoff permitting)."""
        if self.attesting is not None or now < self.retry_at:
            return False
        return self.channel is None or self.suspect or now >= self.refresh_at

    def ready(self, now: float) -> bool:
        """Pinned, and needing no attestation first."""
        return self.channel is not None and self.attesting is None and not self.due(now)

    def multicallable(self, key: tuple, make: Callable[[Any], Any]) -> Any:
        """The current pin's multicallable for `key`, made (make(channel)) once per pin."""
        found = self._multicallables.get(key)
        if found is None:
            found = self._multicallables[key] = make(self.channel)
        return found

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(self.replica.target, self.replica.attestation_target,
                             None if self.attested is None else self.attested.evidence,
                             None if self.attested is None else self.attested.certificate_der,
                             self.error, max(0, self.generation - 1))

    def _unpin(self) -> Any:
        channel, self.channel, self.attested, self.state = self.channel, None, None, None
        self._multicallables.clear()
        return channel


class ReplicaSet:
    """The replicas of one channel. Not thread-safe: the sync channel calls it under its lock, the aio channel
    from its event loop. Methods that end a pin return the gRPC channels to close (the caller closes them, its own
    way); open_channel(member, attested) opens a pinned one."""

    def __init__(self, targets: ReplicaTargets, open_channel: Callable[[Member, Attested], Any]) -> None:
        self.targets = targets
        self._open_channel = open_channel
        self.members: list[Member] = []
        self._resolved_at: float | None = None
        self._resolve_errors: list[str] = []
        self._turn = 0
        self.closed = False

    # -- the replicas a target names

    def resolution_due(self, now: float) -> bool:
        """Resolve first; then look names up again at most every RERESOLVE_INTERVAL_S, when something is to be
        attested (a refresh, a failure) or nothing is known."""
        if self._resolved_at is None:
            return True
        return (self.targets.looks_up_names and now >= self._resolved_at + RERESOLVE_INTERVAL_S
                and (not self.members or any(m.due(now) for m in self.members)))

    def resolved(self, replicas: list[Replica], errors: list[str], now: float) -> list[Any]:
        """Takes a resolution: replicas new to the target join, replicas it no longer names leave. A lookup that
        found nothing keeps the replicas known (their servers may still answer)."""
        self._resolved_at = now
        self._resolve_errors = errors
        if not replicas and self.members:
            return []
        known = {m.replica: m for m in self.members}
        self.members = [known.pop(r, None) or Member(r) for r in replicas]
        for gone in known.values():
            gone.dropped = True
        return [channel for m in known.values() if (channel := m._unpin()) is not None]

    # -- where calls go

    def plan(self, now: float, retry_failed: bool) -> tuple[Member | None, list[Member]]:
        """Where a call goes now (None: wait for the attestations in progress, or with none, fail with
        no_replica_error()), and which replicas to attest first (the caller starts them).

        A call takes the next (round-robin) replica that is ready and whose last attestation succeeded; failing
        that, and with no attestation to wait for, the next ready one whose re-attestation found the server
        unreachable (its pin is kept: the server may still answer). Replicas backing off after a failure are
        left alone while any replica has a pin; with none, retry_failed (a call's first plan) tries them all
        again."""
        start = [m for m in self.members if m.due(now)]
        nothing_pinned = not any(m.channel is not None or m.attesting is not None for m in self.members)
        if retry_failed and not start and nothing_pinned:
            start = list(self.members)
        ready = [m for m in self.members if m not in start and m.ready(now)]
        healthy = [m for m in ready if m.error is None]
        waiting = bool(start) or any(m.attesting is not None for m in self.members)
        candidates = healthy or ([] if waiting else ready)
        if not candidates:
            return None, start
        self._turn += 1
        return candidates[self._turn % len(candidates)], start

    def other_ready(self, member: Member, now: float) -> bool:
        """Whether a replica other than `member` can take a call now, with no attestation first."""
        return any(m is not member and m.ready(now) and m.error is None for m in self.members)

    def no_replica_error(self) -> VerificationError:
        """Why no replica can take calls: the one replica's failure, or each replica's."""
        failed = [m for m in self.members if m.error is not None]
        if len(self.members) == 1 and failed:
            return failed[0].error
        reasons = [f"{m.label}: {m.error}" for m in failed] + self._resolve_errors
        errors = [m.error for m in failed]
        unreachable = [e for e in errors if e.reason in UNREACHABLE]
        reason = (unreachable or errors)[0].reason if errors else Reason.IO
        what = "resolves to no address" if not self.members else "has no attested replica"
        return VerificationError(reason, f"{self.targets.description} {what}: {'; '.join(reasons) or 'none yet'}")

    def where(self) -> str:
        """What the caller is told failed to attest: the one replica's attestation target, or the target."""
        return self.members[0].label if len(self.members) == 1 else self.targets.description

    # -- what attestations and calls tell

    def install(self, member: Member, attested: Attested, now: float) -> tuple[bool, Any]:
        """A successful attestation of the member: pins it, or re-pins it if the certificate changed. Returns
        (re-pinned, the replaced channel to close or None). Raises VerificationError (HANDSHAKE) when the
        attestation target and the gRPC port evidently reach different servers (then nothing changes)."""
        if self.closed or member.dropped:
            return False, None
        fingerprint = hashlib.sha256(attested.certificate_der).digest()
        same = member.attested is not None and member.attested.certificate_der == attested.certificate_der
        if same and member.certificate_refused:
            raise VerificationError(Reason.HANDSHAKE, (
                f"the gRPC port at {member.replica.target} presented a certificate other than the one attested at "
                f"{member.label}, which still serves it: the two reach different servers: {BALANCER_HINT}; or the "
                "attestation target is another server's, or something in between re-terminates TLS"))
        member.replaced = [(fp, at) for fp, at in member.replaced if now - at < REPLACED_WINDOW_S]
        if not same and any(fp == fingerprint for fp, _ in member.replaced):
            raise VerificationError(Reason.HANDSHAKE, (
                f"{member.label} served again a server certificate it had replaced (a restarted server has a new "
                f"key): the attestation target answers with different servers: {BALANCER_HINT}"))
        member.refresh_at = now + attested.trust_ttl / 2
        member.failures, member.error, member.suspect, member.certificate_refused = 0, None, False, False
        if same:
            member.attested = attested
            return False, None
        if member.attested is not None:
            member.replaced.append((hashlib.sha256(member.attested.certificate_der).digest(), now))
        old = member._unpin()
        member.channel, member.attested = self._open_channel(member, attested), attested
        member.generation += 1
        return True, old

    def failed(self, member: Member, error: VerificationError, now: float) -> Any:
        """A failed attestation of the member: backs off. An unreachable server keeps its pin; a verdict (it
        fails our policy, or refuses us) ends it, so no call goes there. Returns the channel to close, or None."""
        member.failures += 1
        member.retry_at = now + _backoff(member.failures)
        member.error, member.suspect, member.certificate_refused = error, False, False
        if error.reason in UNREACHABLE:
            return None
        return member._unpin()

    def log_failure(self, member: Member, error: VerificationError, had_pin: bool) -> None:
        """Warns on the "ratls" logger of a failed attestation that no call reports: the replica had a pin (it
        is kept if the server was unreachable), or there are other replicas to take the calls."""
        if not had_pin and len(self.members) == 1:
            return
        pin = "keeping its pin" if member.channel is not None else "no calls go there"
        _LOGGER.warning("ratls: attesting %s failed (%s; next attempt in %.1f s at the earliest): %s", member.label,
                        pin, _backoff(member.failures), error)

    def mark_failed(self, member: Member, generation: int, details: str) -> None:
        """A call on the member's pin `generation` ended UNAVAILABLE: attest it again before its next call (the
        server may have restarted with a new key)."""
        if generation == member.generation and member.channel is not None:
            member.suspect = True
            member.certificate_refused = CERTIFICATE_REFUSED in details

    def after_failure(self, member: Member, generation: int, details: str, now: float) -> bool | None:
        """A unary-response call on the member's pin `generation` ended UNAVAILABLE (gRPC's details): marks the
        replica (mark_failed) and says whether to send the call again now: only if it never reached a server, and
        the replica re-pinned since or another replica can take it. None: wait for the replica's re-attestation
        first (the caller starts it or joins it), then send again if it re-pinned and the call never reached a
        server. Raises the replica's last attestation failure if it is backing off from one and the call could
        not connect."""
        never_sent = NOT_CONNECTED in details
        if generation != member.generation or member.channel is None:
            return never_sent  # re-pinned, or unpinned by a verdict, meanwhile: the next pick knows
        self.mark_failed(member, generation, details)
        if self.other_ready(member, now):
            return never_sent  # the next pick starts this replica's re-attestation and goes elsewhere
        if member.attesting is None and not member.due(now):
            if never_sent and member.error is not None:
                raise member.error
            return False
        return None

    def note_state(self, member: Member, channel: Any, state: grpc.ChannelConnectivity) -> None:
        """A pinned channel's connectivity changed. Losing a READY connection makes the replica attest again
        before its next call: the server may have restarted with a new key, which the old pin cannot reach."""
        if channel is not member.channel:
            return
        if member.state is grpc.ChannelConnectivity.READY and state is not grpc.ChannelConnectivity.READY:
            member.suspect = True
        member.state = state

    # -- the channel's view

    def connectivity(self) -> grpc.ChannelConnectivity:
        """READY if a replica is; CONNECTING while one connects or attests; TRANSIENT_FAILURE if one failed."""
        states = [m.state for m in self.members if m.channel is not None]
        if grpc.ChannelConnectivity.READY in states:
            return grpc.ChannelConnectivity.READY
        if grpc.ChannelConnectivity.CONNECTING in states or any(m.attesting is not None for m in self.members):
            return grpc.ChannelConnectivity.CONNECTING
        if grpc.ChannelConnectivity.TRANSIENT_FAILURE in states or any(m.error for m in self.members):
            return grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return grpc.ChannelConnectivity.IDLE

    def first_pinned(self) -> Attested | None:
        return next((m.attested for m in self.members if m.attested is not None), None)

    def repins(self) -> int:
        return sum(max(0, m.generation - 1) for m in self.members)

    def close(self) -> list[Any]:
        self.closed = True
        return [channel for m in self.members if (channel := m._unpin()) is not None]

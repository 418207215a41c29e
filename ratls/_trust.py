"""The attestation port and the trust set behind an RA-TLS gRPC server (ARCHITECTURE.md §4).

The native attestation endpoint (native/src/attest.c) runs the mutual RA-TLS handshake in its own threads, reads
the client's channel certificate and checks it against the RA-TLS certificate it verified (same key, signed by it),
and queues each attested client; the TrustSet drains that queue from gRPC's certificate-config fetcher, which gRPC
calls before every new TLS handshake on the gRPC port, and serves the attested clients' channel certificates as the
only client roots. The endpoint queues a client before acknowledging it, so a client that finished attesting is
always seen by the next fetch: there is no window where it is attested but not yet trusted.

Why channel certificates on the gRPC port: grpcio 1.85.1 fails mutual TLS when the client certificate is larger
than about 8.4 KB DER (measured: 8,354 B works, 8,556 B fails with SSL_ERROR_WANT_WRITE), and RA-TLS certificates
are larger (the quote twice). The channel certificate carries exactly the attested SubjectPublicKeyInfo and is
signed by that key, whose hash the quote binds; gRPC's TLS proves possession of the key. So a client completing TLS
with it is the attested enclave, and ratls.peer() maps it back to the Evidence of the RA-TLS certificate.

Refusals: the endpoint records every client it refused (address, reason, message) in a bounded native queue, and a
small thread per endpoint waits on that queue and logs each record on the "ratls.attestation" logger
(ratls._notices). A refused client gets only the reason code: VerificationError(PEER_REFUSED, peer_reason=...).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ratls._certs import certificate_pem
from ratls._native import ffi, lib
from ratls._notices import log_refusal, note_accepted, reason_or_code
from ratls.errors import RatlsError, Reason, VerificationError, check_call
from ratls.evidence import Evidence, Unattested
from ratls.identity import Identity, UnattestedIdentity, channel_certificate_of
from ratls.policy import Policy

if TYPE_CHECKING:
    from ratls.collateral import HandshakeEvaluator


def common_name(der: bytes) -> str:
    """The subject CN of a certificate: what a pinned channel must name as the TLS target."""
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise RatlsError("the attested server certificate has no subject CN to pin the channel to")
    return str(names[0].value)


@dataclass(frozen=True)
class AttestationStats:
    """Counters of one attestation endpoint (see ratls_attest_stats in ratls_core.h)."""

    connections: int
    attested: int  # clients admitted, unattested ones included
    unattested: int  # of them, admitted without attestation (client_attestation="optional")
    rejected: int
    failed: int
    timed_out: int
    dropped: int
    refused: int  # of failed: closed at once, too many connections waiting for a ClientHello (from one source)
    refusals_dropped: int  # refusal records the native queue dropped before they were logged (it keeps 256)
    waiting: int  # connections waiting for their ClientHello now, without a worker
    in_flight: int
    queued: int
    last_rejection: int
    last_rejection_message: str


@dataclass(frozen=True)
class Attested:
    """The outcome of a client-side attestation: the server's certificate, its Evidence, and how long the server
    said it will trust us."""

    certificate_der: bytes
    evidence: Evidence
    trust_ttl: float


# How long the refusal thread waits on the native queue per call: the most close() waits for it.
REFUSAL_POLL_MS = 200


class _RefusalLog:
    """Pops the endpoint's refusal records and logs them, from a daemon thread of its own. The thread holds no
    reference to the endpoint (so the endpoint can be collected) and calls the native queue only under `lock`
    while `alive`: stop() takes the lock, so the server is never freed under a waiting pop, and the longest
    stop() can wait is one poll (REFUSAL_POLL_MS)."""

    def __init__(self, ptr, port: int) -> None:
        self._ptr = ptr
        self.lock = threading.Lock()
        self.alive = True
        self._stop = threading.Event()
        self._addr = ffi.new("char[]", lib.RATLS_ADDR_SIZE)
        self._reason = ffi.new("int *")
        self._msg = ffi.new("char[]", lib.RATLS_MSG_SIZE)
        self.thread = threading.Thread(target=self._run, name=f"ratls-refusals-{port}", daemon=True)
        self.thread.start()

    def pop(self, timeout_ms: int) -> tuple[str, int, str] | None:
        """The next record (address, reason code, message), waiting up to timeout_ms; call with `lock` held."""
        if lib.ratls_attest_server_pop_refusal(self._ptr, timeout_ms, self._addr, lib.RATLS_ADDR_SIZE, self._reason,
                                               self._msg, lib.RATLS_MSG_SIZE) != lib.RATLS_OK:
            return None
        return (ffi.string(self._addr).decode("utf-8", "replace"), int(self._reason[0]),
                ffi.string(self._msg).decode("utf-8", "replace"))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:  # the cffi call releases the GIL while it waits
                record = self.pop(REFUSAL_POLL_MS) if self.alive else None
                if not self.alive:
                    return
            if record is not None:
                log_refusal(*record)

    def stop(self, server_stop) -> None:
        """Stops the thread, logs what is still queued, and runs server_stop() while no pop can be running."""
        self._stop.set()
        left = []
        with self.lock:
            if self.alive:
                while (record := self.pop(0)) is not None:
                    left.append(record)
                self.alive = False
                server_stop()
        for record in left:
            log_refusal(*record)
        if self.thread is not threading.current_thread():  # a finalizer may run on the thread itself
            self.thread.join(timeout=5)


def _stop_endpoint(ptr, _policy: Policy, _tcb: Any, refusals: _RefusalLog) -> None:
    # _policy and _tcb are arguments only to keep the C policy and the TCB evaluator (which the endpoint's
    # handshake threads call) alive until those threads are joined.
    refusals.stop(lambda: lib.ratls_attest_server_stop(ptr))


class AttestationEndpoint:
    """The native attestation port: a TLS 1.3 listener where clients prove their enclave before gRPC."""

    def __init__(self, identity: Identity, policy: Policy, host: str, port: int, *, handshake_timeout: float,
                 max_concurrent: int, max_cert_size: int, trust_ttl: float, allow_unattested: bool = False,
                 tcb: HandshakeEvaluator | None = None) -> None:
        limits = ffi.new("ratls_attest_limits *")
        limits.allow_unattested = int(allow_unattested)
        limits.handshake_timeout_ms = max(1, int(handshake_timeout * 1000))
        limits.max_concurrent = int(max_concurrent)
        limits.max_cert_size = int(max_cert_size)
        limits.trust_ttl_s = max(1, int(trust_ttl))
        out = ffi.new("ratls_attest_server **")
        key, cert = identity.private_key_der, identity.certificate_der
        check_call(lib.ratls_attest_server_start, policy._native, key, len(key), cert, len(cert), host.encode(), port,
                   limits, tcb.native if tcb is not None else ffi.NULL, out, error=RatlsError)
        self._ptr = out[0]
        self.port: int = lib.ratls_attest_server_port(self._ptr)
        refusals = _RefusalLog(self._ptr, self.port)
        self._finalizer = weakref.finalize(self, _stop_endpoint, self._ptr, policy, tcb, refusals)
        # close() may race with gRPC's fetcher calling pop(): the C server must not be freed mid-call.
        self._lock = threading.Lock()

    def pop(self) -> tuple[bytes, Evidence | Unattested] | None:
        """The next admitted client (its channel certificate DER, and the Evidence of the RA-TLS certificate it was
        checked against, or Unattested for a client admitted without attestation), or None at once when there is
        none: it is called from gRPC's certificate-config fetcher, which must not wait."""
        der = ffi.new("uint8_t **")
        n = ffi.new("size_t *")
        channel = ffi.new("uint8_t **")
        channel_len = ffi.new("size_t *")
        ev = ffi.new("ratls_evidence *")
        with self._lock:
            if not self._finalizer.alive:
                return None
            if lib.ratls_attest_server_pop(self._ptr, 0, der, n, channel, channel_len, ev) != lib.RATLS_OK:
                return None
        try:
            channel_der = bytes(ffi.buffer(channel[0], channel_len[0]))
            if n[0] == 0:  # admitted without attestation: only its channel certificate is known
                return channel_der, Unattested(hashlib.sha256(channel_der).digest())
            return channel_der, note_accepted(Evidence._from_native(ev))
        finally:
            lib.ratls_free(der[0])
            lib.ratls_free(channel[0])

    def stats(self) -> AttestationStats:
        s = ffi.new("ratls_attest_stats *")
        with self._lock:
            if self._finalizer.alive:
                lib.ratls_attest_server_stats(self._ptr, s)
        return AttestationStats(
            connections=s.connections, attested=s.attested, unattested=s.unattested, rejected=s.rejected,
            failed=s.failed,
            timed_out=s.timed_out, dropped=s.dropped, refused=s.refused, refusals_dropped=s.refusals_dropped,
            waiting=s.waiting, in_flight=s.in_flight,
            queued=s.queued,
            last_rejection=s.last_rejection,
            last_rejection_message=ffi.string(s.last_rejection_msg).decode("utf-8", "replace"))

    def close(self) -> None:
        """Stops listening and joins the endpoint's threads, the refusal logger's included, after it logged every
        refusal recorded so far (idempotent)."""
        with self._lock:
            self._finalizer()


def attest(identity: Identity | UnattestedIdentity, policy: Policy, host: str, port: int, timeout: float, *,
           tcb: HandshakeEvaluator | None = None) -> Attested:
    """Client side: the mutual RA-TLS handshake with a server's attestation port (one-way for an
    UnattestedIdentity: we present no certificate), then our channel certificate. Raises VerificationError: the
    server's certificate failed our policy (its reason), the server refused our certificate or channel certificate
    (PEER_REFUSED, with the server's reason code as peer_reason: ATTESTATION_REQUIRED for an unattested client at a
    port that requires attestation), or the port did not answer (IO, TIMEOUT)."""
    if isinstance(identity, UnattestedIdentity):
        key, key_len, cert, cert_len = ffi.NULL, 0, ffi.NULL, 0
    else:
        key, cert = identity.private_key_der, identity.certificate_der
        key_len, cert_len = len(key), len(cert)
    channel = channel_certificate_of(identity)
    peer = ffi.new("uint8_t **")
    n = ffi.new("size_t *")
    ev = ffi.new("ratls_evidence *")
    ttl = ffi.new("uint32_t *")
    peer_reason = ffi.new("int *")
    try:
        check_call(lib.ratls_attest_connect, policy._native, key, key_len, cert, cert_len, channel, len(channel),
                   host.encode(), port, max(1, int(timeout * 1000)), tcb.native if tcb is not None else ffi.NULL,
                   peer, n, ev, ttl, peer_reason)
    except VerificationError as e:
        if e.reason == Reason.PEER_REFUSED:
            code = reason_or_code(peer_reason[0])
            e.peer_reason = code if isinstance(code, Reason) else None
        raise
    try:
        return Attested(bytes(ffi.buffer(peer[0], n[0])), note_accepted(Evidence._from_native(ev)), float(ttl[0]))
    finally:
        lib.ratls_free(peer[0])


def _unusable_root_pem() -> bytes:
    """A self-signed certificate whose key is discarded at once: the client-root set of a server that trusts
    nobody yet (gRPC needs at least one root to require client certificates). No client can present it."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS no attested client yet")])
    now = time.time()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.fromtimestamp(now - 3600, dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.UTC))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _Entry:
    pem: bytes  # the channel certificate: what the client presents on the gRPC port
    # Of the RA-TLS certificate it was checked against (cert_fingerprint is that one's); Unattested for a client
    # admitted without attestation.
    evidence: Evidence | Unattested
    expires: float  # time.monotonic()


def _identity_of(evidence: Evidence | Unattested) -> tuple[bytes, bytes]:
    """Whose entry it is, for the per-identity bound: the enclave's measurement and signer, or a TD's MRTD and the
    TDX module's MRSEAM. All unattested clients share one bucket, so that their churn only ever evicts unattested
    entries."""
    if isinstance(evidence, Unattested):
        return b"", b""
    if evidence.tee == "tdx":
        return evidence.mrtd, evidence.mrseam
    return evidence.mrenclave, evidence.mrsigner


class TrustSet:
    """Channel certificate fingerprint (SHA-256 of its DER: what gRPC sees as the client's certificate) -> Evidence
    of attested clients (of their RA-TLS certificates), each with an expiry.

    Bounded so that churn cannot push out other clients: at most max_per_identity entries per (MRENCLAVE,
    MRSIGNER), and max_entries in all; eviction takes the least recently used entry of the identity that has too
    many (and the most). Re-serving the roots on a change is O(entries), so the bounds are small.

    `fetch` is the gRPC certificate-config fetcher. Expired entries are dropped there, so a client whose trust
    expired cannot open new gRPC connections until it attests again; `evidence_for` (what ratls.peer() asks)
    knows no expired entry either, so calls on a connection that outlived its client's trust (or certificate) are
    refused too. A ratls channel re-attests at half the TTL, so an honest client's entry never lapses in use."""

    def __init__(self, endpoint: AttestationEndpoint, identity: Identity, trust_ttl: float, *,
                 max_entries: int, max_per_identity: int) -> None:
        self._endpoint = endpoint
        self._key_cert = [(identity.private_key_pem, identity.certificate_pem)]
        self._ttl = float(trust_ttl)
        self._max_entries = max_entries
        self._max_per_identity = max_per_identity
        self._lock = threading.Lock()
        # Least recently attested or used first: eviction takes the front of a flooding identity's entries.
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._per_identity: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
        self._served: frozenset[bytes] = frozenset()
        self._nobody = _unusable_root_pem()
        _registry.add(self)

    def initial_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(self._key_cert, root_certificates=self._nobody)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before every new TLS handshake on the gRPC port: a new configuration when the set of
        trusted clients changed, None when it did not (gRPC then keeps the current one)."""
        with self._lock:
            self._drain()
            now = time.monotonic()
            for fp in [fp for fp, e in self._entries.items() if e.expires <= now]:
                self._remove(fp)
            current = frozenset(self._entries)
            if current == self._served:
                return None
            self._served = current
            roots = b"".join(e.pem for e in self._entries.values()) or self._nobody
        return grpc.ssl_server_certificate_configuration(self._key_cert, root_certificates=roots)

    def _drain(self) -> None:
        while (item := self._endpoint.pop()) is not None:
            channel_der, evidence = item
            expires = time.monotonic() + self._ttl
            # Never trust past the certificate's own validity.
            if isinstance(evidence, Evidence) and evidence.not_after is not None:
                expires = min(expires, time.monotonic() + evidence.not_after.timestamp() - time.time())
            fp = hashlib.sha256(channel_der).digest()
            if fp in self._entries:
                self._remove(fp)
            self._entries[fp] = _Entry(certificate_pem(channel_der), evidence, expires)
            who = _identity_of(evidence)
            self._per_identity[who] += 1
            # Churn evicts only the churning identity's own entries: first its cap, then (at the overall cap)
            # the identity with the most entries loses its least recently used one.
            if self._per_identity[who] > self._max_per_identity:
                self._evict_from(who)
            if len(self._entries) > self._max_entries:
                self._evict_from(self._per_identity.most_common(1)[0][0])

    def _remove(self, fp: bytes) -> None:
        who = _identity_of(self._entries.pop(fp).evidence)
        self._per_identity[who] -= 1
        if not self._per_identity[who]:
            del self._per_identity[who]

    def _evict_from(self, who: tuple[bytes, bytes]) -> None:
        self._remove(next(fp for fp, e in self._entries.items() if _identity_of(e.evidence) == who))

    def evidence_for(self, fingerprint: bytes) -> Evidence | Unattested | None:
        """The Evidence (or Unattested) behind a channel certificate fingerprint, if it is admitted now."""
        with self._lock:
            self._drain()
            entry = self._entries.get(fingerprint)
            if entry is None or entry.expires <= time.monotonic():
                return None
            self._entries.move_to_end(fingerprint)  # in use: the last of its identity's entries to be evicted
            return entry.evidence

    def trusted(self) -> dict[bytes, Evidence]:
        """The currently trusted attested clients, expired ones excluded: the fingerprint of the RA-TLS certificate
        each attested with (Evidence.cert_fingerprint) -> Evidence. Unattested clients are not listed."""
        with self._lock:
            self._drain()
            now = time.monotonic()
            return {e.evidence.cert_fingerprint: e.evidence for e in self._entries.values()
                    if e.expires > now and isinstance(e.evidence, Evidence)}


_registry: weakref.WeakSet[TrustSet] = weakref.WeakSet()


def lookup_peer(cert_der: bytes) -> Evidence | Unattested | None:
    """The Evidence with which a client's channel certificate (the certificate a gRPC call carries) was attested to
    any trust set of this process."""
    fp = hashlib.sha256(cert_der).digest()
    for trust in list(_registry):
        ev = trust.evidence_for(fp)
        if ev is not None:
            return ev
    return None

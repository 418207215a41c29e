"""RA-TLS gRPC credentials on stock grpcio: attest, then pin (ARCHITECTURE.md §4).

    creds = ratls.credentials(policy=policy, identity=identity)
    grpc_port, attestation_port = creds.add_secure_port(server, "127.0.0.1:50051")
    channel = creds.secure_channel("127.0.0.1:50051")          # its first call attests 127.0.0.1:50052 first
    ...
    evidence = ratls.peer(context)                              # inside a handler

Server: beside the gRPC port, an attestation port runs the mutual RA-TLS handshake (native, both sides verify
under their policy); attested clients enter a trust set that gRPC's dynamic server credentials serve as the
only client roots, with require_client_authentication. Client: attest the server, then open an ordinary gRPC
TLS channel whose only root is the attested server certificate and whose own certificate is its channel
certificate: a small certificate over the attested key (grpcio fails mutual TLS with client certificates over
about 8.4 KB, and RA-TLS certificates are larger), which the server checked against the attested RA-TLS
certificate before trusting it (ratls/PROTOCOL.md). TLS then proves possession of exactly the attested keys on
both sides.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, overload

import grpc
import grpc.aio

from ratls._certs import certificate_der, certificate_pem
from ratls._grpc_channel import PinnedChannel
from ratls._trust import (
    AttestationEndpoint,
    AttestationStats,
    Attested,
    TrustSet,
    attest,
    common_name,
    lookup_peer,
)
from ratls.address import ReplicaTargets, ServerAddress, Target, default_attestation_port, split_host_port
from ratls.aio import AioPinnedChannel
from ratls.collateral import HandshakeEvaluator, TcbSource
from ratls.errors import RatlsError, UnattestedCallerError
from ratls.evidence import Evidence, Unattested
from ratls.identity import Identity, UnattestedIdentity, channel_certificate_of
from ratls.policy import Policy

__all__ = ["AttestationStats", "Credentials", "credentials", "peer"]

# add_secure_port's client_attestation: who may use the port.
CLIENT_ATTESTATION_MODES = ("required", "optional")
DEFAULT_TRUST_TTL_S = 3600.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 5.0
DEFAULT_MAX_CONCURRENT_HANDSHAKES = 8
DEFAULT_MAX_CERT_SIZE = 32768
DEFAULT_MAX_TRUSTED_CLIENTS = 1024
DEFAULT_MAX_TRUSTED_PER_IDENTITY = 256


class Credentials:
    """An identity and a policy, applied to gRPC servers (add_secure_port) and channels (secure_channel).

    Keep it alive while its servers run: it owns their attestation endpoints (close() stops them)."""

    def __init__(self, policy: Policy, identity: Identity | UnattestedIdentity, *,
                 trust_ttl: float = DEFAULT_TRUST_TTL_S,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
                 max_concurrent_handshakes: int = DEFAULT_MAX_CONCURRENT_HANDSHAKES,
                 max_cert_size: int = DEFAULT_MAX_CERT_SIZE,
                 max_trusted_clients: int = DEFAULT_MAX_TRUSTED_CLIENTS,
                 max_trusted_per_identity: int = DEFAULT_MAX_TRUSTED_PER_IDENTITY,
                 collateral: TcbSource | None = None) -> None:
        if not isinstance(policy, Policy):
            raise TypeError("policy must be a ratls.Policy")
        # Evaluated inside every attestation handshake, both directions, before a peer is trusted or pinned.
        self.collateral = collateral
        self._tcb = HandshakeEvaluator(collateral, policy) if collateral is not None else None
        if trust_ttl < 1:
            raise RatlsError(f"trust_ttl must be at least 1 second, got {trust_ttl}")
        self.policy = policy
        self.identity = identity
        # Encoded once, used per channel: our key and channel certificate (what we present on gRPC ports).
        self._own_pem = (identity.private_key_pem, certificate_pem(channel_certificate_of(identity)))
        self.trust_ttl = float(trust_ttl)
        self.handshake_timeout = float(handshake_timeout)
        if not 1 <= max_trusted_per_identity <= max_trusted_clients:
            raise RatlsError(f"max_trusted_per_identity must be in 1..max_trusted_clients ({max_trusted_clients}), "
                             f"got {max_trusted_per_identity}")
        self._limits = {"handshake_timeout": self.handshake_timeout, "max_concurrent": max_concurrent_handshakes,
                        "max_cert_size": max_cert_size, "trust_ttl": self.trust_ttl}
        self._trust_bounds = {"max_entries": max_trusted_clients, "max_per_identity": max_trusted_per_identity}
        self._lock = threading.Lock()
        self._endpoints: list[AttestationEndpoint] = []
        self._trust_sets: dict[int, TrustSet] = {}

    # -- server side

    def add_secure_port(self, server: grpc.Server, address: str, *, attestation_port: int | None = None,
                        client_attestation: str = "required") -> ServerAddress:
        """Adds an RA-TLS gRPC port and its attestation port to a grpc.Server; returns a ServerAddress, which
        unpacks as (grpc_port, attestation_port) and which secure_channel takes as its target (attestation port
        included). Port 0 picks free ports for both; with a fixed gRPC port the attestation port is the next one
        unless given.

        client_attestation: "required" (the default): only clients that attested under our policy get in.
        "optional": clients outside any enclave (credentials(policy, provider="none")) get in too, unattested: they
        attest us, we do not attest them. Handlers tell them apart with ratls.peer(context), which raises
        UnattestedCallerError for an unattested caller unless asked for allow_unattested=True."""
        if isinstance(self.identity, UnattestedIdentity):
            raise RatlsError("these credentials have no attestation (provider='none'): they can attest servers, "
                             "but cannot serve a port; serve with an enclave identity (provider 'gramine' or 'sim')")
        if client_attestation not in CLIENT_ATTESTATION_MODES:
            raise RatlsError(f"client_attestation must be one of {', '.join(CLIENT_ATTESTATION_MODES)}, "
                             f"got {client_attestation!r}")
        host, port = split_host_port(address)
        if attestation_port is None:
            attestation_port = default_attestation_port(port)
        if port and attestation_port > 65535:
            raise RatlsError(f"attestation port {attestation_port} is out of range: pass attestation_port")
        endpoint = AttestationEndpoint(self.identity, self.policy, host, attestation_port, tcb=self._tcb,
                                       allow_unattested=client_attestation == "optional", **self._limits)
        trust = TrustSet(endpoint, self.identity, self.trust_ttl, **self._trust_bounds)
        server_credentials = grpc.dynamic_ssl_server_credentials(
            trust.initial_configuration(), trust.fetch, require_client_authentication=True)
        try:
            grpc_port = server.add_secure_port(address, server_credentials)
        except RuntimeError as e:
            endpoint.close()
            raise RatlsError(f"could not bind the gRPC port {address}: {e}") from None
        if grpc_port == 0:
            endpoint.close()
            raise RatlsError(f"could not bind the gRPC port {address}")
        with self._lock:
            self._endpoints.append(endpoint)
            self._trust_sets[grpc_port] = trust
        return ServerAddress(host, grpc_port, endpoint.port)

    def attestation_stats(self, grpc_port: int) -> AttestationStats:
        """Counters of the attestation endpoint serving a gRPC port added by add_secure_port."""
        return self._trust_sets[grpc_port]._endpoint.stats()

    def trusted_clients(self, grpc_port: int) -> dict[bytes, Evidence]:
        """Attested clients currently allowed on a gRPC port: certificate fingerprint -> Evidence (unattested
        clients of an "optional" port are not listed)."""
        return self._trust_sets[grpc_port].trusted()

    def close(self) -> None:
        """Stops every attestation endpoint this object started (gRPC servers are the caller's to stop)."""
        with self._lock:
            endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            endpoint.close()

    def __enter__(self) -> Credentials:
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        self.close()
        return False

    # -- client side

    def attest(self, attestation_target: str, *, timeout: float | None = None) -> Attested:
        """Runs the attestation handshake with a server's attestation port ("host:port"); raises
        VerificationError when either side rejects the other."""
        host, port = split_host_port(attestation_target)
        return attest(self.identity, self.policy, host, port, self.handshake_timeout if timeout is None
                      else timeout, tcb=self._tcb)

    def channel_credentials(self, attested: Attested) -> grpc.ChannelCredentials:
        """gRPC TLS credentials pinned to an attested server certificate, presenting our channel certificate."""
        key_pem, cert_pem = self._own_pem
        return grpc.ssl_channel_credentials(root_certificates=certificate_pem(attested.certificate_der),
                                            private_key=key_pem, certificate_chain=cert_pem)

    def secure_channel(self, target: Target, *, attestation_target: str | int | None = None,
                       options: Sequence[tuple[str, Any]] | None = None,
                       compression: grpc.Compression | None = None) -> PinnedChannel:
        """A grpc.Channel (a PinnedChannel) to RA-TLS servers. Like gRPC's own channels it is lazy: making it does
        nothing on the network and never fails because a server is down; the first call (or channel.reattest(),
        the eager path, which raises VerificationError) attests the server, and calls run on a channel pinned to
        the attested certificate. When attestation fails, the call fails with ratls.AttestationRpcError: a
        grpc.RpcError with code UNAVAILABLE (server unreachable) or UNAUTHENTICATED (it fails our policy, or
        refuses us) that is also a VerificationError. The channel re-attests by itself when a server restarts with
        a new key and at half the trust TTL; channel.server_evidence is the server's Evidence once attested.
        ratls._grpc_channel says what a caller sees in each case, wait_for_ready included.

        target: "host:port" (the attestation target defaults to the next port), a ServerAddress (with its
        attestation port), or several replicas: gRPC's "ipv4:a:p,b:p" / "ipv6:[a]:p,[b]:p", a host name that
        resolves to several addresses, or a list of these and of (target, attestation_target) pairs. Each replica
        is attested and pinned on its own, and calls go round-robin to attested replicas.
        attestation_target: "host:port" for a target that is one server, or an int: the attestation port on each
        replica's address (ratls.address.ReplicaTargets)."""
        return PinnedChannel(ReplicaTargets(target, attestation_target), self.attest,
                             lambda replica, attested: grpc.secure_channel(
                                 replica.target, self.channel_credentials(attested),
                                 options=_pinned_options(attested, options), compression=compression))

    def aio_secure_channel(self, target: Target, *, attestation_target: str | int | None = None,
                           options: Sequence[tuple[str, Any]] | None = None,
                           compression: grpc.Compression | None = None) -> AioPinnedChannel:
        """A grpc.aio.Channel (an AioPinnedChannel) to RA-TLS servers, for asyncio code: secure_channel's
        counterpart, with the same targets, laziness and errors (ratls.aio.AioAttestationError, a
        grpc.aio.AioRpcError and a VerificationError). Attestation runs in a worker thread, so the event loop keeps
        running; `await channel.reattest()` attests now. ratls.aio says what a caller sees in each case."""
        return AioPinnedChannel(ReplicaTargets(target, attestation_target), self.attest,
                                lambda replica, attested: grpc.aio.secure_channel(
                                    replica.target, self.channel_credentials(attested),
                                    options=_pinned_options(attested, options), compression=compression))


def _pinned_options(attested: Attested, options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """The caller's channel options, and those that pin a channel to one attested server (unless given)."""
    pinned = [("grpc.ssl_target_name_override", common_name(attested.certificate_der)),
              # A channel of its own: never share connections with channels pinned elsewhere.
              ("grpc.use_local_subchannel_pool", 1)]
    names = {name for name, _ in options or ()}
    return [*(options or ()), *(o for o in pinned if o[0] not in names)]


def credentials(policy: Policy, identity: Identity | None = None, provider: str = "auto", *,
                sim_ca: str | os.PathLike | None = None,
                measured_files: Iterable[str | os.PathLike] | None = None,
                measure_root: str | os.PathLike | None = None,
                trust_ttl: float = DEFAULT_TRUST_TTL_S,
                handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
                max_concurrent_handshakes: int = DEFAULT_MAX_CONCURRENT_HANDSHAKES,
                max_cert_size: int = DEFAULT_MAX_CERT_SIZE,
                max_trusted_clients: int = DEFAULT_MAX_TRUSTED_CLIENTS,
                max_trusted_per_identity: int = DEFAULT_MAX_TRUSTED_PER_IDENTITY,
                collateral: TcbSource | None = None) -> Credentials:
    """RA-TLS credentials for gRPC servers and channels. Without `identity`, a new one is created with
    `provider` (sim_ca, measured_files and measure_root are for the sim provider). provider="none": a client
    outside any enclave (one-way attestation): it attests and pins servers like any client, presents no evidence,
    gets in only at ports that allow unattested clients (add_secure_port(..., client_attestation="optional")), and
    cannot serve a port.

    trust_ttl: seconds a server trusts an attested client. handshake_timeout: seconds one attestation handshake may take
    (either side). max_concurrent_handshakes: handshakes an attestation port serves at once (a worker thread each).
    max_cert_size: the largest peer certificate (DER bytes) an attestation port accepts. max_trusted_clients,
    max_trusted_per_identity: how many attested clients a port trusts at once, in all and per (MRENCLAVE, MRSIGNER) or,
    for a TD, (MRTD, MRSEAM); beyond them the least recently used entry of the identity with too many goes, so one
    identity's churn never evicts another's clients. collateral: a ratls.collateral source (PCCS, FileCollateral); every
    peer's TCB status is then evaluated inside the attestation handshake, on both sides, before the peer is trusted or
    pinned (without one it is "Unknown", which Gramine-style policies refuse)."""
    if identity is None and provider == "none":
        identity = UnattestedIdentity()
    elif identity is None:
        identity = Identity.create(provider, sim_ca=sim_ca, measured_files=measured_files,
                                   measure_root=measure_root)
    return Credentials(policy, identity, trust_ttl=trust_ttl, handshake_timeout=handshake_timeout,
                       max_concurrent_handshakes=max_concurrent_handshakes, max_cert_size=max_cert_size,
                       max_trusted_clients=max_trusted_clients, max_trusted_per_identity=max_trusted_per_identity,
                       collateral=collateral)


@overload
def peer(context: grpc.ServicerContext) -> Evidence: ...
@overload
def peer(context: grpc.ServicerContext, *, allow_unattested: bool) -> Evidence | Unattested: ...
def peer(context: grpc.ServicerContext, *, allow_unattested: bool = False) -> Evidence | Unattested:
    """The verified Evidence of the client of the current RPC (inside a handler of an RA-TLS gRPC port).

    A caller that came in without attestation (a port with client_attestation="optional") raises
    UnattestedCallerError, so a handler that expects attested callers can never take one for attested; with
    allow_unattested=True it gives ratls.Unattested instead, which has none of Evidence's fields. Raises RatlsError
    if the call did not come over RA-TLS credentials of this process."""
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    if not pems:
        raise RatlsError("no RA-TLS peer: the call carries no client certificate (not an RA-TLS gRPC port?)")
    der = certificate_der(pems[0])
    evidence = lookup_peer(der)
    if evidence is None:
        raise RatlsError("the client certificate of this call was never attested here (fingerprint "
                         f"{hashlib.sha256(der).hexdigest()[:16]}...)")
    if isinstance(evidence, Unattested) and not allow_unattested:
        raise UnattestedCallerError("the caller did not attest: it came in unattested through a port with "
                                    "client_attestation='optional' (call peer(context, allow_unattested=True) where "
                                    "such callers are expected)")
    return evidence

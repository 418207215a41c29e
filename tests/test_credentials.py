"""RA-TLS gRPC credentials (attest, then pin) end to end with the sim provider: mutual success, RA-TLS client
certificates larger than gRPC can take (channel certificates), each way a peer is rejected, men in the middle on
either port, a server restart, and trust expiry."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import socket
import ssl
import struct
import threading
import time
from concurrent import futures

import grpc
import grpctools
import pytest
from conftest import TESTDATA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from grpctools import (
    FakeIdentity,
    Relay,
    forged_identity,
    hello,
    plain_identity,
    serve,
    serve_insecure,
    sim_policy,
    tls_client_context,
    tls_server_context,
)

import ratls
from ratls.credentials import credentials, peer
from ratls.identity import channel_certificate_of


def direct_channel(server_cert_der: bytes, client, target: str) -> grpc.Channel:
    """grpctools.direct_channel presenting what a ratls client presents on a gRPC port: its channel certificate
    (one made now for a client that has none, as ratls' own client code would)."""
    presented = FakeIdentity(client.private_key_der, channel_certificate_of(client))
    return grpctools.direct_channel(server_cert_der, presented, target)


def assert_refused(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        hello(channel, timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def attestation_refused(creds, srv) -> ratls.VerificationError:
    """What a channel's first call raises when attestation ends with a verdict (a policy on either side says no):
    making the channel does nothing on the network; the call fails UNAUTHENTICATED with the VerificationError,
    and so does the eager path (reattest())."""
    with creds.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
        with pytest.raises(ratls.AttestationRpcError) as e:
            hello(channel)
        assert isinstance(e.value, grpc.RpcError) and isinstance(e.value, ratls.VerificationError)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.details() == f"ratls: attesting the server at {srv.attestation_target} failed: " \
                                    f"{e.value.verification_error}"
        with pytest.raises(ratls.VerificationError) as eager:
            channel.reattest()
        assert eager.value.reason == e.value.reason
        assert channel.server_evidence is None
    return e.value


def test_mutual_success(server_creds, client_creds, server_id, client_id):
    with serve(server_creds()) as srv:
        with client_creds.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
            assert isinstance(channel, grpc.Channel)
            assert hello(channel) == b"hello world"
            assert hello(channel, b"again") == b"hello again"
            assert channel.server_evidence.mrenclave == server_id.mrenclave
            assert channel.server_certificate_der == server_id.certificate_der
        assert srv.service.peers == [client_id.mrenclave, client_id.mrenclave]
        trusted = srv.creds.trusted_clients(srv.grpc_port)
        assert list(trusted) == [client_id.evidence.cert_fingerprint]
        assert trusted[client_id.evidence.cert_fingerprint].mrenclave == client_id.mrenclave
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.attested, stats.rejected) == (1, 0)


# grpcio 1.85.1 fails mutual TLS with a client certificate of 8,556 B DER (8,354 B works; /tmp/exp/bigcert.py).
GRPC_CLIENT_CERT_FAILS_AT = 8556


def grown(identity: ratls.Identity, size: int, sim_ca) -> ratls.Identity:
    """The same RA-TLS identity with its certificate grown to at least `size` bytes DER by a non-critical padding
    extension, re-signed by its key: its evidence still binds the key and verifies (like a real Gramine
    certificate, 10,068 B)."""
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    key = serialization.load_der_private_key(identity.private_key_der, None)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc).public_key(cert.public_key()))
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    padding = max(0, size - len(identity.certificate_der)) + 16
    builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.7"),
                                                               b"\0" * padding), critical=False)
    der = builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
    evidence = ratls.verify_certificate(der, sim_policy(sim_ca, identity.mrenclave))
    return ratls.Identity(identity.private_key_der, der, identity.provider, evidence)


@pytest.mark.parametrize("size", ["sim", "gramine"])
def test_ratls_client_certificate_larger_than_grpc_takes(sim_ca, server_creds, server_id, ids, size):
    """A client whose RA-TLS certificate gRPC cannot take as a client certificate (the sim one as made, ~8.7 KB;
    one grown to the size of Gramine's real certificate, 10,068 B) completes gRPC calls: it presents its channel
    certificate, and ratls.peer() in the handler returns the Evidence of its RA-TLS certificate. Before channel
    certificates every such call failed with UNAVAILABLE (SSL_ERROR_WANT_WRITE in gRPC's log)."""
    client = ids("client")
    if size == "gramine":
        client = grown(client, len((TESTDATA / "sgx" / "gramine" / "gramine-cert.der").read_bytes()), sim_ca)
        assert len(client.certificate_der) >= 10068
    assert len(client.certificate_der) >= GRPC_CLIENT_CERT_FAILS_AT
    assert len(client.channel_certificate_der) < 1024
    channel_cert = x509.load_der_x509_certificate(client.channel_certificate_der)
    assert channel_cert.subject.rfc4514_string() == f"CN={client.common_name}-channel" == \
        f"CN={client.channel_common_name}"
    assert channel_cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo) == \
        x509.load_der_x509_certificate(client.certificate_der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    seen: list[ratls.Evidence] = []

    def who(request: bytes, context) -> bytes:
        evidence = peer(context)
        seen.append(evidence)
        return evidence.cert_fingerprint

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "ratls.test.Who", {"Who": grpc.unary_unary_rpc_method_handler(who)}),))
    creds = server_creds()
    grpc_port, attestation_port = creds.add_secure_port(server, "127.0.0.1:0")
    server.start()
    try:
        client_creds = credentials(sim_policy(sim_ca, server_id.mrenclave), client)
        with client_creds.secure_channel(f"127.0.0.1:{grpc_port}",
                                         attestation_target=f"127.0.0.1:{attestation_port}") as channel:
            answer = channel.unary_unary("/ratls.test.Who/Who")(b"", timeout=10)
    finally:
        server.stop(None).wait(10)
        creds.close()
    fingerprint = hashlib.sha256(client.certificate_der).digest()
    assert answer == fingerprint == client.evidence.cert_fingerprint
    (evidence,) = seen
    assert evidence.cert_fingerprint == fingerprint  # the RA-TLS certificate's, not the channel certificate's
    assert (evidence.mrenclave, evidence.spki_sha256) == (client.mrenclave, client.evidence.spki_sha256)
    assert evidence.not_after == client.evidence.not_after
    assert evidence.not_after > dt.datetime.now(dt.UTC)


def free_port_pair() -> int:
    """A port p such that p and p + 1 were both free a moment ago."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no free port pair on 127.0.0.1")


def test_default_attestation_port_is_next_port(server_creds, client_creds):
    for _ in range(5):
        port = free_port_pair()
        with contextlib.ExitStack() as stack:
            try:
                srv = stack.enter_context(serve(server_creds(), f"127.0.0.1:{port}"))
            except ratls.RatlsError:  # someone took the pair in between: try another
                continue
            assert (srv.grpc_port, srv.attestation_port) == (port, port + 1)
            with client_creds.secure_channel(srv.target) as channel:  # attests at port + 1 by default
                assert hello(channel) == b"hello world"
            return
    pytest.fail("could not bind a free port pair")


def test_server_not_in_client_policy(sim_ca, server_creds, client_id, ids):
    intruder = ids("intruder")
    picky = credentials(sim_policy(sim_ca, intruder.mrenclave), client_id)
    with serve(server_creds()) as srv:
        assert attestation_refused(picky, srv).reason == ratls.Reason.MRENCLAVE
        # No pinned channel was made, so no RPC could leave the client; the server saw no attested client either.
        assert srv.service.calls == 0
        assert srv.creds.trusted_clients(srv.grpc_port) == {}
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 0


def test_client_not_in_server_policy(sim_ca, server_id, client_creds, client_id, ids):
    intruder = ids("intruder")
    with serve(credentials(sim_policy(sim_ca, intruder.mrenclave), server_id)) as srv:
        error = attestation_refused(client_creds, srv)
        assert error.reason == ratls.Reason.PEER_REFUSED and error.peer_reason == ratls.Reason.MRENCLAVE
        assert "the attestation server refused our certificate: MRENCLAVE" in error.message
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.rejected, stats.attested, stats.last_rejection) == (2, 0, ratls.Reason.MRENCLAVE)
        # Going to the gRPC port anyway, with a genuine RA-TLS certificate: the TLS handshake is refused.
        with direct_channel(server_id.certificate_der, client_id, srv.target) as channel:
            assert_refused(channel)
        assert srv.service.calls == 0


def test_plain_tls_client(sim_ca, server_creds, server_id):
    plain = plain_identity()
    with serve(server_creds()) as srv:
        # The attestation port: a TLS client with a self-signed certificate gets no acknowledgement but a refusal
        # with the reason code (ratls/PROTOCOL.md), and the connection ends.
        with socket.create_connection(("127.0.0.1", srv.attestation_port), timeout=5) as raw:
            with tls_client_context(plain).wrap_socket(raw) as tls:
                assert tls.recv(8) == b"RATN" + struct.pack(">I", ratls.Reason.EVIDENCE_MISSING)
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    assert tls.recv(8) == b""
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.rejected, stats.last_rejection) == (1, ratls.Reason.EVIDENCE_MISSING)
        # Through ratls' own client code too.
        with pytest.raises(ratls.VerificationError) as e:
            credentials(sim_policy(sim_ca, server_id.mrenclave), plain).attest(srv.attestation_target)
        assert e.value.reason == ratls.Reason.PEER_REFUSED and e.value.peer_reason == ratls.Reason.EVIDENCE_MISSING
        assert "the attestation server refused our certificate: EVIDENCE_MISSING" in e.value.message
        # The gRPC port.
        with direct_channel(server_id.certificate_der, plain, srv.target) as channel:
            assert_refused(channel)
        assert srv.service.calls == 0


def test_client_skipping_attestation(server_creds, server_id, client_creds, client_id):
    with serve(server_creds()) as srv:
        with direct_channel(server_id.certificate_der, client_id, srv.target) as channel:
            assert_refused(channel)
        assert srv.service.calls == 0
        # The same direct channel works once the same certificate has attested: attestation is the gate.
        client_creds.attest(srv.attestation_target)
        with direct_channel(server_id.certificate_der, client_id, srv.target) as channel:
            assert hello(channel) == b"hello world"
        assert srv.service.calls == 1


def test_debug_enclave_denied(sim_ca, server_creds, server_id, client_id, ids):
    debug_client = ids("client", debug=True)
    assert debug_client.mrenclave == client_id.mrenclave and debug_client.evidence.debug
    with serve(server_creds()) as srv:
        error = attestation_refused(credentials(sim_policy(sim_ca, server_id.mrenclave), debug_client), srv)
        assert error.reason == ratls.Reason.PEER_REFUSED and error.peer_reason == ratls.Reason.DEBUG_ENCLAVE
        assert srv.creds.attestation_stats(srv.grpc_port).last_rejection == ratls.Reason.DEBUG_ENCLAVE
    # A debug server, seen from the client.
    debug_server = ids("server", debug=True)
    with serve(credentials(sim_policy(sim_ca, client_id.mrenclave), debug_server)) as srv:
        error = attestation_refused(credentials(sim_policy(sim_ca, server_id.mrenclave), client_id), srv)
        assert error.reason == ratls.Reason.DEBUG_ENCLAVE
        assert srv.service.calls == 0


def test_simulated_evidence_denied_by_production_policy(server_creds, server_id, client_id):
    production = ratls.Policy(mrenclave=server_id.mrenclave, allowed_tcb_statuses=("UpToDate", "Unknown"))
    with serve(server_creds()) as srv:
        assert attestation_refused(credentials(production, client_id), srv).reason == ratls.Reason.SIMULATED_DENIED
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 0


def test_mitm_on_attestation_port(sim_ca, server_creds, server_id, client_creds, ids):
    """A relay that re-terminates TLS on the attestation port: with the server's genuine evidence copied onto
    its own key, or with a genuine RA-TLS identity of its own enclave."""
    intruder = ids("intruder")
    with serve(server_creds()) as srv:
        for relay_identity, reason in ((forged_identity(server_id), ratls.Reason.REPORT_DATA_MISMATCH),
                                       (intruder, ratls.Reason.MRENCLAVE)):
            with Relay(srv.attestation_port, server_tls=tls_server_context(relay_identity),
                       client_tls=tls_client_context(relay_identity)) as relay:
                with client_creds.secure_channel(srv.target, attestation_target=f"127.0.0.1:{relay.port}") as channel:
                    with pytest.raises(ratls.AttestationRpcError) as e:
                        hello(channel)
                assert e.value.reason == reason and e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert relay.to_upstream == b"" and relay.to_client == b""
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 0
        assert srv.service.calls == 0


def test_mitm_on_grpc_port(sim_ca, server_creds, server_id, client_creds, client_id, ids):
    """A relay in front of the gRPC port presenting its own RA-TLS certificate (a valid sim quote of the
    server's own enclave, on a different key) after the client attested the real server."""
    twin = ids("server")  # same MRENCLAVE as the server: passes the client's policy, but is not the pinned key
    assert twin.mrenclave == server_id.mrenclave
    with serve(server_creds()) as srv:
        with Relay(srv.grpc_port, server_tls=tls_server_context(twin, ["h2"]),
                   client_tls=tls_client_context(twin, ["h2"])) as relay:
            with client_creds.secure_channel(f"127.0.0.1:{relay.port}",
                                             attestation_target=srv.attestation_target) as channel:
                assert_refused(channel)
            assert relay.connections >= 1 and relay.handshakes_failed == relay.connections
            assert relay.to_upstream == b"" and relay.to_client == b""
        # And the relay's own client side toward the server: not attested, refused.
        with direct_channel(server_id.certificate_der, twin, srv.target) as channel:
            assert_refused(channel)
        assert srv.service.calls == 0
        # A transparent relay (no re-termination) is harmless: the TLS session is end to end.
        with Relay(srv.grpc_port) as relay:
            with client_creds.secure_channel(f"127.0.0.1:{relay.port}",
                                             attestation_target=srv.attestation_target) as channel:
                assert hello(channel, b"through") == b"hello through"
            assert b"through" not in relay.to_upstream and len(relay.to_upstream) > 0


def test_different_certificate_on_grpc_port(server_creds, server_id, client_creds, ids):
    other = ids("client")  # a genuine identity of the allowed client enclave, never attested
    with serve(server_creds()) as srv:
        client_creds.attest(srv.attestation_target)
        with direct_channel(server_id.certificate_der, other, srv.target) as channel:
            assert_refused(channel)
        assert srv.service.calls == 0
        with direct_channel(server_id.certificate_der, client_creds.identity, srv.target) as channel:
            assert hello(channel) == b"hello world"


def test_server_restart_with_new_identity(server_creds, client_creds, ids):
    with serve(server_creds()) as first:
        ports = (first.grpc_port, first.attestation_port)
        channel = client_creds.secure_channel(first.target, attestation_target=first.attestation_target)
        stub = channel.unary_unary("/ratls.test.Echo/Hello")  # made once, used across the restart
        assert stub(b"before", timeout=5) == b"hello before"
        first_cert = channel.server_certificate_der
    restarted = ids("server")
    with serve(credentials(first.creds.policy, restarted), f"127.0.0.1:{ports[0]}",
               attestation_port=ports[1]) as second:
        assert stub(b"after", timeout=5) == b"hello after"
        assert channel.repins == 1
        assert channel.server_certificate_der == restarted.certificate_der != first_cert
        assert second.service.calls == 1
    channel.close()


def test_reattest_is_the_one_call_recovery(server_creds, client_creds, ids):
    with serve(server_creds()) as first:
        ports = (first.grpc_port, first.attestation_port)
        channel = client_creds.secure_channel(first.target, attestation_target=first.attestation_target)
        assert hello(channel) == b"hello world"
    with serve(credentials(first.creds.policy, ids("server")), f"127.0.0.1:{ports[0]}",
               attestation_port=ports[1]):
        assert channel.reattest() is True
        assert channel.reattest() is False  # same server: nothing to re-pin
        assert hello(channel) == b"hello world"
    channel.close()


def test_trust_expires_and_channel_refreshes(server_creds, server_id, client_creds, client_id):
    with serve(server_creds(trust_ttl=1)) as srv:
        with client_creds.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
            assert hello(channel) == b"hello world"
            time.sleep(1.2)
            # Expired entries are dropped: a fresh connection with the once-attested certificate is refused ...
            assert srv.creds.trusted_clients(srv.grpc_port) == {}
            with direct_channel(server_id.certificate_der, client_id, srv.target) as direct:
                assert_refused(direct)
            # ... while the ratls channel re-attested on its own (at half the TTL) and keeps working.
            assert hello(channel) == b"hello world"
            assert list(srv.creds.trusted_clients(srv.grpc_port)) == [client_id.evidence.cert_fingerprint]
        assert srv.creds.attestation_stats(srv.grpc_port).attested >= 2


def test_an_open_connection_ends_with_its_trust(sim_ca, server_creds, server_id, ids):
    # Before: calls on a connection opened while the client was trusted still succeeded after its entry expired
    # (the trust set remembered expired entries for ratls.peer()). A key of its own: ratls.peer() consults every
    # trust set of the process, and other tests' servers trusted the shared client identity for an hour.
    client_id = ids("client")
    with serve(server_creds(trust_ttl=1)) as srv:
        credentials(sim_policy(sim_ca, server_id.mrenclave), client_id).attest(srv.attestation_target)
        with direct_channel(server_id.certificate_der, client_id, srv.target) as direct:
            assert hello(direct) == b"hello world"
            time.sleep(1.2)
            with pytest.raises(grpc.RpcError):  # the handler's ratls.peer() no longer knows the certificate
                hello(direct)
        assert srv.service.calls == 1


def test_one_identitys_churn_never_evicts_another_identitys_clients(sim_ca, server_id, client_id, ids):
    # Before: one bound of 4,096 for all, the entry expiring first evicted: a flood of attestations with fresh
    # keys under another MRENCLAVE pushed out a legitimate client (seen after 4,096 attestations).
    policy = sim_policy(sim_ca, client_id.mrenclave, ids("intruder").mrenclave)
    creds = credentials(policy, server_id, max_trusted_clients=8, max_trusted_per_identity=4)
    legit = credentials(sim_policy(sim_ca, server_id.mrenclave), client_id)
    with serve(creds) as srv:
        legit.attest(srv.attestation_target)
        flooders = [ids("intruder") for _ in range(12)]  # one identity, twelve fresh keys
        for flooder in flooders:
            credentials(sim_policy(sim_ca, server_id.mrenclave), flooder).attest(srv.attestation_target)
        trusted = srv.creds.trusted_clients(srv.grpc_port)
        assert client_id.evidence.cert_fingerprint in trusted
        assert len(trusted) == 1 + 4  # the flooding identity keeps only its 4 most recent keys
        assert set(trusted) - {client_id.evidence.cert_fingerprint} == {
            f.evidence.cert_fingerprint for f in flooders[-4:]}
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 13
    with pytest.raises(ratls.RatlsError, match="max_trusted_per_identity"):
        credentials(policy, server_id, max_trusted_clients=2, max_trusted_per_identity=3)


def test_peer_requires_ratls():
    seen = []

    class Context:
        def auth_context(self):
            return {}

    with pytest.raises(ratls.RatlsError, match="no RA-TLS peer"):
        peer(Context())
    with serve_insecure() as (service, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                hello(channel)  # the handler calls ratls.peer(), which raises: the RPC fails
            assert e.value.code() == grpc.StatusCode.UNKNOWN
    assert service.calls == 0 and seen == []


def test_bad_arguments(server_creds, client_creds):
    with pytest.raises(ratls.RatlsError, match="host:port"):
        client_creds.secure_channel("no-port-here")
    with pytest.raises(TypeError):
        credentials("not a policy", client_creds.identity)
    with pytest.raises(ratls.VerificationError) as e:
        client_creds.attest("127.0.0.1:1")
    assert e.value.reason == ratls.Reason.IO


def test_handshake_releases_the_gil(client_creds):
    """While a client handshake waits on a peer that never answers, other Python threads keep running; the
    wait ends with TIMEOUT at the configured bound."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        outcome = []

        def attest() -> None:
            try:
                client_creds.attest(target, timeout=1.0)
            except ratls.VerificationError as e:
                outcome.append(e.reason)

        worker = threading.Thread(target=attest)
        started = time.monotonic()
        worker.start()
        mid_call_spins = 0  # iterations of this loop while the other thread is inside the 1 s native wait
        while worker.is_alive():
            if 0.3 < time.monotonic() - started < 0.7:
                mid_call_spins += 1
        worker.join()
        assert outcome == [ratls.Reason.TIMEOUT]
        assert time.monotonic() - started < 4.0
        assert mid_call_spins > 1000  # with the GIL held during the call this thread could not run at all


def test_many_clients_at_once(sim_ca, server_creds, server_id, client_id, ids):
    """Clients attesting and calling concurrently: each is trusted under its own certificate (the trust set
    serves all of them as roots at once) and each handler sees its caller."""
    clients = [credentials(sim_policy(sim_ca, server_id.mrenclave), ids("client")) for _ in range(8)]
    with serve(server_creds()) as srv:
        def call(creds) -> bytes:
            with creds.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
                return hello(channel, creds.identity.common_name.encode())

        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(call, clients))
        assert answers == [b"hello " + c.identity.common_name.encode() for c in clients]
        trusted = srv.creds.trusted_clients(srv.grpc_port)
        assert set(trusted) == {c.identity.evidence.cert_fingerprint for c in clients}
        assert srv.service.peers == [client_id.mrenclave] * len(clients)

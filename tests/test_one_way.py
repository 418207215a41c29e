"""One-way attestation (issue 17): a client outside any enclave (credentials(policy, provider="none")) attests the
server and pins it; a port admits it only when it says client_attestation="optional"; handlers tell an unattested
caller from an attested one through ratls.peer(context); and such credentials cannot serve a port."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpctools import SERVICE, WAIT_S, EchoService, direct_channel, make_app, serve, sim_policy
from ratls._native import ffi, lib

import ratls
from ratls.identity import UnattestedIdentity


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return ratls.SimCA.init(tmp_path_factory.mktemp("one-way-ca"))


@pytest.fixture(scope="module")
def enclave(ca, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("apps"), "server")
    return ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=app)


@pytest.fixture(scope="module")
def other_enclave(ca, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("apps"), "worker")
    return ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=app)


class WhoService(EchoService):
    """Who answers what ratls.peer() said about the caller: "attested <mrenclave hex>", "unattested", or the name of
    the error peer() raised without allow_unattested."""

    def who(self, request: bytes, context) -> bytes:
        try:
            ratls.peer(context)
        except ratls.UnattestedCallerError:
            strict = b"strict:UnattestedCallerError"
        else:
            strict = b"strict:ok"
        seen = ratls.peer(context, allow_unattested=True)
        if isinstance(seen, ratls.Unattested):
            return b"unattested " + seen.channel_fingerprint.hex().encode() + b" " + strict
        return b"attested " + seen.mrenclave.hex().encode() + b" " + strict

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Who": grpc.unary_unary_rpc_method_handler(self.who),
            "Hello": grpc.unary_unary_rpc_method_handler(self.hello),
        })


@contextlib.contextmanager
def serve_who(creds, client_attestation: str):
    """A server of WhoService; yields (grpc_port, attestation_port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((WhoService().handler(),))
    try:
        ports = creds.add_secure_port(server, "127.0.0.1:0", client_attestation=client_attestation)
        server.start()
        yield ports
    finally:
        server.stop(None).wait(WAIT_S)
        creds.close()


def who(channel) -> str:
    return channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT_S).decode()


def test_one_way_client_attests_the_server_and_is_seen_as_unattested(ca, enclave):
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), provider="none")
    assert isinstance(client.identity, UnattestedIdentity)
    with serve_who(server_creds, "optional") as (grpc_port, att_port):
        with client.secure_channel(f"127.0.0.1:{grpc_port}", attestation_target=f"127.0.0.1:{att_port}") as ch:
            kind, fingerprint, strict = who(ch).split()
            assert ch.server_evidence.mrenclave == enclave.mrenclave  # the first call attested and pinned the server
            assert kind == "unattested"
            assert strict == "strict:UnattestedCallerError"  # peer() without allow_unattested never returns for it
            assert fingerprint == hashlib.sha256(client.identity.channel_certificate_der).hexdigest()
        stats = server_creds.attestation_stats(grpc_port)
        assert (stats.attested, stats.unattested, stats.rejected) == (1, 1, 0)
        assert server_creds.trusted_clients(grpc_port) == {}  # only attested clients are listed


def test_attested_client_on_an_optional_port_keeps_its_evidence(ca, enclave, other_enclave):
    server_creds = ratls.credentials(sim_policy(ca, other_enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), other_enclave)
    with serve_who(server_creds, "optional") as (grpc_port, att_port):
        with client.secure_channel(f"127.0.0.1:{grpc_port}", attestation_target=f"127.0.0.1:{att_port}") as ch:
            assert who(ch) == f"attested {other_enclave.mrenclave.hex()} strict:ok"
        assert server_creds.attestation_stats(grpc_port).unattested == 0


def test_optional_port_still_refuses_a_client_whose_attestation_fails(ca, enclave, other_enclave):
    """"optional" admits clients that present no evidence, not clients whose evidence fails the policy."""
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)  # the worker is not allowed
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), other_enclave)
    with serve_who(server_creds, "optional") as (grpc_port, att_port):
        with pytest.raises(ratls.VerificationError) as e:  # reattest(): the channel's eager attestation
            client.secure_channel(f"127.0.0.1:{grpc_port}", attestation_target=f"127.0.0.1:{att_port}").reattest()
        assert e.value.reason == ratls.Reason.PEER_REFUSED and e.value.peer_reason == ratls.Reason.MRENCLAVE


def test_required_port_refuses_an_unattested_client_with_a_reason(ca, enclave, caplog):
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), provider="none")
    caplog.set_level(logging.WARNING, logger="ratls.attestation")
    with serve(server_creds) as running:  # client_attestation defaults to "required"
        with pytest.raises(ratls.VerificationError) as e:  # reattest(): the channel's eager attestation
            client.secure_channel(running.target, attestation_target=running.attestation_target).reattest()
        assert e.value.reason == ratls.Reason.PEER_REFUSED
        assert e.value.peer_reason == ratls.Reason.ATTESTATION_REQUIRED
        assert "ATTESTATION_REQUIRED" in str(e.value)
        stats = server_creds.attestation_stats(running.grpc_port)
        assert (stats.attested, stats.rejected, stats.last_rejection) == (0, 1, ratls.Reason.ATTESTATION_REQUIRED)
        # Its channel certificate was never trusted: presenting it straight to the gRPC port fails.
        attested = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave).attest(running.attestation_target)
        with direct_channel(attested.certificate_der, _ChannelCert(client.identity), running.target) as ch:
            with pytest.raises(grpc.RpcError) as rpc:
                ch.unary_unary(f"/{SERVICE}/Hello")(b"x", timeout=WAIT_S)
            assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert running.service.calls == 0
        deadline = time.monotonic() + 5
        while not any("ATTESTATION_REQUIRED" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("ATTESTATION_REQUIRED" in r.getMessage() for r in caplog.records)


class _ChannelCert:
    """An unattested identity's channel certificate as the certificate a direct channel presents."""

    def __init__(self, identity: UnattestedIdentity) -> None:
        self.private_key_pem = identity.private_key_pem
        self.certificate_pem = identity.channel_certificate_pem


def test_handler_written_for_attested_callers_fails_closed_for_an_unattested_one(ca, enclave):
    """EchoService.hello reads ratls.peer(context).mrenclave: on an optional port an unattested caller makes it raise
    (the call fails), it never runs as if the caller were attested."""
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), provider="none")
    with serve(server_creds, client_attestation="optional") as running:
        with client.secure_channel(running.target, attestation_target=running.attestation_target) as ch:
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary(f"/{SERVICE}/Hello")(b"x", timeout=WAIT_S)
            assert e.value.code() == grpc.StatusCode.UNKNOWN
            assert ch.unary_unary(f"/{SERVICE}/Echo")(b"still served", timeout=WAIT_S) == b"still served"
        assert running.service.peers == []


def test_one_way_client_still_verifies_the_server(ca, enclave, other_enclave):
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, other_enclave.mrenclave), provider="none")  # expects another enclave
    with serve(server_creds, client_attestation="optional") as running:
        with pytest.raises(ratls.VerificationError) as e:  # reattest(): the channel's eager attestation
            client.secure_channel(running.target, attestation_target=running.attestation_target).reattest()
        assert e.value.reason == ratls.Reason.MRENCLAVE
        assert server_creds.attestation_stats(running.grpc_port).attested == 0


def test_credentials_without_attestation_cannot_serve(ca, enclave):
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), provider="none")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    with pytest.raises(ratls.RatlsError, match="cannot serve a port"):
        client.add_secure_port(server, "127.0.0.1:0")
    with pytest.raises(ratls.ProviderError, match="provider='none'"):
        ratls.Identity.create("none")
    server_creds = ratls.credentials(sim_policy(ca, enclave.mrenclave), enclave)
    with pytest.raises(ratls.RatlsError, match="client_attestation must be one of required, optional"):
        server_creds.add_secure_port(server, "127.0.0.1:0", client_attestation="maybe")


def test_unattested_churn_never_evicts_attested_clients(ca, enclave, other_enclave):
    server_creds = ratls.credentials(sim_policy(ca, other_enclave.mrenclave), enclave, max_trusted_clients=4,
                                     max_trusted_per_identity=2)
    attested = ratls.credentials(sim_policy(ca, enclave.mrenclave), other_enclave)
    with serve(server_creds, client_attestation="optional") as running:
        attested.attest(running.attestation_target)
        threads = [threading.Thread(target=ratls.credentials(sim_policy(ca, enclave.mrenclave), provider="none")
                                    .attest, args=(running.attestation_target,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert server_creds.attestation_stats(running.grpc_port).unattested == 6
        trusted = server_creds.trusted_clients(running.grpc_port)
        assert [ev.mrenclave for ev in trusted.values()] == [other_enclave.mrenclave]


def _check(attested_der, channel_der) -> int:
    msg = ffi.new("char[]", 256)
    return lib.ratls_channel_cert_check(attested_der or ffi.NULL, len(attested_der or b""), channel_der,
                                        len(channel_der), int(time.time()), msg, 256)


def test_unattested_channel_certificate_is_checked_against_its_own_key(enclave):
    own = UnattestedIdentity()
    assert _check(None, own.channel_certificate_der) == lib.RATLS_OK
    # An enclave's channel certificate is self-signed too, so it would pass as an unattested one (which grants
    # nothing); what must fail is a certificate carrying evidence, or one whose signature is another key's.
    assert _check(None, enclave.certificate_der) == ratls.Reason.CHANNEL_CERT
    cert = x509.load_der_x509_certificate(own.channel_certificate_der)
    other = ec.generate_private_key(ec.SECP384R1())
    forged = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
              .public_key(cert.public_key()).serial_number(7).not_valid_before(cert.not_valid_before_utc)
              .not_valid_after(cert.not_valid_after_utc).sign(other, hashes.SHA384()))
    assert _check(None, forged.public_bytes(serialization.Encoding.DER)) == ratls.Reason.CHANNEL_CERT
    # With an attested certificate given, an unattested client's certificate (another key) is refused as before.
    assert _check(enclave.certificate_der, own.channel_certificate_der) == ratls.Reason.CHANNEL_CERT


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "0.0.0.0:0"])
def test_add_secure_port_returns_an_address_that_channels_take(ca, enclave, other_enclave, bind):
    """With port 0 the attestation port is not the gRPC port + 1: the ServerAddress carries both."""
    server_creds = ratls.credentials(sim_policy(ca, other_enclave.mrenclave), enclave)
    client = ratls.credentials(sim_policy(ca, enclave.mrenclave), other_enclave)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((WhoService().handler(),))
    try:
        address = server_creds.add_secure_port(server, bind)
        server.start()
        grpc_port, attestation_port = address  # unpacks as before
        assert (address.grpc_port, address.attestation_port) == (grpc_port, attestation_port)
        assert address.target == f"127.0.0.1:{grpc_port}"
        assert address.attestation_target == f"127.0.0.1:{attestation_port}"
        with client.secure_channel(address) as ch:
            assert who(ch) == f"attested {other_enclave.mrenclave.hex()} strict:ok"
    finally:
        server.stop(None).wait(WAIT_S)
        server_creds.close()

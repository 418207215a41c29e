"""A client that is not Python (issue 17): tests/node_client, a Node.js client written from ratls/PROTOCOL.md with
node:crypto, node:tls and @grpc/grpc-js, against the Python RA-TLS gRPC server. Mutual attestation and a call; the
server refusing the Node client; the Node client's own verifier refusing servers (measurement, PCK root, debug,
forged or tampered evidence) before it sends anything; the gRPC channel pinned to the attested certificate; its
verifier on a real Gramine certificate and on a legacy-only one; and one-way attestation (no client enclave), whose
server side runs once add_secure_port takes client_attestation."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import shutil
import socket
import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import TESTDATA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpctools import (
    SERVICE,
    WAIT_S,
    FakeIdentity,
    Relay,
    forged_identity,
    serve,
    sim_policy,
    tls_client_context,
    tls_server_context,
)

import ratls
from ratls._certs import certificate_pem
from ratls.credentials import Credentials, credentials
from ratls.identity import channel_certificate_of

NODE_DIR = Path(__file__).resolve().parent / "node_client"
NODE = shutil.which("node")
NPM = shutil.which("npm")
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(NODE is None or NPM is None,
                                reason="node and npm are not installed (.ci/run installs the nodejs and npm packages)")

ONE_WAY_SERVER = "client_attestation" in inspect.signature(Credentials.add_secure_port).parameters
needs_one_way_server = pytest.mark.skipif(
    not ONE_WAY_SERVER, reason="the server side of one-way attestation (Credentials.add_secure_port(..., "
    "client_attestation=)) is not in this branch yet; these tests run once it is")

# Exit statuses of client.js.
OK, SERVER_REJECTED, REFUSED, NOT_ATTESTED, CALL_FAILED = 0, 2, 3, 4, 5
DICE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
GRAMINE_MRENCLAVE = "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585"
GRAMINE_MRSIGNER = "adc53501f21ced9b998e37a7a18e061c63e00315045fa57a49c18ef0a30d02ca"
GRAMINE_CERT_TIME = 1700000000  # 2023-11-14: inside the validity of the Gramine certificate and its PCK chain


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The client's directory with its pinned dependencies installed (npm ci, once, when missing or stale)."""
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["@grpc/grpc-js"]
    installed = NODE_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json"
    if not installed.is_file() or json.loads(installed.read_text())["version"] != pinned:
        result = subprocess.run([NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                                capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return NODE_DIR


def run_node(node_dir: Path, *args: str) -> tuple[int, dict]:
    """Runs client.js; returns its exit status and its one JSON line."""
    result = subprocess.run([NODE, "client.js", *args], cwd=node_dir, capture_output=True, text=True,
                            timeout=NODE_TIMEOUT_S)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line, got {result.stdout!r}; stderr: {result.stderr[-3000:]}"
    return result.returncode, json.loads(lines[0])


@pytest.fixture(scope="module")
def node_id(ids):
    return ids("node")


@pytest.fixture(scope="module")
def files(tmp_path_factory, sim_ca, node_id) -> dict[str, Path]:
    """What the Node client reads: its key, RA-TLS certificate and channel certificate (made by ratls, sim
    provider), the sim CA's root (the server's quotes chain to it) and another sim CA's root."""
    d = tmp_path_factory.mktemp("node-files")
    out = {name: d / f"{name}.pem" for name in ("key", "cert", "channel", "root", "other_root")}
    out["key"].write_bytes(node_id.private_key_pem)
    out["cert"].write_bytes(node_id.certificate_pem)
    out["channel"].write_bytes(certificate_pem(channel_certificate_of(node_id)))
    out["root"].write_bytes(sim_ca.root_pem)
    out["other_root"].write_bytes(ratls.SimCA.init(tmp_path_factory.mktemp("other-sim-ca")).root_pem)
    return out


def connect_args(files, attestation_port: int, grpc_port: int, mrenclave: bytes, *extra: str,
                 root: str = "root", one_way: bool = False) -> list[str]:
    identity = ["--one-way"] if one_way else ["--key", str(files["key"]), "--cert", str(files["cert"]),
                                              "--channel-cert", str(files["channel"])]
    return ["connect", "--host", "127.0.0.1", "--port", str(attestation_port), "--grpc-port", str(grpc_port),
            "--root", str(files[root]), "--mrenclave", mrenclave.hex(), "--timeout-ms", "10000", *identity, *extra]


def server_creds(sim_ca, server_id, *allowed: bytes, **kw):
    return credentials(sim_policy(sim_ca, *allowed), server_id, **kw)


def resigned(identity, transform=lambda ext: ext.value, extra=()) -> FakeIdentity:
    """The identity's certificate with each extension passed through transform (None drops it) and `extra`
    (non-critical) added, re-signed by its key: self-signature and validity stay good."""
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    key = serialization.load_der_private_key(identity.private_key_der, None)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc).public_key(cert.public_key()))
    for ext in cert.extensions:
        value = transform(ext)
        if value is not None:
            builder = builder.add_extension(value, critical=ext.critical)
    for value in extra:
        builder = builder.add_extension(value, critical=False)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return FakeIdentity(identity.private_key_der, der)


def tampered_quote(identity) -> FakeIdentity:
    """One bit of MRENCLAVE flipped inside the DICE evidence's quote (the extension a verifier uses)."""
    flipped = bytes([identity.mrenclave[0] ^ 1]) + identity.mrenclave[1:]

    def transform(ext):
        if ext.oid != DICE_OID:
            return ext.value
        assert ext.value.value.count(identity.mrenclave) == 1
        return x509.UnrecognizedExtension(DICE_OID, ext.value.value.replace(identity.mrenclave, flipped))

    return resigned(identity, transform)


# -- mutual attestation, live


def test_mutual_attestation_then_call(node_client, files, sim_ca, server_id, node_id):
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave, trust_ttl=1234)) as srv:
        rc, out = run_node(node_client, *connect_args(files, srv.attestation_port, srv.grpc_port,
                                                      server_id.mrenclave, "--request", "from node"))
        assert rc == OK, out
        assert out["attested"] is True and out["mode"] == "mutual"
        assert out["ttl"] == 1234  # the server's RAT1 carries its trust TTL
        assert out["server_mrenclave"] == server_id.mrenclave.hex()
        assert out["server_mrsigner"] == sim_ca.mrsigner.hex()
        assert out["server_cn"] == server_id.common_name
        assert out["server_evidence_format"] == "dice" and out["server_debug"] is False
        assert out["reply"] == "hello from node"
        # The server's handler saw the Node client's attested enclave through ratls.peer(context).
        assert srv.service.peers == [node_id.mrenclave]
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.attested, stats.rejected) == (1, 0)
        assert list(srv.creds.trusted_clients(srv.grpc_port)) == [node_id.evidence.cert_fingerprint]
        print(f"node client: attestation {out['attest_ms']} ms, first call {out['call_ms']} ms")


def test_server_refuses_node_client_mrenclave(node_client, files, sim_ca, server_id, ids):
    with serve(server_creds(sim_ca, server_id, ids("other").mrenclave)) as srv:
        rc, out = run_node(node_client, *connect_args(files, srv.attestation_port, srv.grpc_port,
                                                      server_id.mrenclave))
        assert rc == REFUSED, out
        assert out["attested"] is False and out["refused"] == "MRENCLAVE" and out["code"] == 44
        assert out["message"] == ("the attestation server refused our certificate: MRENCLAVE "
                                  f"(127.0.0.1:{srv.attestation_port})")
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.attested, stats.rejected, stats.last_rejection) == (0, 1, ratls.Reason.MRENCLAVE)
        assert srv.service.calls == 0


def assert_nothing_trusted(srv) -> None:
    assert srv.creds.attestation_stats(srv.grpc_port).attested == 0
    assert srv.creds.trusted_clients(srv.grpc_port) == {}
    assert srv.service.calls == 0


def test_node_client_refuses_server_mrenclave(node_client, files, sim_ca, server_id, node_id, ids):
    expected = ids("other").mrenclave
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave)) as srv:
        rc, out = run_node(node_client, *connect_args(files, srv.attestation_port, srv.grpc_port, expected))
        assert rc == SERVER_REJECTED, out
        assert out["attested"] is False and out["server_rejected"] == "MRENCLAVE"
        assert out["message"] == f"MRENCLAVE {server_id.mrenclave.hex()} is not the expected {expected.hex()}"
        assert_nothing_trusted(srv)  # it closed without sending its channel certificate


def test_node_client_refuses_quote_under_another_root(node_client, files, sim_ca, server_id, node_id):
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave)) as srv:
        rc, out = run_node(node_client, *connect_args(files, srv.attestation_port, srv.grpc_port,
                                                      server_id.mrenclave, root="other_root"))
        assert rc == SERVER_REJECTED, out
        assert out["server_rejected"] == "PCK_CHAIN_UNTRUSTED"
        assert "RATLS Simulated SGX Root CA" in out["message"] and "not a root of the policy" in out["message"]
        assert_nothing_trusted(srv)


def test_node_client_denies_debug_enclave_unless_allowed(node_client, files, sim_ca, node_id, ids):
    debug_server = ids("server", debug=True)
    with serve(server_creds(sim_ca, debug_server, node_id.mrenclave)) as srv:
        args = connect_args(files, srv.attestation_port, srv.grpc_port, debug_server.mrenclave)
        rc, out = run_node(node_client, *args)
        assert (rc, out.get("server_rejected")) == (SERVER_REJECTED, "DEBUG_ENCLAVE"), out
        assert_nothing_trusted(srv)
        rc, out = run_node(node_client, *args, "--allow-debug")
        assert rc == OK, out
        assert out["server_debug"] is True and out["reply"] == "hello node"


@pytest.mark.parametrize("evidence, reason", [("forged", "REPORT_DATA_MISMATCH"), ("tampered", "QUOTE_SIGNATURE")])
def test_node_client_refuses_bad_evidence_before_sending_anything(node_client, files, sim_ca, server_id, node_id,
                                                                  evidence, reason):
    """A man in the middle of the attestation port presents the server's genuine evidence on its own key
    (forged), or the server's certificate with one bit of the quote flipped and re-signed (tampered)."""
    fake = forged_identity(server_id) if evidence == "forged" else tampered_quote(server_id)
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave)) as srv:
        with Relay(srv.attestation_port, server_tls=tls_server_context(fake),
                   client_tls=tls_client_context(fake)) as relay:
            rc, out = run_node(node_client, *connect_args(files, relay.port, srv.grpc_port, server_id.mrenclave))
            assert rc == SERVER_REJECTED, out
            assert out["server_rejected"] == reason
            assert relay.to_upstream == b""  # not even the channel certificate
        assert_nothing_trusted(srv)


def test_grpc_channel_is_pinned_to_the_attested_certificate(node_client, files, sim_ca, server_id, node_id, ids):
    """After attesting the real server, the gRPC connection meets a relay presenting a genuine identity of the same
    enclave on another key: the Node client's pinned channel refuses it."""
    twin = ids("server")
    assert twin.mrenclave == server_id.mrenclave
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave)) as srv:
        with Relay(srv.grpc_port, server_tls=tls_server_context(twin, ["h2"]),
                   client_tls=tls_client_context(twin, ["h2"])) as relay:
            args = connect_args(files, srv.attestation_port, relay.port, server_id.mrenclave)
            args[args.index("--timeout-ms") + 1] = "5000"
            rc, out = run_node(node_client, *args)
            assert rc == CALL_FAILED, out
            assert out["attested"] is True and out["grpc_error"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert relay.connections >= 1 and relay.handshakes_failed == relay.connections
            assert relay.to_upstream == b""
        assert srv.service.calls == 0


@contextlib.contextmanager
def scripted_attestation_server(identity, reply: bytes):
    """An attestation port that presents `identity`'s RA-TLS certificate, reads one RATC message and answers
    `reply`, whatever it is; yields (port, the bytes of the RATC message it received)."""
    ctx = tls_server_context(identity)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT_S)
    received = bytearray()

    def recv_exact(conn, n: int) -> bytes:
        data = b""
        while len(data) < n and (chunk := conn.recv(n - len(data))):
            data += chunk
        return data

    def run() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as raw:
            raw.settimeout(WAIT_S)
            with ctx.wrap_socket(raw, server_side=True) as conn:
                header = recv_exact(conn, 6)
                received.extend(header + recv_exact(conn, int.from_bytes(header[4:6], "big") if len(header) == 6
                                                    else 0))
                conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        thread.join(WAIT_S)
        listener.close()
        assert not thread.is_alive()


@pytest.mark.parametrize("reply, rc, verdict", [
    (b"RAT2\x00\x00\x0e\x10", NOT_ATTESTED, {"error": "HANDSHAKE"}),  # a version this client does not know
    (b"RATN\x00\x00\x00\x63", REFUSED, {"refused": "UNKNOWN", "code": 99}),  # a reason it does not know
    (b"RATN\x00\x00\x00\x00", REFUSED, {"refused": "UNKNOWN", "code": 0}),  # 0 (OK) is still a refusal
    (b"RAT1\x00\x00", NOT_ATTESTED, {"error": "IO"}),  # fewer than 8 bytes, then the end
])
def test_node_client_reads_exactly_the_protocol_reply(node_client, files, server_id, node_id, reply, rc, verdict):
    """Section 3: only RAT1 attests; RATN with any code is a refusal; anything else is not attested. And the
    message the Node client sends is exactly RATC, the big-endian length and its channel certificate."""
    with scripted_attestation_server(server_id, reply) as (port, received):
        got_rc, out = run_node(node_client, *connect_args(files, port, 1, server_id.mrenclave))
    assert got_rc == rc, out
    assert out["attested"] is False and {k: out.get(k) for k in verdict} == verdict
    if "code" in verdict:
        assert out["message"] == (f"the attestation server refused our certificate: reason code {verdict['code']}, "
                                  f"unknown to this client (127.0.0.1:{port})")
    channel = channel_certificate_of(node_id)
    assert bytes(received) == b"RATC" + len(channel).to_bytes(2, "big") + channel


# -- the verifier alone, on certificates ratls did not make


def test_node_verifier_on_a_real_gramine_certificate(node_client, tmp_path):
    """Gramine's own RA-TLS certificate (a real SGX quote of a debug enclave, PCK chain to Intel's root)."""
    sgx = TESTDATA / "sgx"
    args = ["verify", "--cert", str(sgx / "gramine" / "gramine-cert.pem"), "--root", str(sgx / "intel_sgx_root_ca.pem"),
            "--mrenclave", GRAMINE_MRENCLAVE, "--time", str(GRAMINE_CERT_TIME)]
    rc, out = run_node(node_client, *args, "--allow-debug")
    assert rc == OK, out
    assert (out["format"], out["mrenclave"], out["mrsigner"], out["debug"]) == (
        "dice", GRAMINE_MRENCLAVE, GRAMINE_MRSIGNER, True)
    assert out["root"].startswith("CN=Intel SGX Root CA")
    rc, out = run_node(node_client, *args)
    assert (rc, out["server_rejected"]) == (SERVER_REJECTED, "DEBUG_ENCLAVE")
    # The same certificate under a simulation root only: its chain ends elsewhere.
    other_root = tmp_path / "sim-root.pem"
    other_root.write_bytes(ratls.SimCA.init(tmp_path / "ca").root_pem)
    args[args.index("--root") + 1] = str(other_root)
    rc, out = run_node(node_client, *args, "--allow-debug")
    assert (rc, out["server_rejected"]) == (SERVER_REJECTED, "PCK_CHAIN_UNTRUSTED")


def test_node_verifier_on_legacy_only_and_dice_only_certificates(node_client, files, server_id, tmp_path):
    """Without the DICE extension the legacy quote is verified (binding: SHA-256 of the SPKI); without the legacy
    one, the DICE evidence. With both, the DICE evidence is the one verified: a tampered one fails even though the
    legacy quote is intact."""
    cases = {
        "legacy-only": (resigned(server_id, lambda e: None if e.oid == DICE_OID else e.value), "legacy"),
        "dice-only": (resigned(server_id, lambda e: e.value if e.oid == DICE_OID or e.oid.dotted_string.startswith(
            "2.5.29.") else None), "dice"),
    }
    for name, (identity, fmt) in cases.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(identity.certificate_pem)
        rc, out = run_node(node_client, "verify", "--cert", str(path), "--root", str(files["root"]),
                           "--mrenclave", server_id.mrenclave.hex())
        assert rc == OK, (name, out)
        assert out["format"] == fmt and out["mrenclave"] == server_id.mrenclave.hex()
    path = tmp_path / "tampered.der"
    path.write_bytes(tampered_quote(server_id).certificate_der)  # DER input too
    rc, out = run_node(node_client, "verify", "--cert", str(path), "--root", str(files["root"]),
                       "--mrenclave", server_id.mrenclave.hex())
    assert (rc, out["server_rejected"]) == (SERVER_REJECTED, "QUOTE_SIGNATURE")


def test_node_verifier_on_certificates_filling_whole_base64_lines(node_client, files, server_id, tmp_path):
    """A regression: a DER length that is a multiple of 48 bytes is whole 64-character base64 lines, which the
    client's DER-to-PEM wrapping once turned into a blank line (a certificate that does not parse)."""
    pad_oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
    for pad in range(200):
        der = resigned(server_id, extra=[x509.UnrecognizedExtension(pad_oid, bytes(pad))]).certificate_der
        if len(der) % 48 == 0:
            break
    assert len(der) % 48 == 0
    path = tmp_path / "whole-lines.der"
    path.write_bytes(der)
    rc, out = run_node(node_client, "verify", "--cert", str(path), "--root", str(files["root"]),
                       "--mrenclave", server_id.mrenclave.hex())
    assert rc == OK, out


# -- one-way attestation: the Node client has no enclave


def test_one_way_channel_certificate_profile(node_client, tmp_path):
    """The channel certificate the Node client builds in DER for one-way attestation (PROTOCOL.md section 2): a
    fresh P-256 key, self-signed v3, subject = issuer = exactly CN=RATLS-<16 hex of SHA-256(SPKI)>-channel, no
    extensions, valid now."""
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "channel.pem"
    rc, out = run_node(node_client, "channel-cert", "--out-key", str(key_file), "--out-cert", str(cert_file))
    assert rc == OK, out
    der = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    cert = x509.load_der_x509_certificate(der)  # strict DER
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    private = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert private.public_key().public_numbers() == key.public_numbers()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cn = f"RATLS-{hashlib.sha256(spki).hexdigest()[:16]}-channel"
    expected_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    assert cert.subject == expected_name and cert.issuer == expected_name and out["channel_cn"] == cn
    assert cert.version == x509.Version.v3 and len(cert.extensions) == 0
    assert cert.serial_number > 0 and len(der) == out["bytes"] <= 4096
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    # Each run is a new key.
    rc, again = run_node(node_client, "channel-cert", "--out-key", str(key_file), "--out-cert", str(cert_file))
    assert rc == OK and again["channel_cn"] != cn


class WhoService:
    """Who answers "attested <mrenclave hex>" when ratls.peer(context) gives the caller's Evidence, and
    "unattested" when it refuses the caller (an unattested caller must never pass for an attested one)."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def who(self, request: bytes, context) -> bytes:
        try:
            answer = b"attested " + ratls.peer(context).mrenclave.hex().encode()
        except ratls.RatlsError:
            answer = b"unattested"
        self.answers.append(answer)
        return answer

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(self.who)})


@contextlib.contextmanager
def serve_one_way(creds, client_attestation: str):
    service = WhoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    try:
        grpc_port, attestation_port = creds.add_secure_port(server, "127.0.0.1:0",
                                                            client_attestation=client_attestation)
        server.start()
        yield service, grpc_port, attestation_port
    finally:
        server.stop(None).wait(WAIT_S)
        creds.close()


@needs_one_way_server
def test_one_way_client_at_an_optional_port(node_client, files, sim_ca, server_id, node_id):
    with serve_one_way(server_creds(sim_ca, server_id, node_id.mrenclave), "optional") as (service, grpc_port,
                                                                                          attestation_port):
        rc, out = run_node(node_client, *connect_args(files, attestation_port, grpc_port, server_id.mrenclave,
                                                      "--method", f"/{SERVICE}/Who", one_way=True))
        assert rc == OK, out
        assert out["mode"] == "one-way" and out["attested"] is True and out["ttl"] > 0
        assert out["server_mrenclave"] == server_id.mrenclave.hex()
        assert out["reply"] == "unattested"
        # The same port still attests enclave clients.
        rc, out = run_node(node_client, *connect_args(files, attestation_port, grpc_port, server_id.mrenclave,
                                                      "--method", f"/{SERVICE}/Who"))
        assert rc == OK, out
        assert out["reply"] == f"attested {node_id.mrenclave.hex()}"
        assert service.answers == [b"unattested", f"attested {node_id.mrenclave.hex()}".encode()]


@needs_one_way_server
def test_one_way_client_at_a_required_port(node_client, files, sim_ca, server_id, node_id):
    with serve_one_way(server_creds(sim_ca, server_id, node_id.mrenclave), "required") as (service, grpc_port,
                                                                                          attestation_port):
        rc, out = run_node(node_client, *connect_args(files, attestation_port, grpc_port, server_id.mrenclave,
                                                      "--method", f"/{SERVICE}/Who", one_way=True))
        assert rc == REFUSED, out
        assert out["refused"] == "ATTESTATION_REQUIRED" and out["code"] == 17
        assert service.answers == []


def test_one_way_client_still_verifies_the_server(node_client, files, sim_ca, server_id, node_id, ids):
    """With no enclave of its own the client still refuses a server outside its policy, whatever the port."""
    with serve(server_creds(sim_ca, server_id, node_id.mrenclave)) as srv:
        rc, out = run_node(node_client, *connect_args(files, srv.attestation_port, srv.grpc_port,
                                                      ids("other").mrenclave, one_way=True))
        assert (rc, out.get("server_rejected")) == (SERVER_REJECTED, "MRENCLAVE"), out
        assert_nothing_trusted(srv)

"""Helpers for the RA-TLS gRPC credential tests: a recording test service, servers on port 0, identities that
are not what they claim (plain TLS, forged evidence), direct gRPC channels that skip attestation, and TCP
relays (transparent, or re-terminating TLS as a man in the middle) that record what crosses them."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ratls
from ratls._certs import certificate_pem
from ratls.credentials import Credentials, peer

SERVICE = "ratls.test.Echo"
WAIT_S = 10.0


@dataclass
class EchoService:
    """Hello answers "hello " + request and records the caller's MRENCLAVE (ratls.peer); Echo returns the
    request. Every handler invocation is counted, so tests can assert that none ran."""

    calls: int = 0
    peers: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hello(self, request: bytes, context) -> bytes:
        evidence = peer(context)
        with self.lock:
            self.calls += 1
            self.peers.append(evidence.mrenclave)
        return b"hello " + request

    def echo(self, request: bytes, context) -> bytes:
        with self.lock:
            self.calls += 1
        return request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Hello": grpc.unary_unary_rpc_method_handler(self.hello),
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
        })


def hello(channel: grpc.Channel, request: bytes = b"world", timeout: float = WAIT_S) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Hello")(request, timeout=timeout)


def echo(channel: grpc.Channel, request: bytes, timeout: float = WAIT_S) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Echo")(request, timeout=timeout)


@dataclass
class Running:
    server: grpc.Server
    service: EchoService
    creds: Credentials
    grpc_port: int
    attestation_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def attestation_target(self) -> str:
        return f"127.0.0.1:{self.attestation_port}"


MAX_MESSAGE = 64 * 1024 * 1024
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


@contextlib.contextmanager
def serve(creds, address: str = "127.0.0.1:0", attestation_port: int | None = None,
          client_attestation: str = "required"):
    """An RA-TLS gRPC server running EchoService; stopped (and its attestation port closed) on exit."""
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    try:
        grpc_port, att_port = creds.add_secure_port(server, address, attestation_port=attestation_port,
                                                    client_attestation=client_attestation)
        server.start()
        yield Running(server, service, creds, grpc_port, att_port)
    finally:
        server.stop(None).wait(WAIT_S)
        creds.close()


@contextlib.contextmanager
def serve_insecure():
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, port
    finally:
        server.stop(None).wait(WAIT_S)


def free_ports(host: str = "127.0.0.1") -> tuple[int, int]:
    """Two ports nothing listens on now (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as a, socket.create_server((host, 0), family=family) as b:
        return a.getsockname()[1], b.getsockname()[1]


def make_app(root: Path, name: str) -> Path:
    """A tiny 'application' tree whose measurement is its MRENCLAVE."""
    app = root / name
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(f"print('this is {name}')\n")
    return app


def platform_identities(ca: ratls.SimCA, root: Path) -> dict[str, ratls.Identity]:
    """A "server" identity on the sim CA's default platform and a "client" one on its platform "client" (so each
    can be judged at its own TCB status), each measuring an app of its own under root."""
    ids = {}
    for role, ca_dir in (("server", ca.path), ("client", ca.platform("client"))):
        app = make_app(root, role)
        ids[role] = ratls.Identity.create("sim", sim_ca=ca_dir, measured_files=[app], measure_root=app)
    return ids


def sim_policy(sim_ca, *mrenclaves: bytes, **kw) -> ratls.Policy:
    return ratls.Policy(mrenclave=list(mrenclaves), allow_simulated=True, sim_root=sim_ca.path,
                        allowed_tcb_statuses=("Unknown",), **kw)


@dataclass
class FakeIdentity:
    """The parts of a ratls.Identity that credentials use, for identities ratls would never create."""

    private_key_der: bytes
    certificate_der: bytes

    @property
    def private_key_pem(self) -> bytes:
        key = serialization.load_der_private_key(self.private_key_der, None)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate_der)


def _self_signed(key, cn: str, extensions=()) -> FakeIdentity:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1)))
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(key, hashes.SHA256())
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return FakeIdentity(key_der, cert.public_bytes(serialization.Encoding.DER))


def plain_identity(cn: str = "plain-tls-client") -> FakeIdentity:
    """A self-signed P-384 certificate without any evidence."""
    return _self_signed(ec.generate_private_key(ec.SECP384R1()), cn)


def forged_identity(victim) -> FakeIdentity:
    """A certificate carrying the victim's genuine evidence extensions (a valid sim quote) on a new key, with
    a CN in the RA-TLS style for that key: what a relay that copied a real certificate can present."""
    key = ec.generate_private_key(ec.SECP384R1())
    victim_cert = x509.load_der_x509_certificate(victim.certificate_der)
    return _self_signed(key, "RATLS-forged0000000", list(victim_cert.extensions))


def direct_channel(server_cert_der: bytes, client, target: str) -> grpc.Channel:
    """A gRPC TLS channel pinned to the server certificate presenting `client`'s certificate, without
    attesting anything first."""
    names = x509.load_der_x509_certificate(server_cert_der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    creds = grpc.ssl_channel_credentials(
        root_certificates=certificate_pem(server_cert_der),
        private_key=client.private_key_pem, certificate_chain=client.certificate_pem)
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", str(names[0].value)),
                                                       ("grpc.use_local_subchannel_pool", 1)])


def _pem_files(identity) -> tuple[str, str]:
    d = tempfile.mkdtemp(prefix="ratls-test-")
    cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
    cert.write_bytes(identity.certificate_pem)
    key.write_bytes(identity.private_key_pem)
    return str(cert), str(key)


def tls_server_context(identity, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*_pem_files(identity))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_client_context(identity, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Presents `identity` and accepts any server certificate: a client that does no RA-TLS checking."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*_pem_files(identity))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Relay:
    """A TCP relay on 127.0.0.1 in front of `upstream_port`, recording every byte it forwards.

    With `server_tls` / `client_tls` contexts it re-terminates TLS instead: it completes its own TLS handshake
    with the client, opens its own TLS connection upstream, and forwards (and records) the plaintext — a man in
    the middle. `handshakes_failed` counts client-side handshakes that did not complete."""

    def __init__(self, upstream_port: int, *, server_tls: ssl.SSLContext | None = None,
                 client_tls: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        self.server_tls, self.client_tls = server_tls, client_tls
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.handshakes_failed = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._sockets.append(conn)
        conn.settimeout(WAIT_S)
        try:
            if self.server_tls is not None:
                conn = self.server_tls.wrap_socket(conn, server_side=True)
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=WAIT_S)
            if self.client_tls is not None:
                up = self.client_tls.wrap_socket(up)
        except (OSError, ssl.SSLError):
            with self._lock:
                self.handshakes_failed += 1
            conn.close()
            return
        with self._lock:
            self._sockets.append(up)
        t = threading.Thread(target=self._pump, args=(up, conn, self.to_client), daemon=True)
        t.start()
        self._pump(conn, up, self.to_upstream)
        t.join(WAIT_S)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    record += data
                dst.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
        self._thread.join(WAIT_S)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Transport security for every runtime link, chosen by one switch: --security ratls | tls | insecure.

ratls (the default): RA-TLS through the ratls package. Each process creates an attested identity over the
  measured runtime files (runtime.measure); servers open a gRPC port plus an attestation port, clients attest
  the server, get attested themselves and pin the server's certificate. Peers are accepted only with the
  pinned MRENCLAVE (--mrenclave; default: this process's own measurement, i.e. "the same code as me").
tls: mutual TLS with certificates issued by a throwaway CA (--tls-ca DIR, made by create_tls_ca), for measuring
  what attestation costs over plain TLS.
insecure: plaintext gRPC, for measuring what TLS costs. Never the default; every run using it says so.

Addresses are written host:port for tls/insecure and host:port/attestation_port for ratls; without the
/attestation_port part the attestation port is taken to be port + 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ratls.address import default_attestation_port, join_host_port, split_host_port
from ratls.errors import RatlsError
from runtime.protocol import UNPROVED, Caller

SECURITY_MODES = ("ratls", "tls", "insecure")
TLS_CA_CERT = "ca.crt.pem"
TLS_CA_KEY = "ca.key.pem"
_TLS_SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    attestation_port: int | None = None

    @property
    def target(self) -> str:
        return join_host_port(self.host, self.port)

    def __str__(self) -> str:
        base = self.target
        return base if self.attestation_port is None else f"{base}/{self.attestation_port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """host:port or host:port/attestation_port (ratls.address reads the host:port)."""
        address, _, attestation = text.strip().partition("/")
        try:
            host, port_number = split_host_port(address)
            attestation_port = int(attestation) if attestation else None
        except (RatlsError, ValueError):
            raise ValueError(f"address {text!r}: expected host:port or host:port/attestation_port, ports "
                             "integers") from None
        for value in (port_number, attestation_port):
            if value is not None and not 0 < value < 65536:
                raise ValueError(f"address {text!r}: ports must be in 1..65535")
        return cls(host, port_number, attestation_port)


def parse_listen(text: str) -> tuple[str, int]:
    """A server's --listen host:port (port 0: any free port)."""
    try:
        return split_host_port(text.strip())
    except RatlsError as error:
        raise ValueError(f"--listen: {error}") from None


_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a server (PS, chief) binds, and the address it tells clients."""
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="host:port the gRPC port binds (port 0: any free port; host 0.0.0.0 or [::]: every "
                             "interface); the attestation port binds the same host (default 127.0.0.1:0)")
    parser.add_argument("--advertise", metavar="HOST", type=_advertised_host,
                        help="the host (name or address) other hosts reach this server at: written to --ready-file "
                             "and printed, and, in the address clients are given, where they attest too (default: "
                             "the --listen host; for a wildcard --listen, this machine's host name)")
    parser.add_argument("--attestation-port", type=int,
                        help="ratls: the attestation port (default: the gRPC port + 1, or any free port when the "
                             "gRPC port is 0)")


def _advertised_host(text: str) -> str:
    host = text.strip().strip("[]")
    if host in _WILDCARD_HOSTS or "/" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected the name or address clients reach this server at (a "
                                         "wildcard names no host)")
    return host


def advertised(bound: Endpoint, advertise: str | None) -> Endpoint:
    """The endpoint clients are given for a server bound at `bound`: its ports at the host they reach it at, so
    that their attestation targets that host too (never a wildcard, which names no host)."""
    if advertise is not None:
        return replace(bound, host=advertise)
    if bound.host in _WILDCARD_HOSTS:
        return replace(bound, host=socket.gethostname())
    return bound


def parse_endpoints(text: str) -> list[Endpoint]:
    endpoints = [Endpoint.parse(part) for part in text.split(",") if part.strip()]
    if not endpoints:
        raise ValueError(f"expected one or more comma-separated addresses, found {text!r}")
    return endpoints


class TransportError(ConnectionError):
    """A channel could not be opened: attestation or connection failed. `retryable`: worth trying again (the
    peer is unreachable) as opposed to rejected."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class PeerRejected(Exception):
    """A caller this server does not admit: `reason` is not_attested, bad_mrenclave or bad_mrtd."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# Every channel pings its server while calls are open, so that a call on a link gone dead (a cut cable, a lost NAT
# entry) fails with UNAVAILABLE within KEEPALIVE_TIME + KEEPALIVE_TIMEOUT and the caller reconnects and re-attests,
# instead of waiting out the call's deadline (minutes for a bulk call) on a connection nothing will answer. The
# timeout leaves room for a ping's answer queued behind a full TCP send buffer on a slow link (4 MB at 10 Mbit/s:
# 3.2 s). Servers accept such pings: their default allows one per 5 minutes without data, and answers more often
# with GOAWAY.
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 10_000
_CLIENT_KEEPALIVE: list[tuple[str, Any]] = [("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
                                            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                                            ("grpc.http2.max_pings_without_data", 0)]
_SERVER_KEEPALIVE: list[tuple[str, Any]] = [("grpc.http2.min_recv_ping_interval_without_data_ms",
                                             KEEPALIVE_TIME_MS // 2)]


class Transport:
    """Server ports and client channels for one security mode."""

    security: str

    def add_port(self, server: grpc.Server, host: str, port: int, attestation_port: int | None) -> Endpoint:
        raise NotImplementedError

    def channel(self, endpoint: Endpoint, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to endpoint with these gRPC options and the keepalive every channel has."""
        return self._channel(endpoint, options + _CLIENT_KEEPALIVE)

    def _channel(self, endpoint: Endpoint, options: list[tuple[str, Any]]) -> grpc.Channel:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Facts for run reports (mode, measurement, attestation timings)."""
        return {"security": self.security}

    def call_error(self, error: Exception) -> TransportError | None:
        """The TransportError for an exception a channel of this transport raised during a call (e.g. a failed
        re-attestation), or None if it is not a transport error."""
        return None

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """In a handler: who is calling, as this transport proved it (insecure: nothing). Raises PeerRejected."""
        return UNPROVED

    def own_fingerprint(self) -> bytes | None:
        """The SHA-256 of the certificate this process presents (what servers see as Caller.fingerprint), or
        None without one."""
        return None

    def server_options(self) -> list[tuple[str, Any]]:
        """gRPC server options this mode needs."""
        return list(_SERVER_KEEPALIVE)


class InsecureTransport(Transport):
    security = "insecure"

    def __init__(self) -> None:
        print("warning: --security insecure: gRPC traffic is plaintext and unauthenticated", file=sys.stderr,
              flush=True)

    def add_port(self, server: grpc.Server, host: str, port: int, attestation_port: int | None) -> Endpoint:
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        return Endpoint(host, bound)

    def _channel(self, endpoint: Endpoint, options: list[tuple[str, Any]]) -> grpc.Channel:
        return grpc.insecure_channel(endpoint.target, options=options)


# ----------------------------------------------------------------------------------------------------------
# tls


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_tls_ca(directory: Path) -> Path:
    """A throwaway CA for --security tls: ca.crt.pem and ca.key.pem (0600) in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runtime throwaway TLS CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / TLS_CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(directory / TLS_CA_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_pem_key(key))
    return directory


class TlsTransport(Transport):
    """Mutual TLS: this process's key is fresh and in memory; its certificate is issued by the throwaway CA."""

    security = "tls"

    def __init__(self, ca_dir: Path) -> None:
        try:
            self.ca_pem = (ca_dir / TLS_CA_CERT).read_bytes()
            ca_cert = x509.load_pem_x509_certificate(self.ca_pem)
            ca_key = serialization.load_pem_private_key((ca_dir / TLS_CA_KEY).read_bytes(), None)
        except (OSError, ValueError) as error:
            raise ValueError(f"--tls-ca {ca_dir}: not a CA made by create_tls_ca ({error})") from None
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        san = x509.SubjectAlternativeName([x509.DNSName(_TLS_SERVER_NAME),
                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _TLS_SERVER_NAME)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=7)).add_extension(san, critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.key_pem = _pem_key(key)
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    def add_port(self, server: grpc.Server, host: str, port: int, attestation_port: int | None) -> Endpoint:
        creds = grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
                                            require_client_auth=True)
        bound = server.add_secure_port(f"{host}:{port}", creds)
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        return Endpoint(host, bound)

    def caller(self, context: grpc.ServicerContext) -> Caller:
        pems = (context.auth_context() or {}).get("x509_pem_cert")
        if not pems:
            raise PeerRejected("no_certificate", "the call carries no client certificate")
        return Caller(hashlib.sha256(x509.load_pem_x509_certificate(pems[0]).public_bytes(
            serialization.Encoding.DER)).digest())

    def own_fingerprint(self) -> bytes:
        return hashlib.sha256(x509.load_pem_x509_certificate(self.cert_pem).public_bytes(
            serialization.Encoding.DER)).digest()

    def _channel(self, endpoint: Endpoint, options: list[tuple[str, Any]]) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                             certificate_chain=self.cert_pem)
        return grpc.secure_channel(endpoint.target, creds,
                                   options=options + [("grpc.ssl_target_name_override", _TLS_SERVER_NAME)])


# ----------------------------------------------------------------------------------------------------------
# ratls


class RatlsTransport(Transport):
    """RA-TLS (ratls.credentials): attest, then pin."""

    security = "ratls"

    def __init__(self, *, provider: str, sim_ca: Path | None, mrenclave: bytes | None,
                 collateral: str | None = None, collateral_cache: Path | None = None,
                 peer_tees: tuple[str, ...] | None = None) -> None:
        import ratls
        from ratls.collateral import from_spec
        from runtime.measure import BASE_DIR, runtime_files

        files = runtime_files()
        started = time.perf_counter()
        self.identity = ratls.Identity.create(provider=provider, sim_ca=sim_ca, measured_files=files,
                                              measure_root=BASE_DIR)
        self.identity_seconds = time.perf_counter() - started
        own = self.identity.evidence
        self.tee = own.tee
        self.peer_tees = peer_tees or (self.tee,)
        # "The same code as me", in whichever TEE a peer runs: our own evidence gives the measurement of our own TEE
        # (a real enclave's MRENCLAVE); the other TEE's, only when its peers are admitted, is our files' MRENCLAVE
        # as an SGX enclave or MRTD as a TD (ratls.measure, a hash over every runtime file).
        self.mrenclave: bytes | None = mrenclave
        if self.mrenclave is None and own.tee == "sgx":
            self.mrenclave = own.mrenclave
        self.mrtd: bytes | None = own.mrtd if own.tee == "tdx" else None
        if self.mrenclave is None and "sgx" in self.peer_tees:
            self.mrenclave = ratls.measure(files, BASE_DIR)
        if self.mrtd is None and "tdx" in self.peer_tees:
            self.mrtd = ratls.measure(files, BASE_DIR, td=True)
        simulated = self.identity.provider in ("sim", "sim-tdx")
        if simulated:
            print(f"warning: SIMULATED {self.tee.upper()} attestation (sim CA {sim_ca}): evidence proves nothing "
                  "about a real enclave or TD", file=sys.stderr, flush=True)
        # Peers' TCB status comes from this source inside every attestation; without one it is "Unknown". In an
        # enclave the manifest fixes it (--collateral gramine by default, see manifests/render.py).
        self.collateral = collateral
        source = from_spec(collateral, cache_dir=collateral_cache) if collateral else None
        if simulated:
            # Sim evidence is judged like Intel's when a (sim) PCCS serves its collateral: UpToDate only.
            pins: dict[str, Any] = {}
            if "sgx" in self.peer_tees:
                pins["mrenclave"] = self.mrenclave
            if "tdx" in self.peer_tees:
                pins["mrtd"] = self.mrtd
            self.policy = ratls.Policy(tees=self.peer_tees, allow_simulated=True, sim_root=sim_ca,
                                       allowed_tcb_statuses=("UpToDate",) if source else ("UpToDate", "Unknown"),
                                       **pins)
        else:
            # In an enclave the peers' policy is the manifest's fixed RA_TLS_* values (never the host's): every
            # role and instance has its own MRENCLAVE there, so the manifest pins MRSIGNER instead.
            overrides: dict[str, Any] = {"mrenclave": mrenclave} if mrenclave is not None else {}
            if sim_ca is not None:
                # The gramine code path over the sim library (python -m runtime.launch --enclave-way). A manifest
                # never passes --sim-ca (render.py refuses it), so a real enclave never trusts a sim root.
                print(f"warning: gramine provider with the SIMULATION root of {sim_ca}: peers' evidence is "
                      "simulated", file=sys.stderr, flush=True)
                overrides.update(sim_root=sim_ca, allow_simulated=True)
            if self.peer_tees != (self.tee,):
                # A real enclave's policy comes from its manifest, and a real TD's MRTD is not this runtime's files'
                # sim measurement: a mixed federation of real TEEs needs a policy naming both, which is not here yet.
                raise ValueError(f"--peer-tees {','.join(self.peer_tees)}: only with the sim providers; a "
                                 f"{provider} process admits peers of its own TEE ({self.tee})")
            self.policy = ratls.Policy.from_env(**overrides)
        self.credentials = ratls.credentials(policy=self.policy, identity=self.identity, collateral=source)
        self._ports: list[int] = []
        self._lock = threading.Lock()
        self.attestation_seconds: list[float] = []
        self.channels: list[Any] = []  # ratls PinnedChannels, for their re-pin counts

    def add_port(self, server: grpc.Server, host: str, port: int, attestation_port: int | None) -> Endpoint:
        bound, bound_attestation = self.credentials.add_secure_port(server, f"{host}:{port}",
                                                                    attestation_port=attestation_port)
        self._ports.append(bound)
        return Endpoint(host, bound, bound_attestation)

    def _channel(self, endpoint: Endpoint, options: list[tuple[str, Any]]) -> grpc.Channel:
        attestation_port = endpoint.attestation_port or default_attestation_port(endpoint.port)
        started = time.perf_counter()
        try:
            channel = self.credentials.secure_channel(endpoint.target,
                                                      attestation_target=join_host_port(endpoint.host,
                                                                                        attestation_port),
                                                      options=options)
            # Eager: a worker learns at connect time, with the reason, that a PS is unreachable or refuses it,
            # and the report times the attestation itself.
            channel.reattest()
        except Exception as error:
            translated = self.call_error(error)
            if translated is None:
                raise
            raise translated from None
        with self._lock:
            self.attestation_seconds.append(time.perf_counter() - started)
            self.channels.append(channel)
        return channel

    def server_options(self) -> list[tuple[str, Any]]:
        """No connection outlives its client's trust: the server ends it (GOAWAY) after the trust TTL, so the
        client reconnects through a new TLS handshake, which admits only currently trusted certificates. The
        grace lets calls in flight (a pull waits at most 60 s) finish."""
        return super().server_options() + [("grpc.max_connection_age_ms", int(self.credentials.trust_ttl * 1000)),
                                           ("grpc.max_connection_age_grace_ms", 65_000)]

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """The caller's attested RA-TLS certificate (its fingerprint) and Evidence, its MRENCLAVE checked again
        against the policy's MRENCLAVE pin when it has one: the handshake checked the whole policy already; this
        keeps a server's admission explicit (in an enclave the policy may pin MRSIGNER instead)."""
        import ratls

        try:
            evidence = ratls.peer(context)
        except ratls.RatlsError as error:
            raise PeerRejected("not_attested", str(error)) from None
        field = "mrtd" if evidence.tee == "tdx" else "mrenclave"
        allowed, found = getattr(self.policy, field), getattr(evidence, field)
        if allowed and found not in allowed:
            raise PeerRejected(f"bad_{field}", f"expected one of {[m.hex() for m in allowed]}, found {found.hex()}")
        return Caller(evidence.cert_fingerprint, evidence)

    def own_fingerprint(self) -> bytes:
        return self.identity.evidence.cert_fingerprint

    def call_error(self, error: Exception) -> TransportError | None:
        import ratls

        if isinstance(error, ratls.VerificationError):
            unreachable = error.reason in (ratls.Reason.IO, ratls.Reason.TIMEOUT)
            return TransportError(f"attestation failed: {error}", retryable=unreachable)
        if isinstance(error, ratls.RatlsError):
            return TransportError(f"RA-TLS: {error}", retryable=False)
        return None

    def report(self) -> dict[str, Any]:
        with self._lock:
            times = list(self.attestation_seconds)
            repins = sum(channel.repins for channel in self.channels)
        served = []
        for port in self._ports:
            stats = self.credentials.attestation_stats(port)
            served.append({"port": port, "attested": stats.attested, "rejected": stats.rejected,
                           "failed": stats.failed, "last_rejection": _reason_name(stats.last_rejection),
                           "last_rejection_message": stats.last_rejection_message})
        return {"security": self.security, "provider": self.identity.provider, "channel_repins": repins,
                "tee": self.tee, "peer_tees": list(self.peer_tees), "mrtd": self.mrtd.hex() if self.mrtd else None,
                "mrenclave": self.mrenclave.hex() if self.mrenclave else None,
                "own_mrenclave": self.identity.mrenclave.hex(),
                "tcb_statuses": list(self.policy.allowed_tcb_statuses), "collateral": self.collateral,
                "identity_seconds": round(self.identity_seconds, 6),
                "client_attestation_seconds": [round(t, 6) for t in times], "attestation_ports": served}


def _reason_name(code: int) -> str | None:
    import ratls

    try:
        return ratls.Reason(code).name if code else None
    except ValueError:
        return str(code)


# ----------------------------------------------------------------------------------------------------------
# command line


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a runtime command that talks over this transport: description from the first paragraph of
    its module docstring, the rest and this module's security notes as epilog."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=doc.split("\n\n", 1)[1] + "\n" + __doc__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transport security")
    group.add_argument("--security", choices=SECURITY_MODES, default="ratls",
                       help="link protection: RA-TLS (default), mutual TLS with a throwaway CA, or plaintext "
                            "(for overhead measurements only)")
    group.add_argument("--provider", choices=("auto", "sim", "sim-tdx", "gramine", "tdx"), default="auto",
                       help="ratls attestation provider: gramine inside an SGX enclave, tdx inside an Intel TDX "
                            "VM (configfs-tsm), sim (an SGX enclave) or sim-tdx (a TD) with --sim-ca (default "
                            "auto: gramine in an enclave, tdx in a TD, else sim)")
    group.add_argument("--peer-tees", type=_tees, metavar="sgx|tdx|sgx,tdx",
                       help="ratls, simulated: the TEEs whose peers are admitted, each pinned to this runtime's "
                            "own code (MRENCLAVE as an SGX enclave, MRTD as a TD); default: this process's own")
    group.add_argument("--sim-ca", type=Path, help="ratls: simulation CA directory "
                                                   "(python -m ratls sim-ca init DIR)")
    group.add_argument("--mrenclave", help="ratls: the MRENCLAVE (64 hex digits) every peer must have "
                                           "(default: this process's own measurement)")
    group.add_argument("--collateral", help="ratls: where peers' TCB status comes from, evaluated in every "
                                            "attestation: 'gramine' (Gramine's DCAP verifier), a PCCS URL "
                                            "(http(s)://host:port) or QuoteCollateralV3 JSON (a file or "
                                            "directory); default none (status Unknown, which the sim policy "
                                            "accepts and Gramine's RA_TLS_* policy refuses)")
    group.add_argument("--collateral-cache", type=Path, help="ratls: keep PCCS collateral on disk here too")
    group.add_argument("--tls-ca", type=Path, help="tls: directory with the throwaway CA (ca.crt.pem, ca.key.pem)")


def from_args(args: argparse.Namespace) -> Transport:
    if args.security == "insecure":
        return InsecureTransport()
    if args.security == "tls":
        if args.tls_ca is None:
            raise ValueError("--security tls needs --tls-ca DIR")
        return TlsTransport(args.tls_ca)
    mrenclave = None
    if args.mrenclave is not None:
        try:
            mrenclave = bytes.fromhex(args.mrenclave)
        except ValueError:
            mrenclave = b""
        if len(mrenclave) != 32:
            raise ValueError(f"--mrenclave: expected 64 hex digits, found {args.mrenclave!r}")
    return RatlsTransport(provider=args.provider, sim_ca=args.sim_ca, mrenclave=mrenclave,
                          collateral=args.collateral, collateral_cache=args.collateral_cache,
                          peer_tees=args.peer_tees)


def _tees(text: str) -> tuple[str, ...]:
    """--peer-tees: a comma-separated list of ratls's TEE names."""
    from ratls.policy import TEE_NAMES

    tees = tuple(dict.fromkeys(t.strip() for t in text.split(",")))
    if not tees or any(t not in TEE_NAMES for t in tees):
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(TEE_NAMES)}, comma-separated, found "
                                         f"{text!r}")
    return tees


def transport_argv(args: argparse.Namespace) -> list[str]:
    """The command-line options that recreate args' transport settings in a child process."""
    argv = ["--security", args.security, "--provider", args.provider]
    peer_tees = ",".join(args.peer_tees) if args.peer_tees else None
    for flag, value in (("--sim-ca", args.sim_ca), ("--mrenclave", args.mrenclave), ("--tls-ca", args.tls_ca),
                        ("--collateral", args.collateral), ("--collateral-cache", args.collateral_cache),
                        ("--peer-tees", peer_tees)):
        if value is not None:
            argv += [flag, str(value)]
    return argv

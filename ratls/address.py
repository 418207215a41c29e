"""Addresses, in one place: how a host:port is written and read, and where a gRPC port's attestation port is
when nobody says (the next port)."""

from __future__ import annotations

from ratls.errors import RatlsError


def split_host_port(address: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or a gRPC "dns:///host:port" / "ipv4:host:port" / "ipv6:[v6]:port" target."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme):]
            break
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RatlsError(f"address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 <= int(port) <= 65535:
        raise RatlsError(f"address {address!r}: port must be 0..65535")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_attestation_port(port: int) -> int:
    """The attestation port of a gRPC port when none is given: the next one (0, any free port, stays 0)."""
    return port + 1 if port else 0


class ServerAddress(tuple):
    """Where an RA-TLS gRPC server listens: what Credentials.add_secure_port returns. It unpacks as
    (grpc_port, attestation_port), and Credentials.secure_channel / aio_secure_channel take it as the target, with
    its attestation port: with port 0 the two ports are not adjacent, and this carries both."""

    host: str

    def __new__(cls, host: str, grpc_port: int, attestation_port: int) -> ServerAddress:
        self = super().__new__(cls, (grpc_port, attestation_port))
        self.host = host
        return self

    @property
    def grpc_port(self) -> int:
        return self[0]

    @property
    def attestation_port(self) -> int:
        return self[1]

    @property
    def target(self) -> str:
        """host:grpc_port, for a client; a wildcard bind address (0.0.0.0, ::, empty) is given as loopback."""
        return join_host_port(_reachable(self.host), self.grpc_port)

    @property
    def attestation_target(self) -> str:
        return join_host_port(_reachable(self.host), self.attestation_port)

    def __repr__(self) -> str:
        return f"ServerAddress({self.host!r}, grpc_port={self.grpc_port}, attestation_port={self.attestation_port})"


def _reachable(host: str) -> str:
    """A host a local client can connect to for a server bound to `host`."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)

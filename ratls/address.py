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

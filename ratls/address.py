"""Addresses, in one place: how a host:port is written and read, where a gRPC port's attestation port is when
nobody says (the next port), and which servers (replicas) a channel's target names."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Replica:
    """One server behind a channel's target: a gRPC target that reaches exactly that server, and its attestation
    target ("host:port")."""

    target: str
    attestation_target: str


# What secure_channel and aio_secure_channel take as their target.
Target = str | ServerAddress | Sequence[str | ServerAddress | tuple[str, str]]


@dataclass(frozen=True)
class _Named:
    """A host (a name or an address) and its ports; a name becomes one replica per address it resolves to."""

    host: str
    port: int
    attestation_port: int


class ReplicaTargets:
    """A channel's target, parsed when the channel is made (bad syntax raises RatlsError then, nothing is looked
    up); resolve() turns it into replicas, looking host names up each time it is called.

    target: "host:port" or "dns:///host:port" (a name is one replica per address it resolves to), gRPC's address
    lists "ipv4:a:p,b:p" and "ipv6:[a]:p,[b]:p" (one replica per address), a ServerAddress (one replica, with its
    attestation port), or a list of any of these and of (target, attestation_target) pairs.
    attestation_target: None (each replica's own attestation port: a ServerAddress's, else its gRPC port + 1), an
    int (that port on each replica's address), or "host:port" for a target that is one server (then both are used
    as given: gRPC resolves the target itself)."""

    def __init__(self, target: Target, attestation_target: str | int | None = None) -> None:
        self.description = ", ".join(_describe(t) for t in target) if _is_list(target) else _describe(target)
        # In target order: replicas given with their attestation targets (used as given), and hosts with ports.
        self.parts: list[Replica | _Named] = []
        items = list(target) if _is_list(target) else [target]
        if not items:
            raise RatlsError("the target lists no server")
        if isinstance(attestation_target, str):
            one = len(items) == 1 and isinstance(items[0], str | ServerAddress)
            if not one or len(_addresses(_describe(items[0]))) != 1:
                raise RatlsError(f"attestation_target {attestation_target!r} names one server, but the target "
                                 f"{self.description!r} may be several: give (target, attestation_target) pairs")
            given = items[0].target if isinstance(items[0], ServerAddress) else items[0]
            _addresses(attestation_target)
            self.parts.append(Replica(given, attestation_target))
            return
        if isinstance(attestation_target, int) and not 0 < attestation_target <= 65535:
            raise RatlsError(f"attestation_target port {attestation_target} is out of range")
        for item in items:
            if isinstance(item, ServerAddress):
                self.parts.append(Replica(item.target, item.attestation_target))
            elif isinstance(item, tuple):
                grpc_target, attestation = item
                _addresses(grpc_target)  # checked now, used as given
                _addresses(attestation)
                self.parts.append(Replica(grpc_target, attestation))
            else:
                for host, port in _addresses(item):
                    attestation_port = attestation_target or default_attestation_port(port)
                    if attestation_port > 65535:
                        raise RatlsError(f"target {item!r}: its attestation port would be {attestation_port}: "
                                         "give attestation_target")
                    self.parts.append(_Named(host, port, attestation_port))

    @property
    def looks_up_names(self) -> bool:
        """Whether resolve() asks the resolver (the target has host names, not only addresses)."""
        return any(isinstance(part, _Named) and not _is_address(part.host) for part in self.parts)

    def resolve(self) -> tuple[list[Replica], list[str]]:
        """The replicas, in target order without duplicates, and what could not be resolved ("name: error")."""
        replicas: list[Replica] = []
        errors = []
        for named in self.parts:
            if isinstance(named, Replica):
                replicas.append(named)
                continue
            try:
                hosts = [named.host] if _is_address(named.host) else _lookup(named.host)
            except OSError as e:
                errors.append(f"{named.host}: {e}")
                continue
            replicas += [Replica(join_host_port(host, named.port), join_host_port(host, named.attestation_port))
                         for host in hosts]
        return list(dict.fromkeys(replicas)), errors


def _is_list(target: Target) -> bool:
    return not isinstance(target, str | ServerAddress)


def _describe(item: str | ServerAddress | tuple[str, str]) -> str:
    if isinstance(item, ServerAddress):
        return item.target
    if isinstance(item, tuple):
        return f"{item[0]} (attestation {item[1]})"
    if not isinstance(item, str):
        raise RatlsError(f"target {item!r}: expected 'host:port', a ServerAddress or (target, attestation_target)")
    return item


def _addresses(target: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a gRPC target: "host:port", "dns:///host:port", or an "ipv4:" / "ipv6:" list."""
    for scheme, version in (("ipv4:", 4), ("ipv6:", 6)):
        if target.startswith(scheme):
            pairs = [split_host_port(address) for address in target[len(scheme):].split(",")]
            for host, _ in pairs:
                if not _is_address(host) or ipaddress.ip_address(host).version != version:
                    raise RatlsError(f"target {target!r}: {host!r} is not an IPv{version} address")
            break
    else:
        if target.startswith("dns://") and not target.startswith("dns:///"):
            raise RatlsError(f"target {target!r}: a DNS server in the target is not supported: use dns:///host:port")
        pairs = [split_host_port(target)]
    for _, port in pairs:
        if port == 0:
            raise RatlsError(f"target {target!r}: port 0 is no server's port")
    return pairs


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _lookup(name: str) -> list[str]:
    """The addresses a host name resolves to, in the resolver's order (raises OSError)."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)))

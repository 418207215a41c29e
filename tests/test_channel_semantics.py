"""gRPC semantics of ratls channels (sync and aio), end to end with the sim provider: a channel is lazy (made
while its server is down, it works once the server is up), wait_for_ready calls survive a server restart with a
new identity, streams started after a restart work, targets with several replicas (ipv4:/ipv6: lists, host
names, lists of addresses) spread calls over the attested replicas only, and an L4 balancer without client
affinity gives a clear error instead of random failures.

Every server here answers Who with its own name, so a test can tell which server (old or new, which replica)
answered. No pytest-asyncio: aio tests drive their coroutine with asyncio.run, under a bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
from grpctools import WAIT_S, free_ports, sim_policy

import ratls
from ratls.address import Replica, ReplicaTargets
from ratls.credentials import credentials

SERVICE = "ratls.test.Who"
WHO = f"/{SERVICE}/Who"
REPEAT = f"/{SERVICE}/Repeat"
BOUND_S = 40.0  # no aio test coroutine runs longer
RESTART_DEADLINE_S = 20.0  # a wait_for_ready call across a restart completes within this


@dataclass
class WhoService:
    """Who answers the server's name; Repeat streams it request[0] times. Both check the caller (ratls.peer) and
    count their calls."""

    name: bytes
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def who(self, request: bytes, context) -> bytes:
        ratls.peer(context)
        with self.lock:
            self.calls += 1
        return self.name

    def repeat(self, request: bytes, context) -> Iterator[bytes]:
        ratls.peer(context)
        with self.lock:
            self.calls += 1
        for _ in range(request[0]):
            yield self.name

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Who": grpc.unary_unary_rpc_method_handler(self.who),
            "Repeat": grpc.unary_stream_rpc_method_handler(self.repeat),
        })


@dataclass
class Server:
    service: WhoService
    address: ratls.ServerAddress
    creds: ratls.Credentials

    @property
    def ports(self) -> tuple[int, int]:
        return self.address.grpc_port, self.address.attestation_port


@contextlib.contextmanager
def serve(creds: ratls.Credentials, name: str, address: str = "127.0.0.1:0",
          attestation_port: int | None = None) -> Iterator[Server]:
    """An RA-TLS gRPC server answering Who with `name`; stopped (and its attestation port closed) on exit."""
    service = WhoService(name.encode())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    try:
        bound = creds.add_secure_port(server, address, attestation_port=attestation_port)
        server.start()
        yield Server(service, bound, creds)
    finally:
        server.stop(None).wait(WAIT_S)
        creds.close()


@pytest.fixture(scope="module")
def server_creds(sim_ca, ids, client_id):
    """A factory: credentials of a new server identity (a new key: what a restarted server has) of the server's
    enclave, trusting the client's enclave only; server_creds("intruder") is another enclave."""
    return lambda app="server", **kw: credentials(sim_policy(sim_ca, client_id.mrenclave), ids(app), **kw)


def who(channel: grpc.Channel, **kw) -> bytes:
    kw.setdefault("timeout", WAIT_S)
    return channel.unary_unary(WHO)(b"", **kw)


def run(coroutine, bound: float = BOUND_S):
    return asyncio.run(asyncio.wait_for(coroutine, bound))


# -- a lazy channel


def test_channel_made_before_its_server(server_creds, client_creds):
    """Making the channel touches nothing, even with the server down. A call then fails like a gRPC call that
    cannot connect (UNAVAILABLE), as an AttestationRpcError carrying the VerificationError; a wait_for_ready
    call and grpc.channel_ready_future made then complete once the server starts, and so does the next call.
    Before: secure_channel attested at once and raised VerificationError(IO)."""
    grpc_port, attestation_port = free_ports()
    channel = client_creds.secure_channel(f"127.0.0.1:{grpc_port}", attestation_target=f"127.0.0.1:{attestation_port}")
    assert channel.server_evidence is None and channel.repins == 0
    with pytest.raises(grpc.RpcError) as e:
        who(channel)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert isinstance(e.value, ratls.AttestationRpcError) and isinstance(e.value, ratls.VerificationError)
    assert e.value.reason == ratls.Reason.IO == e.value.verification_error.reason
    assert f"attesting the server at 127.0.0.1:{attestation_port} failed: IO" in e.value.details()
    failed = channel.unary_unary(WHO).future(b"", timeout=WAIT_S)  # a future that failed, as gRPC's do
    assert failed.done() and failed.exception().code() == grpc.StatusCode.UNAVAILABLE

    ready = grpc.channel_ready_future(channel)
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(who, channel, wait_for_ready=True, timeout=RESTART_DEADLINE_S)
        time.sleep(0.5)
        assert not waiting.done() and not ready.done()
        with serve(server_creds(), "up", f"127.0.0.1:{grpc_port}", attestation_port=attestation_port) as srv:
            assert waiting.result(timeout=RESTART_DEADLINE_S) == b"up"
            ready.result(timeout=WAIT_S)
            assert who(channel) == b"up"
            assert channel.server_certificate_der == srv.creds.identity.certificate_der
            assert srv.service.calls == 2
    channel.close()


def test_reattest_is_the_eager_path(client_creds):
    grpc_port, attestation_port = free_ports()
    with client_creds.secure_channel(f"127.0.0.1:{grpc_port}",
                                     attestation_target=f"127.0.0.1:{attestation_port}") as channel:
        with pytest.raises(ratls.VerificationError) as e:
            channel.reattest()
        assert e.value.reason == ratls.Reason.IO and not isinstance(e.value, grpc.RpcError)


# -- restarts


def restart(server: Server, creds: ratls.Credentials, name: str):
    """The same ports, a new server identity (a new key)."""
    grpc_port, attestation_port = server.ports
    return serve(creds, name, f"127.0.0.1:{grpc_port}", attestation_port=attestation_port)


def test_wait_for_ready_call_survives_a_restart_with_a_new_identity(server_creds, client_creds):
    """A wait_for_ready call made while the server is down (after it restarted: the pin is stale) completes on
    the new server once it is up. Before: it waited on the old pin until its deadline (DEADLINE_EXCEEDED)."""
    with serve(server_creds(), "old") as old:
        channel = client_creds.secure_channel(old.address)
        stub = channel.unary_unary(WHO)  # made once, used across the restart
        assert stub(b"", timeout=WAIT_S) == b"old"
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(stub, b"", wait_for_ready=True, timeout=RESTART_DEADLINE_S)
        time.sleep(1.0)
        assert not waiting.done()
        with restart(old, server_creds(), "new") as new:
            assert waiting.result(timeout=RESTART_DEADLINE_S) == b"new"
            assert channel.repins == 1
            assert channel.server_certificate_der == new.creds.identity.certificate_der
            assert new.service.calls == 1
    channel.close()


def test_stream_started_after_a_restart(server_creds, client_creds):
    """The first call after a restart with a new identity is a stream: it attests before it starts (the lost
    connection made the replica suspect) and runs on the new server. Before: it failed with UNAVAILABLE on the
    old pin, and only the call after it re-attested. (A sync channel learns of connectivity changes from gRPC's
    polling thread, milliseconds late: the test lets it see the connection READY before the restart.)"""
    with serve(server_creds(), "old") as old:
        channel = client_creds.secure_channel(old.address)
        repeat = channel.unary_stream(REPEAT)
        assert list(repeat(bytes([2]), timeout=WAIT_S)) == [b"old", b"old"]
        grpc.channel_ready_future(channel).result(timeout=WAIT_S)
    with restart(old, server_creds(), "new") as new:
        assert list(repeat(bytes([3]), timeout=WAIT_S)) == [b"new"] * 3
        assert channel.repins == 1 and new.service.calls == 1
    channel.close()


def test_aio_wait_for_ready_call_survives_a_restart_with_a_new_identity(server_creds, client_creds):
    async def main() -> None:
        with serve(server_creds(), "old") as old:
            channel = client_creds.aio_secure_channel(old.address)
            stub = channel.unary_unary(WHO)
            assert await stub(b"", timeout=WAIT_S) == b"old"
        waiting = asyncio.ensure_future(stub(b"", wait_for_ready=True, timeout=RESTART_DEADLINE_S))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        with restart(old, server_creds(), "new") as new:
            assert await asyncio.wait_for(waiting, RESTART_DEADLINE_S) == b"new"
            assert channel.repins == 1 and new.service.calls == 1
            await channel.close()

    run(main())


def test_aio_stream_started_after_a_restart(server_creds, client_creds):
    async def main() -> None:
        with serve(server_creds(), "old") as old:
            channel = client_creds.aio_secure_channel(old.address)
            repeat = channel.unary_stream(REPEAT)
            assert [r async for r in repeat(bytes([2]), timeout=WAIT_S)] == [b"old", b"old"]
        with restart(old, server_creds(), "new") as new:
            assert [r async for r in repeat(bytes([3]), timeout=WAIT_S)] == [b"new"] * 3
            assert channel.repins == 1 and new.service.calls == 1
            await channel.close()

    run(main())


# -- replicas


@contextlib.contextmanager
def replicas(server_creds, hosts: list[str], names: list[str], **kw) -> Iterator[list[Server]]:
    """Servers on the same gRPC and attestation ports of different loopback addresses (as replicas behind one
    host name would be); names[i] == "intruder" serves an enclave the client's policy does not admit."""
    def creds(name: str) -> ratls.Credentials:
        return server_creds("intruder" if name == "intruder" else "server", **kw)

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(serve(creds(names[0]), names[0], f"{hosts[0]}:0"))
        grpc_port, attestation_port = first.ports
        yield [first] + [stack.enter_context(serve(creds(name), name, f"{host}:{grpc_port}",
                                                   attestation_port=attestation_port))
                         for host, name in zip(hosts[1:], names[1:], strict=True)]


def spread(channel: grpc.Channel, calls: int = 20, replicas: int = 2) -> Counter:
    """Who answered `calls` calls, made once the first call attested the channel's replicas: it goes on as soon
    as one is attested, and the others take calls as they are (this waits for `replicas` of them)."""
    answers = [who(channel)]
    deadline = time.monotonic() + WAIT_S
    while sum(r.evidence is not None for r in channel.replicas) < replicas and time.monotonic() < deadline:
        time.sleep(0.01)
    return Counter(answers + [who(channel) for _ in range(calls - 1)])


def test_ipv4_list_spreads_calls_over_attested_replicas_only(server_creds, client_creds):
    """ipv4:A,B,C,D with one attestation port for all: A and B are attested and share 20 calls; C serves an
    enclave the policy does not admit and is never called; nothing listens at D. Before: secure_channel took
    one server only ("expected host:port")."""
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with replicas(server_creds, hosts, ["a", "b", "intruder"]) as (a, b, intruder):
        grpc_port, attestation_port = a.ports
        target = "ipv4:" + ",".join(f"{host}:{grpc_port}" for host in [*hosts, "127.0.0.4"])
        with client_creds.secure_channel(target, attestation_target=attestation_port) as channel:
            counts = spread(channel)
            assert counts[b"a"] > 0 and counts[b"b"] > 0 and set(counts) == {b"a", b"b"}
            assert intruder.service.calls == 0
            status = {r.target: r for r in channel.replicas}
            assert list(status) == [f"{host}:{grpc_port}" for host in [*hosts, "127.0.0.4"]]
            for server, host in ((a, hosts[0]), (b, hosts[1])):
                attested = status[f"{host}:{grpc_port}"]
                assert attested.certificate_der == server.creds.identity.certificate_der and attested.error is None
                assert attested.attestation_target == f"{host}:{attestation_port}"
            assert status[f"127.0.0.3:{grpc_port}"].evidence is None
            assert status[f"127.0.0.3:{grpc_port}"].error.reason == ratls.Reason.MRENCLAVE
            assert status[f"127.0.0.4:{grpc_port}"].error.reason == ratls.Reason.IO


def test_no_attested_replica(server_creds, client_creds):
    """Every replica fails: the call fails with each replica's reason; UNAVAILABLE since one was unreachable."""
    with replicas(server_creds, ["127.0.0.1"], ["intruder"]) as (intruder,):
        grpc_port, attestation_port = intruder.ports
        with client_creds.secure_channel(f"ipv4:127.0.0.1:{grpc_port},127.0.0.4:{grpc_port}",
                                         attestation_target=attestation_port) as channel:
            with pytest.raises(ratls.AttestationRpcError) as e:
                who(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"127.0.0.1:{attestation_port}: MRENCLAVE" in e.value.details()
        assert f"127.0.0.4:{attestation_port}: IO" in e.value.details()
        assert intruder.service.calls == 0


def test_list_of_port_zero_replicas_and_aio(server_creds, client_creds):
    """A list of ServerAddresses and (target, attestation_target) pairs: port-0 servers, whose attestation ports
    are not adjacent. Both channel kinds spread calls over both."""
    with serve(server_creds(), "a") as a, serve(server_creds(), "b") as b:
        target = [a.address, (b.address.target, b.address.attestation_target)]
        with client_creds.secure_channel(target) as channel:
            counts = spread(channel)
        assert counts[b"a"] > 0 and counts[b"b"] > 0 and sum(counts.values()) == 20

        async def main() -> Counter:
            async with client_creds.aio_secure_channel(target) as channel:
                # Eagerly: concurrent first calls would all go to the first replica attested.
                assert await channel.reattest() is True
                stub = channel.unary_unary(WHO)
                return Counter(await asyncio.gather(*(stub(b"", timeout=WAIT_S) for _ in range(20))))

        counts = run(main())
        assert counts[b"a"] > 0 and counts[b"b"] > 0 and sum(counts.values()) == 20


def test_ipv6_list(server_creds, client_creds):
    with serve(server_creds(), "a", "[::1]:0") as a, serve(server_creds(), "b", "[::1]:0") as b:
        target = f"ipv6:[::1]:{a.address.grpc_port},[::1]:{b.address.grpc_port}"
        with pytest.raises(ratls.RatlsError, match="names one server"):
            client_creds.secure_channel(target, attestation_target=a.address.attestation_target)
        assert ReplicaTargets(target).resolve()[0] == [
            Replica(f"[::1]:{s.address.grpc_port}", f"[::1]:{s.address.grpc_port + 1}") for s in (a, b)]
        # Port-0 servers: their attestation ports are given replica by replica.
        with client_creds.secure_channel([(f"[::1]:{s.address.grpc_port}", f"[::1]:{s.address.attestation_port}")
                                          for s in (a, b)]) as channel:
            counts = spread(channel)
        assert counts[b"a"] > 0 and counts[b"b"] > 0


def test_host_name_resolving_to_several_addresses(server_creds, client_creds, monkeypatch):
    """dns:///name:port, where the name resolves to two loopback addresses (a stub resolver: this host's names
    resolve to one address each). Each address is a replica; the name is looked up again (at most every
    RERESOLVE_INTERVAL_S) when something is to be attested, and a replica it no longer names takes no calls."""
    addresses = ["127.0.0.1", "127.0.0.2"]
    real = socket.getaddrinfo

    def lookup(host, port, *args, **kwargs):
        if host != "replicas.test":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    with replicas(server_creds, ["127.0.0.1", "127.0.0.2"], ["a", "b"], trust_ttl=1) as (a, b):
        grpc_port, attestation_port = a.ports
        with client_creds.secure_channel(f"dns:///replicas.test:{grpc_port}",
                                         attestation_target=attestation_port) as channel:
            counts = spread(channel)
            assert counts[b"a"] > 0 and counts[b"b"] > 0
            assert [r.target for r in channel.replicas] == [f"127.0.0.1:{grpc_port}", f"127.0.0.2:{grpc_port}"]
            addresses.remove("127.0.0.2")
            monkeypatch.setattr(ratls._replicas, "RERESOLVE_INTERVAL_S", 0.0)
            time.sleep(0.6)  # past half the trust TTL: the replicas are due for re-attestation
            assert spread(channel, 6, replicas=1) == Counter({b"a": 6})
            assert [r.target for r in channel.replicas] == [f"127.0.0.1:{grpc_port}"]


def test_target_syntax():
    assert ReplicaTargets("ipv4:10.0.0.1:50071,10.0.0.2:50081").resolve() == ([
        Replica("10.0.0.1:50071", "10.0.0.1:50072"), Replica("10.0.0.2:50081", "10.0.0.2:50082")], [])
    assert ReplicaTargets("ipv6:[::1]:5000,[fe80::1]:6000", 7000).resolve()[0] == [
        Replica("[::1]:5000", "[::1]:7000"), Replica("[fe80::1]:6000", "[fe80::1]:7000")]
    assert ReplicaTargets("dns:///localhost:9000").resolve()[0] == [Replica("127.0.0.1:9000", "127.0.0.1:9001")]
    assert ReplicaTargets("host.test:9000", "elsewhere.test:1").resolve()[0] == [
        Replica("host.test:9000", "elsewhere.test:1")]  # one server, given with its attestation target: as is
    assert ReplicaTargets(["10.0.0.1:1", ("n.test:5", "n.test:6")]).resolve()[0] == [
        Replica("10.0.0.1:1", "10.0.0.1:2"), Replica("n.test:5", "n.test:6")]
    assert ReplicaTargets("no-such-name.invalid:1").resolve()[0] == []
    for bad, message in (("ipv4:10.0.0.1:1,::1:2", "not an IPv4"), ("ipv6:[10.0.0.1]:1", "not an IPv6"),
                         ("10.0.0.1", "host:port"), ("dns://8.8.8.8/x.test:1", "DNS server"),
                         ("10.0.0.1:0", "port 0"), ([], "no server"), ("10.0.0.1:65535", "attestation port")):
        with pytest.raises(ratls.RatlsError, match=message):
            ReplicaTargets(bad)
    with pytest.raises(ratls.RatlsError, match="names one server"):
        ReplicaTargets("ipv4:10.0.0.1:1,10.0.0.2:1", "10.0.0.1:2")
    with pytest.raises(ratls.RatlsError, match="out of range"):
        ReplicaTargets("10.0.0.1:1", 70000)
    address = ratls.ServerAddress("0.0.0.0", 5000, 6000)  # what add_secure_port returns: it unpacks as a tuple
    assert ReplicaTargets(address).resolve()[0] == [Replica("127.0.0.1:5000", "127.0.0.1:6000")]
    assert ReplicaTargets(address, "10.0.0.9:7").resolve()[0] == [Replica("127.0.0.1:5000", "10.0.0.9:7")]


# -- an L4 balancer in front of replicas


class RoundRobinBalancer:
    """A TCP load balancer on 127.0.0.1 for replicas' gRPC ports and, on a port of its own, their attestation
    ports, each port sending new connections round-robin to the replicas (independently, as an L4 balancer
    without client affinity does; `grpc_first` is the replica the gRPC port starts at). With affinity=True it
    keeps the (one) client on the first replica on both ports."""

    def __init__(self, replicas: list[Server], *, affinity: bool, grpc_first: int = 0) -> None:
        self._affinity = affinity
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.grpc_port = self._listen([s.address.grpc_port for s in replicas], grpc_first)
        self.attestation_port = self._listen([s.address.attestation_port for s in replicas], 0)

    def _listen(self, upstreams: list[int], first: int) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        self._sockets.append(listener)
        turn = iter(range(first, 1 << 30))

        def accept() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                upstream = upstreams[0 if self._affinity else next(turn) % len(upstreams)]
                self._spawn(self._relay, conn, upstream)

        self._spawn(accept)
        return listener.getsockname()[1]

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay(self, conn: socket.socket, port: int) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._sockets += [conn, up]

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(up, conn), daemon=True)
        back.start()
        pump(conn, up)
        back.join(WAIT_S)
        conn.close()
        up.close()

    def __enter__(self) -> RoundRobinBalancer:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for thread in self._threads:
            thread.join(WAIT_S)


def test_l4_balancer_without_affinity_is_named(server_creds, client_creds):
    """Two replicas behind a round-robin L4 balancer whose gRPC and attestation ports pick replicas
    independently: attestation reaches A while gRPC reaches B. The call fails with an UNAVAILABLE
    AttestationRpcError that names the likely cause, not with a bare handshake failure. With client affinity
    on both ports, calls succeed."""
    with serve(server_creds(), "a") as a, serve(server_creds(), "b") as b:
        with RoundRobinBalancer([a, b], affinity=False, grpc_first=1) as balancer, \
                client_creds.secure_channel(f"127.0.0.1:{balancer.grpc_port}",
                                            attestation_target=f"127.0.0.1:{balancer.attestation_port}") as channel:
            with pytest.raises(ratls.AttestationRpcError) as e:
                who(channel)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.reason == ratls.Reason.HANDSHAKE
            assert "the attestation target answers with different servers: an L4 balancer without client " \
                   "affinity? use a multi-address target" in e.value.details()
        with RoundRobinBalancer([a, b], affinity=True) as balancer, \
                client_creds.secure_channel(f"127.0.0.1:{balancer.grpc_port}",
                                            attestation_target=f"127.0.0.1:{balancer.attestation_port}") as channel:
            assert spread(channel, 10, replicas=1) == Counter({b"a": 10})


def test_attestation_target_of_another_server_is_named(server_creds, client_creds):
    """The gRPC port presents another certificate than the one its attestation target attests, and the
    attestation target still serves that one: the error says the two reach different servers."""
    with serve(server_creds(), "a") as a, serve(server_creds(), "b") as b:
        with client_creds.secure_channel(a.address.target, attestation_target=b.address.attestation_target) as ch:
            with pytest.raises(ratls.AttestationRpcError) as e:
                who(ch)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.reason == ratls.Reason.HANDSHAKE
        assert f"the gRPC port at {a.address.target} presented a certificate other than the one attested at " \
               f"{b.address.attestation_target}" in e.value.details()
        assert a.service.calls == b.service.calls == 0

"""Credentials.aio_secure_channel end to end with the sim provider: unary and streaming calls over grpc.aio, lazy
attestation (a channel made before its server is up), restart recovery, re-attestation at TTL/2, what a caller sees
when attestation fails or is slow, and an event loop that keeps running while the blocking native handshake waits.

No pytest-asyncio (not a dependency): each test drives its coroutine with asyncio.run, under a bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest
from grpctools import MESSAGE_OPTIONS, WAIT_S, EchoService, Relay, Running, free_ports, sim_policy

import ratls
from ratls.credentials import credentials

STREAMS = "ratls.test.Streams"
HELLO = "/ratls.test.Echo/Hello"
BOUND_S = 30.0  # no test coroutine runs longer


def run(coroutine, bound: float = BOUND_S):
    return asyncio.run(asyncio.wait_for(coroutine, bound))


class StreamService:
    """Count: n responses (one byte each: 0..n-1) for a request of one byte n. Chat: each request back, uppercased.
    Join: the requests concatenated."""

    def count(self, request: bytes, context) -> Iterator[bytes]:
        ratls.peer(context)
        for i in range(request[0]):
            yield bytes([i])

    def chat(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
        ratls.peer(context)
        for request in requests:
            yield request.upper()

    def join(self, requests: Iterator[bytes], context) -> bytes:
        ratls.peer(context)
        return b"".join(requests)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(STREAMS, {
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Join": grpc.stream_unary_rpc_method_handler(self.join),
        })


@contextlib.contextmanager
def serve(creds, address: str = "127.0.0.1:0", attestation_port: int | None = None) -> Iterator[Running]:
    """grpctools.serve with the streaming service beside EchoService (a sync server: the client is what's aio)."""
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(), StreamService().handler()))
    try:
        grpc_port, att_port = creds.add_secure_port(server, address, attestation_port=attestation_port)
        server.start()
        yield Running(server, service, creds, grpc_port, att_port)
    finally:
        server.stop(None).wait(WAIT_S)
        creds.close()


class DelayedRelay(Relay):
    """A transparent relay that holds every new connection for `delay` seconds before forwarding it: an
    attestation port that accepts at once but answers late."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.delay = delay
        super().__init__(upstream_port)

    def _serve(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        super()._serve(conn)


async def hello(channel: grpc.aio.Channel, request: bytes = b"world", **kw) -> bytes:
    kw.setdefault("timeout", WAIT_S)
    return await channel.unary_unary(HELLO)(request, **kw)


async def requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def test_unary_and_streaming_calls(server_creds, client_creds, server_id, client_id):
    async def main(srv: Running) -> None:
        channel = client_creds.aio_secure_channel(srv.target, attestation_target=srv.attestation_target)
        assert isinstance(channel, grpc.aio.Channel)
        assert channel.server_evidence is None  # nothing happened on the network yet
        async with channel:
            call = channel.unary_unary(HELLO)(b"world", timeout=WAIT_S)
            assert isinstance(call, grpc.aio.UnaryUnaryCall)
            assert await call == b"hello world"
            assert await call.code() == grpc.StatusCode.OK
            assert channel.server_evidence.mrenclave == server_id.mrenclave
            assert channel.server_certificate_der == server_id.certificate_der

            count = channel.unary_stream(f"/{STREAMS}/Count")(bytes([5]), timeout=WAIT_S)
            assert isinstance(count, grpc.aio.UnaryStreamCall)
            assert [r async for r in count] == [bytes([i]) for i in range(5)]
            assert await count.code() == grpc.StatusCode.OK

            chat = channel.stream_stream(f"/{STREAMS}/Chat")
            assert [r async for r in chat(requests(b"a", b"b", b"c"), timeout=WAIT_S)] == [b"A", b"B", b"C"]
            interactive = chat(timeout=WAIT_S)  # write(), read(), done_writing()
            assert isinstance(interactive, grpc.aio.StreamStreamCall)
            for word in (b"ping", b"pong"):
                await interactive.write(word)
                assert await interactive.read() == word.upper()
            await interactive.done_writing()
            assert await interactive.read() == grpc.aio.EOF
            assert await interactive.code() == grpc.StatusCode.OK

            join = channel.stream_unary(f"/{STREAMS}/Join")
            assert await join(requests(b"x", b"y"), timeout=WAIT_S) == b"xy"
            assert await join([b"sync ", b"iterator"], timeout=WAIT_S) == b"sync iterator"

    with serve(server_creds()) as srv:
        run(main(srv))
        assert srv.service.peers == [client_id.mrenclave]
        stats = srv.creds.attestation_stats(srv.grpc_port)
        assert (stats.attested, stats.rejected) == (1, 0)  # one attestation for every call of the channel


def test_concurrent_first_calls_share_one_attestation(server_creds, client_creds):
    async def main(srv: Running) -> list[bytes]:
        async with client_creds.aio_secure_channel(srv.target, attestation_target=srv.attestation_target) as ch:
            return await asyncio.gather(*(hello(ch, str(i).encode()) for i in range(8)))

    with serve(server_creds()) as srv:
        assert run(main(srv)) == [b"hello " + str(i).encode() for i in range(8)]
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 1


def test_channel_made_before_its_server(server_creds, client_creds, server_id):
    """Creating the channel touches nothing. A call while the server is down fails with UNAVAILABLE, as an
    AioAttestationError whose reason is IO; a wait_for_ready call made then completes once the server starts."""
    grpc_port, attestation_port = free_ports()

    async def main() -> None:
        channel = client_creds.aio_secure_channel(f"127.0.0.1:{grpc_port}",
                                                  attestation_target=f"127.0.0.1:{attestation_port}")
        assert channel.get_state() == grpc.ChannelConnectivity.IDLE
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await hello(channel)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert isinstance(e.value, ratls.AioAttestationError) and isinstance(e.value, ratls.VerificationError)
        assert e.value.reason == ratls.Reason.IO
        assert f"attesting the server at 127.0.0.1:{attestation_port} failed: IO" in e.value.details()
        assert channel.server_evidence is None

        waiting = asyncio.ensure_future(hello(channel, b"patient", wait_for_ready=True, timeout=WAIT_S))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        with serve(server_creds(), f"127.0.0.1:{grpc_port}", attestation_port=attestation_port) as srv:
            assert await waiting == b"hello patient"
            assert await hello(channel) == b"hello world"
            assert channel.server_certificate_der == server_id.certificate_der
            assert srv.service.calls == 2
            await channel.close()

    run(main())


def test_server_restart_with_new_identity(server_creds, client_creds, ids):
    """A stub made once keeps working across a restart with a new key on the same ports: the first call after it
    fails to connect on the old pin, the channel re-attests, re-pins and retries it once on the new pin."""
    async def before(srv: Running, channel, stub) -> bytes:
        assert await stub(b"before", timeout=5) == b"hello before"
        return channel.server_certificate_der

    async def after(srv: Running, channel, stub, first_cert: bytes) -> None:
        assert await stub(b"after", timeout=5) == b"hello after"
        assert channel.repins == 1
        assert channel.server_certificate_der == srv.creds.identity.certificate_der != first_cert
        count = channel.unary_stream(f"/{STREAMS}/Count")(bytes([3]), timeout=5)
        assert [r async for r in count] == [b"\0", b"\1", b"\2"]  # streams started after the restart work
        await channel.close()

    async def main() -> None:
        with serve(server_creds()) as first:
            ports = (first.grpc_port, first.attestation_port)
            channel = client_creds.aio_secure_channel(first.target, attestation_target=first.attestation_target)
            stub = channel.unary_unary(HELLO)
            first_cert = await before(first, channel, stub)
        with serve(credentials(first.creds.policy, ids("server")), f"127.0.0.1:{ports[0]}",
                   attestation_port=ports[1]) as second:
            await after(second, channel, stub, first_cert)
            assert second.service.calls == 1
            assert second.creds.attestation_stats(second.grpc_port).attested == 1

    run(main())


def test_reattest_is_the_one_call_recovery(server_creds, client_creds, ids):
    async def main() -> None:
        with serve(server_creds()) as first:
            ports = (first.grpc_port, first.attestation_port)
            channel = client_creds.aio_secure_channel(first.target, attestation_target=first.attestation_target)
            assert await channel.reattest() is True  # the eager first attestation
            assert channel.server_evidence is not None
            assert await hello(channel) == b"hello world"
        with serve(credentials(first.creds.policy, ids("server")), f"127.0.0.1:{ports[0]}",
                   attestation_port=ports[1]):
            assert await channel.reattest() is True
            assert await channel.reattest() is False  # same server: nothing to re-pin
            assert await hello(channel) == b"hello world"
            await channel.close()
        with pytest.raises(grpc.aio.UsageError):
            channel.unary_unary(HELLO)(b"closed")
        with pytest.raises(ValueError):
            await channel.reattest()

    run(main())


def test_trust_expires_and_channel_refreshes(server_creds, client_creds, client_id):
    async def main(srv: Running) -> None:
        async with client_creds.aio_secure_channel(srv.target, attestation_target=srv.attestation_target) as ch:
            assert await hello(ch) == b"hello world"
            await asyncio.sleep(1.2)
            assert srv.creds.trusted_clients(srv.grpc_port) == {}  # the server no longer trusts the old attestation
            assert await hello(ch) == b"hello world"  # the channel re-attested first (at half the TTL)
            assert list(srv.creds.trusted_clients(srv.grpc_port)) == [client_id.evidence.cert_fingerprint]

    with serve(server_creds(trust_ttl=1)) as srv:
        run(main(srv))
        assert srv.creds.attestation_stats(srv.grpc_port).attested == 2


def test_server_not_in_client_policy(sim_ca, server_creds, client_id, ids):
    """A refusal is an AioAttestationError too, with the policy's reason and code UNAUTHENTICATED (a verdict, not
    an outage: UNAVAILABLE would invite retries); a wait_for_ready call is not kept waiting by it, and no RPC
    reaches the server."""
    creds = credentials(sim_policy(sim_ca, ids("intruder").mrenclave), client_id)

    async def main(srv: Running) -> None:
        async with creds.aio_secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
            for wait_for_ready in (False, True):
                call = channel.unary_unary(HELLO)(b"x", timeout=WAIT_S, wait_for_ready=wait_for_ready)
                with pytest.raises(ratls.VerificationError) as e:
                    await call
                assert isinstance(e.value, grpc.aio.AioRpcError)
                assert e.value.reason == ratls.Reason.MRENCLAVE
                assert await call.code() == grpc.StatusCode.UNAUTHENTICATED == e.value.code()
                assert e.value.verification_error.reason == ratls.Reason.MRENCLAVE
                assert "MRENCLAVE" in await call.details()
            count = channel.unary_stream(f"/{STREAMS}/Count")(bytes([2]), timeout=WAIT_S)
            with pytest.raises(ratls.AioAttestationError):
                [r async for r in count]

    with serve(server_creds()) as srv:
        run(main(srv))
        assert srv.service.calls == 0


def test_deadline_covers_attestation(sim_ca, server_id, client_id):
    """An attestation port that accepts and never answers: the call ends at its own deadline with
    DEADLINE_EXCEEDED, not at the handshake timeout; a call cancelled while it waits ends at once."""
    creds = credentials(sim_policy(sim_ca, server_id.mrenclave), client_id, handshake_timeout=2.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        async def main() -> float:
            async with creds.aio_secure_channel("127.0.0.1:1",
                                                attestation_target=f"127.0.0.1:{silent.getsockname()[1]}") as ch:
                started = time.monotonic()
                call = ch.unary_unary(HELLO)(b"x", timeout=0.5)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "while attesting" in e.value.details()
                assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                took = time.monotonic() - started

                # Cancelled while it waits for attestation: ends at once, as a cancelled grpc.aio call does.
                seen = []
                call = ch.unary_stream(f"/{STREAMS}/Count")(bytes([1]))
                call.add_done_callback(seen.append)
                await asyncio.sleep(0.1)
                assert not call.done() and call.cancel() and call.cancelled()
                with pytest.raises(asyncio.CancelledError):
                    await call.read()
                assert await call.code() == grpc.StatusCode.CANCELLED
                assert call.done() and seen == [call]
                return took

        assert 0.4 < run(main()) < 1.5


def test_event_loop_runs_while_attesting(server_creds, client_creds):
    """The attestation port answers only after 1.5 s. While the first call waits for it, a task ticking every
    10 ms keeps ticking: an event loop blocked by the attestation would show one gap as long as the handshake and
    no ticks in it. (Bounds far from the healthy figures, ~10 ms gaps and ~150 ticks, so that a loaded machine
    cannot fail it.)"""
    delay = 1.5

    async def main(srv: Running, relay: Relay) -> tuple[float, float, int]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        async with client_creds.aio_secure_channel(srv.target, attestation_target=f"127.0.0.1:{relay.port}") as ch:
            ticking = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.05)
            started = time.monotonic()
            assert await hello(ch) == b"hello world"
            took = time.monotonic() - started
            ticking.cancel()
        during = [t for t in ticks if started <= t <= started + took]
        gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
        return took, max(gaps), len(during)

    with serve(server_creds()) as srv, DelayedRelay(srv.attestation_port, delay) as relay:
        took, longest_gap, ticks = run(main(srv, relay))
    assert took >= delay
    assert longest_gap < delay / 2, f"the event loop stalled for {longest_gap:.3f} s during a {took:.3f} s attestation"
    assert ticks >= 10

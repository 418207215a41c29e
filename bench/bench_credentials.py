"""Benchmark of RA-TLS gRPC credentials (sim provider): attestation handshake time, attestation handshakes per
second on one server (sync and aio clients), first-RPC latency (ratls vs plain TLS vs insecure), and unary
throughput for 1 KiB and 4 MiB requests (ratls, plain TLS and insecure; the ratios ratls/insecure and ratls/plain
TLS).

    python bench/bench_credentials.py [--seconds 3] [--rounds 3] [--handshakes 50] [--first-rpcs 20]

The servers run in a child process so that client and server do not share one GIL. Throughput runs alternate
between the three channel kinds, `--rounds` times each, and ratios compare the medians. Target: ratls/insecure
>= 0.9 for 4 MiB messages. After attestation a ratls channel is an ordinary gRPC TLS channel, so ratls/plain TLS
shows what RA-TLS itself costs per byte (nothing), and plain TLS/insecure what gRPC's TLS costs. gRPC's secure
endpoint has experiments that move encryption off the I/O thread; try them with
GRPC_EXPERIMENTS=secure_endpoint_offload_large_reads,secure_endpoint_offload_large_writes (inherited by the
server process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ratls

SERVICE = "ratls.bench.Bench"
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
SIZES = {"1 KiB": 1024, "4 MiB": 4 * 1024 * 1024}


def make_app(root: Path, name: str) -> Path:
    app = root / name
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(f"print('bench {name}')\n")
    return app


def sim_policy(ca: ratls.SimCA, mrenclave: bytes) -> ratls.Policy:
    return ratls.Policy(mrenclave=mrenclave, allow_simulated=True, sim_root=ca.path, allowed_tcb_statuses=("Unknown",))


def plain_tls_pair() -> tuple[bytes, bytes]:
    """A self-signed P-384 server certificate and key (PEM) for the plain TLS baseline."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.plain")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.plain")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), cert.public_bytes(serialization.Encoding.PEM))


def serve(root: str, conn) -> None:
    """Child process: insecure, plain TLS and RA-TLS servers of the same service; reports their ports."""
    root_path = Path(root)
    ca = ratls.SimCA(root_path / "ca")
    server_app, client_app = root_path / "server", root_path / "client"
    identity = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[server_app], measure_root=server_app)
    creds = ratls.credentials(sim_policy(ca, ratls.measure([client_app], client_app)), identity)
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Ping": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"pong"),
        "Sink": grpc.unary_unary_rpc_method_handler(lambda req, ctx: len(req).to_bytes(8, "little")),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    insecure = server.add_insecure_port("127.0.0.1:0")
    key_pem, cert_pem = plain_tls_pair()
    tls = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    ratls_port, attestation_port = creds.add_secure_port(server, "127.0.0.1:0")
    server.start()
    conn.send({"insecure": insecure, "tls": tls, "tls_root": cert_pem, "ratls": ratls_port,
               "attestation": attestation_port})
    conn.recv()  # any message (or EOF) means stop
    server.stop(None).wait(10)
    creds.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def handshake_rate(attest, seconds: float, concurrency: int) -> float:
    """Attestation handshakes per second against one server: `concurrency` threads attesting back to back."""
    attest()  # warm
    deadline = time.perf_counter() + seconds

    def client() -> int:
        n = 0
        while time.perf_counter() < deadline:
            attest()
            n += 1
        return n

    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(lambda _: client(), range(concurrency)))
    return done / (time.perf_counter() - t0)


async def aio_handshake_rate(creds: ratls.Credentials, target: str, attestation_target: str, seconds: float,
                             concurrency: int) -> float:
    """The same from asyncio: `concurrency` grpc.aio channels re-attesting back to back (each attestation runs in a
    worker thread, off the event loop)."""
    channels = [creds.aio_secure_channel(target, attestation_target=attestation_target)
                for _ in range(concurrency)]
    try:
        await channels[0].reattest()  # warm
        deadline = time.perf_counter() + seconds

        async def client(channel) -> int:
            n = 0
            while time.perf_counter() < deadline:
                await channel.reattest()
                n += 1
            return n

        t0 = time.perf_counter()
        done = sum(await asyncio.gather(*(client(c) for c in channels)))
        return done / (time.perf_counter() - t0)
    finally:
        for channel in channels:
            await channel.close()


def throughput(channel: grpc.Channel, size: int, seconds: float, concurrency: int) -> float:
    """Requests of `size` bytes for `seconds`, `concurrency` callers; returns MiB/s of request payload."""
    sink = channel.unary_unary(f"/{SERVICE}/Sink")
    payload = b"\xa5" * size
    sink(payload, timeout=30)  # warm: connection, buffers
    deadline = time.perf_counter() + seconds

    def caller() -> int:
        n = 0
        while time.perf_counter() < deadline:
            sink(payload, timeout=60)
            n += 1
        return n

    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        calls = sum(pool.map(lambda _: caller(), range(concurrency)))
    return calls * size / (time.perf_counter() - t0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ratls/insecure runs per size")
    parser.add_argument("--handshakes", type=int, default=50)
    parser.add_argument("--first-rpcs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1, help="concurrent callers in throughput runs")
    parser.add_argument("--handshake-concurrency", type=int, nargs="+", default=[1, 4, 8],
                        help="concurrent clients for the handshakes/s figures (default 1 4 8)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ratls-bench-") as root:
        ca = ratls.SimCA.init(Path(root) / "ca")
        server_app, client_app = make_app(Path(root), "server"), make_app(Path(root), "client")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(root, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(60):
                sys.exit("the server process did not start within 60 s")
            ports = parent.recv()
            identity = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[client_app],
                                             measure_root=client_app)
            creds = ratls.credentials(sim_policy(ca, ratls.measure([server_app], server_app)), identity)
            run(args, creds, ports)
        finally:
            parent.send("stop")
            proc.join(15)
            if proc.is_alive():
                proc.kill()


def run(args, creds: ratls.Credentials, ports: dict) -> None:
    ratls_target, att_target = f"127.0.0.1:{ports['ratls']}", f"127.0.0.1:{ports['attestation']}"
    insecure_target, tls_target = f"127.0.0.1:{ports['insecure']}", f"127.0.0.1:{ports['tls']}"
    print("RA-TLS gRPC credentials benchmark (sim provider, loopback, server in a child process)")

    times = []
    for _ in range(args.handshakes):
        t0 = time.perf_counter()
        creds.attest(att_target)
        times.append((time.perf_counter() - t0) * 1000)
    print(f"attestation handshake: median {statistics.median(times):.2f} ms, p95 {percentile(times, 0.95):.2f} ms "
          f"({args.handshakes} handshakes)")

    for concurrency in args.handshake_concurrency:
        sync_rate = handshake_rate(lambda: creds.attest(att_target), args.seconds, concurrency)
        aio_rate = asyncio.run(aio_handshake_rate(creds, ratls_target, att_target, args.seconds, concurrency))
        print(f"attestation handshakes/s on one server, {concurrency} concurrent client(s): sync {sync_rate:.0f}, "
              f"aio {aio_rate:.0f} (aio/sync {aio_rate / sync_rate:.2f})")

    tls_creds = grpc.ssl_channel_credentials(root_certificates=ports["tls_root"])
    def eager() -> grpc.Channel:
        channel = creds.secure_channel(ratls_target, attestation_target=att_target, options=OPTIONS)
        channel.reattest()  # attest now, before the first call
        return channel

    openers = {
        "ratls (lazy)": lambda: creds.secure_channel(ratls_target, attestation_target=att_target, options=OPTIONS),
        "ratls (eager)": eager,
        "plain TLS": lambda: grpc.secure_channel(tls_target, tls_creds, options=OPTIONS + [
            ("grpc.ssl_target_name_override", "bench.plain"), ("grpc.use_local_subchannel_pool", 1)]),
        "insecure": lambda: grpc.insecure_channel(insecure_target, options=OPTIONS + [
            ("grpc.use_local_subchannel_pool", 1)]),
    }
    first = {name: [] for name in openers}
    for _ in range(args.first_rpcs):
        for name, open_channel in openers.items():
            t0 = time.perf_counter()
            with open_channel() as channel:
                channel.unary_unary(f"/{SERVICE}/Ping")(b"ping", timeout=30)
                first[name].append((time.perf_counter() - t0) * 1000)
    print("first RPC (new channel to first reply, incl. attestation/handshakes), median ms: " + ", ".join(
        f"{name} {statistics.median(v):.2f}" for name, v in first.items()))
    print(f"first RPC, lazy / eager attestation: "
          f"{statistics.median(first['ratls (lazy)']) / statistics.median(first['ratls (eager)']):.3f}")

    openers["ratls"] = openers.pop("ratls (lazy)")
    openers.pop("ratls (eager)")
    kinds = ("ratls", "plain TLS", "insecure")
    with contextlib.ExitStack() as stack:
        channels = {name: stack.enter_context(openers[name]()) for name in kinds}
        for label, size in SIZES.items():
            rates = {name: [] for name in kinds}
            for _ in range(args.rounds):  # interleaved, so load changes hit all kinds alike
                for name in kinds:
                    rates[name].append(throughput(channels[name], size, args.seconds, args.concurrency))
            median = {name: statistics.median(v) for name, v in rates.items()}
            print(f"unary throughput {label}: " + ", ".join(
                f"{name} {m:.1f} MiB/s ({m * 2**20 / size:.0f} RPC/s)" for name, m in median.items())
                + f"; ratio ratls/insecure {median['ratls'] / median['insecure']:.3f}, "
                f"ratls/plain TLS {median['ratls'] / median['plain TLS']:.3f}")


if __name__ == "__main__":
    main()

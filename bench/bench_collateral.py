"""Benchmark of TCB evaluation inside the attestation handshake (ratls.credentials(collateral=...)): handshake
median and p95 without a collateral source, with a warm cache, and with a cold one (every handshake fetches from
the PCCS, both sides), measured side by side in one run: the variants alternate, `--rounds` times.

    python bench/bench_collateral.py [--handshakes 50] [--rounds 3]

Both sides run in this process (the handshakes run on the native endpoint's threads and the client's calling
thread); the PCCS is the sim PCCS on loopback, so "cold" shows the cost of four local HTTP fetches plus the
evaluation, not of a remote PCCS. Target: a warm cache adds less than 1 ms to the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

import ratls
from ratls.collateral import PCCS
from ratls.sim_pccs import SimPCCS


def make_app(root: Path, name: str) -> Path:
    app = root / name
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(f"print('bench {name}')\n")
    return app


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=50, help="per variant and round (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = ratls.SimCA.init(root / "ca")
        ids = {}
        for role in ("server", "client"):
            app = make_app(root, role)
            ids[role] = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=app)
        with SimPCCS(ca) as pccs:
            sources: dict[str, list[PCCS]] = {}
            variants = {}
            servers = []
            for name in ("none", "warm", "cold"):
                srcs = [PCCS(pccs.url), PCCS(pccs.url)] if name != "none" else []
                sources[name] = srcs
                statuses = ("UpToDate",) if srcs else ("UpToDate", "Unknown")
                policy = ratls.Policy(allow_simulated=True, sim_root=ca.path, mrsigner=ca.mrsigner,
                                      allowed_tcb_statuses=statuses)
                server_creds = ratls.credentials(policy, ids["server"], collateral=srcs[0] if srcs else None)
                client_creds = ratls.credentials(policy, ids["client"], collateral=srcs[1] if srcs else None)
                server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
                _, att_port = server_creds.add_secure_port(server, "127.0.0.1:0")
                server.start()
                servers.append((server, server_creds))
                variants[name] = (client_creds, f"127.0.0.1:{att_port}")
                client_creds.attest(f"127.0.0.1:{att_port}")  # warms the caches of "warm"
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, (client_creds, target) in variants.items():
                    for _ in range(args.handshakes):
                        if name == "cold":
                            for source in sources[name]:
                                source.clear()
                        started = time.perf_counter()
                        attested = client_creds.attest(target)
                        times[name].append((time.perf_counter() - started) * 1000)
                        assert attested.evidence.tcb_status == ("Unknown" if name == "none" else "UpToDate")
            fetches = {name: sum(s.fetches for s in srcs) for name, srcs in sources.items()}
            for server, creds in servers:
                server.stop(None)
                creds.close()
    print(f"attestation handshake, {args.rounds} rounds x {args.handshakes} per variant, both sides in one process")
    print(f"{'variant':<8} {'median ms':>10} {'p95 ms':>8} {'PCCS fetches':>13}")
    for name, values in times.items():
        print(f"{name:<8} {statistics.median(values):>10.2f} {percentile(values, 0.95):>8.2f} {fetches[name]:>13}")
    added = statistics.median(times["warm"]) - statistics.median(times["none"])
    print(f"a warm cache adds {added:.2f} ms to the median (target < 1 ms): {'met' if added < 1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

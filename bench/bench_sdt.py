"""SDT benchmark: python bench/bench_sdt.py (a benchmark, not a test: it prints figures and asserts nothing).

1. SDT vs HFL: the same job (1 PS + 2 workers, Kaggle architecture, capped tables, synthetic data) launched in
   each mode over ratls; steady-state samples/s of each (SDT adds the chief and the shard streaming before
   training; the training steps themselves are the same code).
2. Chief shard streaming: one worker-side client streams a whole synthetic shard (--stream-mb) from an
   in-process chief, over ratls (sim provider) and insecure; MB/s of shard bytes, time to first byte included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: bench_hfl sits beside us

from bench_hfl import run_one  # noqa: E402

from runtime import chief as chief_module
from runtime import transport
from runtime.client.chief import ChiefClient
from runtime.model import DLRMConfig
from runtime.proto import chief_pb2


def stream_rate(net: transport.Transport, shard: Path, chunk_bytes: int) -> tuple[float, int]:
    """(MB/s, bytes) of one full StreamShard of `shard` through `net`, received as a worker does (checked, into
    memory)."""
    sources = chief_module.shard_sources([shard], None, 1)
    chief = chief_module.Chief(chief_pb2.JobSpec(), sources, ["worker0"], net, chunk_bytes=chunk_bytes)
    server, endpoint = chief_module.start_server(chief, "127.0.0.1", 0)
    try:
        client = ChiefClient(endpoint, net, "worker0")
        client.join_and_spec()
        started = time.perf_counter()
        os.close(client.shard_to_memory())
        seconds = time.perf_counter() - started
        client.close()
    finally:
        server.stop(0).wait(5)
    return client.shard_bytes / seconds / 1e6, client.shard_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bench_sdt.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--batch-size", type=int, default=128, help="per worker (default 128)")
    parser.add_argument("--steps", type=int, default=200, help="default 200")
    parser.add_argument("--max-table-size", type=int, default=100_000, help="table cap (default 100000)")
    parser.add_argument("--stream-mb", type=float, default=50.0, help="shard size for the streaming test (MB)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="shard chunk size (default 1 MiB)")
    parser.add_argument("--skip-training", action="store_true", help="only the streaming test")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sdt-") as tmp:
        out = args.out or Path(tmp)
        if not args.skip_training:
            print(f"{'mode':>5} {'samples/s (steady)':>19} {'samples/s (all)':>16} {'wall s':>7}", flush=True)
            for mode in ("hfl", "sdt"):
                report = run_one(out / mode, batch=args.batch_size, security="ratls", steps=args.steps,
                                 max_table_size=args.max_table_size, warmup=5, extra=["--mode", mode])
                print(f"{mode:>5} {report['steady']['samples_per_s']:>19.0f} {report['samples_per_s']:>16.0f} "
                      f"{report['wall_seconds']:>7.1f}", flush=True)
        from runtime.data import synth

        rows = max(1, int(args.stream_mb * 1e6 / 250))  # ~250 bytes per synthetic line
        (shard,) = synth(out / "stream.tsv", rows, 1, config=DLRMConfig.small())
        import ratls

        ratls.SimCA.init(out / "sim-ca")
        nets = {"ratls": transport.RatlsTransport(provider="sim", sim_ca=out / "sim-ca", mrenclave=None),
                "insecure": transport.InsecureTransport()}
        print(f"chief shard streaming, {shard.stat().st_size / 1e6:.1f} MB, chunks of {args.chunk_bytes} B:",
              flush=True)
        for name, net in nets.items():
            rate, size = stream_rate(net, shard, args.chunk_bytes)
            print(f"{name:>9}: {rate:8.1f} MB/s ({size} bytes)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

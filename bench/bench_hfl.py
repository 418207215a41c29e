"""HFL benchmark: python bench/bench_hfl.py (a benchmark, not a test: it prints figures and asserts nothing).

Runs 1 PS + 2 workers (separate processes, via runtime.launch) with the Kaggle architecture and capped tables, at
each batch size and for each transport (ratls, tls, insecure), and prints in one table the steady-state
samples/s, the per-step time breakdown (data, pull, compute, push, wait), bytes on the wire per step against
the minimum (the unique rows a batch touches, pulled and their gradients pushed, 16 x 4 B each, plus the dense
weights pulled and their gradients pushed), the ratio ratls/insecure, and the throughput as the tables grow 10x
and 100x. Bytes are gRPC message bytes as the workers count them; TLS records and HTTP/2 frames add well under
1 % on top.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEADER = (f"{'batch':>6} {'transport':>9} {'tables':>8} {'samples/s':>10} {'data':>6} {'pull':>6} {'compute':>8} "
          f"{'push':>6} {'wait':>6} {'kB/step':>9} {'min kB':>8} {'x min':>6}")


def run_one(out: Path, *, batch: int, security: str, steps: int, max_table_size: int, warmup: int,
            extra: list[str]) -> dict[str, Any]:
    rows = min(steps * batch, 1 << 16)
    argv = [sys.executable, "-m", "runtime.launch", "--out", str(out), "--workers", "2", "--model", "kaggle",
            "--max-table-size", str(max_table_size), "--steps", str(steps), "--batch-size", str(batch),
            "--security", security, "--synthetic-rows", str(rows), "--eval-rows", "2048",
            "--checkpoint-every", str(10 * steps), "--warmup-steps", str(warmup), *extra]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {code}; see {log}")
    return json.loads((out / "report.json").read_text())


def median_run(runs: int, run: Any) -> dict[str, Any]:
    """Run `runs` times; the report with the median steady-state throughput (other load on the machine moves
    single runs a lot)."""
    reports = sorted((run(i) for i in range(runs)), key=lambda r: r["steady"]["samples_per_s"])
    return reports[len(reports) // 2]


def row(batch: int, security: str, cap: int, report: dict[str, Any]) -> str:
    s = report["steady"]
    ms = s["step_ms"]
    return (f"{batch:>6} {security:>9} {cap:>8} {s['samples_per_s']:>10.0f} {ms['data_ms']:>6.1f} "
            f"{ms['pull_ms']:>6.1f} {ms['compute_ms']:>8.1f} {ms['push_ms']:>6.1f} {ms['wait_ms']:>6.1f} "
            f"{s['bytes_per_step'] / 1e3:>9.1f} {s['min_bytes_per_step'] / 1e3:>8.1f} {s['wire_over_min']:>6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/bench_hfl.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--batch-sizes", default="128,2048", help="per worker (default 128,2048)")
    parser.add_argument("--transports", default="ratls,tls,insecure", help="default ratls,tls,insecure")
    parser.add_argument("--steps", default="300,40", help="steps per batch size (default 300,40)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="left out of the figures (default 5)")
    parser.add_argument("--max-table-size", type=int, default=100_000, help="table cap (default 100000)")
    parser.add_argument("--growth", default="10,100",
                        help="table cap multipliers for the growth runs at the first batch size over ratls "
                             "(default 10,100; empty for none)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads per worker")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per configuration; the median one is shown (default 1)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    if len(steps) != len(batches):
        parser.error("--steps needs one count per batch size")
    transports = args.transports.split(",")
    growth = [int(g) for g in args.growth.split(",") if g]
    extra = ["--threads", str(args.threads)]

    with tempfile.TemporaryDirectory(prefix="bench-hfl-") as tmp:
        base = args.out or Path(tmp)
        results: list[dict[str, Any]] = []
        print(f"1 PS + 2 workers, Kaggle DLRM, tables capped at {args.max_table_size}, "
              f"{args.warmup_steps} warm-up steps excluded, median of {args.repeats} run(s); times are per step "
              f"per worker (ms)", flush=True)
        print(HEADER, flush=True)
        started = time.monotonic()
        for batch, count in zip(batches, steps, strict=True):
            for security in transports:
                report = median_run(args.repeats, lambda i, batch=batch, security=security, count=count: run_one(
                    base / f"b{batch}-{security}-{i}", batch=batch, security=security, steps=count,
                    max_table_size=args.max_table_size, warmup=args.warmup_steps, extra=extra))
                results.append({"batch": batch, "security": security, "max_table_size": args.max_table_size,
                                "steady": report["steady"], "held_out": report["held_out"]})
                print(row(batch, security, args.max_table_size, report), flush=True)
        for factor in growth:
            cap = args.max_table_size * factor
            report = median_run(args.repeats, lambda i, cap=cap: run_one(
                base / f"b{batches[0]}-ratls-cap{cap}-{i}", batch=batches[0], security="ratls", steps=steps[0],
                max_table_size=cap, warmup=args.warmup_steps, extra=extra))
            results.append({"batch": batches[0], "security": "ratls", "max_table_size": cap,
                            "steady": report["steady"], "held_out": report["held_out"]})
            print(row(batches[0], "ratls", cap, report), flush=True)

        def rate(batch: int, security: str, cap: int = args.max_table_size) -> float | None:
            for r in results:
                if (r["batch"], r["security"], r["max_table_size"]) == (batch, security, cap):
                    return r["steady"]["samples_per_s"]
            return None

        print()
        for batch in batches:
            secure, tls, plain = rate(batch, "ratls"), rate(batch, "tls"), rate(batch, "insecure")
            if secure and plain:
                tls_text = f", tls/insecure {tls / plain:.3f}" if tls else ""
                print(f"batch {batch}: ratls/insecure throughput {secure / plain:.3f}{tls_text}")
        if growth:
            base_rate = rate(batches[0], "ratls")
            grown = ", ".join(f"cap {args.max_table_size * f}: {rate(batches[0], 'ratls', args.max_table_size * f):.0f}"
                              for f in growth)
            print(f"tables growing (batch {batches[0]}, ratls, samples/s): cap {args.max_table_size}: "
                  f"{base_rate:.0f}, {grown}")
        print(f"total {time.monotonic() - started:.0f} s")
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

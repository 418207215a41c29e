"""Training across sites: HFL over emulated WAN links (runtime.netemu), one table of samples/s, wire MB per 1,000
samples and held-out AUC after the same number of samples, per link and mode, and where each mode spends its step.

    sudo python bench/wan.py [--samples-steps 64] [--links lan,1g10,1g50,100m50] [--modes sync,async,...]

Every run is `python -m runtime.launch --emulate-hosts` (root only): the PS and each worker on a network namespace of
its own, every host's link shaped alike with --link, so a path between two hosts has twice a link's one-way delay:
a round trip of 4x the per-link delay. Links: lan (namespaces, no shaping), 1g10 (1 Gbit/s, 10 ms RTT), 1g50
(1 Gbit/s, 50 ms RTT), 100m50 (100 Mbit/s, 50 ms RTT). Modes, each trained on the same samples (--samples-steps
synchronous steps of 2 workers x batch 128):
  sync       synchronous SGD (the default)
  async      bounded staleness 2 (twice the PS versions: each version is one worker's batch)
  pipeline   async with --pipeline (each worker's push and next pull overlap its compute)
  fp16       synchronous, floats on the wire as fp16
  fedavg4    FedAvg, 4 local steps per round (a quarter of the rounds)
  fedavg16   FedAvg, 16 local steps per round
Latency is emulated by a TCP-stream relay where the kernel has no netem (runtime/netemu.py says what that means).
Samples/s is the steady state (the launcher's report leaves warm-up steps out); the target is that at 1 Gbit/s and
50 ms RTT the best mode reaches half its own LAN throughput, with its held-out AUC within 0.005 of LAN sync.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
BATCH = 128

# name -> (--link value or None, label)
LINKS = {
    "lan": (None, "LAN (no shaping)"),
    "1g10": ("rate=1000,delay=2.5", "1 Gbit/s, 10 ms RTT"),
    "1g50": ("rate=1000,delay=12.5", "1 Gbit/s, 50 ms RTT"),
    "100m50": ("rate=100,delay=12.5", "100 Mbit/s, 50 ms RTT"),
}


def mode_argv(mode: str, sync_steps: int) -> list[str]:
    """Launcher options of a mode, for the samples of `sync_steps` synchronous steps."""
    if mode == "sync":
        return ["--steps", str(sync_steps)]
    if mode == "async":
        return ["--steps", str(WORKERS * sync_steps), "--staleness", "2"]
    if mode == "pipeline":
        return ["--steps", str(WORKERS * sync_steps), "--staleness", "2", "--pipeline"]
    if mode == "fp16":
        return ["--steps", str(sync_steps), "--wire-dtype", "fp16"]
    if mode.startswith("fedavg"):
        k = int(mode[len("fedavg"):])
        if sync_steps % k:
            raise ValueError(f"--samples-steps {sync_steps} is not a multiple of {k} ({mode})")
        return ["--steps", str(sync_steps // k), "--local-steps", str(k)]
    raise ValueError(f"unknown mode {mode!r}")


MODES = ("sync", "async", "pipeline", "fp16", "fedavg4", "fedavg16")


def run(link: str, mode: str, sync_steps: int, out: Path, timeout: float) -> dict:
    """One launcher run; the figures of its report."""
    shape, _ = LINKS[link]
    argv = [sys.executable, "-m", "runtime.launch", "--mode", "hfl", "--workers", str(WORKERS), "--batch-size",
            str(BATCH), "--emulate-hosts", "--out", str(out), "--warmup-steps", "3", *mode_argv(mode, sync_steps)]
    if shape is not None:
        argv += ["--link", shape]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr).strip().splitlines()[-1:], "wall_s": wall}
    report = json.loads((out / "report.json").read_text())
    steady = report.get("steady", {})
    examples = report["examples"]
    return {
        "samples": examples,
        "samples_per_s": steady.get("samples_per_s") or report["samples_per_s"],
        "wire_mb_per_1k": report["bytes_on_wire"] / examples * 1000 / 1e6 if examples else float("nan"),
        "auc": report["held_out"].get("auc"),
        "step_ms": steady.get("step_ms", {}),
        "rounds": report.get("rounds"),
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-steps", type=int, default=64,
                        help="the samples of this many synchronous steps (2 workers x 128) in every run (default 64)")
    parser.add_argument("--links", default=",".join(LINKS), help=f"comma-separated, of {', '.join(LINKS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run (default 1200)")
    parser.add_argument("--keep", type=Path, help="keep every run directory under this directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/wan.py: emulated hosts need root (network namespaces)")
    links, modes = args.links.split(","), args.modes.split(",")
    for name in links:
        if name not in LINKS:
            sys.exit(f"--links: unknown link {name!r} (known: {', '.join(LINKS)})")
    for mode in modes:
        mode_argv(mode, args.samples_steps)  # a bad mode or step count fails before any run
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-wan-"))
    print(f"WAN benchmark: {WORKERS} workers x batch {BATCH}, {args.samples_steps * WORKERS * BATCH} training samples "
          f"per run, default DLRM, RA-TLS with the launcher's federation plan; runs in {root}", flush=True)
    results: dict[tuple[str, str], dict] = {}
    for link in links:
        for mode in modes:
            result = run(link, mode, args.samples_steps, root / f"{link}-{mode}", args.timeout)
            results[link, mode] = result
            if "error" in result:
                print(f"  {link:7} {mode:9} FAILED: {result['error']}", flush=True)
            else:
                print(f"  {link:7} {mode:9} {result['samples_per_s']:9.0f} samples/s  "
                      f"{result['wire_mb_per_1k']:7.2f} MB/1k  AUC {result['auc']:.4f}  "
                      f"({result['wall_s']:.0f} s)", flush=True)

    print("\n| link | mode | samples/s | of own LAN | wire MB / 1,000 samples | held-out AUC | vs LAN sync AUC | "
          "step ms: data / pull / compute / push / wait |")
    print("|---|---|---|---|---|---|---|---|")
    lan_sync_auc = results.get(("lan", "sync"), {}).get("auc")
    for link in links:
        for mode in modes:
            r = results[link, mode]
            if "error" in r:
                print(f"| {LINKS[link][1]} | {mode} | failed | | | | | |")
                continue
            lan = results.get(("lan", mode), {}).get("samples_per_s")
            share = f"{r['samples_per_s'] / lan:.2f}" if lan else ""
            gap = f"{r['auc'] - lan_sync_auc:+.4f}" if lan_sync_auc is not None and r["auc"] is not None else ""
            s = r["step_ms"]
            parts = " / ".join(f"{s.get(k, 0):.1f}" for k in ("data_ms", "pull_ms", "compute_ms", "push_ms", "wait_ms"))
            print(f"| {LINKS[link][1]} | {mode} | {r['samples_per_s']:.0f} | {share} | {r['wire_mb_per_1k']:.2f} | "
                  f"{r['auc']:.4f} | {gap} | {parts} |")
    if "1g50" in links:
        best = max((m for m in modes if "error" not in results["1g50", m]),
                   key=lambda m: results["1g50", m]["samples_per_s"], default=None)
        if best is not None and results.get(("lan", best), {}).get("samples_per_s"):
            share = results["1g50", best]["samples_per_s"] / results["lan", best]["samples_per_s"]
            gap = results["1g50", best]["auc"] - lan_sync_auc if lan_sync_auc is not None else float("nan")
            print(f"\nbest at 1 Gbit/s, 50 ms RTT: {best}, {share:.2f} of its own LAN throughput (target >= 0.5), "
                  f"AUC {gap:+.4f} against LAN sync (target within 0.005)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

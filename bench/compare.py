"""Our runtime against native TensorFlow parameter-server training: one command, one table.

    python bench/compare.py [--batch-sizes 128 2048] [--steps 400 50] [--repeats 3] [--out DIR]
    python bench/compare.py --quick          # small model, few steps: checks the harness end to end
    python bench/compare.py --preset paper-hfl   # the paper's HFL: 1 PS + 4 workers, every system
    python bench/compare.py --preset paper-sdt   # the paper's SDT: chief + 1 PS + 2 workers, ceiling and ours

For each batch size (per worker) and each repeat it runs, one after another on this machine and on the same data:
  ceiling         runtime.model's DLRM step + SGD in one process on pre-parsed batches (bench/tf_ps_baseline.py)
  tf-ps           TensorFlow ParameterServerStrategy: 1 PS + W workers + coordinator (bench/tf_ps_baseline.py)
  ours-insecure   python -m runtime.launch --security insecure
  ours-ratls      python -m runtime.launch --security ratls (sim provider)
All distributed runs train on the same samples, S x W x B. By default ours runs the way tf-ps does: asynchronous
SGD, S x W steps of B at learning rate lr / W, every worker's gradient applied on its own (ours with a staleness
bound, --staleness). --ours-mode sync runs ours as S synchronous steps of W x B at lr instead
(ParameterServerStrategy has no synchronous mode); lr / W per B-sample step is the same SGD step per sample as lr
per W x B-sample step. The data is synthetic (runtime.data, planted
signal) unless --train/--eval name Criteo files.
The table shows medians over the repeats with the spread (min..max); under it every repeat's held-out loss, AUC and
samples/s with their median, min..max and max - median, then each of issue 20's targets (TARGETS) with the
measured value and PASS or FAIL. Every raw figure is in <out>/results.json, and the figures of bench/figures.py
(training loss and held-out AUC/accuracy against samples seen, samples/s bars with the spread) in <out>/*.png.

Presets (--preset; options given as well override the preset's):
  paper-hfl   HFL as in the paper: 1 PS + 4 workers (--workers 4), each with its own data; every system, tf-ps with
              4 workers too.
  paper-sdt   SDT as in the paper: chief + 1 PS + 2 workers (runtime.launch --mode sdt: the chief holds the data
              and streams each worker its shard over the same links); ceiling, ours-insecure and ours-ratls only:
              TensorFlow's parameter-server training has no chief that ships data, so the ratios against tf-ps
              read "no data".
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: tf_ps_baseline sits beside us

import figures  # noqa: E402
from tf_ps_baseline import TcpBytes, peak_rss_bytes, stop_process  # noqa: E402

from runtime.data import synth  # noqa: E402
from runtime.metrics import loss_curve  # noqa: E402
from runtime.model import (  # noqa: E402
    DLRMConfig,  # noqa: E402
    add_model_arguments,
    model_config,
)

SYSTEMS = ("ceiling", "tf-ps", "ours-insecure", "ours-ratls")
# The paper's configurations. SDT has no TensorFlow counterpart (a chief shipping the data over attested links).
PRESETS: dict[str, dict[str, Any]] = {
    "paper-hfl": {"mode": "hfl", "workers": 4, "systems": list(SYSTEMS)},
    "paper-sdt": {"mode": "sdt", "workers": 2, "systems": ["ceiling", "ours-insecure", "ours-ratls"]},
}
TF_PS_BASELINE = Path(__file__).resolve().parent / "tf_ps_baseline.py"
SAMPLE_INTERVAL = 0.2
# tf-ps workers take steps as they come free, so one may need more batches than S; its shard holds this many more.
DATA_SLACK = 1.25
# Issue 20's targets: (comparison, {batch size: threshold}). A batch size the issue does not name takes the
# threshold of the largest named one below it (of the smallest named one if there is none below).
TARGETS: dict[str, tuple[str, dict[int, float]]] = {
    "loss_vs_tfps": ("<=", {128: 0.01, 2048: 0.01}),
    "auc_gap": ("<=", {128: 0.003, 2048: 0.003}),
    "ratls_vs_bound": (">=", {128: 0.8, 2048: 0.85}),
    "ratls_vs_tfps": (">=", {128: 1.5, 2048: 1.25}),
}
TARGET_NAMES = {
    "loss_vs_tfps": "max |held-out loss - median tf-ps|, every ours repeat",
    "auc_gap": "AUC gap: median tf-ps - median ours(ratls)",
    "ratls_vs_bound": "ours(ratls) / compute bound",
    "ratls_vs_tfps": "ours(ratls) / tf-ps samples/s",
}


@dataclass
class Run:
    """One system's run at one batch size: the figures the table shows, or the error."""

    system: str
    batch_size: int
    repeat: int
    samples_per_s: float = math.nan
    step_ms: float = math.nan
    wire_bytes_per_step: float = math.nan
    held_out_loss: float = math.nan
    held_out_auc: float = math.nan
    held_out_accuracy: float = math.nan
    samples_seen: float = math.nan  # training samples the final parameters have seen
    loss_curve: list[tuple[float, float]] = field(default_factory=list)  # (samples seen, training loss)
    peak_rss: dict[str, int] = field(default_factory=dict)
    # Asynchronous updates by staleness (updates applied between a step's parameters and its own update)
    staleness: dict[int, int] = field(default_factory=dict)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ProcessMonitor(threading.Thread):
    """Samples, while a launcher run is going, the TCP bytes on its PS ports and every process's peak RSS.

    Both are read from the kernel about every SAMPLE_INTERVAL s; what happens in a process's or connection's
    last interval before it closes is missed (the workers' final evaluation pulls, a short attestation
    connection). The launcher writes the PS's ports to ps0.ready.json and all pids to processes.json."""

    def __init__(self, run_dir: Path, launcher_pid: int) -> None:
        super().__init__(name="monitor", daemon=True)
        self.run_dir = run_dir
        self.pids = {"launcher": launcher_pid}
        self.rss: dict[str, int] = {}
        self.wire: TcpBytes | None = None
        self.stop = threading.Event()

    def sample(self) -> None:
        if self.wire is None and (ready := self.run_dir / "ps0.ready.json").exists():
            info = json.loads(ready.read_text())
            self.wire = TcpBytes([p for p in (info["port"], info.get("attestation_port")) if p])
        if len(self.pids) == 1 and (listing := self.run_dir / "processes.json").exists():
            self.pids.update(json.loads(listing.read_text()))
        if self.wire is not None:
            self.wire.sample()
        for role, pid in self.pids.items():
            value = peak_rss_bytes(pid)
            if value is not None:
                self.rss[role] = max(self.rss.get(role, 0), value)

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_INTERVAL):
            try:
                self.sample()
            except (OSError, ValueError, subprocess.SubprocessError):
                continue  # a file half-written or a process gone between listing and reading: next sample


def _run_process(argv: list[str], log: Path, timeout: float, monitor_dir: Path | None = None
                 ) -> tuple[int, ProcessMonitor | None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
    monitor = None
    try:
        if monitor_dir is not None:
            monitor = ProcessMonitor(monitor_dir, process.pid)
            monitor.start()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
    finally:
        stop_process(process)
        if monitor is not None:
            monitor.stop.set()
            monitor.join(5)
    return code, monitor


def _failure(log: Path, code: int) -> str:
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    what = "timed out" if code == -1 else f"exited with code {code}"
    return f"{what}; see {log}: " + " | ".join(tail)


def run_baseline(kind: str, args: argparse.Namespace, batch: int, steps: int, repeat: int, train: list[Path],
                 eval_files: list[Path], run_dir: Path) -> Run:
    system = "ceiling" if kind == "ceiling" else "tf-ps"
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path, log = run_dir / "report.json", run_dir / "console.log"
    learning_rate = tfps_learning_rate(args) if kind == "tfps" else None
    argv = [sys.executable, str(TF_PS_BASELINE), kind, "--train", *map(str, train), "--batch-size", str(batch),
            "--steps", str(steps), "--report", str(report_path), *model_argv(args, learning_rate)]
    if kind == "tfps":
        argv += ["--eval", *map(str, eval_files), "--workers", str(args.workers), "--work-dir", str(run_dir),
                 "--timeout", str(args.timeout), *(["--count-staleness"] if args.tfps_staleness else [])]
    code, _ = _run_process(argv, log, args.timeout + 60)
    if code != 0 or not report_path.exists():
        return Run(system, batch, repeat, error=_failure(log, code))
    report = json.loads(report_path.read_text())
    run = Run(system, batch, repeat, samples_per_s=report["samples_per_s"], step_ms=report["step_ms"],
              peak_rss={k: v for k, v in report["peak_rss_bytes"].items() if v is not None}, details=report)
    if kind == "tfps":
        run.wire_bytes_per_step = report["wire_bytes_per_step"]
        run.held_out_loss = report["held_out"]["log_loss"]
        run.held_out_auc = report["held_out"]["auc"]
        run.held_out_accuracy = report["held_out"]["accuracy"]
        run.samples_seen = report["samples"]
        run.loss_curve = [(x, y) for x, y in report["loss_curve"]]
        run.staleness = {int(k): v for k, v in report["update_staleness"].items()}
    return run


def run_ours(security: str, args: argparse.Namespace, batch: int, steps: int, repeat: int, train: list[Path],
             eval_files: list[Path], run_dir: Path) -> Run:
    system = f"ours-{security}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.console.log"
    # Parameter updates per step of W x B samples: one per worker batch asynchronously, one per round otherwise.
    if args.ours_mode == "async":
        updates_per_step, mode_argv = args.workers, ["--staleness", str(args.staleness)]
        learning_rate: float | None = tfps_learning_rate(args)
    else:
        updates_per_step, mode_argv, learning_rate = 1, [], None
    updates = steps * updates_per_step
    # --checkpoint-every updates: only the final checkpoint (TensorFlow's run writes none).
    argv = [sys.executable, "-m", "runtime.launch", "--mode", args.mode, "--out", str(run_dir), "--security", security,
            "--workers", str(args.workers), "--batch-size", str(batch), "--steps", str(updates), *mode_argv,
            "--data", *map(str, train), "--eval-data", *map(str, eval_files), "--checkpoint-every", str(updates),
            "--timeout", str(args.timeout), *model_argv(args, learning_rate)]
    code, monitor = _run_process(argv, log, args.timeout + 60, monitor_dir=run_dir)
    report_path = run_dir / "report.json"
    if code != 0 or not report_path.exists():
        return Run(system, batch, repeat, error=_failure(log, code))
    report = json.loads(report_path.read_text())
    assert monitor is not None
    # The launcher's steady-state rate leaves out each worker's warm-up steps, as tf-ps leaves out its own.
    steady = report.get("steady", {})
    samples_per_s = steady["samples_per_s"] if steady.get("workers") else report["samples_per_s"]
    tcp_bytes = sum(monitor.wire.seen.values()) if monitor.wire is not None else math.nan
    details = {"launcher_report": str(report_path), "steps": report["steps"], "examples": report["examples"],
               "rate_basis": "steady" if steady.get("workers") else "whole run",
               "whole_run_samples_per_s": report["samples_per_s"], "steady": steady,
               "app_bytes_on_wire_per_step": report["bytes_on_wire_per_step"], "tcp_bytes_total": tcp_bytes,
               "attestation": report["attestation"]}
    # A worker's step at parameter version v follows v updates of W x B / updates_per_step samples each.
    samples_per_update = args.workers * batch / updates_per_step
    points = [(version * samples_per_update, value) for worker in report["workers"]
              for version, value in worker["loss_curve_by_version"]]
    # SDT: the chief evaluates the final model on the whole held-out file; the workers evaluate only the first
    # batches of the training shards it sent them.
    held_out = report["chief"]["final_eval"] if args.mode == "sdt" else report["held_out"]
    details["held_out_basis"] = "chief final_eval" if args.mode == "sdt" else "workers' pooled scores"
    return Run(system, batch, repeat, samples_per_s=samples_per_s,
               step_ms=1000.0 * args.workers * batch / samples_per_s if samples_per_s else math.nan,
               wire_bytes_per_step=tcp_bytes / max(report["steps"], 1) * updates_per_step,
               held_out_loss=_number(held_out.get("log_loss")), held_out_auc=_number(held_out.get("auc")),
               held_out_accuracy=_number(held_out.get("accuracy")), samples_seen=report["examples"],
               loss_curve=loss_curve(*zip(*points, strict=True)) if points else [], peak_rss=dict(monitor.rss),
               staleness={int(k): v for k, v in report["ps"][0].get("push_staleness", {}).items()},
               details=details)


def _number(value: float | None) -> float:
    """A report figure, NaN where the report has none (e.g. AUC of a one-class held-out set)."""
    return math.nan if value is None else float(value)


def model_argv(args: argparse.Namespace, learning_rate: float | None = None) -> list[str]:
    rate = args.learning_rate if learning_rate is None else learning_rate
    argv = ["--model", args.model, "--max-table-size", str(args.max_table_size), "--learning-rate", str(rate),
            "--lr-decay", str(args.lr_decay), "--seed", str(args.seed)]
    return argv + (["--model-config", str(args.model_config)] if args.model_config else [])


def tfps_learning_rate(args: argparse.Namespace) -> float:
    """Asynchronous runs apply each worker's B-sample gradient on its own; at lr / W, W updates move the
    parameters as far per sample as one synchronous step (lr x the mean gradient of W x B samples)."""
    return args.tfps_learning_rate if args.tfps_learning_rate is not None else args.learning_rate / args.workers


def make_data(args: argparse.Namespace, config: DLRMConfig, out: Path) -> tuple[list[Path], list[Path]]:
    if args.train:
        return list(args.train), list(args.eval)
    per_worker = max(math.ceil(steps * DATA_SLACK) * batch for batch, steps in zip(args.batch_sizes, args.steps,
                                                                                    strict=True))
    train_rows = args.workers * per_worker
    (out / "data").mkdir(exist_ok=True)
    started = time.perf_counter()
    train, held_out = synth(out / "data" / "synthetic.tsv", train_rows + args.eval_rows, args.data_seed,
                            config=config, partitions=[train_rows, args.eval_rows])
    print(f"data: {train_rows} synthetic training rows, {args.eval_rows} held-out rows in "
          f"{time.perf_counter() - started:.0f} s ({out / 'data'})", flush=True)
    return [train], [held_out]


# ---------------------------------------------------------------------------------------------------------
# The table


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _spread(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(value) else f"{value:,.{digits}f}"


def rss_groups(run: Run) -> tuple[float, float, float]:
    """Peak RSS in MB: (PS, largest worker, the rest: coordinator / launcher / the single process)."""
    mb = {role: value / 2**20 for role, value in run.peak_rss.items()}
    ps = max((v for r, v in mb.items() if r.startswith("ps")), default=math.nan)
    worker = max((v for r, v in mb.items() if r.startswith("worker")), default=math.nan)
    other = max((v for r, v in mb.items() if not r.startswith(("ps", "worker"))), default=math.nan)
    return ps, worker, other


COLUMNS = ("batch", "system", "samples/s median", "spread (min..max)", "step ms", "wire MB/step",
           "held-out loss", "held-out AUC", "RSS MB PS", "RSS MB worker", "RSS MB other", "runs ok")


def _per_repeat_ratio(numerators: list[Run], denominators: list[Run]) -> tuple[float, float]:
    """Spread of the samples/s ratio over the repeats in which both runs succeeded."""
    ok = {r.repeat: r.samples_per_s for r in denominators if r.error is None}
    return _spread([r.samples_per_s / ok[r.repeat] for r in numerators if r.error is None and r.repeat in ok])


# Figures the table gives for every repeat: (Run attribute, name, decimals).
REPEAT_FIGURES = (("held_out_loss", "held-out loss", 4), ("held_out_auc", "held-out AUC", 4),
                  ("samples_per_s", "samples/s", 0))


def _per_repeat(group: list[Run], key: str) -> dict[str, Any]:
    """Every repeat's figure in repeat order (NaN for a failed repeat), their median, min, max, max - median."""
    values = [getattr(r, key) if r.error is None else math.nan for r in sorted(group, key=lambda r: r.repeat)]
    median = _median(values)
    lo, hi = _spread(values)
    return {"values": values, "median": median, "min": lo, "max": hi, "max_minus_median": hi - median}


def target(key: str, batch: int) -> tuple[str, float]:
    """The comparison and threshold of a target of TARGETS at a batch size."""
    comparison, thresholds = TARGETS[key]
    named = sorted(thresholds)
    below = [b for b in named if b <= batch]
    return comparison, thresholds[below[-1] if below else named[0]]


def judge(key: str, batch: int, value: float) -> dict[str, Any]:
    """A target's verdict: passed is None without a measured value."""
    comparison, threshold = target(key, batch)
    passed = None if not math.isfinite(value) else value <= threshold if comparison == "<=" else value >= threshold
    return {"value": value, "comparison": comparison, "target": threshold, "passed": passed}


def summarize(runs: list[Run], batch_sizes: Sequence[int], workers: int, cores: int,
              systems: Sequence[str] = SYSTEMS) -> dict[str, Any]:
    """Medians, every repeat's figures and their spreads per (batch, system), the ratios the issue asks for, and
    each target's verdict."""
    summary: dict[str, Any] = {"rows": [], "ratios": {}, "targets": {}}
    for batch in batch_sizes:
        by_system: dict[str, list[Run]] = {s: [r for r in runs if r.batch_size == batch and r.system == s]
                                           for s in SYSTEMS}
        for system in systems:
            group = by_system[system]
            ok = [r for r in group if r.error is None]
            rss = [rss_groups(r) for r in ok]
            summary["rows"].append({
                "batch": batch, "system": system, "runs": len(group), "ok": len(ok),
                "samples_per_s": _median([r.samples_per_s for r in ok]),
                "samples_per_s_spread": _spread([r.samples_per_s for r in ok]),
                "step_ms": _median([r.step_ms for r in ok]),
                "wire_mb_per_step": _median([r.wire_bytes_per_step / 1e6 for r in ok]),
                "held_out_loss": _median([r.held_out_loss for r in ok]),
                "held_out_auc": _median([r.held_out_auc for r in ok]),
                "held_out_accuracy": _median([r.held_out_accuracy for r in ok]),
                "rss_mb": [_median([g[i] for g in rss]) for i in range(3)],
                "staleness": staleness_shares(ok),
                "per_repeat": {key: _per_repeat(group, key) for key, _, _ in REPEAT_FIGURES},
            })
        rate = {s: _median([r.samples_per_s for r in g if r.error is None]) for s, g in by_system.items()}
        auc = {s: _median([r.held_out_auc for r in g if r.error is None]) for s, g in by_system.items()}
        tfps_loss = _median([r.held_out_loss for r in by_system["tf-ps"] if r.error is None])
        ours_losses = [r.held_out_loss for s in systems if s.startswith("ours-") for r in by_system[s]
                       if r.error is None and math.isfinite(r.held_out_loss)]

        bound = rate["ceiling"] * min(workers, cores) / cores
        ratls, tfps, insecure = by_system["ours-ratls"], by_system["tf-ps"], by_system["ours-insecure"]
        summary["ratios"][batch] = {
            "ratls_vs_tfps": (rate["ours-ratls"] / rate["tf-ps"], _per_repeat_ratio(ratls, tfps)),
            "ratls_vs_insecure": (rate["ours-ratls"] / rate["ours-insecure"], _per_repeat_ratio(ratls, insecure)),
            "ratls_vs_bound": (rate["ours-ratls"] / bound, (math.nan, math.nan)),
            "auc_gap": (auc["tf-ps"] - auc["ours-ratls"], (math.nan, math.nan)),
            "loss_vs_tfps": (max((abs(v - tfps_loss) for v in ours_losses), default=math.nan), (math.nan, math.nan)),
            "bound_samples_per_s": bound,
        }
        summary["targets"][batch] = {key: judge(key, batch, summary["ratios"][batch][key][0]) for key in TARGETS}
    return summary


def staleness_shares(runs: Sequence[Run]) -> dict[str, float]:
    """The share of all the runs' asynchronous updates at staleness 0, 1, 2 and more (empty: none counted)."""
    counts: collections.Counter[int] = collections.Counter()
    for run in runs:
        counts.update(run.staleness)
    total = sum(counts.values())
    if not total:
        return {}
    return {"0": counts[0] / total, "1": counts[1] / total, "2": counts[2] / total,
            "3+": sum(v for k, v in counts.items() if k >= 3) / total}


def _align(rows: list[Sequence[str]], left: int) -> list[str]:
    """Rows of cells as lines: the first `left` columns left-aligned, the rest right-aligned, a rule under the
    header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths,
                                                                                                    strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def per_repeat_table(summary: dict[str, Any]) -> list[str]:
    """Every repeat's held-out loss, AUC and samples/s per (batch, system), with median, min..max, max - median."""
    repeats = max((len(row["per_repeat"]["samples_per_s"]["values"]) for row in summary["rows"]), default=0)
    rows: list[Sequence[str]] = [("batch", "system", "figure", *(f"r{i + 1}" for i in range(repeats)), "median",
                                  "min..max", "max-median")]
    for row in summary["rows"]:
        for key, name, digits in REPEAT_FIGURES:
            figure = row["per_repeat"][key]
            if not any(math.isfinite(v) for v in figure["values"]):
                continue  # the ceiling has no held-out figures
            values = [_fmt(v, digits) for v in figure["values"]] + [""] * (repeats - len(figure["values"]))
            rows.append((str(row["batch"]), row["system"], name, *values, _fmt(figure["median"], digits),
                         f"{_fmt(figure['min'], digits)}..{_fmt(figure['max'], digits)}",
                         _fmt(figure["max_minus_median"], digits)))
    return _align(rows, left=3)


def format_table(summary: dict[str, Any], workers: int, cores: int) -> str:
    rows: list[Sequence[str]] = [COLUMNS]
    for row in summary["rows"]:
        lo, hi = row["samples_per_s_spread"]
        rows.append((str(row["batch"]), row["system"], _fmt(row["samples_per_s"]), f"{_fmt(lo)}..{_fmt(hi)}",
                     _fmt(row["step_ms"], 1), _fmt(row["wire_mb_per_step"], 2), _fmt(row["held_out_loss"], 4),
                     _fmt(row["held_out_auc"], 4), *(_fmt(v) for v in row["rss_mb"]), f"{row['ok']}/{row['runs']}"))
    lines = _align(rows, left=2)
    lines += ["", "every repeat:"] + per_repeat_table(summary)
    lines.append("")
    lines.append(f"compute bound = ceiling x min(workers, cores) / cores, workers = {workers}, cores = {cores}")
    if summary["ours_mode"] == "async":
        lines.append(f"ours and tf-ps: asynchronous SGD at learning rate {summary['tfps_learning_rate']:g} per step "
                     f"of B samples (ours: staleness bound {summary['staleness']}); step ms and wire MB/step per "
                     f"{workers} x B samples")
    else:
        lines.append(f"learning rate: ours {summary['learning_rate']:g} per synchronous step of {workers} x B "
                     f"samples; tf-ps {summary['tfps_learning_rate']:g} per asynchronous step of B samples")
    for batch, ratios in summary["ratios"].items():
        lines.append(f"batch {batch}: compute bound {_fmt(ratios['bound_samples_per_s'])} samples/s")
        for row in summary["rows"]:
            if row["batch"] == batch and row["staleness"]:
                shares = ", ".join(f"{k}: {v:.0%}" for k, v in row["staleness"].items())
                lines.append(f"  {row['system'] + ' updates by staleness':<54} {shares}")
        value, (lo, hi) = ratios["ratls_vs_insecure"]
        spread = f" (per repeat {lo:.3f}..{hi:.3f})" if math.isfinite(lo) else ""
        lines.append(f"  {'ours(ratls) / ours(insecure) samples/s':<54} {_fmt(value, 3):>8}{spread}   no target")
        for key, verdict in summary["targets"][batch].items():
            lo, hi = ratios[key][1]
            spread = f" (per repeat {lo:.3f}..{hi:.3f})" if math.isfinite(lo) else ""
            outcome = "no data" if verdict["passed"] is None else "PASS" if verdict["passed"] else "FAIL"
            lines.append(f"  {TARGET_NAMES[key]:<54} {_fmt(verdict['value'], 4):>8}{spread}   "
                         f"target {verdict['comparison']} {verdict['target']:g}: {outcome}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked, with a preset's options, --quick's, the systems in run order and the run
    directory (not yet made) resolved."""
    parser = argparse.ArgumentParser(prog="python bench/compare.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 2048], help="per worker")
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 50],
                        help="S per run, one per batch size (default 400 50): S x W steps of B asynchronous, S of "
                             "W x B synchronous")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="run directory (default runs/compare-<time>)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    parser.add_argument("--train", type=Path, nargs="+", help="Criteo TSV training files (default: synthetic)")
    parser.add_argument("--eval", type=Path, nargs="+", help="held-out Criteo TSV files, with --train")
    parser.add_argument("--eval-rows", type=int, default=16384, help="synthetic held-out rows (default 16384)")
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--tfps-learning-rate", type=float,
                        help="tf-ps SGD learning rate per worker step (default: --learning-rate / --workers, the "
                             "same step per sample as our synchronous SGD)")
    parser.add_argument("--ours-mode", choices=("async", "sync"), default="async",
                        help="async (default): ours trains as tf-ps does, asynchronous steps of B at lr / W; sync: "
                             "synchronous steps of W x B at lr")
    parser.add_argument("--staleness", type=int, default=8,
                        help="ours, async: largest accepted (version - step) of a push (default 8)")
    parser.add_argument("--tfps-staleness", action="store_true",
                        help="also count tf-ps's update staleness, as our PS counts its pushes'; this costs tf-ps "
                             "about 10%% of its throughput, so use it to judge quality, not speed")
    parser.add_argument("--mode", choices=("hfl", "sdt"), default="hfl",
                        help="ours: runtime.launch --mode (sdt: a chief holds the data and streams the shards)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                        help="what to run (default: all)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="the paper's configurations (options given as well override the preset's): "
                             "paper-hfl: HFL, 1 PS + 4 workers, every system; paper-sdt: SDT, chief + 1 PS + 2 "
                             "workers, ceiling and ours only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small model, batch 64, 10 steps, 1 repeat (figures meaningless)")
    add_model_arguments(parser)
    # Every system trains with the same short final decay: at a constant rate the last parameters' held-out log
    # loss depends on the step training stops at (see DLRMConfig.learning_rate_at), which is noise, not a
    # difference between the systems.
    parser.set_defaults(lr_decay=0.05)
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch_sizes, args.steps, args.repeats, args.eval_rows = "small", [64], [10], 1, 2048
    if len(args.steps) != len(args.batch_sizes):
        parser.error(f"--steps: expected one value per batch size ({len(args.batch_sizes)}), found {len(args.steps)}")
    if min(args.batch_sizes + args.steps) < 1 or args.repeats < 1 or args.workers < 1:
        parser.error("batch sizes, steps, repeats and workers must be positive")
    if "tf-ps" in args.systems and args.mode == "sdt":
        parser.error("--systems tf-ps: TensorFlow's parameter-server training has no SDT counterpart (--mode sdt)")
    args.systems = [s for s in SYSTEMS if s in args.systems]
    if bool(args.train) != bool(args.eval):
        parser.error("--train and --eval go together")
    args.out = (args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if args.out.exists() and any(args.out.iterdir()):
        # A launcher run resumes from a checkpoint it finds in its directory: old runs would pass as new ones.
        parser.error(f"--out {args.out}: not empty; give a new directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    systems, out = args.systems, args.out
    config = model_config(args)
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    train, eval_files = make_data(args, config, out)
    runs: list[Run] = []
    load = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for batch, steps in zip(args.batch_sizes, args.steps, strict=True):
            base = out / f"b{batch}" / f"r{repeat}"
            for system in systems:
                started = time.perf_counter()
                if system == "ceiling":
                    run = run_baseline("ceiling", args, batch, steps, repeat, train, eval_files, base / system)
                elif system == "tf-ps":
                    run = run_baseline("tfps", args, batch, steps, repeat, train, eval_files, base / system)
                else:
                    run = run_ours(system.split("-", 1)[1], args, batch, steps, repeat, train, eval_files,
                                   base / system)
                runs.append(run)
                load.append(os.getloadavg()[0])
                status = run.error or f"{run.samples_per_s:,.0f} samples/s"
                print(f"batch {batch} repeat {repeat + 1}/{args.repeats} {system}: {status} "
                      f"({time.perf_counter() - started:.0f} s, load {load[-1]:.2f})", flush=True)
    summary = summarize(runs, args.batch_sizes, args.workers, cores, systems)
    summary.update(learning_rate=args.learning_rate, tfps_learning_rate=tfps_learning_rate(args),
                   ours_mode=args.ours_mode, staleness=args.staleness)
    table = format_table(summary, args.workers, cores)
    results = {"command": sys.argv, "preset": args.preset, "mode": args.mode, "systems": systems, "cores": cores,
               "workers": args.workers, "config": config.to_dict(), "batch_sizes": args.batch_sizes,
               "steps": args.steps, "repeats": args.repeats,
               "load_average_1min": {"min": min(load), "median": statistics.median(load), "max": max(load)},
               "runs": [vars(r) for r in runs], "summary": summary, "table": table}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    # Drawn from what results.json holds (as read back), so `python bench/figures.py` redraws them the same.
    pngs = figures.save(figures.draw(json.loads((out / "results.json").read_text())), out)
    print()
    print(table)
    print(f"\nload average (1 min) during the runs: min {min(load):.2f}, median {statistics.median(load):.2f}, "
          f"max {max(load):.2f} on {cores} cores; all figures: {out / 'results.json'}", flush=True)
    print("figures: " + ", ".join(str(p) for p in pngs), flush=True)
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

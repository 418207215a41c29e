"""End-to-end HFL runs: a PS and workers as separate processes, over RA-TLS (sim provider), TLS or plaintext.

(a) RA-TLS and plaintext runs give bit-identical parameters, equal to single-process training on the
    concatenated batches; (f) the README's main-job command; (g) real Criteo lines (over TLS, two PS shards).
    Worker loss with a quorum (c) and a PS crash and restart (d) are in test_hfl_faults.py.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from runtime_tools import REPO, Children, wait_until

from runtime.data import CriteoReader
from runtime.model import Batch, DLRMConfig, init_dense_params
from runtime.model.reference import train_single_process
from runtime.server import checkpoints

LAUNCH_TIMEOUT = 240


def launch(out: Path, *args: str, timeout: float = LAUNCH_TIMEOUT) -> tuple[dict, str]:
    """Run the launcher to completion; returns its report and console output."""
    with Children(out.parent) as children:
        children.start(out.name, "runtime.launch", "--out", str(out), *args)
        code = children.wait(out.name, timeout)
        console = children.log(out.name)
    assert code == 0, f"launcher exited with {code}:\n{console[-4000:]}"
    return json.loads((out / "report.json").read_text()), console


def final_checkpoint(out: Path, steps: int) -> checkpoints.Checkpoint:
    return checkpoints.load(checkpoints.checkpoint_path(out / "checkpoints" / "ps0", steps))


def assert_trained_like(found: checkpoints.Checkpoint, reference) -> None:
    """The PS's final parameters are the reference trainer's (runtime.model.reference) to 1e-5 of each tensor's
    largest value: every dense tensor (and each one trained), and every row the job touched (over 1,000)."""
    def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
        scale = float(np.max(np.abs(want)))
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-5 * scale, f"{what}: max |diff| {err:.3g} > 1e-5 x max |value| {scale:.3g}"

    initial = init_dense_params(DLRMConfig.from_dict(found.meta["config"]))
    for name, value in reference.dense.items():
        close(found.arrays[f"dense/{name}"], value, name)
        assert not np.array_equal(value, initial[name]), f"{name} did not train"
    touched = 0
    for t, table in enumerate(reference.tables):
        ids = found.arrays[f"rows/{t}/local_ids"]
        touched += ids.size
        close(found.arrays[f"rows/{t}/values"], table[ids], f"table {t}")
    assert touched > 1000


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(str(logdir / "**" / "events.out.tfevents.*"), recursive=True):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


def test_ratls_equals_insecure_bit_for_bit_and_single_process(tmp_path):
    steps, batch = 20, 32
    common = ["--workers", "2", "--model", "small", "--steps", str(steps), "--batch-size", str(batch),
              "--eval-rows", "512", "--threads", "2"]
    reports = {}
    for security in ("ratls", "insecure"):
        reports[security], console = launch(tmp_path / security, *common, "--security", security)
        assert f"over {security}" in console
    attested = reports["ratls"]["attestation"]
    assert attested["security"] == "ratls" and len(attested["client_attestation_seconds"]) == 2
    assert reports["insecure"]["attestation"]["security"] == "insecure"

    ratls_ckpt = final_checkpoint(tmp_path / "ratls", steps)
    plain_ckpt = final_checkpoint(tmp_path / "insecure", steps)
    assert ratls_ckpt.arrays.keys() == plain_ckpt.arrays.keys()
    for name, value in ratls_ckpt.arrays.items():
        assert np.array_equal(value, plain_ckpt.arrays[name]), f"{name} differs between ratls and insecure"

    # Single process, one step per concatenated 2b batch (worker 0's examples, then worker 1's).
    # (The thread count only moves the last bits, far below the 1e-5 tolerance, so this process keeps its own.)
    config = DLRMConfig.from_dict(ratls_ckpt.meta["config"])
    data = sorted((tmp_path / "insecure" / "data").glob("synthetic.tsv.[01]"))
    readers = [iter(CriteoReader(path, config, batch)) for path in data]
    batches = [Batch.concat([next(r) for r in readers]) for _ in range(steps)]
    reference = train_single_process(config, batches, steps)

    assert_trained_like(ratls_ckpt, reference)


@dataclass
class MainJob:
    report_path: Path
    stdout: str


@pytest.fixture(scope="module")
def readme_main_job(tmp_path_factory) -> MainJob:
    """The README's "run the main job" command, verbatim, in an empty directory, run once for the tests below."""
    readme = (REPO / "README.md").read_text()
    command = "python -m runtime.launch --mode hfl --workers 2"
    assert command in readme
    cwd = tmp_path_factory.mktemp("main-job")
    result = subprocess.run([sys.executable, *command.split()[1:]], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (report_path,) = cwd.glob("runs/hfl-*/report.json")
    return MainJob(report_path, result.stdout)


@pytest.mark.timeout(330)
def test_readme_main_job(readme_main_job):
    """Exits 0 within 5 minutes and beats the constant predictor on held-out synthetic data with the planted
    signal."""
    report = json.loads(readme_main_job.report_path.read_text())
    held_out = report["held_out"]
    assert held_out["auc"] >= 0.7, held_out
    assert held_out["parameter_versions"] == [[report["steps"]]]  # both workers evaluated the final version
    assert held_out["log_loss"] < held_out["constant_baseline_log_loss"]
    assert held_out["accuracy"] > held_out["constant_baseline_accuracy"]
    assert report["attestation"]["security"] == "ratls" and report["attestation"]["provider"] == "sim"
    assert report["samples_per_s"] > 0 and report["bytes_on_wire"] > 0 and report["short_rounds"] == 0
    stdout = readme_main_job.stdout
    assert "== report ==" in stdout and "AUC" in stdout and "step " in stdout
    # The launcher's own federation plan: every join was a participant's proof, and the figures add up.
    assert re.fullmatch(r"[0-9a-f]{64}", report["plan_digest"]) and f"plan {report['plan_digest'][:16]}" in stdout
    participants = {p["name"]: p for p in report["participants"]}
    assert set(participants) == {"worker0", "worker1", "chief"}
    stats = report["ps"][0]["stats"]
    assert sum(p["samples"] for p in participants.values()) == stats["samples"] == 2 * report["steps"] * 128
    assert sum(p["pushes_accepted"] for p in participants.values()) == stats["pushes"] == 2 * report["steps"]
    assert all(participants[w]["joins"] == 1 and participants[w]["pushes_refused"] == 0 for w in ("worker0", "worker1"))
    scalars = tensorboard_scalars(readme_main_job.report_path.parent / "tensorboard")
    points = report["steps"] // 10  # one point every 10 steps per worker
    assert len(scalars["train/loss"]) >= 2 * (points - 1)
    assert "eval/auc" in scalars and "train/samples_per_s" in scalars and "wire/bytes_per_step" in scalars


TENSORBOARD_TIMEOUT = 90.0


@pytest.mark.timeout(330 + TENSORBOARD_TIMEOUT)
def test_the_reported_tensorboard_command_serves_the_runs_scalars(readme_main_job):
    """The TensorBoard command the report prints, run as printed on a free loopback port, serves the workers'
    scalars through its HTTP API."""
    (line,) = [x for x in readme_main_job.stdout.splitlines() if x.startswith("report: ")]
    command = line.split("TensorBoard: ", 1)[1]
    assert "not installed" not in command, command  # the dev extra brings TensorBoard
    argv = [sys.executable if word == "python" else word for word in shlex.split(command)]
    log = readme_main_job.report_path.parent / "tensorboard.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        found: dict[str, int] = {}

        def serving() -> bool:
            assert process.poll() is None, f"tensorboard exited with {process.returncode}:\n{log.read_text()}"
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
            if match:
                found["port"] = int(match.group(1))
            return bool(match)

        wait_until(serving, TENSORBOARD_TIMEOUT, "TensorBoard to serve", interval=0.2)
        url = f"http://127.0.0.1:{found['port']}/data/plugin/scalars/tags"
        tags: dict[str, dict] = {}

        def loaded() -> bool:
            with urllib.request.urlopen(url, timeout=5) as reply:
                tags.update(json.load(reply))
            return sorted(tags) == ["worker0", "worker1"] and all("eval/auc" in t for t in tags.values())

        wait_until(loaded, TENSORBOARD_TIMEOUT, "TensorBoard to load both workers' logs", interval=0.5)
        for run, run_tags in tags.items():
            assert {"train/loss", "train/samples_per_s", "wire/bytes_per_step", "eval/auc"} <= set(run_tags), run
    finally:
        process.kill()
        process.wait(10)


def test_tensorboard_command_says_how_to_install_it_where_it_is_missing(monkeypatch):
    from runtime import launch as launch_module

    monkeypatch.setattr(launch_module.shutil, "which", lambda name: None)
    assert launch_module.tensorboard_command(Path("/r/tb")).startswith(f"{sys.executable} -m tensorboard.main ")
    monkeypatch.setattr(launch_module.importlib.util, "find_spec", lambda name: None)
    assert launch_module.tensorboard_command(Path("/r/tb")) == (
        'tensorboard --logdir /r/tb (not installed here: python -m pip install -e ".[viz]" first)')


def test_real_criteo_lines_over_tls_with_two_ps_shards(tmp_path, testdata):
    sample = testdata / "criteo" / "kaggle_sample_100.txt"
    report, console = launch(tmp_path / "run", "--workers", "2", "--model", "small", "--steps", "8",
                             "--batch-size", "16", "--data", str(sample), "--security", "tls", "--ps-shards", "2")
    assert [(p["shard"], p["num_shards"], p["version"]) for p in report["ps"]] == [(0, 2, 8), (1, 2, 8)]
    data = [w["data"] for w in report["workers"]]
    assert sum(d["lines"] for d in data) == 100, data
    assert all(d["bad_lines"] == 0 and d["complete_passes"] >= 1 for d in data), data
    assert report["steps"] == 8 and report["attestation"]["security"] == "tls"
    assert report["held_out"]["examples"] == 2 * 2 * 16  # two held-out batches per worker


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "serial"])
def test_asynchronous_training_applies_every_batch_once(tmp_path, pipeline):
    """Bounded-staleness asynchronous mode, with the workers overlapping push and pull with compute
    (--pipeline) or one step at a time (the default): every update the PS applies is one worker batch, none is
    applied twice or dropped as a duplicate, and the model learns."""
    steps = 120
    report, console = launch(tmp_path / "run", "--workers", "2", "--model", "small", "--steps", str(steps),
                             "--batch-size", "32", "--eval-rows", "512", "--staleness", "4", "--security",
                             "insecure", "--threads", "1", *(["--pipeline"] if pipeline else []))
    ps = report["ps"][0]
    assert ps["version"] == steps and not ps["synchronous"]
    workers = report["workers"]
    assert all(w["pipelined"] is pipeline for w in workers)
    assert sum(w["steps"] for w in workers) == steps
    assert ps["stats"].get("duplicate_pushes", 0) == 0 and all(w["duplicates"] == 0 for w in workers)
    assert ps["stats"]["pushes"] == steps
    behind = {int(k): v for k, v in ps["push_staleness"].items()}
    assert sum(behind.values()) == steps and max(behind) <= 4, behind  # every push within the bound
    assert "asynchronous: pushes accepted by ps[0], by versions behind: " in console
    assert report["held_out"]["auc"] > 0.6, report["held_out"]  # the planted signal is being learned

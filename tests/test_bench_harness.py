"""The performance comparison's harness (bench/compare.py, bench/tf_ps_baseline.py): the TensorFlow baseline
trains the same model on the same inputs as our runtime, its byte counter counts what crossed the wire, the
ratios are computed from the right figures, and a --quick run produces a complete table. No timed assertions:
the figures themselves are printed by the benchmark, not checked here."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.data import CriteoReader, synth
from runtime.model import Batch, DLRMConfig
from runtime.model.reference import ModelParams, train_single_process

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402
import figures  # noqa: E402
import tf_ps_baseline  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

KAGGLE_SAMPLE = REPO.parent / "shared" / "testdata" / "criteo" / "kaggle_sample_100.txt"
QUICK_TIMEOUT = 600


def _tiny_config() -> DLRMConfig:
    # Tables of 5 rows, so a batch of 32 repeats ids: the sparse update must sum repeated rows' gradients.
    return DLRMConfig.small(table_sizes=(5,) * 26, seed=3)


@pytest.mark.parametrize("lr_decay, count_staleness", [(0.0, False), (0.5, True)])
def test_tf_baseline_model_trains_like_the_runtime_model(lr_decay, count_staleness):
    import tensorflow as tf

    config = dataclasses.replace(_tiny_config(), lr_decay=lr_decay)  # 0.5: the last 2 of 3 updates decay
    rng = np.random.default_rng(0)
    batches = [Batch(dense=rng.random((32, 13), dtype=np.float32) * 3,
                     cat=rng.integers(0, 5, size=(32, 26)).astype(np.int64),
                     labels=(rng.random(32) < 0.3).astype(np.float32)) for _ in range(3)]
    baseline = tf_ps_baseline.BaselineDLRM(config, len(batches), count_staleness)
    reference = ModelParams.initial(config)
    start = baseline.params()
    for name, value in reference.dense.items():
        np.testing.assert_array_equal(start.dense[name], value, err_msg=name)
    for t, table in enumerate(reference.tables):
        np.testing.assert_array_equal(start.tables[t], table)

    step = tf.function(baseline.sgd_step)
    losses = []
    for batch in batches:
        result = step(batch.dense, batch.cat, batch.labels)
        if count_staleness:
            result, staleness = result
            assert int(staleness) == 0  # one process: no other update lands between a step's reads and gradients
        losses.append(float(result))
    expected_losses = []
    train_single_process(config, batches, len(batches), params=reference,
                         on_step=lambda _, loss: expected_losses.append(loss))
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    trained = baseline.params()
    for name, value in reference.dense.items():
        np.testing.assert_allclose(trained.dense[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        assert not np.array_equal(value, start.dense[name]), f"{name} did not change"
    for t, table in enumerate(reference.tables):
        np.testing.assert_allclose(trained.tables[t], table, rtol=1e-4, atol=1e-6, err_msg=f"table {t}")


def _tf_batches(path: Path, config: DLRMConfig, batch_size: int) -> list[tuple[np.ndarray, ...]]:
    import tensorflow as tf

    lines = tf.data.TextLineDataset(str(path)).batch(batch_size)
    return [tuple(t.numpy() for t in tf_ps_baseline.parse_tsv_batch(b, config.table_sizes)) for b in lines]


@pytest.mark.parametrize("source", ["synthetic", "kaggle_sample"])
def test_tf_input_pipeline_equals_criteo_reader(tmp_path, source):
    config = DLRMConfig.kaggle(max_table_size=1000)
    if source == "synthetic":
        path = synth(tmp_path / "s.tsv", 300, seed=5, config=config)[0]
    else:
        path = KAGGLE_SAMPLE  # real lines: empty fields, negative I2, short hex values
    expected = list(CriteoReader(path, config, 64))
    got = _tf_batches(path, config, 64)
    assert len(got) == len(expected) > 1
    for (dense, cat, labels), batch in zip(got, expected, strict=True):
        np.testing.assert_array_equal(cat, batch.cat)
        np.testing.assert_array_equal(labels, batch.labels)
        np.testing.assert_allclose(dense, batch.dense, rtol=1e-6)


def test_worker_shards_are_criteo_reader_shards(tmp_path):
    config = DLRMConfig.small()
    files = synth(tmp_path / "s.tsv", 100, seed=2, config=config, partitions=[37, 63])
    dirs = tf_ps_baseline._split_shards(files, 3, tmp_path / "shards")
    for i, directory in enumerate(dirs):
        mine = list(CriteoReader(directory / tf_ps_baseline.WORKER_TRAIN_FILE, config, 1000))
        expected = list(CriteoReader(files, config, 1000, shard=(i, 3)))
        assert len(mine) == len(expected) == 1
        np.testing.assert_array_equal(mine[0].cat, expected[0].cat)
        np.testing.assert_array_equal(mine[0].labels, expected[0].labels)


def test_tcp_bytes_counts_both_directions_of_accepted_connections():
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as other:
        port = server.getsockname()[1]
        counter = tf_ps_baseline.TcpBytes([port])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        unrelated = socket.create_connection(other.getsockname())  # not on a counted port
        unrelated_peer, _ = other.accept()
        try:
            client.sendall(b"x" * 100_000)
            received = 0
            while received < 100_000:
                received += len(accepted.recv(1 << 16))
            accepted.sendall(b"y" * 777)
            assert len(client.recv(1000)) > 0
            unrelated.sendall(b"z" * 5000)
            unrelated_peer.recv(5000)
            assert counter.sample() == 100_777
            assert len(counter.seen) == 1
        finally:
            for s in (client, accepted, unrelated, unrelated_peer):
                s.close()


def _run(system: str, batch: int, repeat: int, rate: float, auc: float = 0.7, loss: float = 0.5) -> compare.Run:
    return compare.Run(system, batch, repeat, samples_per_s=rate, step_ms=1.0, wire_bytes_per_step=1e6,
                       held_out_loss=loss, held_out_auc=auc, peak_rss={"ps0": 2**20})


def test_summary_ratios_and_compute_bound():
    runs = []
    for repeat, scale in enumerate((1.0, 2.0, 3.0)):
        runs += [_run("ceiling", 128, repeat, 1000 * scale), _run("tf-ps", 128, repeat, 400 * scale, auc=0.701),
                 _run("ours-insecure", 128, repeat, 500 * scale), _run("ours-ratls", 128, repeat, 450 * scale)]
    runs[-1] = compare.Run("ours-ratls", 128, 2, error="exited with code 1")
    summary = compare.summarize(runs, [128], workers=2, cores=4)
    ratios = summary["ratios"][128]
    # medians: ceiling 2000, tf-ps 800, insecure 1000, ratls 675 (repeats 0 and 1 only)
    assert ratios["bound_samples_per_s"] == pytest.approx(2000 * 2 / 4)
    assert ratios["ratls_vs_tfps"][0] == pytest.approx(675 / 800)
    assert ratios["ratls_vs_tfps"][1] == pytest.approx((450 / 400, 450 / 400))  # same in every repeat
    assert ratios["ratls_vs_insecure"][0] == pytest.approx(675 / 1000)
    assert ratios["ratls_vs_insecure"][1] == pytest.approx((0.9, 0.9))
    assert ratios["ratls_vs_bound"][0] == pytest.approx(675 / 1000)
    assert ratios["auc_gap"][0] == pytest.approx(0.001)  # median tf-ps minus median ours(ratls)
    row = next(r for r in summary["rows"] if r["system"] == "ours-ratls")
    assert (row["ok"], row["runs"]) == (2, 3)
    assert row["samples_per_s_spread"] == (450, 900)
    summary.update(learning_rate=0.1, tfps_learning_rate=0.05, ours_mode="async", staleness=8)
    table = compare.format_table(summary, workers=2, cores=4)
    assert "2/3" in table and "FAIL" in table
    assert "updates by staleness" not in table  # no run counted any


def test_staleness_shares_pool_every_repeat():
    runs = [compare.Run("tf-ps", 128, 0, staleness={0: 1, 1: 6, 2: 1}),
            compare.Run("tf-ps", 128, 1, staleness={1: 8, 5: 4}),
            compare.Run("tf-ps", 128, 2, error="exited with code 1", staleness={0: 100})]
    shares = compare.staleness_shares([r for r in runs if r.error is None])
    assert shares == {"0": 1 / 20, "1": 14 / 20, "2": 1 / 20, "3+": 4 / 20}
    summary = compare.summarize(runs + [_run(s, 128, 0, 100.0) for s in compare.SYSTEMS if s != "tf-ps"], [128],
                                workers=2, cores=2)
    summary.update(learning_rate=0.1, tfps_learning_rate=0.05, ours_mode="async", staleness=8)
    lines = compare.format_table(summary, workers=2, cores=2).splitlines()
    line = next(line for line in lines if "tf-ps updates by staleness" in line)
    assert line.split("staleness")[1].split() == ["0:", "5%,", "1:", "70%,", "2:", "5%,", "3+:", "20%"]


def test_every_repeat_its_spread_and_the_targets():
    # tf-ps losses 0.40, 0.41, 0.45 (median 0.41); ours-ratls 0.405, 0.43, 0.50: repeat 3 is 0.09 from tf-ps.
    runs = []
    for repeat, (tfps_loss, ours_loss, ours_auc) in enumerate(((0.40, 0.405, 0.850), (0.41, 0.43, 0.849),
                                                               (0.45, 0.50, 0.844))):
        runs += [_run("ceiling", 128, repeat, 1000.0), _run("tf-ps", 128, repeat, 500.0, auc=0.851, loss=tfps_loss),
                 _run("ours-insecure", 128, repeat, 900.0, auc=0.85, loss=0.415),
                 _run("ours-ratls", 128, repeat, 850.0 + repeat * 10, auc=ours_auc, loss=ours_loss)]
    summary = compare.summarize(runs, [128], workers=2, cores=2)
    row = next(r for r in summary["rows"] if r["system"] == "ours-ratls")
    loss = row["per_repeat"]["held_out_loss"]
    assert loss["values"] == [0.405, 0.43, 0.50]
    assert (loss["median"], loss["min"], loss["max"]) == (0.43, 0.405, 0.50)
    assert loss["max_minus_median"] == pytest.approx(0.07)
    assert row["per_repeat"]["samples_per_s"]["values"] == [850.0, 860.0, 870.0]
    assert row["per_repeat"]["held_out_auc"]["values"] == [0.850, 0.849, 0.844]
    targets = summary["targets"][128]
    assert targets["loss_vs_tfps"]["value"] == pytest.approx(0.50 - 0.41) and targets["loss_vs_tfps"]["passed"] is False
    assert targets["auc_gap"]["value"] == pytest.approx(0.851 - 0.849) and targets["auc_gap"]["passed"] is True
    assert targets["ratls_vs_bound"]["value"] == pytest.approx(0.86) and targets["ratls_vs_bound"]["passed"] is True
    assert targets["ratls_vs_tfps"]["value"] == pytest.approx(1.72) and targets["ratls_vs_tfps"]["passed"] is True
    # A failed repeat is a gap in its row, not a shifted one.
    runs[-1] = compare.Run("ours-ratls", 128, 2, error="exited with code 1")
    gap = compare.summarize(runs, [128], workers=2, cores=2)
    row = next(r for r in gap["rows"] if r["system"] == "ours-ratls")
    assert row["per_repeat"]["held_out_loss"]["values"][:2] == [0.405, 0.43]
    assert math.isnan(row["per_repeat"]["held_out_loss"]["values"][2])
    assert gap["targets"][128]["loss_vs_tfps"]["value"] == pytest.approx(0.43 - 0.41)  # ours-insecure: 0.005

    summary.update(learning_rate=0.1, tfps_learning_rate=0.05, ours_mode="async", staleness=8)
    lines = compare.format_table(summary, workers=2, cores=2).splitlines()
    ours_loss = next(line for line in lines if re.match(r"128\s+ours-ratls\s+held-out loss", line))
    assert ours_loss.split()[4:] == ["0.4050", "0.4300", "0.5000", "0.4300", "0.4050..0.5000", "0.0700"]
    verdicts = {name: next(line for line in lines if line.startswith("  " + name))
                for name in compare.TARGET_NAMES.values()}
    assert verdicts[compare.TARGET_NAMES["loss_vs_tfps"]].endswith("target <= 0.01: FAIL")
    assert verdicts[compare.TARGET_NAMES["auc_gap"]].endswith("target <= 0.003: PASS")
    assert verdicts[compare.TARGET_NAMES["ratls_vs_bound"]].endswith("target >= 0.8: PASS")
    assert verdicts[compare.TARGET_NAMES["ratls_vs_tfps"]].endswith("target >= 1.5: PASS")


@pytest.mark.parametrize("batch, bound, speedup", [(64, 0.8, 1.5), (128, 0.8, 1.5), (1024, 0.8, 1.5),
                                                   (2048, 0.85, 1.25), (4096, 0.85, 1.25)])
def test_targets_of_batch_sizes_the_issue_does_not_name(batch, bound, speedup):
    assert compare.target("ratls_vs_bound", batch) == (">=", bound)
    assert compare.target("ratls_vs_tfps", batch) == (">=", speedup)
    assert compare.target("auc_gap", batch) == ("<=", 0.003)
    assert compare.judge("auc_gap", batch, -0.01)["passed"] is True  # ours better than tf-ps
    assert compare.judge("ratls_vs_tfps", batch, math.nan)["passed"] is None


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR"), path
    return width, height


def test_quick_comparison_prints_a_complete_table(tmp_path):
    out = tmp_path / "compare"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--tfps-staleness",
                             "--out", str(out)], capture_output=True, text=True, timeout=QUICK_TIMEOUT, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("batch  system"))
    for column in compare.COLUMNS:
        assert column in lines[header]
    rows = {}
    for line in lines[header + 2:header + 2 + len(compare.SYSTEMS)]:
        cells = [c for c in line.split("  ") if c.strip()]
        rows[cells[1].strip()] = [c.strip() for c in cells]
    assert sorted(rows) == sorted(compare.SYSTEMS)

    def number(text: str) -> float:
        return float(text.replace(",", ""))

    for system, cells in rows.items():
        assert cells[0] == "64"
        rate, step_ms = number(cells[2]), number(cells[4])
        assert math.isfinite(rate) and rate > 0 and step_ms > 0, cells
        assert cells[-1] == "1/1"
        if system != "ceiling":
            wire, loss, auc = number(cells[5]), number(cells[6]), number(cells[7])
            assert wire > 0 and loss > 0 and 0 < auc < 1, cells
            assert all(number(c) > 0 for c in cells[8:11]), cells
    target_lines = [line for line in lines if any(line.startswith("  " + n) for n in compare.TARGET_NAMES.values())]
    assert len(target_lines) == len(compare.TARGETS)
    for line in target_lines:
        match = re.match(r"  \S.*?\s{2,}(-?\d+\.\d+)\b", line)
        assert match and math.isfinite(float(match.group(1))), line
        assert re.search(r"target [<>]= \S+: (PASS|FAIL)$", line), line
    repeat_header = lines.index("every repeat:") + 1
    assert lines[repeat_header].split() == ["batch", "system", "figure", "r1", "median", "min..max", "max-median"]
    repeat_rows = [re.match(r"64\s+(\S+)\s+(held-out loss|held-out AUC|samples/s)\s+(\S+)\s", line)
                   for line in lines[repeat_header + 2:repeat_header + 2 + 10]]
    assert all(repeat_rows)
    held_out_loss = {m.group(1): m.group(3) for m in repeat_rows if m.group(2) == "held-out loss"}
    assert held_out_loss == {system: rows[system][6] for system in ("tf-ps", "ours-insecure", "ours-ratls")}
    rates = {m.group(1): m.group(3) for m in repeat_rows if m.group(2) == "samples/s"}
    assert rates == {system: cells[2] for system, cells in rows.items()}  # one repeat: r1 is the median
    assert any(line.startswith("compute bound = ceiling x min(workers, cores) / cores") for line in lines)

    results = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in results["runs"]] == list(compare.SYSTEMS)
    assert all(r["error"] is None for r in results["runs"])
    tfps = next(r for r in results["runs"] if r["system"] == "tf-ps")
    assert tfps["details"]["samples"] == 10 * 2 * 64  # the samples of 10 synchronous steps of ours
    assert tfps["details"]["config"]["learning_rate"] == pytest.approx(0.1 / 2)
    assert set(tfps["peak_rss"]) == {"ps0", "worker0", "worker1", "coordinator"}
    assert sum(tfps["staleness"].values()) == 20 and min(map(int, tfps["staleness"])) >= 0  # every update counted
    assert any(line.startswith("  tf-ps updates by staleness") for line in lines)

    # The figures: PNGs in the run directory, and (drawn again from results.json) one series per system and repeat.
    for name in figures.FILES.values():
        width, height = _png_size(out / name)
        assert width >= 500 and height >= 300, name
    drawn = figures.draw(results)
    trained = ["tf-ps", "ours-insecure", "ours-ratls"]
    (loss_axes,) = drawn["loss"].axes
    assert len(loss_axes.lines) == len(trained)
    assert [t.get_text() for t in loss_axes.get_legend().get_texts()] == trained
    for line in loss_axes.lines:
        x, y = line.get_data()
        assert len(x) == 20 and x[0] == 0 and max(x) < 1280 and all(v > 0 for v in y)  # 20 steps of 64 each
    for ax in drawn["held_out"].axes:  # AUC, accuracy: one marker per system at the samples seen
        assert len(ax.lines) == len(trained)
        assert all(list(line.get_xdata()) == [1280] for line in ax.lines)
    (bars_axes,) = drawn["throughput"].axes
    bars = [c for c in bars_axes.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(compare.SYSTEMS) and all(len(c.patches) == 1 for c in bars)
    rates = {r["system"]: r["samples_per_s"] for r in results["runs"]}
    assert [c.patches[0].get_height() for c in bars] == [rates[s] for s in compare.SYSTEMS]

    # Running again into the same directory would resume the old runs' checkpoints: refused.
    again = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--out", str(out)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 2 and "not empty; give a new directory" in again.stderr


def test_presets_are_the_papers_configurations(tmp_path, capsys):
    out = ["--out", str(tmp_path / "cmp")]
    hfl = compare.parse_arguments(["--preset", "paper-hfl", *out])
    assert (hfl.mode, hfl.workers, hfl.systems) == ("hfl", 4, list(compare.SYSTEMS))
    sdt = compare.parse_arguments(["--preset", "paper-sdt", *out])
    assert (sdt.mode, sdt.workers, sdt.systems) == ("sdt", 2, ["ceiling", "ours-insecure", "ours-ratls"])
    mine = compare.parse_arguments(["--workers", "3", "--preset", "paper-hfl", "--systems", "ours-ratls", "tf-ps",
                                    *out])
    assert (mine.workers, mine.systems) == (3, ["tf-ps", "ours-ratls"])  # given options win; run order kept
    assert compare.parse_arguments(out).mode == "hfl" and compare.parse_arguments(out).workers == 2
    with pytest.raises(SystemExit) as refused:
        compare.parse_arguments(["--preset", "paper-sdt", "--systems", "tf-ps", "ours-ratls", *out])
    assert refused.value.code == 2 and "no SDT counterpart" in capsys.readouterr().err


def test_sdt_preset_runs_ours_with_a_chief(tmp_path):
    """The paper-sdt preset end to end, ours-insecure only (the cheapest run that goes through a chief)."""
    out = tmp_path / "sdt"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--preset", "paper-sdt",
                             "--systems", "ours-insecure", "--out", str(out)],
                            capture_output=True, text=True, timeout=QUICK_TIMEOUT, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["preset"], results["mode"], results["workers"]) == ("paper-sdt", "sdt", 2)
    (run,) = results["runs"]
    assert run["system"] == "ours-insecure" and run["error"] is None
    launcher = json.loads(Path(run["details"]["launcher_report"]).read_text())
    final_eval = launcher["chief"]["final_eval"]  # the chief's evaluation of the final model: the whole file
    assert (run["held_out_auc"], run["held_out_loss"]) == (final_eval["auc"], final_eval["log_loss"])
    assert final_eval["examples"] == 2048 and run["details"]["held_out_basis"] == "chief final_eval"
    assert 0 < run["held_out_auc"] < 1 and 0 < run["held_out_accuracy"] < 1 and run["samples_seen"] == 10 * 2 * 64
    assert len(run["loss_curve"]) == 20 and run["loss_curve"][0][0] == 0
    (loss_axes,) = figures.draw(results)["loss"].axes
    assert len(loss_axes.lines) == 1
    assert all(_png_size(out / name)[0] > 0 for name in figures.FILES.values())
    assert "target >= 1.5: no data" in result.stdout  # no tf-ps to compare with


def test_figures_command_refuses_what_is_not_a_results_file(tmp_path, capsys):
    missing = tmp_path / "results.json"
    missing.write_text(json.dumps({"batch_sizes": [64], "runs": [{"system": "tf-ps", "batch_size": 64,
                                                                    "error": None}]}))
    assert figures.main([str(missing)]) == 1
    assert "not a results.json of this compare.py (missing or wrong 'loss_curve')" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert figures.main([str(broken)]) == 1
    assert "broken.json: Expecting property name" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_figures_have_a_series_per_system_and_repeat_and_the_spread_as_error_bars():
    runs = []
    for batch in (128, 2048):
        for repeat in range(3):
            for s, system in enumerate(compare.SYSTEMS):
                run = _run(system, batch, repeat, rate=1000.0 * (s + 1) + 100 * repeat, auc=0.7 + 0.01 * repeat)
                if system != "ceiling":
                    run.samples_seen, run.held_out_accuracy = 4 * batch, 0.75
                    run.loss_curve = [(0.0, 0.7), (2.0 * batch, 0.6 - 0.01 * repeat)]
                runs.append(run)
    results = json.loads(json.dumps({"batch_sizes": [128, 2048], "runs": [vars(r) for r in runs]}))
    drawn = figures.draw(results)
    trained = ["tf-ps", "ours-insecure", "ours-ratls"]
    assert len(drawn["loss"].axes) == 2
    for ax in drawn["loss"].axes:
        assert len(ax.lines) == len(trained) * 3  # a thin line per repeat
        assert [t.get_text() for t in ax.get_legend().get_texts()] == trained  # one legend entry per system
    assert len(drawn["held_out"].axes) == 4  # AUC and accuracy, per batch size
    for ax in drawn["held_out"].axes:
        assert len(ax.lines) == len(trained) and all(len(line.get_xdata()) == 3 for line in ax.lines)
    (ax,) = drawn["throughput"].axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(compare.SYSTEMS) and all(len(c.patches) == 2 for c in bars)
    for s, container in enumerate(bars):
        assert [p.get_height() for p in container.patches] == [1000.0 * (s + 1) + 100] * 2  # the median repeat
    caps = [line.get_ydata() for c in ax.containers if not isinstance(c, BarContainer) for line in c.lines[1]]
    assert sorted({round(float(y)) for cap in caps for y in cap}) == sorted(
        {1000 * (s + 1) + d for s in range(len(compare.SYSTEMS)) for d in (0, 200)})  # min and max repeats

"""The launcher's data options end to end: --max-bad-fraction reaches the workers (HFL) and the chief (SDT), and a
CSV file is refused once with the reason and the fix, or trained on under --format csv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runtime_tools import REPO
from test_data import CSV_HEADER, csv_lines, sample_lines, write
from test_hfl import launch

QUICK = ["--workers", "2", "--model", "small", "--steps", "6", "--batch-size", "16", "--security", "insecure",
         "--threads", "1"]


def three_percent_bad(tmp_path: Path) -> Path:
    """300 lines, 9 of them malformed, every 33rd from line 16, so each of two line shards has about 3% (5 and 4
    of 150) bad lines."""
    good = iter(sample_lines() * 3)
    lines = ["1\t2\t3\n" if i % 33 == 16 else next(good) for i in range(300)]
    return write(tmp_path / "three_percent_bad.tsv", lines)


@pytest.mark.parametrize("mode", ["hfl", "sdt"])
def test_launcher_passes_max_bad_fraction_on(tmp_path, mode):
    data = three_percent_bad(tmp_path)
    report, _ = launch(tmp_path / "run", *QUICK, "--mode", mode, "--data", str(data), "--max-bad-fraction", "0.05")
    counts = [w["data"] for w in report["workers"]]
    assert sum(c["bad_lines"] for c in counts) == 9 and sum(c["lines"] for c in counts) == 300, counts
    assert report["steps"] == 6


def test_launcher_default_max_bad_fraction_stops_on_three_percent(tmp_path):
    data = three_percent_bad(tmp_path)
    result = subprocess.run([sys.executable, "-m", "runtime.launch", "--out", str(tmp_path / "run"), *QUICK,
                             "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "lines bad, more than max_bad_fraction 0.01; --max-bad-fraction raises it" in result.stdout + result.stderr


def test_launcher_refuses_csv_once_with_the_fix_and_trains_it_with_format_csv(tmp_path):
    data = write(tmp_path / "criteo_sample.txt", [CSV_HEADER, *csv_lines()])
    refused = subprocess.run([sys.executable, "-m", "runtime.launch", "--out", str(tmp_path / "refused"), *QUICK,
                              "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.count("this looks like CSV with a header") == 1, refused.stderr
    assert "read it with --format csv" in refused.stderr
    assert not (tmp_path / "refused" / "logs" / "worker0.log").exists()  # refused before starting anything

    report, _ = launch(tmp_path / "run", *QUICK, "--data", str(data), "--format", "csv")
    counts = [w["data"] for w in report["workers"]]
    assert sum(c["lines"] for c in counts) == 100 and all(c["bad_lines"] == 0 for c in counts), counts


def test_chief_reads_csv_and_ships_tsv_shards(tmp_path):
    from runtime.data import DataError, shard_sources

    data = write(tmp_path / "criteo_sample.txt", [CSV_HEADER, *csv_lines()])
    with pytest.raises(DataError, match="read it with --format csv"):
        shard_sources([data], None, 2)
    sources = shard_sources([data], None, 2, "csv")
    shipped = [line.decode() for source in sources for line in source.lines()]
    want = [line.replace("\n", "\r\n") for line in sample_lines()]
    assert sorted(shipped) == sorted(want) and len(shipped) == 100

"""A worker's data path without TensorFlow: held-out batches, bad-line accounting and thresholds, prefetching."""

from __future__ import annotations

import itertools

import pytest

from runtime.data import CriteoReader, DataError, Prefetcher, TrainingStream, synthetic_partitions
from runtime.model import DLRMConfig


def test_bad_lines_are_counted_and_skipped_below_the_threshold(tmp_path, testdata):
    lines = (testdata / "criteo" / "kaggle_sample_100.txt").read_text().splitlines(keepends=True)
    bad = ["garbage\n", "1\t2\n"]
    path = tmp_path / "mixed.tsv"
    path.write_text("".join(lines[:50] + bad + lines[50:]))
    stream = TrainingStream(CriteoReader(path, DLRMConfig.small(), 10, max_bad_fraction=0.05), holdout=2)
    batches = list(itertools.islice(iter(stream), 30))  # three passes
    assert sum(len(b) for b in batches[:8]) == 80  # 100 good lines, 20 held out
    assert len(stream.heldout) == 2 and sum(len(b) for b in stream.heldout) == 20
    counts = stream.line_counts()
    assert counts["lines"] == 102 and counts["bad_lines"] == 2 and counts["complete_passes"] >= 2
    assert any("expected 40 tab-separated fields" in e for e in counts["bad_examples"])


def test_too_many_bad_lines_stop_the_worker(tmp_path, testdata):
    lines = (testdata / "criteo" / "kaggle_sample_100.txt").read_text().splitlines(keepends=True)
    path = tmp_path / "bad.tsv"
    path.write_text("".join(lines[:60] + ["not\ta\tcriteo\tline\n"] * 10 + lines[60:]))
    stream = TrainingStream(CriteoReader(path, DLRMConfig.small(), 10, max_bad_fraction=0.05), holdout=0)
    with pytest.raises(DataError, match="max_bad_fraction 0.05"):
        list(itertools.islice(iter(stream), 20))


def test_all_data_held_out_is_an_error(tmp_path, testdata):
    stream = TrainingStream(CriteoReader(testdata / "criteo" / "kaggle_sample_100.txt", DLRMConfig.small(), 64),
                            holdout=2)
    with pytest.raises(DataError, match="no training batches"):
        next(iter(stream))


def test_prefetcher_keeps_order_and_passes_errors_on(tmp_path):
    config = DLRMConfig.small()
    (train,), _ = synthetic_partitions(tmp_path, 1, 300, 10, 3, config)
    expected = list(CriteoReader(train, config, 64))
    prefetched = Prefetcher(iter(CriteoReader(train, config, 64)))
    got = list(prefetched)
    assert len(got) == len(expected) == 5
    for (batch, lookup), want in zip(got, expected, strict=True):
        assert (batch.cat == want.cat).all() and (batch.labels == want.labels).all()
        assert all((u == ids).all() for u, (ids, _) in zip(lookup.ids, want.unique_ids(), strict=True))
        assert (lookup.index == want.lookup().index).all()

    def failing():
        yield expected[0]
        raise DataError("disk on fire")

    prefetched = Prefetcher(failing())
    assert next(prefetched)[0] is expected[0]
    with pytest.raises(DataError, match="disk on fire"):
        next(prefetched)

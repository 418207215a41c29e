"""Criteo data: parsing real Kaggle lines, bad-line accounting, sharding, gzip, the synthetic generator."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.data import BadLine, CriteoReader, DataError, hash_to_rows, parse_line, parse_lines, parse_raw, synth
from runtime.model import DLRMConfig

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "testdata" / "criteo" / "kaggle_sample_100.txt"
CONFIG = DLRMConfig.small()


def sample_lines() -> list[str]:
    return SAMPLE.read_text(encoding="ascii").splitlines(keepends=True)


def test_every_sample_line_parses_with_documented_statistics():
    lines = sample_lines()
    assert len(lines) == 100
    parsed = [parse_raw(line) for line in lines]
    ints = np.array([p[1] for p in parsed])
    cats = np.array([p[2] for p in parsed])
    # dlrm-reference.md §2: 303/2600 empty categorical fields, 11 negative ints, all -1 and all in I2.
    assert (cats == 0).sum() == 303
    negative = np.argwhere(ints < 0)
    assert len(negative) == 11 and set(negative[:, 1]) == {1} and set(ints[ints < 0]) == {-1}
    assert sum(p[0] for p in parsed) == 29

    label, dense, cat = parse_line(lines[0])
    assert label == 0 and dense.dtype == np.float32 and cat.dtype == np.uint32
    # 0 \t (empty) \t 0 \t 5 \t 4 \t 13275 ... ; C1 = 05db9164, C22 empty, C26 = 731c3655
    assert dense[0] == 0 and dense[1] == 0
    assert dense[2] == np.log(np.float32(6)) and dense[4] == np.log(np.float32(13276))
    assert cat[0] == 0x05DB9164 and cat[21] == 0 and cat[25] == 0x731C3655
    label, dense, _ = parse_line(lines[1])
    assert label == 1


def test_reader_streams_sample_into_batches():
    reader = CriteoReader(SAMPLE, CONFIG, 32)
    batches = list(reader)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert reader.lines == 100 and reader.bad_lines == 0
    assert sum(int(b.labels.sum()) for b in batches) == 29
    for b in batches:
        b.check(CONFIG)
        assert (b.dense >= 0).all()
    raw = np.array([parse_raw(line)[2] for line in sample_lines()], dtype=np.int64)
    assert np.array_equal(np.concatenate([b.cat for b in batches]), raw % np.array(CONFIG.table_sizes))
    assert [len(b) for b in CriteoReader(SAMPLE, CONFIG, 32, drop_remainder=True)] == [32, 32, 32]


def test_hash_to_rows_is_mod_table_size():
    raw = np.array([[0, 0xFFFFFFFF, 1000, 7]], dtype=np.uint32)
    assert hash_to_rows(raw, [10, 1000, 1000, 3]).tolist() == [[0, 0xFFFFFFFF % 1000, 0, 1]]


GOOD = sample_lines()[0].rstrip("\n")


@pytest.mark.parametrize("line, reason", [
    ("\t".join(GOOD.split("\t")[1:]), "found 39 (no label column"),
    (GOOD + "\t", "found 41"),
    ("", "found 1"),
    ("2" + GOOD[1:], "label: expected 0 or 1, found '2'"),
    (GOOD.replace("\t13275\t", "\t13275.0\t"), "I5: expected a decimal integer"),
    (GOOD.replace("\t13275\t", "\t 13275\t"), "I5"),
    (GOOD.replace("\t13275\t", "\t+13275\t"), "I5"),
    (GOOD.replace("\t13275\t", "\t1_3275\t"), "I5"),
    (GOOD.replace("\t13275\t", "\t1234567890123456789\t"), "I5"),
    (GOOD.replace("05db9164", "05db916g"), "C1: expected 1-8 hex digits"),
    (GOOD.replace("05db9164", "0x5db916"), "C1"),
    (GOOD.replace("05db9164", "105db9164"), "C1"),
])
def test_bad_lines_name_the_field(line, reason):
    with pytest.raises(BadLine) as info:
        parse_line(line + "\n")
    assert reason in info.value.reason


def test_line_endings_and_trailing_empty_field_are_valid():
    assert parse_line(GOOD + "\r\n")[2][25] == 0x731C3655
    assert parse_line(GOOD)[0] == 0
    last_missing = GOOD[: GOOD.rindex("\t") + 1]  # "...\t" before the newline: C26 missing
    assert parse_line(last_missing + "\n")[2][25] == 0


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="ascii")
    return path


def test_bad_lines_counted_and_skipped_below_threshold(tmp_path):
    good = sample_lines() * 2
    lines = good[:150] + ["garbage"] + good[150:]
    reader = CriteoReader(write(tmp_path / "a.tsv", lines), CONFIG, 64)
    assert sum(len(b) for b in reader) == 200
    assert (reader.lines, reader.bad_lines) == (201, 1)
    assert reader.bad_examples == [(str(tmp_path / "a.tsv"), 151, "expected 40 tab-separated fields, found 1")]


def test_bad_fraction_over_threshold_raises_with_line_and_reason(tmp_path):
    good = sample_lines() * 2
    lines = good[:50] + ["x"] + good[50:120] + ["1\t2"] + good[120:]  # 2 of 202 lines bad (~1%)
    path = write(tmp_path / "b.tsv", lines)
    with pytest.raises(DataError, match=r"b\.tsv:122: expected 40 tab-separated fields, found 2 \(2 of 122"):
        list(CriteoReader(path, CONFIG, 64))
    assert sum(len(b) for b in CriteoReader(path, CONFIG, 64, max_bad_fraction=0.02)) == 200
    # Fewer than 100 lines: judged at the end of the data.
    short = write(tmp_path / "c.tsv", sample_lines()[:50] + ["x"])
    with pytest.raises(DataError, match=r"c\.tsv:51: .* \(1 of 51"):
        list(CriteoReader(short, CONFIG, 64))


def test_non_ascii_and_overlong_lines_are_bad_lines(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b"".join(line.encode() for line in sample_lines()[:10])
                     + GOOD.replace("05db9164", "05db\xe99164").encode("latin-1") + b"\n"
                     + b"1" * 100_000 + b"\n"
                     + sample_lines()[10].encode())
    reader = CriteoReader(path, CONFIG, 64, max_bad_fraction=0.5)
    assert sum(len(b) for b in reader) == 11
    column = GOOD.index("05db9164") + 5  # 1-based column of the replaced byte
    assert [e[1:] for e in reader.bad_examples] == [(11, f"non-ASCII byte at column {column}"),
                                                    (12, "line longer than 4096 bytes")]


def test_shards_partition_lines_across_files(tmp_path):
    lines = sample_lines()
    files = [write(tmp_path / "p0.tsv", lines[:37]), write(tmp_path / "p1.tsv", lines[37:])]
    full = np.concatenate([b.labels for b in CriteoReader(files, CONFIG, 1000)])
    total = 0
    for index in range(3):
        reader = CriteoReader(files, CONFIG, 1000, shard=(index, 3))
        labels = np.concatenate([b.labels for b in reader])
        assert np.array_equal(labels, full[index::3])
        total += reader.lines
    assert total == 100
    with pytest.raises(ValueError, match="shard"):
        CriteoReader(files, CONFIG, 10, shard=(3, 3))


def test_gzip_input_and_terabyte_layout(tmp_path):
    gz = tmp_path / "day_0.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    plain = list(CriteoReader(SAMPLE, CONFIG, 50))
    zipped = list(CriteoReader(gz, CONFIG, 50, layout="terabyte"))
    assert len(plain) == len(zipped) == 2
    for a, b in zip(plain, zipped, strict=True):
        assert np.array_equal(a.cat, b.cat) and np.array_equal(a.dense, b.dense)
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(DataError, match="cut.gz: cannot read"):
        list(CriteoReader(truncated, CONFIG, 50))
    with pytest.raises(ValueError, match="layout"):
        CriteoReader(gz, CONFIG, 50, layout="avazu")


def test_synth_is_reproducible_and_partitions_concatenate(tmp_path):
    one = synth(tmp_path / "one.tsv", 3000, 11, config=CONFIG)
    again = synth(tmp_path / "again.tsv", 3000, 11, config=CONFIG)
    other = synth(tmp_path / "other.tsv", 3000, 12, config=CONFIG)
    parts = synth(tmp_path / "parts.tsv", 3000, 11, config=CONFIG, partitions=3)
    split = synth(tmp_path / "split.tsv", 3000, 11, config=CONFIG, partitions=[2500, 500])
    text = one[0].read_bytes()
    assert again[0].read_bytes() == text and other[0].read_bytes() != text
    assert [p.name for p in parts] == ["parts.tsv.0", "parts.tsv.1", "parts.tsv.2"]
    assert b"".join(p.read_bytes() for p in parts) == text
    assert b"".join(p.read_bytes() for p in split) == text
    assert len(split[1].read_bytes().splitlines()) == 500

    reader = CriteoReader(one, CONFIG, 1000, max_bad_fraction=0.0)
    labels = np.concatenate([b.labels for b in reader])
    assert reader.bad_lines == 0 and labels.size == 3000
    assert 0.2 < labels.mean() < 0.3
    fields = [line.split("\t") for line in text.decode().splitlines()]
    empty_ints = sum(f == "" for row in fields for f in row[1:14])
    empty_cats = sum(f == "" for row in fields for f in row[14:])
    assert 0.05 < empty_ints / (13 * 3000) < 0.4 and 0.02 < empty_cats / (26 * 3000) < 0.2
    assert any(row[2].startswith("-") for row in fields)
    with pytest.raises(ValueError, match="summing to rows"):
        synth(tmp_path / "x.tsv", 10, 1, config=CONFIG, partitions=[5, 6])


def test_synth_signal_is_learnable_by_reference_trainer(tmp_path):
    from runtime.model.reference import evaluate, train_single_process

    steps, batch, held_out = 300, 128, 8192
    train, test = synth(tmp_path / "s.tsv", steps * batch + held_out, 0, config=CONFIG,
                        partitions=[steps * batch, held_out])
    params = train_single_process(CONFIG, CriteoReader(train, CONFIG, batch), steps)
    result = evaluate(CONFIG, params, CriteoReader(test, CONFIG, 4096))
    assert result["examples"] == held_out
    assert result["auc"] >= 0.7, result


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.data", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_check_and_synth(tmp_path):
    result = run_cli("check", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert "lines: 100\nbad lines: 0\nlabel rate: 0.2900 (29 of 100)" in result.stdout
    bad = write(tmp_path / "bad.tsv", sample_lines()[:5] + ["0\t1"])
    result = run_cli("check", str(bad))
    assert result.returncode == 1
    assert f"{bad}:6: expected 40 tab-separated fields, found 2" in result.stdout
    result = run_cli("synth", "--rows", "500", "--seed", "4", "--out", str(tmp_path / "s.tsv"),
                     "--partitions", "2", "--config", "small")
    assert result.returncode == 0, result.stderr
    assert synth(tmp_path / "direct.tsv", 500, 4, config=CONFIG)[0].read_bytes() == \
        (tmp_path / "s.tsv.0").read_bytes() + (tmp_path / "s.tsv.1").read_bytes()
    result = run_cli("synth", "--rows", "0", "--seed", "4", "--out", str(tmp_path / "z.tsv"))
    assert result.returncode == 2 and "rows must be a positive integer" in result.stderr


def test_parse_lines_agrees_with_parse_raw_on_mutated_lines():
    """The vectorised parser accepts exactly the lines parse_raw accepts, with the same values: the sample,
    synthetic lines and thousands of random byte edits of them (grammar bytes and others)."""
    good = [line.encode() for line in sample_lines()]
    good += [("1\t-" + "9" * 18 + "\t" * 12 + "\t".join(["ffffffff"] * 26) + "\r\n").encode(), (GOOD + "\n").encode()]
    rng = random.Random(7)
    alphabet = b"0123456789abcdefABCDEF-\t\r\n +_x\x80"
    lines = list(good)
    for _ in range(4000):
        line = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line))
            edit = rng.random()
            if edit < 0.4:
                line[at] = rng.choice(alphabet)
            elif edit < 0.7:
                line.insert(at, rng.choice(alphabet))
            else:
                del line[at]
        lines.append(bytes(line))
    accepted = 0
    for start in range(0, len(lines), 300):
        block = lines[start:start + 300]
        ok, labels, ints, cats = parse_lines(block)
        for i, raw in enumerate(block):
            try:
                want = parse_raw(raw.decode("ascii"))
            except (UnicodeDecodeError, BadLine):
                assert not ok[i], raw
                continue
            accepted += 1
            assert ok[i], raw
            assert (labels[i], list(ints[i]), list(cats[i])) == want, raw
    assert len(good) < accepted < len(lines) - 1000  # both outcomes well represented


CSV_HEADER = ",".join(["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]) + "\n"


def csv_lines() -> list[str]:
    """The sample in DeepCTR's layout: comma-separated, CRLF line ends as a spreadsheet writes them."""
    return [line.rstrip("\n").replace("\t", ",") + "\r\n" for line in sample_lines()]


def test_csv_with_a_header_read_as_tsv_is_one_error_that_names_the_fix(tmp_path):
    path = write(tmp_path / "criteo_sample.txt", [CSV_HEADER, *csv_lines()])
    with pytest.raises(DataError) as raised:
        list(CriteoReader(path, CONFIG, 32))
    message = str(raised.value)
    assert message == (f"{path}:1: this looks like CSV with a header (comma-separated fields), not Criteo's "
                       "tab-separated layout; read it with --format csv")
    headless = write(tmp_path / "headless.csv", csv_lines())
    with pytest.raises(DataError, match=r"headless.csv:1: this looks like CSV \(comma-separated"):
        list(CriteoReader(headless, CONFIG, 32))


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_csv_format_reads_the_same_examples_as_tsv(tmp_path, header):
    csv_path = write(tmp_path / "sample.csv", [CSV_HEADER] * header + csv_lines())
    want = list(CriteoReader(SAMPLE, CONFIG, 32, shard=(1, 3)))
    reader = CriteoReader(csv_path, CONFIG, 32, file_format="csv", shard=(1, 3))
    got = list(reader)
    assert (reader.lines, reader.bad_lines) == (33, 0)  # lines 1, 4, ..., 97: the header is not a line of data
    assert [len(b) for b in got] == [len(b) for b in want]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.dense, w.dense) and np.array_equal(g.cat, w.cat)
        assert np.array_equal(g.labels, w.labels)


def test_csv_bad_lines_are_named_and_a_bad_format_is_refused(tmp_path):
    path = write(tmp_path / "bad.csv", [CSV_HEADER, *csv_lines()[:5], "1,2,3\n"])
    reader = CriteoReader(path, CONFIG, 32, file_format="csv", max_bad_fraction=1.0)
    assert sum(len(b) for b in reader) == 5 and reader.bad_lines == 1
    assert reader.bad_examples == [(str(path), 7, "expected 40 tab-separated fields, found 3")]
    with pytest.raises(ValueError, match="file_format must be one of"):
        CriteoReader(path, CONFIG, 32, file_format="parquet")


def test_data_check_reads_csv(tmp_path):
    path = write(tmp_path / "sample.csv", [CSV_HEADER, *csv_lines()])
    check = [sys.executable, "-m", "runtime.data", "check", "--config", "small", str(path)]
    refused = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "this looks like CSV with a header" in refused.stderr
    assert refused.stderr.count("\n") == 1  # one message, not one per line
    read = subprocess.run([*check, "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert "lines: 100\nbad lines: 0\nlabel rate: 0.2900 (29 of 100)" in read.stdout

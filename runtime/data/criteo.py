"""Criteo click logs: a streaming reader for the raw TSV, and a synthetic generator with a planted signal.

Line format (Kaggle train.txt and Terabyte day_N alike): 40 tab-separated fields, label (0/1), I1..I13 (decimal
integers), C1..C26 (32-bit hashes as hex, 8 digits in the real data). An empty field is a missing value. The
Terabyte logs use the same per-line layout; per Criteo's README they differ in time period, subsampling, feature
order and how some features are computed, which changes what each column means (so which table sizes fit) but
not how a line parses. Terabyte day files are distributed gzip-compressed; the reader opens gzip files (by magic
bytes) for either layout.

Preprocessing follows facebookresearch/dlrm: missing -> 0, negative integers -> 0, dense x -> ln(x + 1) in
float32. Categorical ids: row = raw_hash mod table_size for each table, i.e. the reference's `--max-ind-range`
hashing applied per table (no vocabulary pass, so the reader can stream). A missing categorical is raw 0 and so
row 0. Tables smaller than their column's vocabulary (e.g. capped Kaggle tables) share rows between values.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from runtime.model.batch import Batch
from runtime.model.config import NUM_CATEGORICAL, NUM_DENSE, DLRMConfig

NUM_FIELDS = 1 + NUM_DENSE + NUM_CATEGORICAL
# A valid line is at most ~560 bytes (19-digit ints); anything much longer is not Criteo data.
MAX_LINE_BYTES = 4096
MIN_LINES_FOR_THRESHOLD = 100
LAYOUTS = ("kaggle", "terabyte")
FORMATS = ("tsv", "csv")  # Criteo's own tab-separated lines; comma-separated with a `label,I1,...,C26` header

_INT = r"(-?[0-9]{1,18})?"  # 18 digits always fit in int64
_HEX = r"([0-9a-fA-F]{1,8})?"
_LINE_RE = re.compile(r"([01])" + (r"\t" + _INT) * NUM_DENSE + (r"\t" + _HEX) * NUM_CATEGORICAL)
_INT_FIELD_RE = re.compile(_INT)
_HEX_FIELD_RE = re.compile(_HEX)


class BadLine(ValueError):
    """A line that is not a valid Criteo record; `reason` says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataError(Exception):
    """Too many bad lines in a data source."""


def _show(field: str) -> str:
    return repr(field if len(field) <= 24 else field[:24] + "...")


def _diagnose(fields: list[str]) -> str:
    if len(fields) != NUM_FIELDS:
        hint = " (no label column: Kaggle test.txt?)" if len(fields) == NUM_FIELDS - 1 else ""
        return f"expected {NUM_FIELDS} tab-separated fields, found {len(fields)}{hint}"
    if fields[0] not in ("0", "1"):
        return f"label: expected 0 or 1, found {_show(fields[0])}"
    for i, value in enumerate(fields[1:1 + NUM_DENSE]):
        if not _INT_FIELD_RE.fullmatch(value):
            return f"I{i + 1}: expected a decimal integer of at most 18 digits or empty, found {_show(value)}"
    for i, value in enumerate(fields[1 + NUM_DENSE:]):
        if not _HEX_FIELD_RE.fullmatch(value):
            return f"C{i + 1}: expected 1-8 hex digits or empty, found {_show(value)}"
    return "malformed line"  # unreachable while _LINE_RE and the per-field patterns agree


def parse_raw(line: str) -> tuple[int, list[int], list[int]]:
    """(label, 13 raw ints with missing = 0, 26 raw hashes with missing = 0); raises BadLine."""
    if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
    match = _LINE_RE.fullmatch(line)
    if match is None:
        raise BadLine(_diagnose(line.split("\t")))
    groups = match.groups()
    ints = [int(v) if v else 0 for v in groups[1:1 + NUM_DENSE]]
    cats = [int(v, 16) if v else 0 for v in groups[1 + NUM_DENSE:]]
    return int(groups[0]), ints, cats


def transform_dense(raw: np.ndarray) -> np.ndarray:
    """ln(max(x, 0) + 1) in float32, as the reference preprocessing."""
    clamped = np.maximum(np.asarray(raw, dtype=np.int64), 0)
    return np.log(clamped.astype(np.float32) + np.float32(1.0))


def hash_to_rows(raw: np.ndarray, table_sizes: Sequence[int]) -> np.ndarray:
    """Raw 32-bit hashes [B, T] -> int64 row ids, column t taken mod table_sizes[t]."""
    return np.asarray(raw, dtype=np.int64) % np.asarray(table_sizes, dtype=np.int64)[None, :]


def parse_line(line: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(label, dense float32[13] = ln(max(x,0)+1), cat uint32[26] raw hashes); raises BadLine."""
    label, ints, cats = parse_raw(line)
    return label, transform_dense(np.array(ints, dtype=np.int64)), np.array(cats, dtype=np.uint32)


# parse_lines tables, indexed by byte: which bytes may appear at all, and each byte's digit value (hex digits
# 0-15, 0 for everything else).
_GRAMMAR = np.zeros(256, dtype=bool)
_GRAMMAR[np.frombuffer(b"0123456789abcdefABCDEF-\t\n", np.uint8)] = True
_DIGIT = np.zeros(256, dtype=np.int64)
_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_DIGIT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_DIGIT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_TAB, _NEWLINE, _MINUS = 9, 10, 45
# Place values by (field kind, digits to the right): decimal for the label and the ints, hex for the hashes.
_HEX_KIND = 19
_PLACE = np.concatenate((10 ** np.arange(19, dtype=np.int64),
                         16 ** np.arange(19, dtype=np.int64) * (np.arange(19) < 8)))
_LINE_KINDS = np.array([0] * (1 + NUM_DENSE) + [_HEX_KIND] * NUM_CATEGORICAL, dtype=np.int64)


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line


def _joined_fields(bodies: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The lines' bytes, each line ended by a newline, and the position of every field's end (tab or newline)."""
    data = np.frombuffer(b"\n".join(bodies) + b"\n", dtype=np.uint8)
    return data, np.flatnonzero((data == _TAB) | (data == _NEWLINE))


def parse_lines(lines: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """parse_raw for many lines at once, in a few numpy passes over their bytes instead of a regex per line.

    Returns (ok [N] bool, labels [N], ints [N, 13], cats [N, 26]) as int64; rows of lines that are not ok are
    undefined. A line is ok exactly when parse_raw accepts it (same grammar: label [01], ints -?[0-9]{1,18} or
    empty, hashes [0-9a-fA-F]{1,8} or empty, one trailing \\n or \\r\\n), with the same values; ask parse_raw
    why a line is not. Checks are done for all lines at once and located only when one fails (bad lines are rare).
    """
    n = len(lines)
    ok = np.zeros(n, dtype=bool)
    labels, ints = np.zeros(n, np.int64), np.zeros((n, NUM_DENSE), np.int64)
    cats = np.zeros((n, NUM_CATEGORICAL), np.int64)
    bodies = [_strip_newline(line) for line in lines]
    keep = np.arange(n)
    data, field_end = _joined_fields(bodies)
    # Structure: only grammar bytes, and every line exactly NUM_FIELDS fields.
    if not (_GRAMMAR[data].all() and field_end.size == n * NUM_FIELDS
            and (data[field_end[NUM_FIELDS - 1::NUM_FIELDS]] == _NEWLINE).all()):
        shaped = [i for i, body in enumerate(bodies) if body.count(b"\t") == NUM_FIELDS - 1
                  and b"\n" not in body and _GRAMMAR[np.frombuffer(body, np.uint8)].all()]
        if not shaped:
            return ok, labels, ints, cats
        keep = np.array(shaped)
        data, field_end = _joined_fields([bodies[i] for i in shaped])
    field_start = np.empty_like(field_end)
    field_start[0] = 0
    field_start[1:] = field_end[:-1] + 1
    length = field_end - field_start
    kind = np.tile(_LINE_KINDS, keep.size)
    # Fields: label one of 0/1; ints at most 18 digits after an optional minus, which needs a digit after it;
    # hashes at most 8 digits, no minus; no hex letter in the label or the ints.
    negative = data[field_start] == _MINUS
    digits = length - negative
    bad_field = np.zeros(field_end.size, dtype=bool)
    bad_field[::NUM_FIELDS] = (length[::NUM_FIELDS] != 1) | (data[field_start[::NUM_FIELDS]] > ord("1"))
    bad_field |= (digits > np.where(kind == 0, 18, 8)) | (negative & ((kind != 0) | (digits == 0)))
    byte_field = np.repeat(np.arange(field_end.size), length + 1)  # (a separator belongs to the field it ends)
    position = np.arange(data.size)
    byte_kind = kind[byte_field]
    misplaced = ((data == _MINUS) & (position != field_start[byte_field])) | ((data >= ord("A")) & (byte_kind == 0))
    bad_field[byte_field[misplaced]] = True
    good = ~bad_field.reshape(-1, NUM_FIELDS).any(axis=1)
    # Values: each digit times its place value, summed per field. Separators and minus signs are digit 0, so
    # their place (a separator's is -1) does not matter; places past a field's limit only occur in bad fields.
    place = np.minimum(field_end[byte_field] - 1 - position + byte_kind, _PLACE.size - 1)
    values = np.add.reduceat(_DIGIT[data] * _PLACE[place], field_start)
    values = np.where(negative, -values, values).reshape(-1, NUM_FIELDS)[good]
    rows = keep[good]
    ok[rows] = True
    labels[rows] = values[:, 0]
    ints[rows] = values[:, 1:1 + NUM_DENSE]
    cats[rows] = values[:, 1 + NUM_DENSE:]
    return ok, labels, ints, cats


def _open_binary(path: Path) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def _raw_lines(path: Path) -> Iterator[bytes | None]:
    """Lines as bytes; None for a line longer than MAX_LINE_BYTES (whose rest is skipped, not kept in memory)."""
    try:
        with _open_binary(path) as stream:
            while True:
                line = stream.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while True:
                        rest = stream.readline(1 << 16)
                        if not rest or rest.endswith(b"\n"):
                            break
                    yield None
                    continue
                yield line
    except (OSError, EOFError, zlib.error) as exc:  # unreadable file, corrupt or truncated gzip
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _is_csv_header(raw: bytes) -> bool:
    return raw.split(b",", 1)[0].strip().lower() == b"label"


def _looks_like_csv(raw: bytes | None) -> bool:
    """A first line with commas where Criteo's TSV has tabs: DeepCTR's `label,I1,...,C26` layout and its kin."""
    return raw is not None and b"\t" not in raw and raw.count(b",") >= NUM_FIELDS - 1


def criteo_lines(paths: Sequence[Path], *, file_format: str = "tsv", shard: tuple[int, int] | None = None
                 ) -> Iterator[tuple[bytes | None, str, int]]:
    """(line, path, line number) of every count-th line of `paths` taken together, from line `index`
    (shard=(index, count); all lines without it). Lines come as Criteo TSV whatever `file_format`: a "csv" file's
    commas become tabs (Criteo fields hold neither) and its header line, if any, is skipped and not counted.
    None stands for a line longer than MAX_LINE_BYTES. A "tsv" file whose first line is comma-separated raises one
    DataError saying so, rather than one bad line per line."""
    if file_format not in FORMATS:
        raise ValueError(f"file format must be one of {FORMATS}, found {file_format!r}")
    index, count = shard if shard is not None else (0, 1)
    global_line = -1
    for path in paths:
        for line_no, raw in enumerate(_raw_lines(path), start=1):
            if line_no == 1 and file_format == "tsv" and _looks_like_csv(raw):
                header = " with a header" if raw is not None and _is_csv_header(raw) else ""
                raise DataError(f"{path}:1: this looks like CSV{header} (comma-separated fields), not Criteo's "
                                "tab-separated layout; read it with --format csv")
            if file_format == "csv" and raw is not None:
                if line_no == 1 and _is_csv_header(raw):
                    continue
                raw = raw.replace(b",", b"\t")
            global_line += 1
            if global_line % count == index:
                yield raw, str(path), line_no


def check_format(paths: Sequence[Path], file_format: str) -> None:
    """Raises criteo_lines' DataError now for a file whose first line shows it is in another format, so that a
    command reading many shards of it fails once, before any work."""
    for path in paths:
        next(criteo_lines([path], file_format=file_format), None)


class CriteoReader:
    """Streams Batches from Criteo TSV files (plain or gzip), one pass per iteration.

    shard=(index, count) keeps every count-th line starting at line `index` (0-based), counted over all paths
    in order. Bad lines are skipped and counted; DataError is raised (naming the file, line number and reason of
    the latest bad line) once bad_lines / lines exceeds max_bad_fraction, checked from MIN_LINES_FOR_THRESHOLD
    lines on and again at the end of the data. `lines` and `bad_lines` count this shard's lines only.
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], config: DLRMConfig,
                 batch_size: int, *, max_bad_fraction: float = 0.01, layout: str = "kaggle",
                 file_format: str = "tsv", shard: tuple[int, int] | None = None, drop_remainder: bool = False
                 ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("CriteoReader: expected at least one path")
        if config.num_dense != NUM_DENSE or config.num_tables != NUM_CATEGORICAL:
            raise ValueError(f"CriteoReader: Criteo has {NUM_DENSE} dense and {NUM_CATEGORICAL} categorical "
                             f"features, config has {config.num_dense} and {config.num_tables}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"CriteoReader: batch_size must be a positive integer, found {batch_size!r}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"CriteoReader: max_bad_fraction must be in [0, 1], found {max_bad_fraction}")
        if layout not in LAYOUTS:
            raise ValueError(f"CriteoReader: layout must be one of {LAYOUTS}, found {layout!r}")
        if file_format not in FORMATS:
            raise ValueError(f"CriteoReader: file_format must be one of {FORMATS}, found {file_format!r}")
        if shard is not None:
            index, count = shard
            if count < 1 or not 0 <= index < count:
                raise ValueError(f"CriteoReader: shard must be (index, count) with 0 <= index < count, found {shard}")
        self.config = config
        self.batch_size = batch_size
        self.max_bad_fraction = max_bad_fraction
        self.layout = layout
        self.file_format = file_format
        self.shard = shard
        self.drop_remainder = drop_remainder
        self.lines = 0
        self.bad_lines = 0
        self.bad_examples: list[tuple[str, int, str]] = []  # the first few (path, line number, reason)

    def _check_fraction(self, last_bad: tuple[str, int, str] | None, at_end: bool) -> None:
        if self.lines == 0 or (self.lines < MIN_LINES_FOR_THRESHOLD and not at_end):
            return
        if self.bad_lines / self.lines > self.max_bad_fraction:
            where = f"{last_bad[0]}:{last_bad[1]}: {last_bad[2]}" if last_bad else "bad lines"
            raise DataError(f"{where} ({self.bad_lines} of {self.lines} {self.layout} lines bad, more than "
                            f"max_bad_fraction {self.max_bad_fraction}; --max-bad-fraction raises it)")

    def _make_batch(self, labels: np.ndarray, ints: np.ndarray, cats: np.ndarray) -> Batch:
        return Batch(dense=transform_dense(ints), cat=hash_to_rows(cats, self.config.table_sizes),
                     labels=labels.astype(np.float32))

    def _parse_block(self, block: list[tuple[bytes | None, str, int]], last_bad: tuple[str, int, str] | None
                     ) -> tuple[tuple[str, int, str] | None, np.ndarray, np.ndarray, np.ndarray]:
        """Parse lines at once; count them and the bad ones (checking the bad fraction at the same lines as a
        line-by-line reader would). Returns (last bad line, labels, ints, cats) of the good lines, in order."""
        ok, labels, ints, cats = parse_lines([b"" if raw is None else raw for raw, _, _ in block])
        base = self.lines
        events = list(np.flatnonzero(~ok))
        threshold = MIN_LINES_FOR_THRESHOLD - base - 1  # the block position at which `lines` reaches the minimum
        if 0 <= threshold < len(block) and ok[threshold]:
            events = sorted(events + [threshold])
        for position in events:
            self.lines = base + int(position) + 1
            if not ok[position]:
                raw, path, line_no = block[position]
                self.bad_lines += 1
                last_bad = (path, line_no, _bad_line_reason(raw))
                if len(self.bad_examples) < 20:
                    self.bad_examples.append(last_bad)
            self._check_fraction(last_bad, at_end=False)
        self.lines = base + len(block)
        return last_bad, labels[ok], ints[ok], cats[ok]

    def __iter__(self) -> Iterator[Batch]:
        self.lines = self.bad_lines = 0
        self.bad_examples = []
        last_bad: tuple[str, int, str] | None = None
        block_size = max(self.batch_size, 256)
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        pending_rows = 0
        block: list[tuple[bytes | None, str, int]] = []
        lines = criteo_lines(self.paths, file_format=self.file_format, shard=self.shard)
        while True:
            block.clear()
            for item in lines:
                block.append(item)
                if len(block) == block_size:
                    break
            if not block:
                break
            last_bad, *parsed = self._parse_block(block, last_bad)
            pending.append(tuple(parsed))
            pending_rows += len(parsed[0])
            if pending_rows >= self.batch_size:
                labels, ints, cats = _concat_columns(pending)
                full = pending_rows - pending_rows % self.batch_size
                for start in range(0, full, self.batch_size):
                    end = start + self.batch_size
                    yield self._make_batch(labels[start:end], ints[start:end], cats[start:end])
                pending = [(labels[full:], ints[full:], cats[full:])]
                pending_rows -= full
        self._check_fraction(last_bad, at_end=True)
        if pending_rows and not self.drop_remainder:
            yield self._make_batch(*_concat_columns(pending))


def _concat_columns(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, ints, cats) of parsed blocks, concatenated in order."""
    labels, ints, cats = (np.concatenate(columns) for columns in zip(*parts, strict=True))
    return labels, ints, cats


def _bad_line_reason(raw: bytes | None) -> str:
    """Why parse_raw rejects a line (one parse_lines found bad)."""
    if raw is None:
        return f"line longer than {MAX_LINE_BYTES} bytes"
    try:
        parse_raw(raw.decode("ascii"))
    except UnicodeDecodeError as exc:
        return f"non-ASCII byte at column {exc.start + 1}"
    except BadLine as exc:
        return exc.reason
    return "malformed line"  # unreachable while parse_lines and parse_raw agree (tests/test_data.py checks)


# ---------------------------------------------------------------------------------------------------------
# Command-line options of every process that reads Criteo files


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {text}")
    return value


def add_format_arguments(group: argparse._ActionsContainer) -> None:
    """--layout and --format, for every command that reads Criteo files."""
    group.add_argument("--layout", choices=LAYOUTS, default="kaggle", help="Criteo layout (default kaggle)")
    group.add_argument("--format", dest="file_format", choices=FORMATS, default="tsv",
                       help="tsv: Criteo's tab-separated lines (default); csv: comma-separated fields, with or "
                            "without a `label,I1,...,C26` header line (as DeepCTR ships its Criteo sample)")


def add_max_bad_fraction_argument(group: argparse._ActionsContainer) -> None:
    group.add_argument("--max-bad-fraction", type=_fraction, default=0.01,
                       help="stop with an error when more than this fraction of lines is malformed "
                            "(default 0.01); bad lines below it are skipped, counted and reported")

"""The federation's audit log: one JSON object per line, each on disk (fsynced) before record() returns.

A line is {"time": "<RFC 3339 UTC, milliseconds, Z>", "event": <event>, <fields>...}; bytes values are written
as lowercase hex. Callers record an event before they act on it, so whatever the log does not hold did not
happen.

Why read_audit forgives a torn last line and nothing else: record() writes each line with one append and returns
only after fsync, so a crash can leave at most the last line incomplete (typically without its newline), and that
record was never acknowledged to its caller. Any other damage (a bad line followed by more lines, or a last line
that ends in a newline but is not JSON) is corruption or tampering, and is reported with its line number.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any


def _hex_bytes(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"audit fields must be JSON values or bytes, found {type(value).__name__}")


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends records to `path` (created with mode 0600, parent directories as needed). Thread-safe."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and return it as written. A field that is neither a JSON value nor bytes (or a
        float that JSON cannot hold) is a TypeError, raised before anything is written."""
        if not isinstance(event, str):
            raise TypeError(f"event: expected a string, found {type(event).__name__}")
        if "time" in fields:
            raise TypeError("'time' is the record's own field")
        try:
            line = json.dumps({"time": _now_rfc3339(), "event": event, **fields}, default=_hex_bytes,
                              allow_nan=False, ensure_ascii=True) + "\n"
        except ValueError as e:  # NaN or an infinity
            raise TypeError(f"audit fields must be JSON values: {e}") from None
        data = line.encode("ascii")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"audit log {self.path} is closed")
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        return json.loads(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_audit(path: str | os.PathLike, tolerate_torn_tail: bool = True) -> list[dict[str, Any]]:
    """The records of an audit log, in order. A line that is not a JSON object is a ValueError naming its line
    number, except a last line without its newline (a crash mid-write), which is skipped when tolerate_torn_tail
    (see the module docstring)."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty unless the last line is torn
    if tail and not tolerate_torn_tail:
        raise ValueError(f"audit log {path}: line {len(lines) + 1} is torn (no newline at the end of the file)")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"audit log {path}: line {number} is not a JSON object: {line[:80]!r}")
        records.append(record)
    return records

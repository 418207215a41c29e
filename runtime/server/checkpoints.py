"""Atomic checkpoints: a directory of ckpt-<version>.npz files (numpy arrays plus a JSON metadata entry).

A checkpoint is written to a temporary file in the same directory, fsynced, renamed over its final name and
the directory fsynced, so a crash at any point leaves either the old set of checkpoints or the new one, never
a half-written file under a checkpoint name. Loading takes the newest checkpoint that reads back completely
(zip CRCs checked) and falls back to older ones.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")
_META_KEY = "__meta__"


@dataclass
class Checkpoint:
    version: int
    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def checkpoint_path(directory: Path, version: int) -> Path:
    return directory / f"ckpt-{version:012d}.npz"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, version: int, arrays: dict[str, np.ndarray], meta: dict[str, Any],
         keep: int = 2) -> Path:
    """Write checkpoint `version` atomically and delete all but the newest `keep` checkpoints."""
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, version)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    meta_bytes = np.frombuffer(json.dumps(dict(meta, version=version), sort_keys=True).encode(), dtype=np.uint8)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{_META_KEY: meta_bytes})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(directory)
    for old in list_versions(directory)[:-keep] if keep > 0 else []:
        checkpoint_path(directory, old).unlink(missing_ok=True)
    return final


def list_versions(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def load(path: Path) -> Checkpoint:
    """Read one checkpoint; raises ValueError if it is unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"checkpoint {path}: unreadable ({error})") from None
    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise ValueError(f"checkpoint {path}: no {_META_KEY} entry")
    try:
        meta = json.loads(raw.tobytes())
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: metadata is not JSON ({error})") from None
    match = _NAME.match(path.name)
    if not isinstance(meta, dict) or match is None or meta.get("version") != int(match.group(1)):
        raise ValueError(f"checkpoint {path}: metadata version does not match the file name")
    return Checkpoint(int(meta["version"]), path, arrays, meta)


def restore_latest(directory: Path, restore: Callable[[Checkpoint], None]) -> Checkpoint | None:
    """Call restore() on the newest checkpoint that loads and that restore() accepts (it raises ValueError to
    reject one, and must then have changed nothing); None if there is no such checkpoint."""
    for version in reversed(list_versions(directory)):
        path = checkpoint_path(directory, version)
        try:
            checkpoint = load(path)
            restore(checkpoint)
            return checkpoint
        except ValueError as error:
            print(f"warning: skipping {error}", file=sys.stderr, flush=True)
    return None

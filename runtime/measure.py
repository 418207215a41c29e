"""The files whose measurement is a runtime process's MRENCLAVE: what a Gramine manifest lists as trusted.

The Python sources of the ratls and runtime packages (generated protobuf code included) and the native
libraries next to them. A changed byte in any of them changes MRENCLAVE, so a peer running different code is
rejected. Manifests are generated from the same list.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
_PACKAGES = ("ratls", "runtime")
_SUFFIXES = (".py", ".so")


def runtime_files(base_dir: Path = BASE_DIR) -> list[Path]:
    """Sorted absolute paths of the measured files under base_dir (the directory holding the packages)."""
    files: list[Path] = []
    for package in _PACKAGES:
        for path in (base_dir / package).rglob("*"):
            if (path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts
                    and not path.name.startswith(".")):
                files.append(path)
    return sorted(files)

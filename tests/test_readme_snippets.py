"""Every python snippet of the README runs as written, from the repository root, and again: as a script run twice
(`python snippet.py; python snippet.py`) and twice in one process (a notebook cell run again)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from runtime_tools import REPO

README = (REPO / "README.md").read_text()
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
# exec()s the program on stdin twice, each time in fresh globals, as a notebook re-runs a cell's code.
TWICE_IN_ONE_PROCESS = ("import sys\nprogram = compile(sys.stdin.read(), 'README.md', 'exec')\n"
                        "for _ in range(2):\n    exec(program, {'__name__': '__main__'})\n")


def _stdout(command: list[str], tmp_path, program: str | None = None) -> list[str]:
    # The snippets make their sim CA with tempfile.mkdtemp: in tmp_path, not in the machine's /tmp.
    result = subprocess.run(command, cwd=REPO, input=program, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_using_ratls_starts_with_a_snippet():
    assert SNIPPETS and f"## Using `ratls`\n\n```python\n{SNIPPETS[0]}```" in README


@pytest.mark.parametrize("last", range(len(SNIPPETS)), ids=lambda i: f"snippet{i + 1}")
def test_snippet_runs_twice(last, tmp_path):
    """Snippet `last`, run with the ones before it (later snippets use `me` and `policy` "as above")."""
    program = "\n".join(SNIPPETS[:last + 1])
    first, second = (_stdout([sys.executable, "-c", program], tmp_path) for _ in range(2))
    assert re.fullmatch(r"[0-9a-f]{64} Unknown", first[0])  # the first snippet's MRENCLAVE and TCB status
    assert second == first  # the same measured files, the same MRENCLAVE
    assert _stdout([sys.executable, "-c", TWICE_IN_ONE_PROCESS], tmp_path, program) == first * 2

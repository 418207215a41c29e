"""The README's first ratls snippet runs as written, from the repository root, and again on a second run."""

from __future__ import annotations

import re
import subprocess
import sys

from runtime_tools import REPO


def test_first_ratls_snippet_runs_twice():
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"## Using `ratls`\n\n```python\n(.*?)```", readme, re.S)
    assert snippet, "the README's 'Using ratls' section starts with a python snippet"
    outputs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout.split())
    for mrenclave, tcb_status in outputs:
        assert re.fullmatch(r"[0-9a-f]{64}", mrenclave) and tcb_status == "Unknown"
    assert outputs[0][0] == outputs[1][0]  # the same measured files, the same MRENCLAVE

"""A short libFuzzer run of each fuzz target (ASan + UBSan, clang), seeded from ../shared/testdata and sim
identities, after replaying every saved regression input. Long campaigns: `python native/fuzz/run.py --seconds N`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

SECONDS = 30


def test_fuzz_targets_short_run(tmp_path):
    if shutil.which("clang") is None:
        pytest.fail("clang is not installed (Debian: apt-get install clang; it ships libFuzzer)")
    out = subprocess.run([sys.executable, str(REPO / "native" / "fuzz" / "run.py"), "--seconds", str(SECONDS),
                          "--build-dir", str(REPO / "build" / "fuzz"), "--work-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert [r["target"] for r in results] == ["fuzz_quote", "fuzz_cert", "fuzz_attest"]
    for r in results:
        assert r["exit"] == 0 and r["crashes"] == [], r
        # Each target ran well past its seeds (the run is nice'd: on a busy machine it gets little CPU) and reached
        # code beyond the parsers' first checks.
        assert r["runs"] >= 100 and r["cov"] > 100 and r["corpus"] >= 4, r
        print(json.dumps(r))

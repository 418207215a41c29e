"""The C unit tests (ctest), built twice: as shipped, and under AddressSanitizer + UndefinedBehaviorSanitizer."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, TESTDATA


@pytest.mark.parametrize("sanitize", ["OFF", "ON"], ids=["plain", "asan-ubsan"])
def test_ctest(sanitize):
    build = REPO / "build" / f"ctest-sanitize-{sanitize.lower()}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DRATLS_SANITIZE={sanitize}",
                    "-DRATLS_BUILD_PYTHON=OFF", f"-DRATLS_TESTDATA={TESTDATA}"],
                   check=True, capture_output=True, timeout=300)
    built = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    ran = subprocess.run(["ctest", "--output-on-failure", "--timeout", "300"], cwd=build, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-6000:]
    assert "100% tests passed" in ran.stdout

"""The C core under valgrind memcheck: the C unit tests and the fuzz targets' seed and regression inputs (the
verification and handshake paths, run once each by the replay_* builds), with zero memory errors and zero
definitely or indirectly lost bytes. The exhaustive sweeps are sampled (RATLS_TEST_QUICK=1): valgrind is ~50x
slower, and the full sweeps run in the plain and ASan builds (test_native.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO, TESTDATA

BUILD = REPO / "build" / "ctest-sanitize-off"  # the same configuration as test_native.py's plain build
MEMCHECK = ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect", "--error-exitcode=99", "--track-fds=no"]
MEMCHECK_ERROR = 99


@pytest.fixture(scope="module")
def build():
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed (Debian: apt-get install valgrind)")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(BUILD), "-DRATLS_SANITIZE=OFF", "-DRATLS_BUILD_PYTHON=OFF",
                    f"-DRATLS_TESTDATA={TESTDATA}"], check=True, capture_output=True, timeout=300)
    targets = [f"test_{t}" for t in ("bytes", "cbor", "quote", "cert", "attest", "tdx")] + \
              [f"replay_{t}" for t in ("quote", "cert", "attest")] + ["ratls_sim"]
    built = subprocess.run(["cmake", "--build", str(BUILD), "-j", "2", "--target", *targets], capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return BUILD


def _env(build) -> dict[str, str]:
    return dict(os.environ, RATLS_TESTDATA=str(TESTDATA), RATLS_SIM_LIB=str(build / "libratls_sim.so"),
                RATLS_SOURCE_DIR=str(REPO), RATLS_TEST_QUICK="1")


def memcheck(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs cmd under memcheck and asserts it found no errors and no definite or indirect leaks."""
    out = subprocess.run(MEMCHECK + cmd, env=env, capture_output=True, text=True, timeout=900)
    summary = re.findall(r"ERROR SUMMARY: (\d+) errors", out.stderr)
    assert out.returncode != MEMCHECK_ERROR and summary and summary[-1] == "0", out.stderr[-8000:]
    for kind in ("definitely", "indirectly"):
        lost = re.findall(rf"{kind} lost: ([\d,]+) bytes", out.stderr)
        assert all(n == "0" for n in lost), out.stderr[-8000:]
    return out


@pytest.mark.parametrize("name", ["bytes", "cbor", "quote", "cert", "tdx"])
def test_c_tests_under_memcheck(build, name):
    out = memcheck([str(build / f"test_{name}")], _env(build))
    assert out.returncode == 0 and re.search(r"\d+ passed, 0 failed", out.stdout), out.stdout[-3000:]


def test_attestation_handshake_tests_under_memcheck(build):
    """test_attest under memcheck: no memory errors, no lost memory. Its own checks are asserted by test_native.py
    and not here: some of its deadlines (300 ms handshakes) are not met under valgrind's ~50x slowdown on a busy
    machine, and a missed one ends the binary early. The handshake paths run to completion under memcheck in
    test_fuzz_inputs_under_memcheck, whose deadlines are generous."""
    out = memcheck([str(build / "test_attest")], _env(build))
    assert re.search(r"\d+ passed", out.stdout + out.stderr) or "REQUIRE failed" in out.stderr, out.stderr[-3000:]


def test_fuzz_inputs_under_memcheck(build, tmp_path):
    """Every seed and saved regression input of the three fuzz targets: quote and certificate verification, raw
    bytes to the attestation server, attesting clients, a malicious server's acknowledgements."""
    spec = importlib.util.spec_from_file_location("fuzz_run", REPO / "native" / "fuzz" / "run.py")
    fuzz_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_run)
    seeds = fuzz_run.make_seeds(tmp_path)
    env = dict(_env(build), RATLS_SIM_CA_DIR=str(tmp_path / "sim-ca"))
    for target, seed_dir in seeds.items():
        regressions = fuzz_run.REGRESSIONS / target
        inputs = sorted(seed_dir.iterdir()) + (sorted(regressions.iterdir()) if regressions.is_dir() else [])
        out = memcheck([str(build / target.replace("fuzz_", "replay_")), *map(str, inputs)], env)
        assert out.returncode == 0 and f"ran {len(inputs)} inputs" in out.stdout, out.stdout + out.stderr[-5000:]

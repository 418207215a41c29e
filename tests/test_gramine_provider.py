"""The gramine provider: the real code path against our sim library under Gramine's file names, and the errors
when Gramine's libraries are missing (never a fallback to sim)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import ratls
import ratls.gramine


def test_gramine_path_passes_the_same_tests_as_sim(tmp_path):
    """tests/gramine_suite.py, in a subprocess: every test runs once on the sim path and once on the gramine path
    (Gramine's file names, Gramine's ABI only, configured through the environment) and both pass."""
    lib_dir = tmp_path / "gramine-lib"
    lib_dir.mkdir()
    for name in ("libra_tls_attest.so", "libra_tls_verify_dcap.so"):
        shutil.copy(ratls.identity.SIM_LIBRARY, lib_dir / name)
    ca = ratls.SimCA.init(tmp_path / "sim-ca")
    env = dict(os.environ, RATLS_SIM_CA_DIR=str(ca.path), RATLS_SIM_MRENCLAVE="5e" * 32,
               RATLS_GRAMINE_ATTEST_LIB=str(lib_dir / "libra_tls_attest.so"),
               RATLS_GRAMINE_VERIFY_LIB=str(lib_dir / "libra_tls_verify_dcap.so"), RATLS_GRAMINE_LIB_DIR=str(lib_dir))
    suite = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(REPO / "tests" / "gramine_suite.py"),
             "--rootdir", str(REPO), "--basetemp", str(tmp_path / "suite")]
    out = subprocess.run(suite, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-3000:]
    passed = re.findall(r"::(\w+)\[?([^\]\s]*)\]? PASSED", out.stdout)
    sim = {test for test, params in passed if params.endswith("sim") or params.startswith("sim")}
    gramine = {test for test, params in passed if "gramine" in params}
    assert len(sim) >= 5 and sim == gramine, (sim, gramine)
    cases = {params for test, params in passed if test == "test_rejection"}
    assert len(cases) == 2 * 16, cases
    assert not re.search(r"\b(failed|skipped|error)", out.stdout.splitlines()[-1])


@pytest.fixture
def no_gramine(monkeypatch, tmp_path):
    """A machine without Gramine: nothing in the install locations or LD_LIBRARY_PATH, no variables."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(ratls.gramine, "INSTALL_DIRS", (str(empty),))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path / "also-empty"))
    monkeypatch.delenv("RATLS_GRAMINE_ATTEST_LIB", raising=False)
    monkeypatch.delenv("RATLS_GRAMINE_VERIFY_LIB", raising=False)
    return empty


def test_missing_attest_library_is_explained_and_never_falls_back_to_sim(no_gramine, tmp_path, sim_ca):
    with pytest.raises(ratls.ProviderError) as e:
        ratls.Identity.create("gramine", sim_ca=sim_ca.path, measured_files=[__file__])
    message = str(e.value)
    for expected in (str(no_gramine / "libra_tls_attest.so"), str(tmp_path / "also-empty" / "libra_tls_attest.so"),
                     "$RATLS_GRAMINE_ATTEST_LIB is unset", "`gramine` package", "never falls back"):
        assert expected in message, message


def test_missing_verify_library_is_explained(no_gramine):
    with pytest.raises(ratls.ProviderError) as e:
        ratls.gramine.GramineVerifier()
    message = str(e.value)
    for expected in (str(no_gramine / "libra_tls_verify_dcap.so"), "$RATLS_GRAMINE_VERIFY_LIB is unset",
                     "gramine-ratls-dcap", "libsgx-dcap-quote-verify"):
        assert expected in message, message


def test_configured_path_that_does_not_exist(no_gramine, monkeypatch, tmp_path):
    monkeypatch.setenv("RATLS_GRAMINE_VERIFY_LIB", str(tmp_path / "nope.so"))
    with pytest.raises(ratls.ProviderError, match=r"nope\.so \(\$RATLS_GRAMINE_VERIFY_LIB\) does not exist"):
        ratls.gramine.GramineVerifier()
    with pytest.raises(ratls.ProviderError, match=r"other\.so \(library_path\) does not exist"):
        ratls.Identity.create("gramine", library_path=str(tmp_path / "other.so"))


def test_a_library_without_gramines_abi_is_refused(tmp_path):
    not_gramine = tmp_path / "libnot_gramine.so"
    shutil.copy(Path(ratls._native.__file__), not_gramine)  # a loadable library exporting no ra_tls_* symbol
    with pytest.raises(ratls.ProviderError, match="does not export ra_tls_verify_callback_extended_der"):
        ratls.gramine.GramineVerifier(not_gramine)
    with pytest.raises(ratls.ProviderError, match="does not export ra_tls_create_key_and_crt_der"):
        ratls.Identity.create("gramine", library_path=str(not_gramine))

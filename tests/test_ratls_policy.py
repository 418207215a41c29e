"""Policies from code, Gramine's RA_TLS_* environment and TOML files; the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ratls

REPO_ENV_KEYS = ("RA_TLS_MRENCLAVE", "RA_TLS_MRSIGNER", "RA_TLS_ISV_PROD_ID", "RA_TLS_ISV_SVN",
                 "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE", "RA_TLS_ALLOW_HW_CONFIG_NEEDED",
                 "RA_TLS_ALLOW_SW_HARDENING_NEEDED", "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE")


@pytest.fixture
def ra_env(monkeypatch):
    for k in REPO_ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_bad_policy_values_are_specific():
    with pytest.raises(ratls.PolicyError, match="32 bytes"):
        ratls.Policy(mrenclave="abcd")
    with pytest.raises(ratls.PolicyError, match="not hex"):
        ratls.Policy(mrsigner="zz" * 32)
    with pytest.raises(ratls.PolicyError, match="unknown status"):
        ratls.Policy(allowed_tcb_statuses=("Fine",))
    with pytest.raises(ratls.PolicyError, match="0..65535"):
        ratls.Policy(isv_prod_id=70000)
    with pytest.raises(ratls.PolicyError, match="needs sim_root"):
        ratls.Policy(allow_simulated=True)
    with pytest.raises(ratls.PolicyError, match="cannot read"):
        ratls.Policy(trusted_root="/nonexistent/root.pem")
    with pytest.raises(AttributeError):
        ratls.Policy().allow_debug = True


def test_from_env_gramine_semantics(ra_env, identity, sim_ca):
    ra_env.setenv("RA_TLS_MRENCLAVE", identity.mrenclave.hex())
    ra_env.setenv("RA_TLS_MRSIGNER", "any")
    ra_env.setenv("RA_TLS_ISV_PROD_ID", "0")
    with pytest.raises(ratls.PolicyError, match="RA_TLS_ISV_SVN"):
        ratls.Policy.from_env()  # since Gramine v1.8 all four measurement variables are required
    ra_env.setenv("RA_TLS_ISV_SVN", "any")
    ra_env.setenv("RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE", "true")  # only exactly "1" enables a flag
    ra_env.setenv("RA_TLS_ALLOW_SW_HARDENING_NEEDED", "1")
    p = ratls.Policy.from_env(allow_simulated=True, sim_root=sim_ca.path)
    assert p.mrenclave == (identity.mrenclave,) and p.mrsigner == () and p.isv_prod_id == 0
    assert p.min_isv_svn is None and not p.allow_debug
    assert set(p.allowed_tcb_statuses) == {"UpToDate", "SWHardeningNeeded"}
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(identity.certificate_der, p)
    assert e.value.reason == ratls.Reason.TCB_STATUS  # sim evidence is "Unknown": not in Gramine's statuses
    ra_env.setenv("RA_TLS_ISV_PROD_ID", "12x")
    with pytest.raises(ratls.PolicyError, match="RA_TLS_ISV_PROD_ID"):
        ratls.Policy.from_env()


def test_from_file(tmp_path, identity, sim_ca):
    f = tmp_path / "policy.toml"
    (tmp_path / "ca").symlink_to(sim_ca.path)
    f.write_text(f'mrenclave = ["{identity.mrenclave.hex()}"]\nmrsigner = "any"\nallow_simulated = true\n'
                 'sim_root = "ca"\nallowed_tcb_statuses = ["UpToDate", "Unknown"]\n')
    p = ratls.Policy.from_file(f)
    assert ratls.verify_certificate(identity.certificate_der, p).mrenclave == identity.mrenclave
    f.write_text('mrenclave = "any"\nallow_debugg = true\n')
    with pytest.raises(ratls.PolicyError, match="unknown keys allow_debugg"):
        ratls.Policy.from_file(f)
    f.write_text("mrenclave = [")
    with pytest.raises(ratls.PolicyError, match="not valid TOML"):
        ratls.Policy.from_file(f)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ratls", *args], capture_output=True, text=True, timeout=120)


def test_cli_inspect_json(testdata):
    out = run_cli("inspect", "--json", str(testdata / "sgx" / "gramine" / "gramine-cert.pem"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["certificate"]["evidence_extensions"] == ["dice", "legacy"]
    assert report["verification"]["evidence"]["mrenclave"] == (
        "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585")
    assert report["verification"]["evidence"]["provider"] == "sgx"
    out = run_cli("inspect", str(testdata / "sgx" / "dcap-qvl" / "sgx_quote"), "--time", "1752919277",
                  "--collateral", str(testdata / "sgx" / "dcap-qvl" / "sgx_quote_collateral.json"))
    assert "ConfigurationAndSWHardeningNeeded" in out.stdout


def test_cli_sim_ca_and_measure(tmp_path, measured_tree):
    out = run_cli("sim-ca", "init", str(tmp_path / "ca"))
    assert out.returncode == 0 and "WARNING" in out.stdout
    assert run_cli("sim-ca", "init", str(tmp_path / "ca")).returncode == 2  # refuses to overwrite
    out = run_cli("measure", str(measured_tree), "--root", str(measured_tree))
    assert out.stdout.strip() == ratls.measure([measured_tree], measured_tree).hex()
    bad = tmp_path / "junk.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    out = run_cli("inspect", str(bad))
    assert out.returncode == 1 and "CERT_MALFORMED" in out.stdout


@pytest.mark.parametrize("text,key", [
    ('mrenclave = "any"\nmrsigner = "any"\nallow_debug = "false"\n', "allow_debug"),  # a string is truthy
    ('mrenclave = "any"\nmrsigner = "any"\nallow_simulated = "false"\n', "allow_simulated"),
    ('mrenclave = "any"\nmrsigner = "any"\nallow_debug = 0\n', "allow_debug"),
    ("", "mrenclave and mrsigner missing"),  # would otherwise accept any enclave
    ("# only a comment\n", "mrenclave and mrsigner missing"),
    ('mrenclave = "any"\n', "mrsigner missing"),
    ('mrenclave = "any"\nmrsigner = "any"\ntrusted_root = ["a.pem"]\n', "trusted_root: expected a path"),
    ('mrenclave = "any"\nmrsigner = "any"\ntrusted_root = 5\n', "trusted_root: expected a path"),
    ('mrenclave = 5\nmrsigner = "any"\n', "mrenclave: expected hex digits"),
    ('mrenclave = ["any", 7]\nmrsigner = "any"\n', "mrenclave: expected hex digits"),
    ('mrenclave = "any"\nmrsigner = "any"\nisv_prod_id = true\n', "isv_prod_id"),
    ('mrenclave = "any"\nmrsigner = "any"\nmin_isv_svn = 1.5\n', "min_isv_svn: expected an integer"),
])
def test_policy_files_are_strict(tmp_path, text, key):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(ratls.PolicyError, match=key) as caught:
        ratls.Policy.from_file(f)
    assert str(f) in str(caught.value)


def test_policy_flags_must_be_booleans():
    with pytest.raises(ratls.PolicyError, match="allow_debug: expected true or false"):
        ratls.Policy(allow_debug="false")
    with pytest.raises(ratls.PolicyError, match="allow_simulated: expected true or false"):
        ratls.Policy(allow_simulated=1)


def test_policy_file_any_everywhere(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text('mrenclave = "any"\nmrsigner = "any"\nisv_prod_id = "any"\nmin_isv_svn = "any"\n'
                 "allow_debug = false\n")
    p = ratls.Policy.from_file(f)
    assert (p.mrenclave, p.mrsigner, p.isv_prod_id, p.min_isv_svn, p.allow_debug) == ((), (), None, None, False)

"""Hostile inputs to ratls's own parsers and files (issue: hostile peers): PEM that would make a backtracking
parser quadratic, oversized inputs, and a sim CA's key files and directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

import ratls
from ratls._certs import MAX_PEM_BYTES, certificate_pem, pem_blocks

UNTERMINATED = b"-----BEGIN CERTIFICATE-----\n"


@pytest.mark.timeout(30)
def test_unterminated_pem_blocks_parse_in_linear_time(identity):
    # 1 MiB of BEGIN lines without END took a regular expression minutes (7.7 s at 224 KB, growing with the
    # square).
    real = certificate_pem(identity.certificate_der)
    flood = UNTERMINATED * ((MAX_PEM_BYTES - len(real)) // len(UNTERMINATED))
    assert pem_blocks(flood) == []
    assert pem_blocks(real + flood) == [identity.certificate_der]
    with pytest.raises(ValueError):  # the first BEGIN's block runs to the real block's END: not base64
        pem_blocks(flood + real)


def test_pem_over_the_cap_is_refused_before_parsing(identity, sim_policy):
    flood = UNTERMINATED * (MAX_PEM_BYTES // len(UNTERMINATED) + 1)
    with pytest.raises(ValueError, match=f"larger than {MAX_PEM_BYTES} bytes"):
        pem_blocks(flood)
    with pytest.raises(ratls.RatlsError, match="larger than"):
        ratls.verify_certificate(flood, sim_policy)
    # A normal chain passes as before.
    assert ratls.verify_certificate(certificate_pem(identity.certificate_der), sim_policy).mrenclave == \
        identity.mrenclave


@pytest.mark.timeout(60)
def test_inspect_refuses_an_endless_file_without_reading_it_whole():
    out = subprocess.run([sys.executable, "-m", "ratls", "inspect", "/dev/zero"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "/dev/zero: larger than 4194304 bytes" in out.stderr


def test_sim_ca_keys_are_private_on_every_write(tmp_path):
    path = tmp_path / "ca"
    ratls.SimCA.init(path)
    for name in os.listdir(path):
        os.chmod(path / name, 0o644)  # e.g. copied around with a permissive umask
    ratls.SimCA.init(path, force=True)
    modes = {name: stat.S_IMODE(os.stat(path / name).st_mode) for name in os.listdir(path)}
    assert modes and all(mode == 0o600 for mode in modes.values()), modes


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_sim_ca_refuses_a_directory_others_can_write(tmp_path, mode):
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(ratls.RatlsError, match="writable by group or others"):
        ratls.SimCA.init(path)
    assert os.listdir(path) == []  # nothing written


def test_sim_ca_refuses_a_directory_another_user_owns(tmp_path, monkeypatch):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(ratls.RatlsError, match="not by you"):
        ratls.SimCA.init(path)
    assert os.listdir(path) == []


def test_sim_ca_in_a_new_directory_is_private(tmp_path):
    ca = ratls.SimCA.init(tmp_path / "new" / "ca")
    assert stat.S_IMODE(os.stat(ca.path).st_mode) & 0o077 == 0


def test_a_sim_root_named_as_trusted_root_is_still_simulated(identity, sim_ca):
    # Before: the chain verified to the "trusted" root and the evidence passed as provider "sgx" without
    # allow_simulated.
    statuses = ("UpToDate", "Unknown")
    policy = ratls.Policy(mrenclave=identity.mrenclave, trusted_root=sim_ca.path / "root.crt.pem",
                          allowed_tcb_statuses=statuses)
    with pytest.raises(ratls.VerificationError) as caught:
        ratls.verify_certificate(identity.certificate_der, policy)
    assert caught.value.reason == ratls.Reason.SIMULATED_DENIED
    assert "trusted_root" in caught.value.message and "is a simulation root" in caught.value.message
    allowed = ratls.Policy(mrenclave=identity.mrenclave, trusted_root=sim_ca.path / "root.crt.pem",
                           allow_simulated=True, sim_root=sim_ca.path, allowed_tcb_statuses=statuses)
    assert ratls.verify_certificate(identity.certificate_der, allowed).provider == "sim"

"""The simulation CA: what the simulated provider signs quotes with, in place of Intel's PCK hierarchy.

A sim-ca directory holds a root CA, a PCK CA and a PCK leaf certificate (P-256, as Intel's), the quoting
enclave's attestation key, and the RSA-3072 enclave signing key whose modulus gives MRSIGNER (as in SGX).
It is for development and tests: its keys are on disk, so its evidence proves nothing about a real enclave, and
verifiers accept it only under a policy that names its root and says allow_simulated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ratls.errors import RatlsError

ROOT_CN = "RATLS Simulated SGX Root CA"
PCK_CA_CN = "RATLS Simulated SGX PCK Platform CA"
PCK_CN = "RATLS Simulated SGX PCK Certificate"
_FILES = ("root.crt.pem", "pck_ca.crt.pem", "pck.crt.pem", "pck.key.pem", "attestation.key.pem", "signer.key.pem")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RATLS Simulation")])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, path_len: int | None, years: int):
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365 * years))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_private_directory(path: Path) -> None:
    """A sim CA's keys issue evidence every sim policy naming its root accepts: only their owner may write where
    they live."""
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise RatlsError(f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}): keep a sim CA in a "
                         "directory only you control")
    if st.st_mode & 0o022:
        raise RatlsError(f"{path} is writable by group or others (mode {st.st_mode & 0o777:o}): keep a sim CA in "
                         "a private directory (e.g. tempfile.mkdtemp(), or chmod go-w)")


class SimCA:
    """A simulation CA directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        missing = [f for f in _FILES if not (self.path / f).is_file()]
        if missing:
            raise RatlsError(f"{self.path} is not a sim-ca directory (missing {', '.join(missing)}); "
                             "make one with `python -m ratls sim-ca init DIR`")

    @classmethod
    def init(cls, path: str | os.PathLike, *, force: bool = False) -> SimCA:
        """Creates a new simulation CA in `path` (created if needed; refuses to overwrite one unless force)."""
        path = Path(path)
        if not force and any((path / f).exists() for f in _FILES):
            raise RatlsError(f"{path} already holds a sim CA; pass force=True (--force) to replace it")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private_directory(path)
        root_key = ec.generate_private_key(ec.SECP256R1())
        pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        # SGX enclave signing keys are RSA-3072 with e = 3 (Gramine's gramine-sgx-gen-private-key too).
        signer_key = rsa.generate_private_key(public_exponent=3, key_size=3072)
        root = _cert(ROOT_CN, root_key, ROOT_CN, root_key, ca=True, path_len=1, years=10)
        pck_ca = _cert(PCK_CA_CN, pck_ca_key, ROOT_CN, root_key, ca=True, path_len=0, years=10)
        pck = _cert(PCK_CN, pck_key, PCK_CA_CN, pck_ca_key, ca=False, path_len=None, years=7)
        pem = serialization.Encoding.PEM
        outputs = {
            "root.crt.pem": root.public_bytes(pem),
            "pck_ca.crt.pem": pck_ca.public_bytes(pem),
            "pck.crt.pem": pck.public_bytes(pem),
            "pck.key.pem": _pem_key(pck_key),
            "attestation.key.pem": _pem_key(attestation_key),
            "signer.key.pem": _pem_key(signer_key),
        }
        for name, data in outputs.items():
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o600)  # O_CREAT's mode applies to new files only: --force over 0644 keys too
                f.write(data)
        # The root key is not kept: nothing can issue further PCK certificates under this root.
        return cls(path)

    @property
    def root_pem(self) -> bytes:
        return (self.path / "root.crt.pem").read_bytes()

    @property
    def mrsigner(self) -> bytes:
        """MRSIGNER of enclaves this CA's signer key signs: SHA-256 of the RSA modulus, little-endian (as SGX)."""
        key = serialization.load_pem_private_key((self.path / "signer.key.pem").read_bytes(), None)
        n = key.public_key().public_numbers().n
        return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "little")).digest()

"""The simulation CA: what the simulated provider signs quotes with, in place of Intel's PCK hierarchy, and the
simulated Intel PCS collateral that judges its platform's TCB.

A sim-ca directory holds a root CA, a PCK CA and a PCK leaf certificate (P-256, in Intel's layouts: the leaf
carries Intel's SGX extension with the platform's FMSPC and TCB SVNs), the quoting enclave's attestation key, and
the RSA-3072 enclave signing key whose modulus gives MRSIGNER (as in SGX). For TCB evaluation it also holds a TCB
signing certificate and key (which sign TCB Info and QE Identity, as Intel's "TCB Signing" certificate does), the
root CA and PCK CA CRLs, the PCK CA's key (which issues further platforms), and the TCB state (tcb.json: the
status each platform is judged at and its advisories; `SimCA.set_tcb`, `python -m ratls sim-ca tcb`).
`SimCA.pcs_response` answers the PCS v4 API exactly as Intel's PCS does (ratls.sim_pccs serves it over HTTP), and
`SimCA.collateral` gives the same as a dcap-qvl QuoteCollateralV3 JSON, so sim quotes go through the very
evaluation real ones do.

A CA directory is itself a platform, the default one. `SimCA.platform(name)` adds more, each in
platforms/<name>/, a complete sim-ca directory for the quoting library (same root, PCK CA, MRSIGNER and
attestation key; its own PCK key and a PCK certificate at a TCB level of its own, below the default's), so
processes quoting through different platform directories are judged, by the one TCB Info of the CA, each at its
platform's status.

It is for development and tests: its keys are on disk, so its evidence proves nothing about a real enclave, and
verifiers accept it only under a policy that names its root and says allow_simulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ratls.errors import RatlsError
from ratls.policy import TCB_STATUSES

ROOT_CN = "RATLS Simulated SGX Root CA"
# dcap-qvl (and Intel's QVL) tell a PCK's CA by "Processor" or "Platform" in its issuer name; this one is a
# Platform CA, so collateral is asked for with ca=platform.
PCK_CA_CN = "RATLS Simulated SGX PCK Platform CA"
PCK_CN = "RATLS Simulated SGX PCK Certificate"
TCB_SIGNING_CN = "RATLS Simulated SGX TCB Signing"
PCK_CA_KIND = "platform"

# What native/src/sim.c puts in every quote: keep these equal to its SIM_QE_SVN, SIM_PCE_SVN and QE report.
SIM_QE_SVN = 1
SIM_PCE_SVN = 1
SIM_QE_MRSIGNER = hashlib.sha256(b"RATLS simulated QE signer").digest()
SIM_QE_ISVPRODID = 1
SIM_TD_QE_ISVPRODID = 2  # the TD quoting enclave's, as Intel's
SIM_TDX_TCB_COMPONENTS = (1,) + (0,) * 15
"""The TEE_TCB_SVN of sim TD quotes (sim.c: SIM_TDX_MODULE_SVN at index 0), and so the tdxtcbcomponents of every
level of the sim TDX TCB Info; MRSIGNERSEAM and SEAMATTRIBUTES are zero, as tdxModule says."""
SIM_QE_ATTRIBUTES = bytes.fromhex("1500000000000000" "0300000000000000")  # INIT|MODE64BIT|PROVISION_KEY, xfrm 3
SIM_QE_MISCSELECT = bytes(4)

SIM_FMSPC = b"RATLS\x00"
"""The sim platform's FMSPC (hex 5241544C5300): an Intel FMSPC names a CPU family/model/stepping and platform
type; this one names none, so sim collateral can never be mistaken for a real platform's."""
SIM_PCE_ID = bytes(2)
SIM_TCB_COMPONENTS = (3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
"""The sim platform's 16 SGX TCB component SVNs (PCK extension .2.1-.2.16; its CPUSVN .2.18 is these bytes, as on
Intel's TCB type 0 platforms)."""
SIM_SGX_TYPE = 1  # Scalable: the SGX type of platforms whose PCKs a Platform CA issues
SIM_PLATFORM_TCB_DATE = "2024-03-13T00:00:00Z"
SIM_NEWER_TCB_DATE = "2025-05-13T00:00:00Z"
SIM_QE_TCB_DATE = "2024-03-13T00:00:00Z"

INTEL_TCB_STATUSES: tuple[str, ...] = tuple(s for s in TCB_STATUSES if s != "Unknown")
"""Every TCB status Intel's TCB Info can give a platform (UpToDate, SWHardeningNeeded, ConfigurationNeeded,
ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded, Revoked)."""
DEFAULT_VALIDITY = dt.timedelta(days=30)
"""How long served TCB Info and QE Identity are valid (Intel's are issued for 30 days)."""
PCS_API = "/sgx/certification/v4"
PCS_TDX_API = "/tdx/certification/v4"
"""Where Intel's PCS serves the TDX TCB Info and the TD QE Identity (the CRLs are under PCS_API for both TEEs)."""
TCB_INFO_ISSUER_CHAIN = "TCB-Info-Issuer-Chain"
QE_IDENTITY_ISSUER_CHAIN = "SGX-Enclave-Identity-Issuer-Chain"
PCK_CRL_ISSUER_CHAIN = "SGX-PCK-CRL-Issuer-Chain"

_ADVISORY_ID = re.compile(r"INTEL-SA-[0-9]{5}")
_FILES = ("root.crt.pem", "pck_ca.crt.pem", "pck.crt.pem", "pck.key.pem", "attestation.key.pem", "signer.key.pem")
_PCS_FILES = ("tcb_signing.crt.pem", "tcb_signing.key.pem", "root_ca_crl.der", "pck_crl.der", "tcb.json")
"""Made by `init` since the simulated PCS; a CA directory without them still makes quotes, but has no
collateral."""
_PCK_CA_KEY = "pck_ca.key.pem"
"""Kept by `init` since sim platforms: without it a CA directory cannot issue further platforms."""
PLATFORMS_DIR = "platforms"
_PLATFORM_MARKER = "platform.json"
"""In a platform directory: its name (so SimCA can tell a platform directory from a CA directory)."""
_PLATFORM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_LEVEL_SPACING = dt.timedelta(days=30)
"""How much older each TCB level below the default platform's is dated (tcbDate)."""

# Intel's SGX extension of PCK certificates, 1.2.840.113741.1.13.1 (Intel's PCK certificate and CRL profile).
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_SGX_EXT = x509.ObjectIdentifier(SGX_EXTENSION_OID)


# A little DER, for Intel's extension (cryptography writes standard extensions only).
def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # minimal, with a 0 sign byte if needed


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _member(arc: str, value: bytes) -> bytes:
    return _seq(_oid(f"{SGX_EXTENSION_OID}.{arc}"), value)


def sgx_extension(*, ppid: bytes, components: Sequence[int], pce_svn: int, pce_id: bytes, fmspc: bytes,
                  sgx_type: int, platform_instance_id: bytes | None = None,
                  configuration: tuple[bool, bool, bool] | None = None) -> bytes:
    """The DER value of Intel's SGX extension as Intel encodes it: a SEQUENCE of (OID, value) SEQUENCEs, PPID (16
    bytes), TCB (16 component SVNs as INTEGERs, PCESVN INTEGER, CPUSVN OCTET STRING), PCE-ID, FMSPC (6 bytes), SGX
    type ENUMERATED; Platform CA certificates add the platform instance id and the configuration
    (dynamicPlatform, cachedKeys, SMTEnabled)."""
    if len(ppid) != 16 or len(components) != 16 or len(pce_id) != 2 or len(fmspc) != 6:
        raise ValueError("PPID is 16 bytes, the TCB 16 components, the PCE-ID 2 bytes and the FMSPC 6 bytes")
    if not all(0 <= c <= 255 for c in components) or not 0 <= pce_svn <= 0xFFFF:
        raise ValueError("TCB component SVNs are 0..255, the PCESVN 0..65535")
    tcb = [_member(f"2.{i + 1}", _integer(c)) for i, c in enumerate(components)]
    tcb += [_member("2.17", _integer(pce_svn)), _member("2.18", _tlv(0x04, bytes(components)))]
    items = [_member("1", _tlv(0x04, ppid)), _member("2", _seq(*tcb)), _member("3", _tlv(0x04, pce_id)),
             _member("4", _tlv(0x04, fmspc)), _member("5", _tlv(0x0A, bytes([sgx_type])))]
    if platform_instance_id is not None:
        items.append(_member("6", _tlv(0x04, platform_instance_id)))
    if configuration is not None:
        items.append(_member("7", _seq(*(_member(f"7.{i + 1}", _tlv(0x01, b"\xff" if flag else b"\x00"))
                                         for i, flag in enumerate(configuration)))))
    return _seq(*items)


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) TLVs of a DER SEQUENCE's content (short and long lengths; enough for the extension)."""
    out, i = [], 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        out.append((tag, data[i:i + n]))
        i += n
    return out


@dataclasses.dataclass(frozen=True)
class PckExtension:
    """What a PCK certificate's SGX extension says of its platform; TCB Info is matched against its FMSPC,
    component SVNs and PCESVN."""

    ppid: bytes
    components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: tuple[bool, bool, bool] | None = None
    """(dynamicPlatform, cachedKeys, SMTEnabled), in Platform CA certificates."""


def pck_extension(cert: x509.Certificate) -> PckExtension:
    """Reads the SGX extension of a PCK certificate (Intel's or the simulation's); RatlsError if absent or
    malformed."""
    try:
        value = cert.extensions.get_extension_for_oid(_SGX_EXT).value.value
    except x509.ExtensionNotFound:
        raise RatlsError("the PCK certificate has no Intel SGX extension") from None
    try:
        (_, content), = _der_items(value)
        fields = _members(content)
        tcb = _members(fields["2"])
        config = None
        if "7" in fields:
            flags = _members(fields["7"])
            config = (flags["7.1"] != b"\0", flags["7.2"] != b"\0", flags["7.3"] != b"\0")
        return PckExtension(ppid=fields["1"],
                            components=tuple(int.from_bytes(tcb[f"2.{i}"], "big") for i in range(1, 17)),
                            pce_svn=int.from_bytes(tcb["2.17"], "big"), cpu_svn=tcb["2.18"], pce_id=fields["3"],
                            fmspc=fields["4"], sgx_type=int.from_bytes(fields["5"], "big"),
                            platform_instance_id=fields.get("6"), configuration=config)
    except (ValueError, KeyError, IndexError) as e:
        raise RatlsError(f"the PCK certificate's Intel SGX extension is malformed ({e!r})") from None


def _members(content: bytes) -> dict[str, bytes]:
    """The values of an SGX extension SEQUENCE's (OID, value) members, by their arcs below the extension's OID."""
    out = {}
    prefix = _oid(SGX_EXTENSION_OID)[2:]
    for _, member in _der_items(content):
        (oid_tag, oid), (_, value) = _der_items(member)
        if oid_tag != 0x06 or not oid.startswith(prefix):
            raise ValueError("not an SGX extension member")
        rest, arcs, arc = oid[len(prefix):], [], 0
        for byte in rest:
            arc = (arc << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(str(arc))
                arc = 0
        out[".".join(arcs)] = value
    return out


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RATLS Simulation")])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, path_len: int | None, years: int,
          now: dt.datetime, extra: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    """A certificate in the layout of Intel's SGX certificates: authority and subject key ids, key usage
    (certificate and CRL signing for CAs; digital signature and non-repudiation otherwise) and basic constraints,
    both critical; no extended key usage (webpki, which dcap-qvl uses, would then demand serverAuth)."""
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365 * years))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=not ca,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True))
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: x509.Certificate, issuer_key, *, now: dt.datetime) -> bytes:
    """An empty CRL as Intel issues them (v2, CRL number, authority key id; DER). webpki, which dcap-qvl checks
    CRLs with, needs the nextUpdate and takes it as the end of the CRL's validity: it is the issuer's notAfter,
    as no key here can re-issue it."""
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
           .last_update(now).next_update(issuer.not_valid_after_utc)
           .add_extension(x509.CRLNumber(1), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                          critical=False)
           .sign(issuer_key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.DER)


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


def _write_private(path: Path, data: bytes) -> None:
    """Writes a file of the CA atomically (a reader sees the old or the new content, never a part), mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _intel_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_datetime(now: dt.datetime | float | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC).replace(microsecond=0)
    if isinstance(now, dt.datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return now.astimezone(dt.UTC).replace(microsecond=0)
    return dt.datetime.fromtimestamp(int(now), dt.UTC)


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    """ECDSA P-256 SHA-256 over data, as Intel writes it in TCB Info and QE Identity: hex of r || s."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def _compact(obj: object) -> str:
    # Intel's PCS writes the signed objects compactly; dcap-qvl's PCCS client re-serialises the object it got
    # (serde_json, key order kept) and checks the signature over that, so only compact text survives it.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def validate_tcb(status: str, advisory_ids: Sequence[str] = ()) -> tuple[str, tuple[str, ...]]:
    """The canonical TCB status name and advisory ids, or ValueError saying what is valid. Status names match
    case-insensitively; "Unknown" is what a verifier reports without collateral, never a status collateral
    gives."""
    if not isinstance(status, str):
        raise ValueError(f"TCB status must be a string, not {type(status).__name__}")
    by_lower = {s.lower(): s for s in INTEL_TCB_STATUSES}
    canonical = by_lower.get(status.strip().lower())
    if canonical is None:
        raise ValueError(f"unknown TCB status {status!r}: valid statuses are {', '.join(INTEL_TCB_STATUSES)}"
                         + (" (Unknown is what verifiers report without collateral; collateral never gives it)"
                            if status.strip().lower() == "unknown" else ""))
    if isinstance(advisory_ids, str):
        raise ValueError("advisory_ids is a sequence of INTEL-SA-NNNNN ids, not one string")
    ids: list[str] = []
    for advisory in advisory_ids:
        norm = advisory.strip().upper() if isinstance(advisory, str) else ""
        if not _ADVISORY_ID.fullmatch(norm):
            raise ValueError(f"advisory id {advisory!r} is not of Intel's form INTEL-SA-NNNNN (e.g. INTEL-SA-00615)")
        if norm not in ids:
            ids.append(norm)
    return canonical, tuple(ids)


@dataclasses.dataclass(frozen=True)
class TcbState:
    """The TCB status a sim platform is judged at (tcb.json)."""

    status: str
    advisory_ids: tuple[str, ...]
    tcb_evaluation_data_number: int
    """Like Intel's: it grows with every change, so newer collateral can be told from older."""


class PcsResponse(NamedTuple):
    """An HTTP response of the PCS v4 API: the status code, the headers and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


def _error(status: int, message: str) -> PcsResponse:
    return PcsResponse(status, {"Content-Type": "text/plain; charset=utf-8"}, (message + "\n").encode())


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
        if not force and any((path / f).exists() for f in _FILES + _PCS_FILES + (_PCK_CA_KEY, PLATFORMS_DIR)):
            raise RatlsError(f"{path} already holds a sim CA; pass force=True (--force) to replace it")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private_directory(path)
        if (path / PLATFORMS_DIR).is_dir() and not (path / PLATFORMS_DIR).is_symlink():
            shutil.rmtree(path / PLATFORMS_DIR)  # platforms of the CA replaced: their chains end in its old root
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        root_key = ec.generate_private_key(ec.SECP256R1())
        pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        tcb_signing_key = ec.generate_private_key(ec.SECP256R1())
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        # SGX enclave signing keys are RSA-3072 with e = 3 (Gramine's gramine-sgx-gen-private-key too).
        signer_key = rsa.generate_private_key(public_exponent=3, key_size=3072)
        sgx = sgx_extension(ppid=os.urandom(16), components=SIM_TCB_COMPONENTS, pce_svn=SIM_PCE_SVN,
                            pce_id=SIM_PCE_ID, fmspc=SIM_FMSPC, sgx_type=SIM_SGX_TYPE,
                            platform_instance_id=os.urandom(16), configuration=(False, True, True))
        root = _cert(ROOT_CN, root_key, ROOT_CN, root_key, ca=True, path_len=1, years=10, now=now)
        pck_ca = _cert(PCK_CA_CN, pck_ca_key, ROOT_CN, root_key, ca=True, path_len=0, years=10, now=now)
        pck = _cert(PCK_CN, pck_key, PCK_CA_CN, pck_ca_key, ca=False, path_len=None, years=7, now=now,
                    extra=[x509.UnrecognizedExtension(_SGX_EXT, sgx)])
        tcb_signing = _cert(TCB_SIGNING_CN, tcb_signing_key, ROOT_CN, root_key, ca=False, path_len=None, years=7,
                            now=now)
        pem = serialization.Encoding.PEM
        outputs = {
            "root.crt.pem": root.public_bytes(pem),
            "pck_ca.crt.pem": pck_ca.public_bytes(pem),
            "pck.crt.pem": pck.public_bytes(pem),
            "pck.key.pem": _pem_key(pck_key),
            _PCK_CA_KEY: _pem_key(pck_ca_key),
            "attestation.key.pem": _pem_key(attestation_key),
            "signer.key.pem": _pem_key(signer_key),
            "tcb_signing.crt.pem": tcb_signing.public_bytes(pem),
            "tcb_signing.key.pem": _pem_key(tcb_signing_key),
            "root_ca_crl.der": _crl(root, root_key, now=now),
            "pck_crl.der": _crl(pck_ca, pck_ca_key, now=now),
            "tcb.json": _tcb_json(_TcbDoc(("UpToDate", ()), 1, {})),
        }
        for name, data in outputs.items():
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, 0o600)  # O_CREAT's mode applies to new files only: --force over 0644 keys too
                f.write(data)
        # The root key is not kept: nothing can issue further CAs or root CRLs under this root. The PCK CA key is,
        # for further platforms' PCK certificates.
        return cls(path)

    @property
    def root_pem(self) -> bytes:
        return (self.path / "root.crt.pem").read_bytes()

    @property
    def root_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.root_pem).public_bytes(serialization.Encoding.DER)

    @property
    def mrsigner(self) -> bytes:
        """MRSIGNER of enclaves this CA's signer key signs: SHA-256 of the RSA modulus, little-endian (as SGX)."""
        key = serialization.load_pem_private_key((self.path / "signer.key.pem").read_bytes(), None)
        n = key.public_key().public_numbers().n
        return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "little")).digest()

    # --- The simulated PCS -------------------------------------------------------------------------------------

    def _require_pcs(self) -> None:
        marker = self.path / _PLATFORM_MARKER
        if marker.is_file():
            ca = self.path.parent.parent
            raise RatlsError(f"{self.path} is a platform directory of the sim CA {ca}: it makes quotes, but its TCB "
                             f"state and collateral are the CA's (SimCA({str(ca)!r}), with "
                             f"platform={self.path.name!r}; `python -m ratls sim-ca tcb {ca} --platform "
                             f"{self.path.name}`)")
        missing = [f for f in _PCS_FILES if not (self.path / f).is_file()]
        if missing:
            raise RatlsError(f"{self.path} is a sim CA made before the simulated Intel PCS (it lacks "
                             f"{', '.join(missing)}), so it has no TCB collateral: re-create it with "
                             f"`python -m ratls sim-ca init --force {self.path}` (new keys: re-create the "
                             "identities and policies that name its root too)")

    # --- Platforms ---------------------------------------------------------------------------------------------

    def _platform_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _PLATFORM_NAME.fullmatch(name):
            raise RatlsError(f"invalid sim platform name {name!r}: 1 to 32 characters of A-Z, a-z, 0-9, _ and -")
        return self.path / PLATFORMS_DIR / name

    def _existing_platform(self, name: str) -> Path:
        path = self._platform_dir(name)
        if not (path / _PLATFORM_MARKER).is_file():
            known = ", ".join(self.platforms()) or "none"
            raise RatlsError(f"the sim CA {self.path} has no platform {name!r} (its platforms: {known}); create "
                             f"it with SimCA.platform({name!r}) or `python -m ratls sim-ca platform {self.path} "
                             f"{name}`")
        return path

    def platforms(self) -> list[str]:
        """The names of the platforms created in this CA (besides the default one, the CA directory itself)."""
        parent = self.path / PLATFORMS_DIR
        if not parent.is_dir():
            return []
        return sorted(p.name for p in parent.iterdir()
                      if _PLATFORM_NAME.fullmatch(p.name) and (p / _PLATFORM_MARKER).is_file())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises the CA's read-modify-writes (tcb.json, platform creation) across processes: an exclusive
        flock on the CA directory itself (no lock file)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def platform(self, name: str) -> Path:
        """The directory of the sim platform `name` (platforms/<name>/; [A-Za-z0-9_-]{1,32}), created on first
        use: a complete sim-ca directory for the quoting library (`Identity.create("sim", sim_ca=...)`; as a
        policy's sim_root it names the same root as the CA). Its PCK certificate, issued by the CA's PCK CA to
        a new key, has the default platform's FMSPC and layout but a TCB level of its own, below the default
        platform's and every other's (so each platform matches exactly its own level of the TCB Info); it is
        judged UpToDate until `set_tcb(..., platform=name)`. The same name again gives the same directory.
        RatlsError for a CA made before platforms (no PCK CA key) or when no lower TCB level is left."""
        target = self._platform_dir(name)
        self._require_pcs()
        if (target / _PLATFORM_MARKER).is_file():
            return target
        if not (self.path / _PCK_CA_KEY).is_file():
            raise RatlsError(f"{self.path} is a sim CA made before sim platforms (it lacks {_PCK_CA_KEY}), so it "
                             f"cannot issue a platform's PCK certificate: re-create it with "
                             f"`python -m ratls sim-ca init --force {self.path}` (new keys: re-create the "
                             "identities and policies that name its root too)")
        with self._locked():
            if (target / _PLATFORM_MARKER).is_file():  # made by another process meanwhile
                return target
            if target.exists() or target.is_symlink():
                raise RatlsError(f"{target} exists but is not a sim platform directory: remove it")
            parent = self.path / PLATFORMS_DIR
            parent.mkdir(mode=0o700, exist_ok=True)
            _check_private_directory(parent)
            components = self._free_level()
            tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))  # mode 0700
            try:
                self._issue_platform(tmp, name, components)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # A new level in the TCB Info: newer collateral, as Intel's number says.
            doc = self._read_tcb()
            _write_private(self.path / "tcb.json", _tcb_json(_TcbDoc(
                doc.default, doc.number + 1, {**doc.platforms, name: ("UpToDate", ())})))
        return target

    def _free_level(self) -> tuple[int, ...]:
        """The highest TCB level below the default platform's that no platform has: the default's components
        lowered by k units (k = 1, 2, ...), each unit from the last component above 0. These levels form a chain
        (each is component-wise below the one before), so a platform is >= its own level and below every
        higher one, in any verifier's walk of the levels."""
        default = self.pck_extension().components
        taken = {self.pck_extension(n).components for n in self.platforms()}
        level = list(default)
        for _ in range(sum(default)):
            level[max(i for i, c in enumerate(level) if c)] -= 1
            if tuple(level) not in taken:
                return tuple(level)
        raise RatlsError(f"the sim CA {self.path} has no TCB level left for another platform (it has "
                         f"{len(taken)}: at most {sum(default)}, the sum of the default platform's TCB components)")

    def _issue_platform(self, path: Path, name: str, components: tuple[int, ...]) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        pck_ca_key = serialization.load_pem_private_key((self.path / _PCK_CA_KEY).read_bytes(), None)
        default = self.pck_extension()
        key = ec.generate_private_key(ec.SECP256R1())
        sgx = sgx_extension(ppid=os.urandom(16), components=components, pce_svn=default.pce_svn,
                            pce_id=default.pce_id, fmspc=default.fmspc, sgx_type=default.sgx_type,
                            platform_instance_id=None if default.platform_instance_id is None else os.urandom(16),
                            configuration=default.configuration)
        pck = _cert(PCK_CN, key, PCK_CA_CN, pck_ca_key, ca=False, path_len=None, years=7, now=now,
                    extra=[x509.UnrecognizedExtension(_SGX_EXT, sgx)])
        outputs = {
            "root.crt.pem": self.root_pem,
            "pck_ca.crt.pem": (self.path / "pck_ca.crt.pem").read_bytes(),
            "pck.crt.pem": pck.public_bytes(serialization.Encoding.PEM),
            "pck.key.pem": _pem_key(key),
            "attestation.key.pem": (self.path / "attestation.key.pem").read_bytes(),
            "signer.key.pem": (self.path / "signer.key.pem").read_bytes(),
            _PLATFORM_MARKER: (json.dumps({"name": name}) + "\n").encode(),
        }
        for file, data in outputs.items():
            fd = os.open(path / file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    # --- The simulated PCS -------------------------------------------------------------------------------------

    def pck_extension(self, platform: str | None = None) -> PckExtension:
        """The SGX extension of a sim platform's PCK certificate (its FMSPC, TCB component SVNs, PCESVN...):
        the default platform's, or that of `platform`."""
        self._require_pcs()
        path = self.path if platform is None else self._existing_platform(platform)
        return pck_extension(x509.load_pem_x509_certificate((path / "pck.crt.pem").read_bytes()))

    def _read_tcb(self) -> _TcbDoc:
        self._require_pcs()
        file = self.path / "tcb.json"
        try:
            doc = json.loads(file.read_text())
            default = validate_tcb(doc["status"], doc["advisory_ids"])
            number = doc["tcb_evaluation_data_number"]
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError("tcb_evaluation_data_number must be a positive integer")
            platforms = {}
            for name, entry in (doc.get("platforms") or {}).items():  # absent in tcb.json before platforms
                if not _PLATFORM_NAME.fullmatch(name):
                    raise ValueError(f"invalid platform name {name!r}")
                platforms[name] = validate_tcb(entry["status"], entry["advisory_ids"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RatlsError(f"{file} is not a valid TCB state ({e}); set one with "
                             f"`python -m ratls sim-ca tcb {self.path} --status UpToDate`") from None
        return _TcbDoc(default, number, platforms)

    def tcb(self, platform: str | None = None) -> TcbState:
        """The TCB state a sim platform is judged at (tcb.json): the default platform's, or that of `platform`
        (RatlsError if the CA has none of that name)."""
        doc = self._read_tcb()
        if platform is None:
            return TcbState(*doc.default, doc.number)
        self._existing_platform(platform)
        return TcbState(*doc.platforms.get(platform, ("UpToDate", ())), doc.number)

    def set_tcb(self, status: str, advisory_ids: Sequence[str] = (), *, platform: str | None = None) -> TcbState:
        """Sets the TCB status (one of INTEL_TCB_STATUSES) and advisory ids (INTEL-SA-NNNNN) a sim platform (the
        default one, or `platform`) is judged at from the next collateral on; RatlsError if either is invalid
        or there is no such platform. Returns the new state."""
        try:
            canonical, ids = validate_tcb(status, advisory_ids)
        except ValueError as e:
            raise RatlsError(str(e)) from None
        self._require_pcs()
        if platform is not None:
            self._existing_platform(platform)
        with self._locked():
            doc = self._read_tcb()
            if platform is None:
                new = _TcbDoc((canonical, ids), doc.number + 1, doc.platforms)
            else:
                new = _TcbDoc(doc.default, doc.number + 1, {**doc.platforms, platform: (canonical, ids)})
            _write_private(self.path / "tcb.json", _tcb_json(new))
        return TcbState(canonical, ids, new.number)

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key((self.path / "tcb_signing.key.pem").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RatlsError(f"{self.path / 'tcb_signing.key.pem'} is not an EC key")
        return key

    def _chain(self, leaf: str) -> str:
        return (self.path / leaf).read_text() + (self.path / "root.crt.pem").read_text()

    def tcb_info(self, *, now: dt.datetime | float | None = None, validity: dt.timedelta = DEFAULT_VALIDITY,
                 tee: str = "sgx") -> tuple[str, str]:
        """The TCB Info (v3, the exact JSON text Intel signs) of the sim platforms and its signature (hex r||s);
        with tee="tdx" the TDX TCB Info (id TDX, tdxModule, and tdxtcbcomponents in every level).
        It has one level per platform (the default and every created one), at that platform's own SVNs, with
        its status and advisories, highest first as Intel orders them (component SVNs, then PCESVN); a level
        is dated a month earlier per unit below the default's. When the highest is not UpToDate, a newer
        UpToDate level comes first, as in Intel's lists."""
        doc, issued = self._read_tcb(), _as_datetime(now)
        default = self.pck_extension()
        platforms = [(default, doc.default)] + [(self.pck_extension(n), doc.platforms.get(n, ("UpToDate", ())))
                                                for n in self.platforms()]
        platforms.sort(key=lambda p: (p[0].components, p[0].pce_svn), reverse=True)
        base = dt.datetime.strptime(SIM_PLATFORM_TCB_DATE, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        tdx = {"tdxtcbcomponents": [{"svn": c} for c in SIM_TDX_TCB_COMPONENTS]} if tee == "tdx" else {}
        levels = []
        for ext, (status, ids) in platforms:
            below = max(sum(default.components) - sum(ext.components), 0)
            level: dict = {"tcb": {"sgxtcbcomponents": [{"svn": c} for c in ext.components],
                                   "pcesvn": ext.pce_svn, **tdx},
                           "tcbDate": _intel_time(base - below * _LEVEL_SPACING), "tcbStatus": status}
            if ids:
                level["advisoryIDs"] = list(ids)
            levels.append(level)
        top = platforms[0][0]
        if levels[0]["tcbStatus"] != "UpToDate":
            newer = [min(c + 1, 255) if i < 2 else c for i, c in enumerate(top.components)]
            levels.insert(0, {"tcb": {"sgxtcbcomponents": [{"svn": c} for c in newer],
                                      "pcesvn": top.pce_svn + 1, **tdx},
                              "tcbDate": SIM_NEWER_TCB_DATE, "tcbStatus": "UpToDate"})
        module = {"tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8}} \
            if tee == "tdx" else {}
        text = _compact({"id": tee.upper(), "version": 3, "issueDate": _intel_time(issued),
                         "nextUpdate": _intel_time(issued + validity), "fmspc": default.fmspc.hex().upper(),
                         "pceId": default.pce_id.hex().upper(), "tcbType": 0,
                         "tcbEvaluationDataNumber": doc.number, **module, "tcbLevels": levels})
        return text, _raw_signature(self._signing_key(), text.encode())

    def qe_identity(self, *, now: dt.datetime | float | None = None, validity: dt.timedelta = DEFAULT_VALIDITY,
                    tee: str = "sgx") -> tuple[str, str]:
        """The QE Identity (v2, the exact JSON text Intel signs) of the simulated quoting enclave, with Intel's
        masks, and its signature (hex r||s); with tee="tdx" the TD QE's (id TD_QE, its ISVPRODID). The QE itself is
        always UpToDate."""
        self._require_pcs()
        issued = _as_datetime(now)
        text = _compact({
            "id": "TD_QE" if tee == "tdx" else "QE", "version": 2, "issueDate": _intel_time(issued),
            "nextUpdate": _intel_time(issued + validity),
            "tcbEvaluationDataNumber": self.tcb().tcb_evaluation_data_number,
            "miscselect": SIM_QE_MISCSELECT.hex().upper(), "miscselectMask": "FFFFFFFF",
            "attributes": SIM_QE_ATTRIBUTES.hex().upper(), "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": SIM_QE_MRSIGNER.hex().upper(),
            "isvprodid": SIM_TD_QE_ISVPRODID if tee == "tdx" else SIM_QE_ISVPRODID,
            "tcbLevels": [{"tcb": {"isvsvn": SIM_QE_SVN}, "tcbDate": SIM_QE_TCB_DATE, "tcbStatus": "UpToDate"}]})
        return text, _raw_signature(self._signing_key(), text.encode())

    def pcs_response(self, request: str, *, now: dt.datetime | float | None = None,
                     validity: dt.timedelta = DEFAULT_VALIDITY) -> PcsResponse:
        """What Intel's PCS v4 answers to `request`: a path with its query, relative to the API root
        (``tcb?fmspc=5241544C5300``) or absolute (``/sgx/certification/v4/qe/identity``). Serves
        ``tcb?fmspc=`` (TCB Info, header TCB-Info-Issuer-Chain), ``qe/identity`` (header
        SGX-Enclave-Identity-Issuer-Chain), ``pckcrl?ca=platform[&encoding=der]`` (DER, else PEM; header
        SGX-PCK-CRL-Issuer-Chain) and ``rootcacrl`` (hex of the DER, as a PCCS serves it); issuer chains are
        URL-encoded PEM, signer first. An unknown path or FMSPC, or ca=processor (this CA is a Platform CA),
        is a 404, a malformed parameter a 400, each with a plain-text message. RatlsError for a CA directory
        without collateral (made before the simulated PCS)."""
        self._require_pcs()
        parts = urllib.parse.urlsplit(request)
        path, tee = parts.path, "sgx"
        if path.startswith(PCS_TDX_API + "/") and path[len(PCS_TDX_API) + 1:] in ("tcb", "qe/identity"):
            path, tee = path[len(PCS_TDX_API) + 1:], "tdx"
        elif path.startswith("/"):
            if not path.startswith(PCS_API + "/"):
                return _error(404, f"not found: {path} (the PCS API is under {PCS_API}/, TDX's TCB Info and QE "
                              f"Identity under {PCS_TDX_API}/)")
            path = path[len(PCS_API) + 1:]
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items()}
        if path == "tcb":
            fmspc = query.get("fmspc", "")
            if not re.fullmatch(r"[0-9A-Fa-f]{12}", fmspc):
                return _error(400, "fmspc must be 12 hex digits")
            ours = self.pck_extension().fmspc.hex().upper()
            if fmspc.upper() != ours:
                return _error(404, f"no TCB Info for FMSPC {fmspc.upper()} (the simulated platform's is {ours})")
            text, signature = self.tcb_info(now=now, validity=validity, tee=tee)
            return self._signed(f'{{"tcbInfo":{text},"signature":"{signature}"}}', TCB_INFO_ISSUER_CHAIN)
        if path == "qe/identity":
            text, signature = self.qe_identity(now=now, validity=validity, tee=tee)
            return self._signed(f'{{"enclaveIdentity":{text},"signature":"{signature}"}}', QE_IDENTITY_ISSUER_CHAIN)
        if path == "pckcrl":
            ca, encoding = query.get("ca", "").lower(), query.get("encoding", "pem").lower()
            if ca not in ("processor", "platform") or encoding not in ("der", "pem"):
                return _error(400, "ca must be processor or platform, encoding der (or absent, for PEM)")
            if ca != PCK_CA_KIND:
                return _error(404, f"no PCK CRL for ca={ca}: the simulated PCK certificates are issued by a "
                              f"{PCK_CA_KIND.capitalize()} CA")
            crl = (self.path / "pck_crl.der").read_bytes()
            headers = {PCK_CRL_ISSUER_CHAIN: urllib.parse.quote(self._chain("pck_ca.crt.pem"), safe="")}
            if encoding == "der":
                return PcsResponse(200, {"Content-Type": "application/pkix-crl", **headers}, crl)
            pem = x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM)
            return PcsResponse(200, {"Content-Type": "application/x-pem-file", **headers}, pem)
        if path == "rootcacrl":
            return PcsResponse(200, {"Content-Type": "text/plain"},
                               (self.path / "root_ca_crl.der").read_bytes().hex().encode())
        return _error(404, f"not found: {PCS_API}/{path} (served: tcb, qe/identity, pckcrl, rootcacrl)")

    def _signed(self, body: str, chain_header: str) -> PcsResponse:
        headers = {"Content-Type": "application/json",
                   chain_header: urllib.parse.quote(self._chain("tcb_signing.crt.pem"), safe="")}
        return PcsResponse(200, headers, body.encode())

    def collateral(self, *, now: dt.datetime | float | None = None, validity: dt.timedelta = DEFAULT_VALIDITY,
                   tee: str = "sgx") -> str:
        """The sim platform's collateral as dcap-qvl QuoteCollateralV3 JSON (what a PCCS client assembles from
        the PCS responses; for offline use, e.g. ratls.collateral.FileCollateral), for its enclaves or (tee="tdx")
        its TDs."""
        tcb_info, tcb_signature = self.tcb_info(now=now, validity=validity, tee=tee)
        qe_identity, qe_signature = self.qe_identity(now=now, validity=validity, tee=tee)
        return json.dumps({
            "pck_crl_issuer_chain": self._chain("pck_ca.crt.pem"),
            "root_ca_crl": (self.path / "root_ca_crl.der").read_bytes().hex(),
            "pck_crl": (self.path / "pck_crl.der").read_bytes().hex(),
            "tcb_info_issuer_chain": self._chain("tcb_signing.crt.pem"),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": self._chain("tcb_signing.crt.pem"),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_signature,
        })


class _TcbDoc(NamedTuple):
    """tcb.json: the default platform's (status, advisory ids), the TCB evaluation data number, and the other
    platforms' (status, advisory ids) by name."""

    default: tuple[str, tuple[str, ...]]
    number: int
    platforms: dict[str, tuple[str, tuple[str, ...]]]


def _tcb_json(doc: _TcbDoc) -> bytes:
    # The default platform's state stays at the top, as in the single-platform form (which still reads).
    return (json.dumps({"status": doc.default[0], "advisory_ids": list(doc.default[1]),
                        "tcb_evaluation_data_number": doc.number,
                        "platforms": {name: {"status": status, "advisory_ids": list(ids)}
                                      for name, (status, ids) in sorted(doc.platforms.items())}},
                       indent=2) + "\n").encode()

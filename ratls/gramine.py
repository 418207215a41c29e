"""The `gramine` provider: Gramine's own RA-TLS libraries, loaded at run time and used unchanged.

- libra_tls_attest.so (package `gramine`) makes identities inside an SGX enclave: ratls.Identity.create("gramine")
  or "auto" when /dev/attestation/attestation_type reads "dcap".
- libra_tls_verify_dcap.so (package `gramine-ratls-dcap`, which pulls in Intel's libsgx-dcap-quote-verify) verifies
  peers through Intel's DCAP libraries, which fetch collateral from the PCCS in /etc/sgx_default_qcnl.conf:
  GramineVerifier. Inside an enclave it is libra_tls_verify_dcap_gramine.so, as Gramine's own examples do.

Paths: an explicit argument, else $RATLS_GRAMINE_ATTEST_LIB / $RATLS_GRAMINE_VERIFY_LIB, else the first existing
file among $LD_LIBRARY_PATH and the install locations of Gramine's packages (/usr/lib/x86_64-linux-gnu, its
gramine/runtime/glibc, /usr/local/lib/x86_64-linux-gnu for a source install, /lib as an enclave mounts the
runtime). A missing library is a ProviderError naming every file looked for; there is never a fallback to `sim`.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import os
import threading
from pathlib import Path
from typing import Literal

from ratls._certs import certificate_der, unique_common_name
from ratls._native import lib
from ratls._notices import note_accepted
from ratls.errors import ProviderError, Reason, VerificationError
from ratls.evidence import Evidence, _native_verify, _now, _verify_certificate, inspect_certificate, parse_quote
from ratls.policy import TCB_STATUSES, Policy

ATTESTATION_TYPE_FILE = "/dev/attestation/attestation_type"
ATTEST_LIBRARY = "libra_tls_attest.so"
VERIFY_LIBRARY = "libra_tls_verify_dcap.so"
VERIFY_LIBRARY_IN_ENCLAVE = "libra_tls_verify_dcap_gramine.so"
ATTEST_LIBRARY_ENV = "RATLS_GRAMINE_ATTEST_LIB"
VERIFY_LIBRARY_ENV = "RATLS_GRAMINE_VERIFY_LIB"
INSTALL_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
                "/usr/local/lib/x86_64-linux-gnu", "/lib")
_INSTALL_HINT = {
    "attest": "it is part of the `gramine` package (Gramine's apt repository, see "
              "https://gramine.readthedocs.io/en/stable/installation.html) and must be listed in the manifest's "
              "trusted files",
    "verify": "install Gramine's `gramine-ratls-dcap` package (it needs Intel's libsgx-dcap-quote-verify and a PCCS "
              "configured in /etc/sgx_default_qcnl.conf; see https://gramine.readthedocs.io/en/stable/installation.html)",
}

# Gramine's DCAP results (sgx_ql_qv_result_t) and the TCB status each one means; Gramine accepts the non-OK ones
# only under its RA_TLS_ALLOW_* variables (ratls-reference.md §2.4).
_TCB_BY_QV_RESULT = {0x0: "UpToDate", 0xA001: "ConfigurationNeeded", 0xA002: "OutOfDate",
                     0xA003: "OutOfDateConfigurationNeeded", 0xA005: "Revoked", 0xA007: "SWHardeningNeeded",
                     0xA008: "ConfigurationAndSWHardeningNeeded"}
_QV_INVALID_SIGNATURE = 0xA004
_ERR_LOCS = ("AT_NONE", "AT_INIT", "AT_EXTRACT_QUOTE", "AT_VERIFY_EXTERNAL", "AT_VERIFY_ENCLAVE_ATTRS",
             "AT_VERIFY_ENCLAVE_MEASUREMENTS")
_AT_EXTRACT_QUOTE, _AT_VERIFY_EXTERNAL, _AT_VERIFY_ENCLAVE_ATTRS = 2, 3, 4
_MBEDTLS_SIG_MISMATCH = -0x2680


def in_sgx_enclave() -> bool:
    """True inside a Gramine SGX enclave with DCAP attestation."""
    try:
        with open(ATTESTATION_TYPE_FILE) as f:
            return f.read().strip() == "dcap"
    except OSError:
        return False


def find_library(kind: Literal["attest", "verify"], explicit: str | os.PathLike | None = None) -> str:
    """The Gramine library to load (see the module docstring for the search order). Raises ProviderError."""
    env = ATTEST_LIBRARY_ENV if kind == "attest" else VERIFY_LIBRARY_ENV
    name = ATTEST_LIBRARY if kind == "attest" else VERIFY_LIBRARY_IN_ENCLAVE if in_sgx_enclave() else VERIFY_LIBRARY
    given, source = (explicit, "library_path") if explicit is not None else (os.environ.get(env), f"${env}")
    if given:
        if not Path(given).is_file():
            raise ProviderError(f"Gramine's RA-TLS library {given} ({source}) does not exist; {_INSTALL_HINT[kind]}. "
                                "The gramine provider never falls back to the simulated one.")
        return str(given)
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(INSTALL_DIRS)
    looked = [str(Path(d) / name) for d in dict.fromkeys(dirs)]
    for candidate in looked:
        if Path(candidate).is_file():
            return candidate
    raise ProviderError(f"Gramine's RA-TLS library {name} was not found: ${env} is unset and none of "
                        f"{', '.join(looked)} exists; {_INSTALL_HINT[kind]}, or set ${env} to its path. "
                        "The gramine provider never falls back to the simulated one.")


def unique_subject_certificate(cert_der: bytes, key_der: bytes) -> bytes:
    """A Gramine-made certificate with a subject that is unique per key, for gRPC trust sets (which pick anchors
    by subject name, and every Gramine certificate is CN=RATLS). Returned unchanged when its CN already is
    RATLS-<16 hex of SHA-256(SPKI)> and its subjectAltName that one dNSName; otherwise re-issued over the same key:
    subject and issuer CN=RATLS-<...>,O=GramineDevelopers,C=US, the same serial, validity and extensions (every
    extension value, the quote extensions included, byte for byte, so the quotes' key binding still holds), then
    a non-critical subjectAltName with the CN as its one dNSName (in place of any the certificate had), as
    native/src/cert.c writes it, self-signed with ECDSA-SHA256 as Gramine does."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtensionOID, NameOID

    try:
        cert = x509.load_der_x509_certificate(cert_der)
        key = serialization.load_der_private_key(key_der, None)
    except ValueError as e:
        raise ProviderError(f"the attestation library returned a certificate or key that does not parse: {e}") \
            from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != spki:
        raise ProviderError("the attestation library returned a private key that does not match its certificate")
    cn = unique_common_name(hashlib.sha256(spki).digest())
    san = x509.SubjectAlternativeName([x509.DNSName(cn)])
    current = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    current_san = [(e.value, e.critical) for e in cert.extensions if e.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
    if current == [cn] and current_san == [(san, False)]:
        return cert_der
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
                      x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
               .public_key(cert.public_key()))
    for ext in cert.extensions:
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            continue  # replaced by the one naming the new CN
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else ext.value.public_bytes()
        builder = builder.add_extension(x509.UnrecognizedExtension(ext.oid, raw), critical=ext.critical)
    # Go (since 1.15) names a server by its subjectAltName only; Gramine's verifier reads no name (PROTOCOL.md §6).
    builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class _Dcap(ctypes.Structure):
    _fields_ = [("func_verify_quote_result", ctypes.c_int), ("quote_verification_result", ctypes.c_int)]


class _ResultsUnion(ctypes.Union):
    _fields_ = [("dcap", _Dcap), ("reserved", ctypes.c_char * 128)]


class _Results(ctypes.Structure):
    """struct ra_tls_verify_callback_results (ra_tls.h)."""

    _fields_ = [("attestation_scheme", ctypes.c_int), ("err_loc", ctypes.c_int), ("u", _ResultsUnion)]


assert ctypes.sizeof(_Results) == 136  # Gramine's layout on x86-64

_MEASUREMENT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p)


class _MeasurementCheck:
    """Our policy's measurement part, as Gramine's measurement callback: the first mismatch is kept for the
    VerificationError (Gramine's library only reports that the callback refused)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.called = False
        self.failure: VerificationError | None = None

    def check(self, mrenclave: bytes, mrsigner: bytes, isv_prod_id: int, isv_svn: int) -> VerificationError | None:
        p = self.policy
        for field, reason, allowed, found in (("MRENCLAVE", Reason.MRENCLAVE, p.mrenclave, mrenclave),
                                              ("MRSIGNER", Reason.MRSIGNER, p.mrsigner, mrsigner)):
            if allowed and found not in allowed:
                more = " or one of the other allowed values" if len(allowed) > 1 else ""
                return VerificationError(reason, f"{field} {found.hex()} is not allowed by the policy (expected "
                                                 f"{allowed[0].hex()}{more})")
        if p.isv_prod_id is not None and isv_prod_id != p.isv_prod_id:
            return VerificationError(Reason.ISV_PROD_ID,
                                     f"ISV_PROD_ID is {isv_prod_id}, the policy expects {p.isv_prod_id}")
        if p.min_isv_svn is not None and isv_svn < p.min_isv_svn:
            return VerificationError(Reason.ISV_SVN, f"ISV_SVN is {isv_svn}, the policy requires at least "
                                                     f"{p.min_isv_svn}")
        return None


_current = threading.local()


@_MEASUREMENT_CALLBACK
def _measurement_callback(mrenclave: int, mrsigner: int, isv_prod_id: int, isv_svn: int) -> int:
    # Gramine passes pointers into the quote body: 32 B, 32 B, u16 LE, u16 LE. Nothing may raise into C.
    check: _MeasurementCheck | None = getattr(_current, "check", None)
    if check is None:
        return -1
    try:
        check.called = True
        check.failure = check.check(ctypes.string_at(mrenclave, 32), ctypes.string_at(mrsigner, 32),
                                    int.from_bytes(ctypes.string_at(isv_prod_id, 2), "little"),
                                    int.from_bytes(ctypes.string_at(isv_svn, 2), "little"))
    except Exception as e:  # reported as the verification's failure, never raised into C
        check.failure = VerificationError(Reason.INTERNAL, f"measurement callback failed: {e!r}")
    return -1 if check.failure else 0


_libraries: dict[str, tuple[ctypes.CDLL, threading.Lock]] = {}
_libraries_lock = threading.Lock()


def _load(path: str) -> tuple[ctypes.CDLL, threading.Lock]:
    with _libraries_lock:
        if path not in _libraries:
            try:
                handle = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
            except OSError as e:
                raise ProviderError(f"cannot load Gramine's RA-TLS verification library {path}: {e}") from None
            for symbol in ("ra_tls_verify_callback_extended_der", "ra_tls_set_measurement_callback"):
                if not hasattr(handle, symbol):
                    raise ProviderError(f"{path} does not export {symbol} (not a Gramine RA-TLS verify library)")
            handle.ra_tls_verify_callback_extended_der.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                                                   ctypes.POINTER(_Results)]
            handle.ra_tls_verify_callback_extended_der.restype = ctypes.c_int
            handle.ra_tls_set_measurement_callback.argtypes = [_MEASUREMENT_CALLBACK]
            handle.ra_tls_set_measurement_callback.restype = None
            # Gramine's libraries are not thread-safe and keep the callback process-wide: one call at a time.
            _libraries[path] = (handle, threading.Lock())
        return _libraries[path]


class GramineVerifier:
    """Verifies RA-TLS certificates with Gramine's libra_tls_verify_dcap.so, applying our Policy.

    Gramine's library checks the evidence and the quote through Intel's DCAP libraries (TCB status from live
    collateral) and calls our measurement callback with the policy's MRENCLAVE/MRSIGNER/ISV_PROD_ID/ISV_SVN
    rules. A certificate it accepts then goes through our native verification with the TCB status from its results
    struct, so the rest of the Policy (certificate validity at `now`, debug, allowed TCB statuses, simulated
    evidence, roots) applies exactly as in ratls.verify_certificate, and the Evidence is the same. Gramine's
    library still applies its own RA_TLS_ALLOW_* variables (debug enclaves and non-UpToDate TCB statuses are
    refused unless they say otherwise): a certificate must pass both. A rejection is explained by our native checks
    when they find the problem, else by Gramine's results (TCB status, DCAP failure, attributes). Gramine's ABI
    gives no advisory ids, and its library checks at the current time whatever `now` says."""

    def __init__(self, library_path: str | os.PathLike | None = None) -> None:
        self.library_path = find_library("verify", library_path)
        self._lib, self._lock = _load(self.library_path)

    def _run(self, der: bytes, policy: Policy) -> tuple[int, _Results, _MeasurementCheck]:
        """Gramine's verify callback on a certificate, with our policy as its measurement callback."""
        check = _MeasurementCheck(policy)
        results = _Results()
        with self._lock:
            _current.check = check
            try:
                self._lib.ra_tls_set_measurement_callback(_measurement_callback)
                rc = self._lib.ra_tls_verify_callback_extended_der(der, len(der), ctypes.byref(results))
            finally:
                self._lib.ra_tls_set_measurement_callback(_MEASUREMENT_CALLBACK())
                _current.check = None
        if rc == 0 and not check.called:
            raise ProviderError(f"{self.library_path} accepted a certificate without calling the measurement "
                                "callback; it does not behave like Gramine's library")
        return rc, results, check

    def _status(self, results: _Results) -> str:
        status = _TCB_BY_QV_RESULT.get(results.u.dcap.quote_verification_result)
        if status is None:
            raise ProviderError(f"{self.library_path} accepted a certificate with quote verification result "
                                f"0x{results.u.dcap.quote_verification_result:X}, which is not a TCB status")
        return status

    def verify_certificate(self, cert: bytes | str, policy: Policy, *,
                           now: int | float | dt.datetime | None = None) -> Evidence:
        der = certificate_der(cert)
        t = _now(now)
        rc, results, check = self._run(der, policy)
        if rc != 0:
            raise self._rejection(rc, results, check, der, policy, t)
        # A simulated provider evaluated no collateral, whatever its results struct says.
        return note_accepted(_native_verify(lib.ratls_verify_cert, der, policy, t,
                                            TCB_STATUSES.index(self._status(results)),
                                            simulated_tcb=lib.RATLS_TCB_UNKNOWN))

    def tcb_status(self, cert: bytes | str, policy: Policy) -> str:
        """The TCB status Intel's DCAP libraries give a certificate whose every other check passed (our native
        verification ran first): the status of an accepted certificate, or the one Gramine's RA_TLS_ALLOW_*
        settings refused (our policy then decides, from the same RA_TLS_* values in an enclave). "Unknown" for
        simulated evidence, for which no collateral was evaluated. Other failures raise VerificationError."""
        der = certificate_der(cert)
        rc, results, check = self._run(der, policy)
        dcap = results.u.dcap
        if rc != 0 and not (results.err_loc == _AT_VERIFY_EXTERNAL and dcap.func_verify_quote_result == 0
                            and dcap.quote_verification_result in _TCB_BY_QV_RESULT):
            raise self._rejection(rc, results, check, der, policy, _now(None))
        from ratls.collateral import chain_root

        if policy.sim_root_der is not None and chain_root(inspect_certificate(der).quote) == policy.sim_root_der:
            return "Unknown"
        return self._status(results)

    def _rejection(self, rc: int, results: _Results, check: _MeasurementCheck, der: bytes, policy: Policy,
                   now: int) -> VerificationError:
        loc = _ERR_LOCS[results.err_loc] if 0 <= results.err_loc < len(_ERR_LOCS) else str(results.err_loc)
        where = f"Gramine's verifier rejected the certificate at {loc} with -0x{-rc:04x}"
        if check.failure is not None:
            return VerificationError(check.failure.reason, f"{check.failure.message} ({where})")
        try:
            _verify_certificate(der, policy, now)  # a diagnosis: accepts nothing, so no simulated-evidence notice
        except VerificationError as e:
            if e.reason != Reason.TCB_STATUS:  # the last native check: everything before it passed
                return VerificationError(e.reason, f"{e.message} ({where})")
        # Our checks pass: what failed is a rule only Gramine's library applies.
        dcap = results.u.dcap
        if results.err_loc == _AT_VERIFY_EXTERNAL and dcap.func_verify_quote_result != 0:
            return VerificationError(Reason.COLLATERAL, f"{where}: sgx_qv_verify_quote failed with "
                                     f"0x{dcap.func_verify_quote_result:X} (is the PCCS in "
                                     "/etc/sgx_default_qcnl.conf reachable?)")
        if results.err_loc == _AT_VERIFY_EXTERNAL and dcap.quote_verification_result in _TCB_BY_QV_RESULT:
            status = _TCB_BY_QV_RESULT[dcap.quote_verification_result]
            return VerificationError(Reason.TCB_STATUS, f"{where}: TCB status {status} is not allowed by Gramine's "
                                     "RA_TLS_ALLOW_* settings")
        if results.err_loc == _AT_VERIFY_EXTERNAL and dcap.quote_verification_result == _QV_INVALID_SIGNATURE:
            return VerificationError(Reason.QUOTE_SIGNATURE, f"{where}: Intel's library finds the quote signature "
                                     "invalid")
        if results.err_loc == _AT_VERIFY_ENCLAVE_ATTRS:
            debug = parse_quote(inspect_certificate(der).quote).body.debug
            return VerificationError(Reason.DEBUG_ENCLAVE if debug else Reason.ENCLAVE_ATTRIBUTES,
                                     f"{where}: Gramine accepts debug enclaves only with "
                                     "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE=1" if debug else where)
        if results.err_loc == _AT_EXTRACT_QUOTE:
            return VerificationError(Reason.REPORT_DATA_MISMATCH if rc == _MBEDTLS_SIG_MISMATCH else
                                     Reason.EVIDENCE_MALFORMED, where)
        return VerificationError(Reason.PROVIDER, f"{where} (quote verification result "
                                 f"0x{dcap.quote_verification_result:X})")

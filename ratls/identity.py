"""A process's RA-TLS identity: a fresh key pair that stays in memory, a certificate carrying SGX evidence, and a
small channel certificate over the same key for gRPC (see Identity)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ratls._certs import certificate_pem, unique_common_name
from ratls._native import ffi, lib
from ratls.errors import ProviderError, RatlsError, check_call
from ratls.evidence import Evidence, _verify_certificate, inspect_certificate
from ratls.gramine import ATTESTATION_TYPE_FILE, find_library, in_sgx_enclave, unique_subject_certificate
from ratls.policy import ALLOWABLE_TCB_STATUSES, TEE_NAMES, Policy
from ratls.simca import SimCA
from ratls.tsm import TSM_REPORT_ROOT, ConfigfsTsm, in_tdx_guest

SIM_LIBRARY = Path(__file__).with_name("libratls_sim.so")
# A DICE identity's default validity around its creation: the sim provider's (native/src/sim.c DEFAULT_VALIDITY_*).
DICE_VALIDITY_BEFORE = dt.timedelta(hours=1)
DICE_VALIDITY_AFTER = dt.timedelta(days=365)
_MEASUREMENT_DOMAIN = b"ratls-sim-mrenclave-v1\0"
_TD_MEASUREMENT_DOMAIN = b"ratls-sim-mrtd-v1\0"
TDX_QUOTE_VERSIONS = (4, 5)

# Providers are dlopen'ed once per process and, like Gramine's libraries, hold process-wide state: identity
# creation (configure + create) is serialized.
_providers: dict[str, object] = {}
_provider_lock = threading.Lock()


def _measured_paths(files: Iterable[str | os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts
                              and x.suffix != ".pyc"))
        elif p.is_file():
            out.append(p)
        else:
            raise RatlsError(f"cannot measure {p}: no such file or directory")
    return out


def measure(files: Iterable[str | os.PathLike], root: str | os.PathLike | None = None, *, td: bool = False) -> bytes:
    """The simulated MRENCLAVE of a set of files: what a Gramine manifest would list as trusted files; with td=True
    the simulated MRTD of a TD that runs them (48 bytes: SHA-384 under its own domain tag, otherwise the same).

    SHA-256 over a domain tag and, for each file sorted by name, len(name) (4 B LE) || name || SHA-256(content).
    Names are relative to `root` when given (so the same tree measures the same anywhere), else as given.
    Directories are expanded to their files (caches: __pycache__ and *.pyc are skipped). Any changed byte,
    added or removed file changes the result."""
    entries = []
    for p in _measured_paths(files):
        name = os.path.relpath(p, root) if root is not None else os.path.normpath(p)
        entries.append((Path(name).as_posix(), hashlib.sha256(p.read_bytes()).digest()))
    if not entries:
        raise RatlsError("nothing to measure: the file list is empty")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise RatlsError("the measured file list names a file twice")
    h = hashlib.sha384(_TD_MEASUREMENT_DOMAIN) if td else hashlib.sha256(_MEASUREMENT_DOMAIN)
    for name, digest in sorted(entries):
        raw = name.encode()
        h.update(len(raw).to_bytes(4, "little") + raw + digest)
    return h.digest()


def make_channel_certificate(private_key_der: bytes, certificate_der: bytes) -> bytes:
    """The channel certificate of a key pair (DER): self-signed over the same SubjectPublicKeyInfo as
    `certificate_der`, subject CN=RATLS-<16 hex of SHA-256(SPKI)>-channel, the same validity, no extensions
    (ratls_channel_cert_create; ratls/PROTOCOL.md)."""
    out = ffi.new("uint8_t **")
    n = ffi.new("size_t *")
    check_call(lib.ratls_channel_cert_create, private_key_der, len(private_key_der), certificate_der,
               len(certificate_der), out, n, error=RatlsError)
    try:
        return bytes(ffi.buffer(out[0], n[0]))
    finally:
        lib.ratls_free(out[0])


def channel_certificate_of(identity) -> bytes:
    """The certificate an identity presents on gRPC ports and sends in its attestation: an Identity's own channel
    certificate, or one made now for an identity-like object without one (private_key_der, certificate_der)."""
    der = getattr(identity, "channel_certificate_der", None)
    return der if der is not None else make_channel_certificate(identity.private_key_der, identity.certificate_der)


UNATTESTED_CHANNEL_VALIDITY = dt.timedelta(days=30)


class UnattestedIdentity:
    """The identity of a client outside any enclave (one-way attestation; credentials(policy, provider="none")): a
    fresh P-384 key that stays in memory and a channel certificate self-signed by it, CN=RATLS-<16 hex of
    SHA-256(SPKI)>-channel, valid for 30 days from now. It carries no evidence: it attests the server and is
    admitted only by ports that allow unattested clients (ratls/PROTOCOL.md section 2). It cannot serve a port."""

    provider = "none"
    certificate_der = None  # no RA-TLS certificate: the attestation handshake presents none

    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        self.private_key_der = _private_key_der(key)
        # ratls_channel_cert_create takes the key's subject and validity from a certificate of that key: a throwaway
        # one, so the channel certificate's name rule stays in one place (the C core).
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS unattested client")])
        carrier = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + UNATTESTED_CHANNEL_VALIDITY).sign(key, hashes.SHA384()))
        self.channel_certificate_der = make_channel_certificate(self.private_key_der,
                                                                carrier.public_bytes(serialization.Encoding.DER))

    @property
    def private_key_pem(self) -> bytes:
        return _private_key_pem(self.private_key_der)

    @property
    def channel_certificate_pem(self) -> bytes:
        return certificate_pem(self.channel_certificate_der)

    def __repr__(self) -> str:
        subject = x509.load_der_x509_certificate(self.channel_certificate_der).subject.rfc4514_string()
        return f"UnattestedIdentity({subject})"


def _private_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _private_key_pem(private_key_der: bytes) -> bytes:
    key = serialization.load_der_private_key(private_key_der, None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _configure_sim_td(p, ca_dir: Path, mrtd: bytes, rtmrs: Sequence[bytes] | None, version: int, debug: bool,
                      not_before: int, not_after: int) -> None:
    """Makes the sim library (`p`) a TD: MRTD, RTMR0..3 (default zero), quote version, debug."""
    rtmrs = tuple(rtmrs) if rtmrs is not None else (bytes(48),) * 4
    if len(rtmrs) != 4 or any(not isinstance(r, bytes) or len(r) != 48 for r in rtmrs):
        raise ProviderError("rtmrs must be four 48-byte values (RTMR0..3)")
    if version not in TDX_QUOTE_VERSIONS:
        raise ProviderError(f"tdx_version must be 4 or 5, not {version!r}")
    if len(mrtd) != 48:
        raise ProviderError(f"mrtd must be 48 bytes, got {len(mrtd)}")
    check_call(lib.ratls_provider_sim_configure_tdx, p, str(ca_dir).encode(), mrtd, b"".join(rtmrs), version,
               int(bool(debug)), not_before, not_after, error=ProviderError)


def sim_tdx_quote(report_data: bytes, *, sim_ca: str | os.PathLike, mrtd: bytes, rtmrs: Sequence[bytes] | None = None,
                  tdx_version: int = 4, debug: bool = False, library_path: str | None = None) -> bytes:
    """A simulated TDX quote over `report_data` (64 bytes) from a TD with this MRTD and RTMRs, under the sim CA's
    root: what a TD's quote provider (configfs-tsm: report_data in, quote out) returns, for a provider to bind its
    own data. Verify it with a policy that accepts TDX and names the sim root."""
    if len(report_data) != 64:
        raise ProviderError(f"report_data must be 64 bytes, got {len(report_data)}")
    ca = SimCA(sim_ca)
    p = _open_provider(library_path or str(SIM_LIBRARY))
    out = ffi.new("uint8_t **")
    n = ffi.new("size_t *")
    with _provider_lock:
        _configure_sim_td(p, ca.path, mrtd, rtmrs, tdx_version, debug, 0, 0)
        check_call(lib.ratls_provider_sim_quote, p, report_data, out, n, error=ProviderError)
    try:
        return bytes(ffi.buffer(out[0], n[0]))
    finally:
        lib.ratls_free(out[0])


def _open_provider(path: str):
    with _provider_lock:
        if path not in _providers:
            out = ffi.new("ratls_provider **")
            check_call(lib.ratls_provider_open, path.encode(), out, error=ProviderError)
            _providers[path] = out[0]
        return _providers[path]


def _timestamp(value) -> int:
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return int(value)


def _own_evidence(cert_der: bytes, sim_root) -> Evidence:
    """The self-check every new identity passes, which also yields its Evidence: any measurement, but a fully
    valid chain and binding."""
    own_policy = Policy(tees=TEE_NAMES, allow_debug=True, allowed_tcb_statuses=ALLOWABLE_TCB_STATUSES,
                        allow_simulated=sim_root is not None, sim_root=sim_root)
    info = inspect_certificate(cert_der)
    # Not a validity check (a deliberately expired certificate is allowed): verify inside its window.
    now = min(max(time.time(), info.not_before.timestamp()), info.not_after.timestamp())
    return _verify_certificate(cert_der, own_policy, int(now))  # our own: no simulated-evidence notice


class Identity:
    """A key pair (memory only), its self-signed RA-TLS certificate in Gramine's format, and its channel
    certificate.

    The channel certificate is what the identity presents on gRPC ports: gRPC's TLS stack (grpcio 1.85.1, measured)
    fails mutual TLS with a client certificate over about 8.4 KB DER, and RA-TLS certificates, carrying the quote
    twice, are larger (~8.7 KB sim, 10 KB Gramine). It is a small self-signed certificate over the same key
    (byte-equal SubjectPublicKeyInfo), CN=RATLS-<16 hex of SHA-256(SPKI)>-channel, the RA-TLS certificate's
    validity, no evidence. A client sends it right after the attestation handshake and the server checks it against
    the RA-TLS certificate it verified (ratls/PROTOCOL.md). The guarantee is unchanged: the quote binds the key, the
    channel certificate is signed by that key, and gRPC's TLS proves possession of it. Made once, here."""

    def __init__(self, private_key_der: bytes, certificate_der: bytes, provider: str, evidence: Evidence,
                 channel_certificate_der: bytes | None = None) -> None:
        self.private_key_der = private_key_der
        self.certificate_der = certificate_der
        self.provider = provider
        self.evidence = evidence
        if channel_certificate_der is None:
            channel_certificate_der = make_channel_certificate(private_key_der, certificate_der)
            # What an attestation server will check of it (at a time inside the validity: a deliberately expired
            # identity is allowed).
            now = time.time()
            if evidence.not_before is not None and evidence.not_after is not None:
                now = min(max(now, evidence.not_before.timestamp()), evidence.not_after.timestamp())
            check_call(lib.ratls_channel_cert_check, certificate_der, len(certificate_der), channel_certificate_der,
                       len(channel_certificate_der), int(now), error=RatlsError,
                       context="our own channel certificate")
        self.channel_certificate_der = channel_certificate_der

    @classmethod
    def create(
        cls,
        provider: str = "auto",
        *,
        sim_ca: str | os.PathLike | None = None,
        measured_files: Iterable[str | os.PathLike] | None = None,
        measure_root: str | os.PathLike | None = None,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
        not_before=None,
        not_after=None,
        library_path: str | None = None,
        tsm_root: str | os.PathLike = TSM_REPORT_ROOT,
        rtmrs: Sequence[bytes] | None = None,
        tdx_version: int = 4,
    ) -> Identity:
        """Creates a fresh identity.

        provider: "gramine" (inside an SGX enclave: Gramine's libra_tls_attest.so, found as ratls.gramine
        describes, or `library_path`; never a fallback to sim), "sim" (the simulated provider: needs `sim_ca` and
        `measured_files`, whose measurement becomes MRENCLAVE), "sim-tdx" (the simulated provider as a TD: MRTD is
        measure(measured_files, td=True), RTMR0..3 are `rtmrs` (four 48-byte values, default zero), its quotes TDX
        version `tdx_version` 4 or 5; `debug` sets TDATTRIBUTES.DEBUG), "tdx" (inside an Intel TDX VM: the TD quote
        from configfs-tsm at `tsm_root`, ratls.tsm, in a DICE-only certificate, create_dice), or "auto" (gramine
        when /dev/attestation says dcap, else tdx in a TDX guest, else sim when sim_ca is given).
        not_before/not_after (datetime or Unix seconds) apply to sim and tdx certificates; the default is now-1h ..
        now+365d. A gramine certificate (subject CN=RATLS) is re-issued with the unique CN over the same key, its
        quote extensions unchanged (ratls.gramine.unique_subject_certificate);
        `sim_ca`, if given with gramine, is only a root its self-check accepts (a sim library under Gramine's
        name, in tests)."""
        if provider == "auto":
            if in_sgx_enclave():
                provider = "gramine"
            elif in_tdx_guest():
                provider = "tdx"
            elif sim_ca is not None:
                provider = "sim"
            else:
                raise ProviderError(f"no SGX enclave here ({ATTESTATION_TYPE_FILE} does not read 'dcap'), no TDX "
                                    "guest (no 'tdx_guest' CPU flag) and no sim_ca given: pass provider='sim' with "
                                    "sim_ca=DIR for simulated attestation")
        if provider == "sim":
            return cls._create_sim(sim_ca, measured_files, measure_root, isv_prod_id, isv_svn, debug, not_before,
                                   not_after, library_path)
        if provider == "sim-tdx":
            return cls._create_sim_td(sim_ca, measured_files, measure_root, rtmrs, tdx_version, debug, not_before,
                                      not_after, library_path)
        if provider == "gramine":
            return cls._create_with(find_library("attest", library_path), "gramine", None, sim_root=sim_ca)
        if provider == "tdx":
            return cls.create_dice(ConfigfsTsm(tsm_root).quote, "tdx", not_before=not_before, not_after=not_after)
        if provider == "none":
            raise ProviderError("provider 'none' has no attestation, so it makes no Identity: for a client outside "
                                "any enclave use ratls.credentials(policy, provider='none')")
        raise ProviderError(f"unknown provider {provider!r} (expected 'auto', 'sim', 'sim-tdx', 'gramine' or "
                            "'tdx')")

    @staticmethod
    def _sim_inputs(provider: str, sim_ca, measured_files, measure_root, *, td: bool) -> tuple[SimCA, bytes]:
        """What a sim provider needs: its CA and the measurement of measured_files (MRENCLAVE, or MRTD with td)."""
        if sim_ca is None:
            raise ProviderError(f"the {provider} provider needs sim_ca (a directory made by `python -m ratls sim-ca "
                                "init`)")
        if measured_files is None:
            raise ProviderError(f"the {provider} provider needs measured_files: the files whose measurement is "
                                f"{'MRTD' if td else 'MRENCLAVE'}")
        return SimCA(sim_ca), measure(measured_files, measure_root, td=td)

    @classmethod
    def _create_sim(cls, sim_ca, measured_files, measure_root, isv_prod_id, isv_svn, debug, not_before, not_after,
                    library_path) -> Identity:
        for name, v in (("isv_prod_id", isv_prod_id), ("isv_svn", isv_svn)):
            if not 0 <= int(v) <= 0xFFFF:
                raise ProviderError(f"{name} must be 0..65535, got {v}")
        ca, mrenclave = cls._sim_inputs("sim", sim_ca, measured_files, measure_root, td=False)

        def configure(p) -> None:
            check_call(lib.ratls_provider_sim_configure, p, str(ca.path).encode(), mrenclave, int(isv_prod_id),
                       int(isv_svn), int(bool(debug)), _timestamp(not_before), _timestamp(not_after),
                       error=ProviderError)

        return cls._create_with(library_path or str(SIM_LIBRARY), "sim", configure, sim_root=ca.path)

    @classmethod
    def _create_sim_td(cls, sim_ca, measured_files, measure_root, rtmrs, tdx_version, debug, not_before, not_after,
                       library_path) -> Identity:
        ca, mrtd = cls._sim_inputs("sim-tdx", sim_ca, measured_files, measure_root, td=True)

        def configure(p) -> None:
            _configure_sim_td(p, ca.path, mrtd, rtmrs, tdx_version, debug, _timestamp(not_before),
                              _timestamp(not_after))

        return cls._create_with(library_path or str(SIM_LIBRARY), "sim-tdx", configure, sim_root=ca.path)

    @classmethod
    def _create_with(cls, library: str, provider: str, configure, sim_root=None) -> Identity:
        p = _open_provider(library)
        key = ffi.new("uint8_t **")
        crt = ffi.new("uint8_t **")
        key_len = ffi.new("size_t *")
        crt_len = ffi.new("size_t *")
        with _provider_lock:
            if configure is not None:
                configure(p)
            check_call(lib.ratls_provider_create, p, key, key_len, crt, crt_len, error=ProviderError)
        try:
            key_der = bytes(ffi.buffer(key[0], key_len[0]))
            cert_der = bytes(ffi.buffer(crt[0], crt_len[0]))
        finally:
            if key[0] != ffi.NULL:
                ffi.memmove(key[0], b"\0" * key_len[0], key_len[0])
            lib.ratls_free(key[0])
            lib.ratls_free(crt[0])
        if provider == "gramine":
            cert_der = unique_subject_certificate(cert_der, key_der)
        return cls(key_der, cert_der, provider, _own_evidence(cert_der, sim_root))

    @classmethod
    def create_dice(cls, quote: Callable[[bytes], bytes], provider: str, *, private_key_der: bytes | None = None,
                    not_before=None, not_after=None, sim_root: str | os.PathLike | None = None) -> Identity:
        """An identity whose certificate carries one quote as TCG DICE tagged evidence and no legacy quote
        extension (ratls/PROTOCOL.md section 9): the layout a TD presents. `quote(report_data)` returns the quote
        over the 64 bytes it is given (ConfigfsTsm.quote in a TD), which bind the key (ratls_dice_report_data).
        The key is a fresh P-384 key unless `private_key_der` (DER, EC P-256 or P-384) is given. The certificate
        is verified before it is used, as every identity's is; `sim_root` is a simulation root that check accepts.
        """
        key_der = private_key_der if private_key_der is not None else _private_key_der(
            ec.generate_private_key(ec.SECP384R1()))
        report_data = ffi.new("uint8_t[64]")
        check_call(lib.ratls_dice_report_data, key_der, len(key_der), report_data, error=ProviderError)
        quote_der = quote(bytes(report_data))
        now = time.time()
        nb = _timestamp(not_before) or int(now - DICE_VALIDITY_BEFORE.total_seconds())
        na = _timestamp(not_after) or int(now + DICE_VALIDITY_AFTER.total_seconds())
        out = ffi.new("uint8_t **")
        n = ffi.new("size_t *")
        check_call(lib.ratls_dice_cert_create, key_der, len(key_der), quote_der, len(quote_der), nb, na, out, n,
                   error=ProviderError)
        try:
            cert_der = bytes(ffi.buffer(out[0], n[0]))
        finally:
            lib.ratls_free(out[0])
        return cls(key_der, cert_der, provider, _own_evidence(cert_der, sim_root))

    @property
    def mrenclave(self) -> bytes:
        return self.evidence.mrenclave

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate_der)

    @property
    def channel_certificate_pem(self) -> bytes:
        return certificate_pem(self.channel_certificate_der)

    @property
    def private_key_pem(self) -> bytes:
        return _private_key_pem(self.private_key_der)

    @property
    def common_name(self) -> str:
        """The unique subject CN, RATLS-<16 hex of SHA-256(SPKI)>."""
        return unique_common_name(self.evidence.spki_sha256)

    @property
    def channel_common_name(self) -> str:
        """The channel certificate's subject CN, RATLS-<16 hex of SHA-256(SPKI)>-channel."""
        return unique_common_name(self.evidence.spki_sha256) + "-channel"

    def __repr__(self) -> str:
        return (f"Identity(provider={self.provider!r}, cn={self.common_name!r}, "
                f"mrenclave={self.mrenclave.hex()})")

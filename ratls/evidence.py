"""Parsed quotes (SGX v3, TDX v4 and v5), verified Evidence, and the verification entry points."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from ratls._certs import certificate_der
from ratls._native import ffi, lib
from ratls._notices import note_accepted
from ratls.errors import Reason, VerificationError, check_call
from ratls.policy import TCB_STATUSES, TEES, Policy

_FORMATS = {lib.RATLS_FORMAT_BARE_QUOTE: "quote", lib.RATLS_FORMAT_DICE: "dice", lib.RATLS_FORMAT_LEGACY: "legacy"}
_PROVIDERS = {lib.RATLS_ROOT_NONE: "none", lib.RATLS_ROOT_TRUSTED: "sgx", lib.RATLS_ROOT_SIMULATED: "sim"}
_TEE_NAMES = {v: k for k, v in TEES.items()}


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: bytes as hex, datetimes as ISO 8601."""
        return {k: _json_value(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


def _plain(value: Any) -> bytes | int:
    """A field of a native report struct as Python: byte arrays as bytes, integers as int."""
    return bytes(value) if isinstance(value, ffi.CData) else int(value)


@dataclass(frozen=True)
class ReportBody(_JsonMixin):
    """An SGX report body (the ISV enclave's, or the quoting enclave's)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    flags: int
    xfrm: int
    mrenclave: bytes
    mrsigner: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.flags & lib.RATLS_SGX_FLAGS_DEBUG)

    @classmethod
    def _from_native(cls, body) -> ReportBody:
        return cls(**{f.name: _plain(getattr(body, f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class TdReport(_JsonMixin):
    """A TD report body (TDX): TD report 1.0, or 1.5 with tee_tcb_svn2 and mrservicetd (zero in 1.0)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: int
    td_attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes
    mrservicetd: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes & lib.RATLS_TD_ATTRIBUTES_DEBUG)

    @classmethod
    def _from_native(cls, td) -> TdReport:
        values: dict[str, Any] = {f.name: _plain(getattr(td, f.name)) for f in fields(cls) if f.name != "rtmr"}
        values["rtmr"] = tuple(bytes(td.rtmr[i]) for i in range(4))
        return cls(**values)


@dataclass(frozen=True)
class Quote(_JsonMixin):
    """An ECDSA quote as parsed (not verified: see verify_quote): SGX v3 (`body`), or TDX v4 or v5 (`td_report`;
    `body_type` 2 = TD report 1.0, 3 = TD report 1.5). A TDX quote's QE report, signature, auth data and PCK chain
    are those inside its type-6 certification data; `cert_data_type` is the type of the PCK chain's (5)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    tee: str
    body_type: int
    body: ReportBody | None
    td_report: TdReport | None
    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes

    @property
    def description(self) -> str:
        """What kind of quote this is, in words: "SGX ECDSA quote v3", "TDX quote v4 (TD report 1.0)", "TDX quote v5,
        body type 3 (TD report 1.5)"."""
        if self.tee == "sgx":
            return f"SGX ECDSA quote v{self.version}"
        body = "TD report 1.5" if self.body_type == lib.RATLS_BODY_TD_REPORT_15 else "TD report 1.0"
        body_type = f", body type {self.body_type}" if self.version == 5 else ""
        return f"TDX quote v{self.version}{body_type} ({body})"

    @property
    def pck_chain_pem(self) -> list[bytes]:
        """The PEM certificates of a type-5 certification data (leaf first)."""
        if self.cert_data_type != 5:
            return []
        data = self.cert_data.rstrip(b"\0")
        parts = data.split(b"-----END CERTIFICATE-----")
        return [p.strip() + b"\n-----END CERTIFICATE-----\n" for p in parts if p.strip()]


def parse_quote(raw: bytes) -> Quote:
    """Parses an SGX v3 or TDX v4/v5 ECDSA quote. Raises VerificationError (QUOTE_MALFORMED, ...) on bad input."""
    raw = bytes(raw)
    q = ffi.new("ratls_quote *")
    check_call(lib.ratls_quote_parse, raw, len(raw), q)

    def span(s) -> bytes:
        return raw[s.off:s.off + s.len]

    return Quote(
        version=q.version, att_key_type=q.att_key_type, tee_type=q.tee_type, qe_svn=q.qe_svn, pce_svn=q.pce_svn,
        qe_vendor_id=bytes(q.qe_vendor_id), user_data=bytes(q.user_data), tee=_TEE_NAMES[q.tee], body_type=q.body_type,
        body=ReportBody._from_native(q.body) if q.tee == lib.RATLS_TEE_SGX else None,
        td_report=TdReport._from_native(q.td) if q.tee == lib.RATLS_TEE_TDX else None,
        isv_signature=span(q.isv_signature), attestation_key=span(q.attestation_key),
        qe_report=ReportBody._from_native(q.qe_report), qe_report_signature=span(q.qe_report_signature),
        qe_auth_data=span(q.qe_auth_data), cert_data_type=q.cert_data_type, cert_data=span(q.cert_data),
    )


def _time(ts: int) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC) if ts else None


def _advisories(text: bytes) -> tuple[str, ...]:
    """ratls_evidence.advisory_ids: comma-separated advisory ids, empty without collateral."""
    return tuple(a for a in (p.strip() for p in text.decode("utf-8", "replace").split(",")) if a)


@dataclass(frozen=True)
class Evidence(_JsonMixin):
    """What verification established about a peer. `provider` is "sgx" when the quote chains to the trusted
    (Intel) root and "sim" when it chains to a simulation root; `tee` says which TEE the quote comes from ("sgx" or
    "tdx"). The SGX enclave fields (mrenclave ... cpu_svn) are zero for TDX evidence and the TD fields (mrtd ...
    tee_tcb_svn) zero for SGX; `debug` is the enclave's DEBUG flag or the TD's TDATTRIBUTES.DEBUG bit."""

    provider: str
    tee: str
    format: str
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    attributes_flags: int
    attributes_xfrm: int
    cpu_svn: bytes
    qe_svn: int
    pce_svn: int
    report_data: bytes
    tcb_status: str
    advisory_ids: tuple[str, ...]
    cert_fingerprint: bytes
    spki_sha256: bytes
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    mrtd: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    mrseam: bytes
    mrsignerseam: bytes
    td_attributes: int
    xfam: int
    tee_tcb_svn: bytes

    @property
    def simulated(self) -> bool:
        return self.provider == "sim"

    def __repr__(self) -> str:
        if self.tee == "tdx":
            return (f"Evidence(provider={self.provider!r}, tee='tdx', mrtd={self.mrtd.hex()}, "
                    f"rtmr0={self.rtmr[0].hex()[:16]}…, debug={self.debug}, tcb_status={self.tcb_status!r}, "
                    f"cert={self.cert_fingerprint.hex()[:16]}…)")
        return (f"Evidence(provider={self.provider!r}, mrenclave={self.mrenclave.hex()}, "
                f"mrsigner={self.mrsigner.hex()}, isv_prod_id={self.isv_prod_id}, isv_svn={self.isv_svn}, "
                f"debug={self.debug}, tcb_status={self.tcb_status!r}, cert={self.cert_fingerprint.hex()[:16]}…)")

    @classmethod
    def _from_native(cls, ev) -> Evidence:
        tdx = ev.tee == lib.RATLS_TEE_TDX
        debug = ev.td_attributes & lib.RATLS_TD_ATTRIBUTES_DEBUG if tdx else ev.flags & lib.RATLS_SGX_FLAGS_DEBUG
        return cls(
            provider=_PROVIDERS.get(ev.root, "none"), tee=_TEE_NAMES.get(ev.tee, "none"),
            format=_FORMATS.get(ev.format, "quote"),
            mrenclave=bytes(ev.mrenclave), mrsigner=bytes(ev.mrsigner), isv_prod_id=ev.isv_prod_id,
            isv_svn=ev.isv_svn, debug=bool(debug), attributes_flags=ev.flags,
            attributes_xfrm=ev.xfrm, cpu_svn=bytes(ev.cpu_svn), qe_svn=ev.qe_svn, pce_svn=ev.pce_svn,
            report_data=bytes(ev.report_data), tcb_status=TCB_STATUSES[ev.tcb_status],
            advisory_ids=_advisories(ffi.string(ev.advisory_ids)),
            cert_fingerprint=bytes(ev.cert_sha256), spki_sha256=bytes(ev.spki_sha256),
            not_before=_time(ev.not_before), not_after=_time(ev.not_after),
            mrtd=bytes(ev.mrtd), rtmr=tuple(bytes(ev.rtmr[i]) for i in range(4)), mrseam=bytes(ev.mrseam),
            mrsignerseam=bytes(ev.mrsignerseam), td_attributes=ev.td_attributes, xfam=ev.xfam,
            tee_tcb_svn=bytes(ev.tee_tcb_svn),
        )


@dataclass(frozen=True)
class Unattested:
    """The caller of an RPC on a port that admits unattested clients (client_attestation="optional") that did not
    attest: nothing is known about its code or platform. What ratls.peer(context, allow_unattested=True) returns for
    such a caller, in place of an Evidence. It has none of Evidence's fields, so code written for an attested peer
    (peer(context).mrenclave) cannot run on it by mistake.

    channel_fingerprint: SHA-256 of the self-signed channel certificate the client presented, which tells
    unattested clients apart (a client makes a new one per process)."""

    channel_fingerprint: bytes

    def __repr__(self) -> str:
        return f"Unattested(channel={self.channel_fingerprint.hex()[:16]}…)"


@dataclass(frozen=True)
class CertificateInfo(_JsonMixin):
    """Where an RA-TLS certificate keeps its evidence (found, not verified: see verify_certificate)."""

    format: str
    quote: bytes
    legacy_quote: bytes | None
    dice_claims: bytes | None
    spki_sha256: bytes
    cert_fingerprint: bytes
    not_before: dt.datetime | None
    not_after: dt.datetime | None


def inspect_certificate(cert: bytes | str) -> CertificateInfo:
    """Finds the evidence in an RA-TLS certificate (PEM or DER): the quote verification would use (DICE
    preferred, as Gramine), the legacy quote and DICE claims when present. Raises VerificationError."""
    der = certificate_der(cert)
    info = ffi.new("ratls_cert_info *")
    check_call(lib.ratls_cert_inspect, der, len(der), info)

    def span(s) -> bytes:
        return der[s.off:s.off + s.len]

    return CertificateInfo(
        format=_FORMATS[info.format], quote=span(info.quote),
        legacy_quote=span(info.legacy_quote) if info.has_legacy else None,
        dice_claims=span(info.claims) if info.has_dice else None, spki_sha256=bytes(info.spki_sha256),
        cert_fingerprint=bytes(info.cert_sha256), not_before=_time(info.not_before), not_after=_time(info.not_after),
    )


def _now(now: int | float | dt.datetime | None) -> int:
    if now is None:
        return int(time.time())
    if isinstance(now, dt.datetime):
        return int(now.timestamp())
    return int(now)


def _native_verify(verify: Callable[..., int], data: bytes, policy: Policy, now: int, tcb: int, *,
                   simulated_tcb: int | None = None) -> Evidence:
    """The C core's verification with a given TCB status: lib.ratls_verify_cert of a certificate's DER or
    lib.ratls_verify_quote of a bare quote. `simulated_tcb`, if given, is the TCB status used instead when the
    evidence chains to the simulation root (whose provider evaluated no collateral)."""
    ev = ffi.new("ratls_evidence *")
    resimulate = simulated_tcb is not None and simulated_tcb != tcb
    try:
        check_call(verify, policy._native, data, len(data), now, tcb, ev)
    except VerificationError as e:
        # The TCB status is the last check: when only it failed, the evidence's root is known.
        if not (resimulate and e.reason == Reason.TCB_STATUS and ev.root == lib.RATLS_ROOT_SIMULATED):
            raise
    if resimulate and ev.root == lib.RATLS_ROOT_SIMULATED:
        return _native_verify(verify, data, policy, now, simulated_tcb)
    return Evidence._from_native(ev)


def _verify(verify: Callable[..., int], data: bytes, quote: Callable[[], bytes], policy: Policy, collateral: Any,
            now: int) -> Evidence:
    """Native verification with the TCB status from collateral, if given. The native checks (certificate,
    signature chain, key binding, attributes, measurements) run first, so that a tampered quote is reported as a
    signature failure rather than as whatever dcap-qvl says about it; the TCB status check is the native
    verification's last step, so only it can fail with an Unknown status once the rest passed."""
    if collateral is None:
        return _native_verify(verify, data, policy, now, lib.RATLS_TCB_UNKNOWN)
    try:
        _native_verify(verify, data, policy, now, lib.RATLS_TCB_UNKNOWN)
    except VerificationError as e:
        if e.reason != Reason.TCB_STATUS:
            raise
    from ratls.collateral import evaluate  # it builds on this module

    tcb = evaluate(quote(), policy, collateral, now)
    return dataclasses.replace(_native_verify(verify, data, policy, now, TCB_STATUSES.index(tcb.status)),
                               advisory_ids=tcb.advisory_ids)


def verify_certificate(cert: bytes | str, policy: Policy, *, now: int | float | dt.datetime | None = None,
                       collateral: Any = None) -> Evidence:
    """Verifies an RA-TLS certificate (PEM or DER) against a policy and returns its Evidence, or raises
    VerificationError with a specific reason. Without collateral the TCB status is "Unknown"; `collateral` is a
    ratls.collateral source (PCCS, FileCollateral), a PCCS URL, or one QuoteCollateralV3 (its JSON text or
    file)."""
    return note_accepted(_verify_certificate(certificate_der(cert), policy, _now(now), collateral))


def _verify_certificate(der: bytes, policy: Policy, now: int, collateral: Any = None) -> Evidence:
    """verify_certificate without the simulated-evidence notice: for a process's check of its own certificate,
    which accepts no peer."""
    return _verify(lib.ratls_verify_cert, der, lambda: inspect_certificate(der).quote, policy, collateral, now)


def verify_quote(raw: bytes, policy: Policy, *, now: int | float | dt.datetime | None = None,
                 collateral: Any = None) -> Evidence:
    """Verifies a bare SGX or TDX quote (signature chain, attributes, measurements, TCB status if collateral is given).
    There is no certificate, so no key binding: report_data is returned for the caller to check."""
    raw = bytes(raw)
    return note_accepted(_verify(lib.ratls_verify_quote, raw, lambda: raw, policy, collateral, _now(now)))

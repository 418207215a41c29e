"""Exceptions and the stable reason codes of verification failures (mirroring RATLS_ERR_* in ratls_core.h)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ratls._native import ffi, lib


class Reason(enum.IntEnum):
    """Why a certificate or quote was rejected. Values are stable and equal the C core's RATLS_ERR_* codes."""

    INTERNAL = 1
    BAD_ARGUMENT = 2
    CERT_MALFORMED = 10
    CERT_KEY_UNSUPPORTED = 11
    CERT_SIGNATURE = 12
    CERT_EXPIRED = 13
    CERT_NOT_YET_VALID = 14
    CERT_TOO_LARGE = 15
    CHANNEL_CERT = 16  # the attestation port: a missing, late or bad channel certificate (ratls/PROTOCOL.md)
    ATTESTATION_REQUIRED = 17  # a client without an RA-TLS certificate at a port that requires client attestation
    EVIDENCE_MISSING = 20
    EVIDENCE_CRITICAL = 21
    EVIDENCE_MALFORMED = 22
    QUOTE_MALFORMED = 30
    QUOTE_UNSUPPORTED_VERSION = 31
    QUOTE_UNSUPPORTED_KEY_TYPE = 32
    QUOTE_UNSUPPORTED_CERT_DATA = 33
    PCK_CHAIN_MALFORMED = 34
    PCK_CHAIN_UNTRUSTED = 35
    QE_REPORT_SIGNATURE = 36
    QE_REPORT_DATA = 37
    QUOTE_SIGNATURE = 38
    QE_VENDOR = 39
    REPORT_DATA_MISMATCH = 40
    ENCLAVE_ATTRIBUTES = 41
    DEBUG_ENCLAVE = 42
    SIMULATED_DENIED = 43
    MRENCLAVE = 44
    MRSIGNER = 45
    ISV_PROD_ID = 46
    ISV_SVN = 47
    TCB_STATUS = 48
    COLLATERAL = 49
    POLICY = 50
    TEE_TYPE = 51  # the policy does not accept this TEE (SGX evidence for a TDX-only policy, or the reverse)
    MRTD = 52
    RTMR = 53
    MRSEAM = 54  # the TDX module's measurement
    TEE_TCB_SVN = 55  # a TEE_TCB_SVN component below the policy's minimum
    PROVIDER = 60
    HANDSHAKE = 70
    TIMEOUT = 71
    IO = 72
    PEER_REFUSED = 73  # the attestation server refused our certificate; VerificationError.peer_reason says why


class RatlsError(Exception):
    """Base class of every error this package raises."""


class VerificationError(RatlsError):
    """A peer's certificate or quote was rejected. `reason` is stable; `message` says which field and why.

    When an attestation server refused our certificate, `reason` is PEER_REFUSED and `peer_reason` is the reason
    code the server sent (e.g. Reason.MRENCLAVE; None if this client does not know the code); the server sends only
    the code, never its message or policy. `peer_reason` is None for every other reason."""

    def __init__(self, reason: Reason, message: str, *, peer_reason: Reason | None = None) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message
        self.peer_reason = peer_reason


class CollateralValidityError(VerificationError):
    """COLLATERAL because the collateral was not valid at the verification time `at` (Unix seconds): it expired
    (`at` after `valid_until`, its earliest nextUpdate) or was issued later (`at` before `valid_from`, its latest
    issue date), and dcap-qvl refused it. Verifying as of a time inside [valid_from, valid_until] may pass."""

    def __init__(self, message: str, *, at: int, valid_from: float, valid_until: float) -> None:
        super().__init__(Reason.COLLATERAL, message)
        self.at = at
        self.valid_from = valid_from
        self.valid_until = valid_until

    @property
    def expired(self) -> bool:
        return self.at > self.valid_until


class PolicyError(RatlsError):
    """A policy could not be built from what was given (bad measurement, unknown status, unreadable root...)."""


class ProviderError(RatlsError):
    """An attestation provider could not be loaded or could not produce an identity."""


class UnattestedCallerError(RatlsError):
    """ratls.peer(context): the caller came in without attestation (a port with client_attestation="optional")."""


def check_call(function: Callable[..., int], *args: Any, error: type[RatlsError] = VerificationError,
               context: str | None = None) -> None:
    """Calls a C core function whose last two parameters are a message buffer and its size, and raises `error`
    with the C message unless it returns RATLS_OK. A VerificationError takes the return code as its Reason (the
    C codes are the Reason values); `context`, if given, prefixes the message."""
    msg = ffi.new("char[]", lib.RATLS_MSG_SIZE)
    rc = function(*args, msg, lib.RATLS_MSG_SIZE)
    if rc == lib.RATLS_OK:
        return
    text = ffi.string(msg).decode("utf-8", "replace")
    if context is not None:
        text = f"{context}: {text}"
    if error is VerificationError:
        try:
            reason = Reason(rc)
        except ValueError:
            reason = Reason.INTERNAL
        raise VerificationError(reason, text)
    raise error(text)

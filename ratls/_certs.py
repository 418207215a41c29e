"""The one DER <-> PEM conversion of certificates: policies, verification, identities and gRPC credentials all
take or give PEM where callers (and grpcio) want it, and the C core works on DER."""

from __future__ import annotations

import base64
import textwrap

from ratls.errors import PolicyError

# gramine-ratls writes TRUSTED CERTIFICATE.
_CERTIFICATE_LABELS = (b"CERTIFICATE", b"TRUSTED CERTIFICATE")
_BEGIN = b"-----BEGIN "
_DASHES = b"-----"
# Far above any certificate chain (an RA-TLS certificate with its quote is ~10 KB); checked before parsing.
MAX_PEM_BYTES = 1 << 20


def pem_blocks(data: bytes) -> list[bytes]:
    """DER bodies of the certificate PEM blocks in data, in one pass: every search moves forward, and an END
    marker is looked for at most once per label from any point, so unterminated blocks cost linear time (a
    regular expression with a lazy body took quadratic time on repeated BEGIN lines)."""
    if len(data) > MAX_PEM_BYTES:
        raise ValueError(f"PEM input of {len(data)} bytes is larger than {MAX_PEM_BYTES} bytes")
    out = []
    next_end: dict[bytes, int] = {}  # END marker -> where it next occurs at or after the last search (-1: nowhere)
    pos = 0
    while (begin := data.find(_BEGIN, pos)) >= 0:
        label_end = data.find(_DASHES, begin + len(_BEGIN))
        if label_end < 0:
            break
        label = data[begin + len(_BEGIN):label_end]
        body = label_end + len(_DASHES)
        pos = body
        if label not in _CERTIFICATE_LABELS:
            continue
        marker = b"-----END " + label + _DASHES
        end = next_end.get(marker)
        if end is None or 0 <= end < body:
            end = next_end[marker] = data.find(marker, body)
        if end < 0:
            continue  # unterminated; so is every later block of this label
        out.append(base64.b64decode(b"".join(data[body:end].split()), validate=True))
        pos = end + len(marker)
    return out


def certificate_der(cert: bytes | str) -> bytes:
    """A certificate given as DER bytes, PEM bytes or PEM text, as DER."""
    if isinstance(cert, str):
        cert = cert.encode()
    if b"-----BEGIN" in cert[:64]:
        if len(cert) > MAX_PEM_BYTES:
            raise PolicyError(f"PEM input of {len(cert)} bytes is larger than the {MAX_PEM_BYTES} a certificate "
                              "chain can need")
        try:
            blocks = pem_blocks(cert)
        except ValueError as e:
            raise PolicyError(f"bad base64 in PEM certificate: {e}") from e
        if not blocks:
            raise PolicyError("PEM input holds no CERTIFICATE block")
        return blocks[0]
    return cert


def certificate_pem(der: bytes) -> bytes:
    """A DER certificate as one PEM CERTIFICATE block (64-column base64, as OpenSSL and cryptography write it)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


def unique_common_name(spki_sha256: bytes) -> str:
    """The subject CN every RA-TLS certificate of ours has, RATLS-<16 hex of SHA-256(SPKI)> (native/src/cert.c
    writes it): unique per key, since gRPC picks trust anchors by subject name."""
    return "RATLS-" + spki_sha256[:8].hex()

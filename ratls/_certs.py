"""The one DER <-> PEM conversion of certificates: policies, verification, identities and gRPC credentials all
take or give PEM where callers (and grpcio) want it, and the C core works on DER."""

from __future__ import annotations

import base64
import re
import textwrap

from ratls.errors import PolicyError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)
# gramine-ratls writes TRUSTED CERTIFICATE.
_CERTIFICATE_LABELS = (b"CERTIFICATE", b"TRUSTED CERTIFICATE")


def pem_blocks(data: bytes) -> list[bytes]:
    """DER bodies of the certificate PEM blocks in data."""
    out = []
    for label, body in _PEM_BLOCK.findall(data):
        if label in _CERTIFICATE_LABELS:
            out.append(base64.b64decode(b"".join(body.split()), validate=True))
    return out


def certificate_der(cert: bytes | str) -> bytes:
    """A certificate given as DER bytes, PEM bytes or PEM text, as DER."""
    if isinstance(cert, str):
        cert = cert.encode()
    if b"-----BEGIN" in cert[:64]:
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

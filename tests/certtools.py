"""Builds tampered RA-TLS certificates for rejection tests: the same certificate with some extension values
replaced (or marked critical) and re-signed with the identity's own key, so that only the evidence is wrong."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

LEGACY_OID = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
DICE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")


def extension_value(cert_der: bytes, oid: x509.ObjectIdentifier) -> bytes:
    cert = x509.load_der_x509_certificate(cert_der)
    return cert.extensions.get_extension_for_oid(oid).value.value


def rebuild(cert_der: bytes, key_der: bytes, *, values: dict | None = None, critical: frozenset = frozenset(),
            drop: frozenset = frozenset()) -> bytes:
    values = values or {}
    cert = x509.load_der_x509_certificate(cert_der)
    key = serialization.load_der_private_key(key_der, None)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc).public_key(cert.public_key()))
    for ext in cert.extensions:
        if ext.oid in drop:
            continue
        value = ext.value
        if ext.oid in values:
            value = x509.UnrecognizedExtension(ext.oid, values[ext.oid])
        builder = builder.add_extension(value, critical=ext.oid in critical or ext.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def with_quote_bytes(cert_der: bytes, key_der: bytes, mutate) -> bytes:
    """Re-signed certificate whose quote (in both evidence extensions) is mutate(quote), same length."""
    import ratls

    info = ratls.inspect_certificate(cert_der)
    new_values = {}
    for oid, quote in ((DICE_OID, info.quote), (LEGACY_OID, info.legacy_quote)):
        value = extension_value(cert_der, oid)
        mutated = mutate(quote)
        assert len(mutated) == len(quote)
        new_values[oid] = value.replace(quote, mutated)
    return rebuild(cert_der, key_der, values=new_values)


def flip_bit(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)

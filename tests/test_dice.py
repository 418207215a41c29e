"""RA-TLS certificates in the TCG DICE tagged-evidence layout (ratls/PROTOCOL.md section 9): the real rats-tls and
Intel SGX SDK certificates, DICE-only certificates around real sim SGX quotes verified end to end, and a TDX quote
in such a certificate handed to the same quote verification as a bare quote."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from pathlib import Path

import pytest
from ratls._native import ffi, lib

import ratls
from ratls._certs import certificate_der
from ratls.errors import check_call

DICE_DATA = Path(__file__).parent / "data" / "dice"
# The TD report's REPORTDATA in a v4 TDX quote: 48-byte header + offset 520 of the TD report body.
TDX_V4_REPORT_DATA = 48 + 520


def tee_of(der: bytes) -> int:
    """What the C core says the certificate's quote header names (RATLS_TEE_*)."""
    info = ffi.new("ratls_cert_info *")
    check_call(lib.ratls_cert_inspect, der, len(der), info)
    return info.tee


def dice_report_data(private_key_der: bytes) -> bytes:
    out = ffi.new("uint8_t[64]")
    check_call(lib.ratls_dice_report_data, private_key_der, len(private_key_der), out)
    return bytes(out)


def debug_policy() -> ratls.Policy:
    return ratls.Policy(allow_debug=True, allowed_tcb_statuses=("Unknown",))


@pytest.mark.parametrize(("name", "custom_claims", "when"), [
    ("rats-tls-cert.pem", (b"key_0", b"key_1"), dt.datetime(2023, 6, 1, tzinfo=dt.UTC)),
    ("intel-sgxsdk-cert.pem", (), dt.datetime(2024, 6, 1, tzinfo=dt.UTC)),
])
def test_real_dice_certificates(name, custom_claims, when):
    """Both real DICE-only certificates of interoperable-ra-tls: the quote found, the claims (with rats-tls's custom
    ones) parsed, the binding holding, and the whole chain verifying to the Intel root at a time inside every
    validity period (their enclaves are debug enclaves)."""
    pem = (DICE_DATA / name).read_bytes()
    info = ratls.inspect_certificate(pem)
    der = certificate_der(pem)
    assert info.format == "dice" and info.legacy_quote is None
    assert tee_of(der) == lib.RATLS_TEE_SGX
    for claim in custom_claims:
        assert claim in info.dice_claims
    body = ratls.parse_quote(info.quote).body
    assert body.report_data[:32] == hashlib.sha256(info.dice_claims).digest()
    ev = ratls.verify_certificate(pem, debug_policy(), now=when)
    assert ev.format == "dice" and ev.debug and ev.mrenclave == body.mrenclave
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(pem, ratls.Policy(allowed_tcb_statuses=("Unknown",)), now=when)
    assert e.value.reason == ratls.Reason.DEBUG_ENCLAVE


def test_dice_only_certificate_with_a_sim_sgx_quote(identity, sim_ca, sim_policy, make_identity):
    """A DICE-only certificate around a real sim SGX quote: the quote the sim provider made over the DICE claims of
    a key is exactly the one ratls_dice_report_data asks for, and the certificate built around it verifies end to
    end with the SGX verifier; a quote bound to another key does not."""
    sim_quote = ratls.inspect_certificate(identity.certificate_der).quote
    wanted = ratls.parse_quote(sim_quote).body.report_data
    asked = []

    def quote(report_data: bytes) -> bytes:
        asked.append(report_data)
        return sim_quote

    dice = ratls.Identity.create_dice(quote, "sim", private_key_der=identity.private_key_der, sim_root=sim_ca.path)
    assert asked == [wanted] == [dice_report_data(identity.private_key_der)]
    info = ratls.inspect_certificate(dice.certificate_der)
    assert info.format == "dice" and info.legacy_quote is None and info.quote == sim_quote
    assert tee_of(dice.certificate_der) == lib.RATLS_TEE_SGX
    assert len(dice.certificate_der) < len(identity.certificate_der) - len(sim_quote) + 200  # one quote, not two
    ev = ratls.verify_certificate(dice.certificate_der, sim_policy)
    assert ev.format == "dice" and ev.mrenclave == identity.mrenclave
    assert ev.spki_sha256 == identity.evidence.spki_sha256
    assert dice.channel_certificate_der  # the same channel certificate rules as every identity

    # Another key's quote does not bind this key: the self-check refuses the identity.
    other = make_identity()
    with pytest.raises(ratls.VerificationError) as e:
        ratls.Identity.create_dice(lambda rd: ratls.inspect_certificate(other.certificate_der).quote, "sim",
                                   private_key_der=identity.private_key_der, sim_root=sim_ca.path)
    assert e.value.reason == ratls.Reason.REPORT_DATA_MISMATCH
    # And a policy for another enclave refuses the certificate on its measurement.
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(dice.certificate_der, ratls.Policy(
            mrenclave=bytes(32), allow_simulated=True, sim_root=sim_ca.path, allowed_tcb_statuses=("Unknown",)))
    assert e.value.reason == ratls.Reason.MRENCLAVE


def test_create_dice_names_a_bad_quote():
    with pytest.raises(ratls.ProviderError, match="quote is 10 bytes, expected 436..8192"):
        ratls.Identity.create_dice(lambda rd: b"x" * 10, "tdx")


def tdx_shaped_quote(report_data: bytes, length: int = 1200) -> bytes:
    """A v4 quote header naming TDX (tee_type 0x81), ECDSA P-256, Intel's QE vendor id, and the report data at
    its place in the TD report; the rest zero (no signature: it must not verify)."""
    header = struct.pack("<HHIHH", 4, 2, 0x81, 0, 0) + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607") + bytes(20)
    quote = bytearray(header + bytes(length - len(header)))
    quote[TDX_V4_REPORT_DATA:TDX_V4_REPORT_DATA + 64] = report_data
    return bytes(quote)


def test_tdx_quote_in_a_dice_certificate_goes_to_quote_verification(identity):
    """A TDX quote in a DICE-only certificate: the tag is recognised, the header says TDX, the quote is carried
    byte for byte and binds the key, and the certificate's verification ends exactly where the bare quote's does
    (the quote verifier is the one home of what a valid TDX quote is)."""
    key = identity.private_key_der
    quote = tdx_shaped_quote(dice_report_data(key))
    out = ffi.new("uint8_t **")
    n = ffi.new("size_t *")
    check_call(lib.ratls_dice_cert_create, key, len(key), quote, len(quote), 1700000000, 2000000000, out, n)
    der = bytes(ffi.buffer(out[0], n[0]))
    lib.ratls_free(out[0])
    info = ratls.inspect_certificate(der)
    assert info.format == "dice" and info.legacy_quote is None and info.quote == quote
    assert tee_of(der) == lib.RATLS_TEE_TDX
    assert quote[TDX_V4_REPORT_DATA:TDX_V4_REPORT_DATA + 32] == hashlib.sha256(info.dice_claims).digest()
    with pytest.raises(ratls.VerificationError) as bare:
        ratls.verify_quote(quote, ratls.Policy(), now=1800000000)
    with pytest.raises(ratls.VerificationError) as in_cert:
        ratls.verify_certificate(der, ratls.Policy(), now=1800000000)
    assert in_cert.value.reason == bare.value.reason
    assert str(in_cert.value) == str(bare.value)


@pytest.mark.parametrize(("tag", "message"), [
    (60001, "tag 60001 is an Intel TEE report"),
    (60002, "tag 60002 is a legacy SGX report"),
    (0x1a7504, "CBOR tag 1733892 is not an evidence type"),
])
def test_dice_reports_and_unknown_tags_refused(identity, tag, message):
    """The DICE extension of a real certificate re-tagged (its key and signature redone by cryptography): a TEE
    report or an unknown evidence type is refused, naming which."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    info = ratls.inspect_certificate(identity.certificate_der)
    retagged = cbor_head(6, tag) + cbor_head(4, 2) + cbor_head(2, len(info.quote)) + info.quote + cbor_head(
        2, len(info.dice_claims)) + info.dice_claims
    key = serialization.load_der_private_key(identity.private_key_der, None)
    name = x509.Name.from_rfc4514_string("CN=RATLS-retagged")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(dt.datetime(2024, 1, 1)).not_valid_after(dt.datetime(2040, 1, 1))
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.9"), retagged),
                           critical=False)
            .sign(key, hashes.SHA256()))
    with pytest.raises(ratls.VerificationError, match=message) as e:
        ratls.inspect_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert e.value.reason == ratls.Reason.EVIDENCE_MALFORMED


def cbor_head(major: int, value: int) -> bytes:
    """A minimal CBOR head (RFC 8949 section 3): the argument in the initial byte, or in 1, 2 or 4 bytes after it."""
    for info, size in ((24, 1), (25, 2), (26, 4)):
        if value < 24:
            return bytes([major << 5 | value])
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(f"{value} needs an 8-byte CBOR argument")


def as_dice_only(identity: ratls.Identity, sim_root) -> ratls.Identity:
    """The same key and enclave in the DICE-only layout, around the sim quote the identity's DICE evidence holds."""
    sim_quote = ratls.inspect_certificate(identity.certificate_der).quote
    return ratls.Identity.create_dice(lambda rd: sim_quote, "sim", private_key_der=identity.private_key_der,
                                      sim_root=sim_root)


def test_dice_only_identities_over_credentials(sim_ca, ids):
    """Both ends of a gRPC call with DICE-only certificates (as two TDs will have): each side's attestation handshake
    verifies the other's DICE-only certificate, and the call goes through."""
    from grpctools import hello, serve, sim_policy

    server = as_dice_only(ids("dice-server"), sim_ca.path)
    client = as_dice_only(ids("dice-client"), sim_ca.path)
    for side in (server, client):
        assert ratls.inspect_certificate(side.certificate_der).legacy_quote is None
    server_creds = ratls.credentials(sim_policy(sim_ca, client.mrenclave), server)
    client_creds = ratls.credentials(sim_policy(sim_ca, server.mrenclave), client)
    with serve(server_creds) as srv:
        with client_creds.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
            assert hello(channel) == b"hello world"
            assert channel.server_evidence.format == "dice"
            assert channel.server_certificate_der == server.certificate_der
        trusted = srv.creds.trusted_clients(srv.grpc_port)
        assert [ev.mrenclave for ev in trusted.values()] == [client.mrenclave]
        assert [ev.format for ev in trusted.values()] == ["dice"]


# What ratls_quote_parse and ratls_quote_verify_signatures can refuse: a certificate's verification stops at these
# before its key binding is looked at, so a quote in a certificate fails with the bare quote's reason.
QUOTE_CHAIN_REASONS = {
    ratls.Reason.QUOTE_MALFORMED, ratls.Reason.QUOTE_UNSUPPORTED_VERSION, ratls.Reason.QUOTE_UNSUPPORTED_KEY_TYPE,
    ratls.Reason.QUOTE_UNSUPPORTED_CERT_DATA, ratls.Reason.PCK_CHAIN_MALFORMED, ratls.Reason.PCK_CHAIN_UNTRUSTED,
    ratls.Reason.QE_REPORT_SIGNATURE, ratls.Reason.QE_REPORT_DATA, ratls.Reason.QUOTE_SIGNATURE,
    ratls.Reason.QE_VENDOR, ratls.Reason.SIMULATED_DENIED,
}


def test_real_tdx_quote_in_a_dice_certificate(identity):
    """A real TDX v4 quote (dcap-qvl's sample) in a DICE-only certificate: recognised as TDX from its header and
    carried byte for byte; verification takes it through the same quote checks as the bare quote, so it fails
    with the bare quote's reason while the quote verifier refuses TDX, and with REPORT_DATA_MISMATCH once the
    quote verifies (its report data binds Phala's key, not ours)."""
    quote = (DICE_DATA / "dcap-qvl-tdx_quote").read_bytes()
    assert struct.unpack_from("<HHI", quote) == (4, 2, 0x81)
    key = identity.private_key_der
    out = ffi.new("uint8_t **")
    n = ffi.new("size_t *")
    check_call(lib.ratls_dice_cert_create, key, len(key), quote, len(quote), 1700000000, 2000000000, out, n)
    der = bytes(ffi.buffer(out[0], n[0]))
    lib.ratls_free(out[0])
    assert tee_of(der) == lib.RATLS_TEE_TDX
    assert ratls.inspect_certificate(der).quote == quote
    when = 1751000000  # inside the PCK chain's validity
    try:
        ratls.verify_quote(quote, debug_policy(), now=when)
        bare = None
    except ratls.VerificationError as e:
        bare = e.reason
    with pytest.raises(ratls.VerificationError) as in_cert:
        ratls.verify_certificate(der, debug_policy(), now=when)
    if bare in QUOTE_CHAIN_REASONS:
        assert in_cert.value.reason == bare
    else:
        assert in_cert.value.reason == ratls.Reason.REPORT_DATA_MISMATCH

"""The rejection matrix: one test per reason, each asserting the specific reason code, and no crash on any
input. Tampered certificates are re-signed with the identity's own key, so only the evidence is wrong."""

from __future__ import annotations

import random
import struct
import time

import pytest
from certtools import DICE_OID, LEGACY_OID, extension_value, flip_bit, rebuild, with_quote_bytes
from conftest import REPO

import ratls

R = ratls.Reason
BODY = 48              # quote offset of the ISV report body
QE_REPORT = 436 + 128  # quote offset of the QE report
ATT_KEY = 436 + 64     # quote offset of the attestation key


def rejects(reason: ratls.Reason, cert, policy, **kw) -> ratls.VerificationError:
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(cert, policy, **kw)
    assert e.value.reason == reason, e.value
    assert e.value.message
    return e.value


def test_flipped_bit_in_report_body(identity, sim_policy):
    # MRSIGNER's first byte: outside report_data, so only the signature can catch it.
    cert = with_quote_bytes(identity.certificate_der, identity.private_key_der, lambda q: flip_bit(q, (BODY + 128) * 8))
    rejects(R.QUOTE_SIGNATURE, cert, sim_policy)


def test_flipped_bit_in_qe_report(identity, sim_policy):
    cert = with_quote_bytes(identity.certificate_der, identity.private_key_der,
                            lambda q: flip_bit(q, (QE_REPORT + 64) * 8 + 3))
    rejects(R.QE_REPORT_SIGNATURE, cert, sim_policy)


def test_flipped_bit_in_attestation_key(identity, sim_policy):
    cert = with_quote_bytes(identity.certificate_der, identity.private_key_der, lambda q: flip_bit(q, ATT_KEY * 8 + 9))
    rejects(R.QE_REPORT_DATA, cert, sim_policy)


def test_chain_to_untrusted_root(testdata):
    cert = (testdata / "sgx" / "gramine" / "gramine-cert.pem").read_bytes()
    other_root = testdata / "sgx" / "intel-qvl-sample" / "trustedRootCaCert.pem"
    policy = ratls.Policy(trusted_root=other_root, allow_debug=True, allowed_tcb_statuses=("Unknown",))
    rejects(R.PCK_CHAIN_UNTRUSTED, cert, policy)


def test_quote_lifted_from_another_certificate(identity, make_identity, sim_policy):
    other = make_identity()
    values = {oid: extension_value(other.certificate_der, oid) for oid in (DICE_OID, LEGACY_OID)}
    cert = rebuild(identity.certificate_der, identity.private_key_der, values=values)
    rejects(R.REPORT_DATA_MISMATCH, cert, sim_policy)
    # Legacy-only certificate (Gramine <= v1.7 layout) with a lifted quote: the SPKI binding catches it.
    legacy_only = rebuild(identity.certificate_der, identity.private_key_der, values=values, drop=frozenset({DICE_OID}))
    assert ratls.inspect_certificate(legacy_only).format == "legacy"
    rejects(R.REPORT_DATA_MISMATCH, legacy_only, sim_policy)
    honest_legacy_only = rebuild(identity.certificate_der, identity.private_key_der, drop=frozenset({DICE_OID}))
    assert ratls.verify_certificate(honest_legacy_only, sim_policy).format == "legacy"


def test_invalid_dice_evidence_does_not_fall_back_to_legacy(identity, sim_policy):
    value = extension_value(identity.certificate_der, DICE_OID)
    cert = rebuild(identity.certificate_der, identity.private_key_der, values={DICE_OID: value[:-1] + b"\x00"})
    rejects(R.REPORT_DATA_MISMATCH, cert, sim_policy)
    cert = rebuild(identity.certificate_der, identity.private_key_der, values={DICE_OID: b"\xd9\xea\x60\x80"})
    rejects(R.EVIDENCE_MALFORMED, cert, sim_policy)


def test_wrong_mrenclave(identity, sim_policy):
    e = rejects(R.MRENCLAVE, identity.certificate_der, sim_policy.replace(mrenclave="11" * 32))
    assert identity.mrenclave.hex() in e.message and "11" * 32 in e.message


def test_wrong_mrsigner(identity, sim_policy):
    rejects(R.MRSIGNER, identity.certificate_der, sim_policy.replace(mrsigner=bytes(32)))


def test_product_id_mismatch(identity, sim_policy):
    rejects(R.ISV_PROD_ID, identity.certificate_der, sim_policy.replace(isv_prod_id=5))


def test_svn_below_minimum(make_identity, sim_policy):
    ident = make_identity(isv_svn=2)
    assert ratls.verify_certificate(ident.certificate_der, sim_policy.replace(min_isv_svn=2)).isv_svn == 2
    rejects(R.ISV_SVN, ident.certificate_der, sim_policy.replace(min_isv_svn=3))


def test_debug_denied(make_identity, sim_policy):
    ident = make_identity(debug=True)
    rejects(R.DEBUG_ENCLAVE, ident.certificate_der, sim_policy)
    assert ratls.verify_certificate(ident.certificate_der, sim_policy.replace(allow_debug=True)).debug


def test_simulated_evidence_denied(identity, sim_ca):
    production = ratls.Policy(mrenclave=identity.mrenclave, allowed_tcb_statuses=("UpToDate", "Unknown"))
    rejects(R.SIMULATED_DENIED, identity.certificate_der, production)
    named_but_not_allowed = production.replace(sim_root=sim_ca.path)
    rejects(R.SIMULATED_DENIED, identity.certificate_der, named_but_not_allowed)


def test_sim_evidence_from_another_sim_ca(identity, tmp_path):
    other = ratls.SimCA.init(tmp_path / "other-ca")
    policy = ratls.Policy(allow_simulated=True, sim_root=other.path, allowed_tcb_statuses=("Unknown",))
    rejects(R.PCK_CHAIN_UNTRUSTED, identity.certificate_der, policy)


def test_unknown_tcb_needs_to_be_allowed(identity, sim_policy):
    e = rejects(R.TCB_STATUS, identity.certificate_der, sim_policy.replace(allowed_tcb_statuses=("UpToDate",)))
    assert "Unknown" in e.message


def test_certificate_expired_and_not_yet_valid(identity, sim_policy, make_identity):
    not_after = int(identity.evidence.not_after.timestamp())
    not_before = int(identity.evidence.not_before.timestamp())
    rejects(R.CERT_EXPIRED, identity.certificate_der, sim_policy, now=not_after + 1)
    rejects(R.CERT_NOT_YET_VALID, identity.certificate_der, sim_policy, now=not_before - 1)
    now = int(time.time())
    short = make_identity(not_before=now - 7200, not_after=now - 3600)
    rejects(R.CERT_EXPIRED, short.certificate_der, sim_policy)


def test_bad_self_signature(identity, sim_policy):
    der = bytearray(identity.certificate_der)
    der[-10] ^= 0x01  # inside the signature value
    rejects(R.CERT_SIGNATURE, bytes(der), sim_policy)


def test_truncated_quote(identity, sim_policy):
    quote = ratls.inspect_certificate(identity.certificate_der).quote
    for n in (0, 47, 48, 431, 435, 436, 600, len(quote) - 1):
        with pytest.raises(ratls.VerificationError) as e:
            ratls.verify_quote(quote[:n], sim_policy)
        assert e.value.reason == R.QUOTE_MALFORMED, (n, e.value)


def test_lengths_pointing_past_the_end(identity, sim_policy):
    quote = ratls.inspect_certificate(identity.certificate_der).quote
    huge_signature_len = quote[:432] + struct.pack("<I", 0xFFFFFFF0) + quote[436:]
    huge_auth_data = quote[:436 + 576] + struct.pack("<H", 0xFFFF) + quote[436 + 578:]
    for bad in (huge_signature_len, huge_auth_data):
        with pytest.raises(ratls.VerificationError) as e:
            ratls.verify_quote(bad, sim_policy)
        assert e.value.reason == R.QUOTE_MALFORMED


def test_garbage_der(sim_policy):
    for garbage in (b"", b"\x30\x03\x02\x01\x01", b"not a certificate at all", random.Random(1).randbytes(5000)):
        rejects(R.CERT_MALFORMED, garbage, sim_policy)


def test_tdx_quote_given_to_sgx_verifier(identity, sim_policy):
    """A real TDX quote verifies (Intel's root is in every policy) but an SGX policy refuses its TEE; an SGX quote's
    bytes behind a TDX header do not parse as a TD report."""
    tdx = (REPO / "tests" / "data" / "tdx" / "quote_v5_sample.dat").read_bytes()
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(tdx, sim_policy, now=1770080400)
    assert e.value.reason == R.TEE_TYPE and "from TDX" in e.value.message
    quote = ratls.inspect_certificate(identity.certificate_der).quote
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(struct.pack("<HHI", 4, 2, 0x81) + quote[8:], sim_policy)
    assert e.value.reason == R.QUOTE_MALFORMED


def test_critical_quote_extension(identity, sim_policy):
    for oid in (DICE_OID, LEGACY_OID):
        cert = rebuild(identity.certificate_der, identity.private_key_der, critical=frozenset({oid}))
        rejects(R.EVIDENCE_CRITICAL, cert, sim_policy)


def test_certificate_without_evidence(identity, sim_policy):
    cert = rebuild(identity.certificate_der, identity.private_key_der, drop=frozenset({DICE_OID, LEGACY_OID}))
    rejects(R.EVIDENCE_MISSING, cert, sim_policy)


def test_real_quote_every_single_bit_flip_in_signed_regions(testdata):
    """Every bit of header+body, attestation key, QE report and QE auth data of Intel's quote."""
    raw = (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()
    policy = ratls.Policy(allowed_tcb_statuses=("Unknown",))
    regions = [(0, 432), (500, 564), (564, 948), (1014, 1046)]
    accepted = []
    for start, end in regions:
        for bit in range(start * 8, end * 8):
            try:
                ratls.verify_quote(flip_bit(raw, bit), policy, now=1752919277)
                accepted.append(bit)
            except ratls.VerificationError:
                pass
    assert accepted == []


def test_no_crash_on_mutated_inputs(identity, sim_policy, testdata):
    rng = random.Random(20261125)
    seeds = [identity.certificate_der, (testdata / "sgx" / "gramine" / "gramine-cert.der").read_bytes()]
    quote = ratls.inspect_certificate(identity.certificate_der).quote
    for i in range(3000):
        base = bytearray(rng.choice(seeds) if i % 2 else quote)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(base))
            if op < 0.5:
                base[pos] = rng.randrange(256)
            elif op < 0.75:
                del base[pos:pos + rng.randint(1, 64)]
            else:
                base[pos:pos] = rng.randbytes(rng.randint(1, 64))
        try:
            if i % 2:
                ratls.verify_certificate(bytes(base), sim_policy)
            else:
                ratls.verify_quote(bytes(base), sim_policy)
        except ratls.VerificationError as e:
            assert isinstance(e.reason, ratls.Reason)


def test_platform_cache_never_skips_a_check(identity, sim_policy, sim_ca):
    """A policy caches platform evidence it verified; tampered platform bytes, a quote outside the chain's
    validity and another policy's roots are still checked in full."""
    quote = ratls.inspect_certificate(identity.certificate_der).quote
    assert ratls.verify_quote(quote, sim_policy).mrenclave == identity.mrenclave  # now cached
    for offset, reason in ((QE_REPORT + 64, R.QE_REPORT_SIGNATURE), (ATT_KEY, R.QE_REPORT_DATA),
                           (BODY + 128, R.QUOTE_SIGNATURE)):
        with pytest.raises(ratls.VerificationError) as e:
            ratls.verify_quote(flip_bit(quote, offset * 8), sim_policy)
        assert e.value.reason == reason
    pck_not_after = min(c.not_valid_after_utc for c in _pck_chain(quote))
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(quote, sim_policy, now=pck_not_after.timestamp() + 1)
    assert e.value.reason == R.PCK_CHAIN_UNTRUSTED
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(quote, sim_policy.replace(allow_simulated=False))
    assert e.value.reason == R.SIMULATED_DENIED


def _pck_chain(quote: bytes):
    from cryptography import x509

    return [x509.load_pem_x509_certificate(pem) for pem in ratls.parse_quote(quote).pck_chain_pem]

"""Identity and verification tests run on two provider paths over the same simulated SGX library:

- `sim`: libratls_sim.so through the sim provider (Identity.create("sim"), ratls.verify_certificate);
- `gramine`: the same library copied under Gramine's file names and reached only through Gramine's ABI, the way
  Gramine's libraries are (Identity.create("gramine"), GramineVerifier), found through RATLS_GRAMINE_ATTEST_LIB
  and RATLS_GRAMINE_VERIFY_LIB and configured, as a C program using Gramine's ABI would, by RATLS_SIM_CA_DIR and
  RATLS_SIM_MRENCLAVE.

Not collected by default (the library state configured from the environment must not leak into other tests):
test_gramine_provider.py runs it in a subprocess with that environment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from certtools import DICE_OID, LEGACY_OID, extension_value, flip_bit, rebuild, with_quote_bytes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

import ratls
from ratls.gramine import GramineVerifier, unique_subject_certificate

R = ratls.Reason
BODY = 48
QE_REPORT = 436 + 128
ATT_KEY = 436 + 64
YEAR = 365 * 24 * 3600


@dataclass
class ProviderPath:
    name: str
    make: Callable[[], ratls.Identity]
    verify: Callable[..., ratls.Evidence]
    mrenclave: bytes


@pytest.fixture(scope="session")
def ca() -> ratls.SimCA:
    if "RATLS_SIM_CA_DIR" not in os.environ:
        pytest.fail("run through tests/test_gramine_provider.py, which sets up the Gramine-named libraries")
    return ratls.SimCA(os.environ["RATLS_SIM_CA_DIR"])


@pytest.fixture(scope="session", params=["sim", "gramine"])
def path(request, ca, tmp_path_factory) -> ProviderPath:
    if request.param == "sim":
        app = tmp_path_factory.mktemp("app")
        (app / "main.py").write_text("print('enclave')\n")
        return ProviderPath("sim", lambda: ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app],
                                                                 measure_root=app),
                            ratls.verify_certificate, ratls.measure([app], app))
    verifier = GramineVerifier()
    assert verifier.library_path == os.environ["RATLS_GRAMINE_VERIFY_LIB"]
    return ProviderPath("gramine", lambda: ratls.Identity.create("gramine", sim_ca=ca.path),
                        verifier.verify_certificate, bytes.fromhex(os.environ["RATLS_SIM_MRENCLAVE"]))


@pytest.fixture(scope="session")
def identity(path) -> ratls.Identity:
    return path.make()


@pytest.fixture(scope="session")
def policy(path, ca) -> ratls.Policy:
    return ratls.Policy(mrenclave=path.mrenclave, mrsigner=ca.mrsigner, isv_prod_id=0, min_isv_svn=0,
                        allow_simulated=True, sim_root=ca.path, allowed_tcb_statuses=("UpToDate", "Unknown"))


def test_identity_verifies_to_the_expected_evidence(path, identity, policy, ca):
    assert identity.provider == path.name
    ev = path.verify(identity.certificate_pem, policy)
    assert (ev.provider, ev.format, ev.tcb_status, ev.advisory_ids) == ("sim", "dice", "Unknown", ())
    assert ev.mrenclave == path.mrenclave == identity.mrenclave
    assert ev.mrsigner == ca.mrsigner
    assert (ev.isv_prod_id, ev.isv_svn, ev.debug) == (0, 0, False)
    assert ev.cert_fingerprint == hashlib.sha256(identity.certificate_der).digest()
    assert ev == path.verify(identity.certificate_der, policy) == ratls.verify_certificate(identity.certificate_der,
                                                                                            policy)


def test_certificate_layout_and_unique_cn(path, identity):
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.common_name == \
        "RATLS-" + hashlib.sha256(spki).hexdigest()[:16]
    assert cert.issuer == cert.subject and cert.public_key().curve.name == "secp384r1"
    # Gramine's five extensions in Gramine's order, then a subjectAltName naming the CN; none critical.
    assert [e.oid.dotted_string for e in cert.extensions] == \
        ["2.5.29.19", "2.5.29.14", "2.5.29.35", "0.6.9.42.840.113741.1337.6", "2.23.133.5.4.9", "2.5.29.17"]
    assert not any(e.critical for e in cert.extensions)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.DNSName(identity.common_name)])
    info = ratls.inspect_certificate(identity.certificate_der)
    assert ratls.parse_quote(info.legacy_quote).body.report_data == hashlib.sha256(spki).digest() + bytes(32)
    assert ratls.parse_quote(info.quote).body.report_data == hashlib.sha256(info.dice_claims).digest() + bytes(32)


def test_each_identity_has_its_own_key(path, identity):
    other = path.make()
    assert other.common_name != identity.common_name and other.private_key_der != identity.private_key_der
    key = serialization.load_der_private_key(identity.private_key_der, None)
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    assert key.public_key() == cert.public_key()


def _lifted(identity, other):
    values = {oid: extension_value(other.certificate_der, oid) for oid in (DICE_OID, LEGACY_OID)}
    return rebuild(identity.certificate_der, identity.private_key_der, values=values)


REJECTIONS = {
    "mrenclave": (R.MRENCLAVE, lambda p, i: (i.certificate_der, {"policy": {"mrenclave": "11" * 32}})),
    "mrsigner": (R.MRSIGNER, lambda p, i: (i.certificate_der, {"policy": {"mrsigner": bytes(32)}})),
    "isv_prod_id": (R.ISV_PROD_ID, lambda p, i: (i.certificate_der, {"policy": {"isv_prod_id": 1}})),
    "isv_svn": (R.ISV_SVN, lambda p, i: (i.certificate_der, {"policy": {"min_isv_svn": 1}})),
    "simulated": (R.SIMULATED_DENIED, lambda p, i: (i.certificate_der,
                                                    {"policy": {"allow_simulated": False, "sim_root": None}})),
    "tcb_up_to_date_only": (R.TCB_STATUS, lambda p, i: (i.certificate_der,
                                                        {"policy": {"allowed_tcb_statuses": ("UpToDate",)}})),
    "expired": (R.CERT_EXPIRED, lambda p, i: (i.certificate_der,
                                              {"now": i.evidence.not_after.timestamp() + YEAR})),
    "not_yet_valid": (R.CERT_NOT_YET_VALID, lambda p, i: (i.certificate_der,
                                                          {"now": i.evidence.not_before.timestamp() - YEAR})),
    "garbage": (R.CERT_MALFORMED, lambda p, i: (b"\x30\x03\x02\x01\x00", {})),
    "report_body_bit": (R.QUOTE_SIGNATURE, lambda p, i: (with_quote_bytes(
        i.certificate_der, i.private_key_der, lambda q: flip_bit(q, (BODY + 128) * 8)), {})),
    "qe_report_bit": (R.QE_REPORT_SIGNATURE, lambda p, i: (with_quote_bytes(
        i.certificate_der, i.private_key_der, lambda q: flip_bit(q, (QE_REPORT + 64) * 8 + 3)), {})),
    "attestation_key_bit": (R.QE_REPORT_DATA, lambda p, i: (with_quote_bytes(
        i.certificate_der, i.private_key_der, lambda q: flip_bit(q, ATT_KEY * 8 + 9)), {})),
    "lifted_quote": (R.REPORT_DATA_MISMATCH, lambda p, i: (_lifted(i, p.make()), {})),
    "dice_malformed": (R.EVIDENCE_MALFORMED, lambda p, i: (rebuild(
        i.certificate_der, i.private_key_der, values={DICE_OID: b"\xd9\xea\x60\x80"}), {})),
    "evidence_missing": (R.EVIDENCE_MISSING, lambda p, i: (rebuild(
        i.certificate_der, i.private_key_der, drop=frozenset({DICE_OID, LEGACY_OID})), {})),
    "evidence_critical": (R.EVIDENCE_CRITICAL, lambda p, i: (rebuild(
        i.certificate_der, i.private_key_der, critical=frozenset({DICE_OID})), {})),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejection(path, identity, policy, case):
    reason, make = REJECTIONS[case]
    cert, how = make(path, identity)
    verify_policy = policy.replace(**how.get("policy", {}))
    with pytest.raises(ratls.VerificationError) as e:
        path.verify(cert, verify_policy, **({"now": how["now"]} if "now" in how else {}))
    assert e.value.reason == reason, e.value
    assert e.value.message
    if case == "mrenclave":
        assert identity.mrenclave.hex() in e.value.message and "11" * 32 in e.value.message


def test_reissue_with_unique_cn_keeps_the_evidence(path, identity, policy):
    """Gramine's library names every certificate CN=RATLS; re-issuing restores a unique CN over the same key."""
    gramine_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
                              x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
                              x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    key = serialization.load_der_private_key(identity.private_key_der, None)
    from cryptography.hazmat.primitives import hashes

    builder = (x509.CertificateBuilder().subject_name(gramine_name).issuer_name(gramine_name)
               .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc).public_key(cert.public_key()))
    for ext in cert.extensions:
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME:  # Gramine writes none
            builder = builder.add_extension(ext.value, critical=ext.critical)
    as_gramine = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert path.verify(as_gramine, policy).mrenclave == identity.mrenclave  # CN=RATLS is valid, just not unique

    reissued = unique_subject_certificate(as_gramine, identity.private_key_der)
    new = x509.load_der_x509_certificate(reissued)
    assert new.subject == new.issuer == cert.subject  # the same unique name the key's own certificate has
    # Gramine's extensions, then the subjectAltName naming the new CN: the layout of the key's own certificate.
    assert [(e.oid, e.critical) for e in new.extensions] == [(e.oid, e.critical) for e in cert.extensions]
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.DNSName(identity.common_name)])
    for oid in (DICE_OID, LEGACY_OID):
        assert extension_value(reissued, oid) == extension_value(as_gramine, oid)  # byte for byte
    assert (new.serial_number, new.not_valid_before_utc, new.not_valid_after_utc) == \
        (cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)
    ev = path.verify(reissued, policy)
    assert ev.mrenclave == identity.mrenclave and ev.spki_sha256 == identity.evidence.spki_sha256
    # Already unique and named in a subjectAltName: returned as is. With the unique CN but without that name it is
    # re-issued, to add it.
    assert unique_subject_certificate(identity.certificate_der, identity.private_key_der) == identity.certificate_der
    unnamed = rebuild(identity.certificate_der, identity.private_key_der,
                      drop=frozenset({ExtensionOID.SUBJECT_ALTERNATIVE_NAME}))
    named = x509.load_der_x509_certificate(unique_subject_certificate(unnamed, identity.private_key_der))
    assert named.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.DNSName(identity.common_name)])
    # A key that is not the certificate's is refused.
    with pytest.raises(ratls.ProviderError, match="does not match"):
        unique_subject_certificate(as_gramine, path.make().private_key_der)


def test_auto_picks_gramine_when_attestation_type_is_dcap(ca, tmp_path, monkeypatch):
    """In an enclave (/dev/attestation/attestation_type reads "dcap") `auto` is the gramine provider, even when a
    sim CA is given."""
    attestation_type = tmp_path / "attestation_type"
    attestation_type.write_text("dcap")
    monkeypatch.setattr(ratls.gramine, "ATTESTATION_TYPE_FILE", str(attestation_type))
    ident = ratls.Identity.create("auto", sim_ca=ca.path, measured_files=[attestation_type])
    assert ident.provider == "gramine"
    assert ident.mrenclave == bytes.fromhex(os.environ["RATLS_SIM_MRENCLAVE"])
    attestation_type.write_text("none")
    assert ratls.Identity.create("auto", sim_ca=ca.path, measured_files=[attestation_type]).provider == "sim"


def test_debug_enclave_refused_by_gramine_rules_alone(testdata):
    """A rule only Gramine's library applies is reported from its results: the real Gramine certificate is a debug
    enclave; our policy allows debug, Gramine's library (without RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE=1) does not."""
    cert = (testdata / "sgx" / "gramine" / "gramine-cert.der").read_bytes()
    policy = ratls.Policy(allow_debug=True, allowed_tcb_statuses=("Unknown",))
    assert ratls.verify_certificate(cert, policy).debug
    with pytest.raises(ratls.VerificationError) as e:
        GramineVerifier().verify_certificate(cert, policy)
    assert e.value.reason == R.DEBUG_ENCLAVE
    assert "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE=1" in e.value.message and "AT_VERIFY_ENCLAVE_ATTRS" in e.value.message


def test_libraries_are_the_gramine_named_copies():
    from ratls.gramine import find_library

    for kind, name in (("attest", "libra_tls_attest.so"), ("verify", "libra_tls_verify_dcap.so")):
        found = Path(find_library(kind))
        assert found.name == name and found.parent == Path(os.environ["RATLS_GRAMINE_LIB_DIR"])

"""RA-TLS core: sim identities round-trip, the real Gramine certificate and the real Intel-signed quote."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from cryptography import x509
from ratls._native import ffi, lib

import ratls
from ratls.policy import ALLOWABLE_TCB_STATUSES

GRAMINE_MRENCLAVE = "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585"
GRAMINE_MRSIGNER = "adc53501f21ced9b998e37a7a18e061c63e00315045fa57a49c18ef0a30d02ca"
DCAP_QVL_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
DCAP_QVL_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
DCAP_QVL_VALID_TIME = 1752919277


def test_reason_codes_mirror_the_c_core():
    for reason in ratls.Reason:
        assert ffi.string(lib.ratls_reason_name(reason)).decode() == reason.name
    assert ratls.TCB_STATUSES[lib.RATLS_TCB_UP_TO_DATE] == "UpToDate"
    assert ratls.TCB_STATUSES[0] == "Unknown"


def test_shipped_intel_root_is_the_published_one(testdata):
    assert ffi.string(lib.ratls_intel_root_ca_pem()) == (testdata / "sgx" / "intel_sgx_root_ca.pem").read_bytes()


def test_sim_identity_round_trip(sim_ca, measured_tree, make_identity):
    ident = make_identity(isv_prod_id=7, isv_svn=3)
    expected_mrenclave = ratls.measure([measured_tree], measured_tree)
    policy = ratls.Policy(mrenclave=expected_mrenclave, mrsigner=sim_ca.mrsigner, isv_prod_id=7, min_isv_svn=3,
                          allow_simulated=True, sim_root=sim_ca.path, allowed_tcb_statuses=("UpToDate", "Unknown"))
    ev = ratls.verify_certificate(ident.certificate_pem, policy)
    assert ev.provider == "sim" and ev.simulated
    assert ev.format == "dice"
    assert ev.mrenclave == expected_mrenclave == ident.mrenclave
    assert ev.mrsigner == sim_ca.mrsigner
    assert (ev.isv_prod_id, ev.isv_svn, ev.debug) == (7, 3, False)
    assert ev.tcb_status == "Unknown"
    assert ev.cert_fingerprint == hashlib.sha256(ident.certificate_der).digest()
    assert ev == ratls.verify_certificate(ident.certificate_der, policy)


def test_sim_certificate_has_gramine_layout_and_unique_cn(identity, make_identity):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_der_x509_certificate(identity.certificate_der)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert cn == "RATLS-" + hashlib.sha256(spki).hexdigest()[:16] == identity.common_name
    assert cert.issuer == cert.subject
    assert cert.public_key().curve.name == "secp384r1"
    oids = [e.oid.dotted_string for e in cert.extensions]
    # Gramine's five extensions in Gramine's order, then a subjectAltName naming the CN.
    assert oids == ["2.5.29.19", "2.5.29.14", "2.5.29.35", "0.6.9.42.840.113741.1337.6", "2.23.133.5.4.9",
                    "2.5.29.17"]
    assert not any(e.critical for e in cert.extensions)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san) == 1 and san.get_values_for_type(x509.DNSName) == [cn]
    # Both bindings as Gramine makes them: legacy rd = SHA-256(SPKI); DICE rd = SHA-256(claims).
    info = ratls.inspect_certificate(identity.certificate_der)
    assert ratls.parse_quote(info.legacy_quote).body.report_data == hashlib.sha256(spki).digest() + bytes(32)
    assert ratls.parse_quote(info.quote).body.report_data == hashlib.sha256(info.dice_claims).digest() + bytes(32)
    assert make_identity().common_name != identity.common_name


def _tls_handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str) -> None:
    """A TLS handshake between two contexts over memory BIOs (no sockets, no threads); raises what the client's
    certificate verification raises."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    s = server.wrap_bio(to_server, to_client, server_side=True)
    done = set()
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
        if done == {c, s}:
            return
    raise AssertionError("the TLS handshake did not finish")


def test_tls_clients_that_ignore_the_cn_accept_it_by_subject_alt_name(identity, tmp_path):
    """Go (since 1.15) checks a server's name against its subjectAltName only; Python's ssl does the same with
    hostname_checks_common_name off. Pinned to our certificate, such a client accepts it under its CN."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(identity.certificate_pem)
    key.write_bytes(identity.private_key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=cert)
    client.hostname_checks_common_name = False
    _tls_handshake(client, server, identity.common_name)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _tls_handshake(client, server, "RATLS-0000000000000000")


def test_measurement_follows_the_code(measured_tree, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(measured_tree, copy)
    assert ratls.measure([copy], copy) == ratls.measure([measured_tree], measured_tree)
    (copy / "lib" / "util.py").write_text("X = 2\n")
    assert ratls.measure([copy], copy) != ratls.measure([measured_tree], measured_tree)
    with pytest.raises(ratls.RatlsError, match="no such file"):
        ratls.measure([tmp_path / "missing.py"])


def test_real_gramine_certificate(testdata):
    pem = (testdata / "sgx" / "gramine" / "gramine-cert.pem").read_bytes()
    der = (testdata / "sgx" / "gramine" / "gramine-cert.der").read_bytes()
    info = ratls.inspect_certificate(pem)
    assert info.format == "dice"
    assert info.quote == (testdata / "sgx" / "gramine" / "gramine-cert.dice_evidence_quote.bin").read_bytes()
    assert info.legacy_quote == (testdata / "sgx" / "gramine" / "gramine-cert.legacy_oid_quote.bin").read_bytes()
    # Both bindings hold.
    assert ratls.parse_quote(info.legacy_quote).body.report_data[:32] == info.spki_sha256
    assert ratls.parse_quote(info.quote).body.report_data[:32] == hashlib.sha256(info.dice_claims).digest()
    for quote in (info.quote, info.legacy_quote):
        body = ratls.parse_quote(quote).body
        assert body.mrenclave.hex() == GRAMINE_MRENCLAVE
        assert body.mrsigner.hex() == GRAMINE_MRSIGNER
        assert body.flags == 0x07 and body.debug
    # Default policy: rejected for the debug flag (after the PCK chain verified to the shipped Intel root).
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(der, ratls.Policy())
    assert e.value.reason == ratls.Reason.DEBUG_ENCLAVE
    policy = ratls.Policy(mrenclave=GRAMINE_MRENCLAVE, allow_debug=True, allowed_tcb_statuses=("unknown",))
    ev = ratls.verify_certificate(pem, policy)
    assert ev.provider == "sgx" and ev.format == "dice" and ev.debug and ev.tcb_status == "Unknown"
    assert ev.mrsigner.hex() == GRAMINE_MRSIGNER


def test_gramine_certificate_parsing_does_not_need_cryptography(testdata):
    """Gramine <= v1.5 writes NULL ECDSA signature parameters, which cryptography 50 refuses; we parse it."""
    der = (testdata / "sgx" / "gramine" / "gramine-cert.der").read_bytes()
    assert bytes.fromhex("06082a8648ce3d0403020500") in der
    assert ratls.inspect_certificate(der).format == "dice"


def test_trusted_certificate_pem_label(identity, sim_policy):
    """gramine-ratls writes its certificate PEM as TRUSTED CERTIFICATE."""
    pem = identity.certificate_pem.replace(b"CERTIFICATE-----", b"TRUSTED CERTIFICATE-----")
    assert ratls.verify_certificate(pem, sim_policy).mrenclave == identity.mrenclave


def test_real_intel_quote_verifies_to_intel_root(testdata):
    raw = (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()
    q = ratls.parse_quote(raw)
    assert (q.version, q.att_key_type, q.cert_data_type) == (3, 2, 5)
    assert q.body.mrenclave.hex() == DCAP_QVL_MRENCLAVE and q.body.mrsigner.hex() == DCAP_QVL_MRSIGNER
    assert q.body.report_data == b"Hello, world!" + bytes(51)
    assert len(q.pck_chain_pem) == 3
    ev = ratls.verify_quote(raw, ratls.Policy(allowed_tcb_statuses=("Unknown",)), now=DCAP_QVL_VALID_TIME)
    assert ev.provider == "sgx" and ev.format == "quote" and not ev.debug


def test_real_quote_tcb_from_collateral(testdata):
    raw = (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()
    collateral = testdata / "sgx" / "dcap-qvl" / "sgx_quote_collateral.json"
    lenient = ratls.Policy(allowed_tcb_statuses=ALLOWABLE_TCB_STATUSES)
    ev = ratls.verify_quote(raw, lenient, now=DCAP_QVL_VALID_TIME, collateral=collateral)
    assert ev.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert set(ev.advisory_ids) == {"INTEL-SA-00289", "INTEL-SA-00615"}
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(raw, ratls.Policy(), now=DCAP_QVL_VALID_TIME, collateral=collateral)
    assert e.value.reason == ratls.Reason.TCB_STATUS
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(raw, lenient, now=DCAP_QVL_VALID_TIME + 2, collateral=collateral)
    assert e.value.reason == ratls.Reason.COLLATERAL and "expired" in e.value.message


def test_sim_provider_abi_is_gramines(sim_ca, identity, tmp_path):
    """libratls_sim.so exports exactly Gramine's four RA-TLS symbols (+ its configure calls, SGX and TDX, and its
    quote-over-report_data call), and a C program
    using only that ABI gets Gramine's results struct and return codes."""
    import subprocess
    import sys

    symbols = subprocess.run(["nm", "-D", "--defined-only", str(ratls.identity.SIM_LIBRARY)], capture_output=True,
                             text=True, check=True).stdout.split()
    exported = {s for s in symbols if s.startswith("ra")}
    assert exported == {"ra_tls_set_measurement_callback", "ra_tls_verify_callback_der",
                        "ra_tls_verify_callback_extended_der", "ra_tls_create_key_and_crt_der",
                        "ratls_sim_configure", "ratls_sim_configure_tdx", "ratls_sim_quote"}
    script = f"""
import ctypes, os, sys
lib = ctypes.CDLL({str(ratls.identity.SIM_LIBRARY)!r})
class Results(ctypes.Structure):
    _fields_ = [("scheme", ctypes.c_int), ("err_loc", ctypes.c_int), ("func", ctypes.c_int),
                ("qv", ctypes.c_int), ("pad", ctypes.c_char * 120)]
assert ctypes.sizeof(Results) == 136
key, crt = ctypes.POINTER(ctypes.c_uint8)(), ctypes.POINTER(ctypes.c_uint8)()
kl, cl = ctypes.c_size_t(), ctypes.c_size_t()
assert lib.ra_tls_create_key_and_crt_der(ctypes.byref(key), ctypes.byref(kl), ctypes.byref(crt), ctypes.byref(cl)) == 0
der = ctypes.string_at(crt, cl.value)
r = Results()
rc = lib.ra_tls_verify_callback_extended_der(der, len(der), ctypes.byref(r))
print(rc, r.scheme, r.err_loc)
os.environ["RA_TLS_MRENCLAVE"] = "00" * 32
rc = lib.ra_tls_verify_callback_extended_der(der, len(der), ctypes.byref(r))
print(rc, r.scheme, r.err_loc)
del os.environ["RA_TLS_ISV_SVN"]
print(lib.ra_tls_verify_callback_der(der, len(der)))
"""
    env = {"PATH": "/usr/bin:/bin", "RATLS_SIM_CA_DIR": str(sim_ca.path), "RATLS_SIM_MRENCLAVE": "ab" * 32,
           "RA_TLS_MRENCLAVE": "ab" * 32, "RA_TLS_MRSIGNER": sim_ca.mrsigner.hex(), "RA_TLS_ISV_PROD_ID": "0",
           "RA_TLS_ISV_SVN": "any"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, mismatch, missing_var = out.stdout.split("\n")[:3]
    assert ok == "0 2 0"                                  # accepted, DCAP scheme, AT_NONE
    assert mismatch == f"{-0x2700} 2 5"                   # CERT_VERIFY_FAILED at AT_VERIFY_ENCLAVE_MEASUREMENTS
    assert int(missing_var) == -0x2700                    # v1.8+: every measurement variable is mandatory
    assert "RA_TLS_ISV_SVN" in out.stderr and "SIMULATED" in out.stderr

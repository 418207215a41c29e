"""Intel TDX quotes (issue 21): the real go-tdx-guest quotes v4 and v5 (tests/data/tdx) parse and verify to Intel's
root through ratls; policies accept TEEs by name (SGX never TDX and TDX never SGX unless both are named) and check
MRTD and RTMRs; the TCB status of the v4 quote from its own collateral at the collateral's time; simulated TDs
(provider "sim-tdx", sim_tdx_quote) verify like real ones and attest to SGX peers over credentials()."""

from __future__ import annotations

import json

import dcap_qvl
import pytest
from conftest import REPO
from grpctools import hello, serve
from pccs_stub import PccsStub

import ratls
from ratls.collateral import PCCS, CollateralKey, FileCollateral, _raw_member
from ratls.credentials import credentials
from ratls.errors import CollateralValidityError
from ratls.identity import sim_tdx_quote
from ratls.sim_pccs import SimPCCS

R = ratls.Reason
DATA = REPO / "tests" / "data" / "tdx"
V4_TRAILER = b"\nextra bytes(only for testing purpose)\n"  # go-tdx-guest's, after the quote's end (README.md)
V4_NOW = 1688173200  # 2023-07-01T01:00:00Z, inside the PCK chain's validity, as go-tdx-guest's tests use
V5_NOW = 1770080400  # 2026-02-03T01:00:00Z, likewise for the v5 quote
# The v4 quote's collateral: latest issue date (TCB Info) .. earliest nextUpdate (QE Identity).
COLLATERAL_FROM, COLLATERAL_UNTIL = 1687077778, 1688801099
V4_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
V5_MRTD = "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"
ANY_TCB = ("Unknown",)


@pytest.fixture(scope="module")
def v4() -> bytes:
    raw = (DATA / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    assert raw.endswith(V4_TRAILER)
    return raw[:-len(V4_TRAILER)]


@pytest.fixture(scope="module")
def v5() -> bytes:
    return (DATA / "quote_v5_sample.dat").read_bytes()


def tdx_policy(**kw) -> ratls.Policy:
    return ratls.Policy(tees="tdx", allowed_tcb_statuses=ANY_TCB, **kw)


def refused(reason: ratls.Reason, quote: bytes, policy: ratls.Policy, now: int, *needles: str) -> str:
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(quote, policy, now=now)
    assert e.value.reason == reason, e.value
    for needle in needles:
        assert needle in e.value.message, e.value.message
    return e.value.message


def test_real_quotes_parse_as_dcap_qvl_reads_them(v4, v5):
    for raw, version, body_type in ((v4, 4, 2), (v5, 5, 3)):
        q = ratls.parse_quote(raw)
        theirs = dcap_qvl.parse_quote(raw).report
        assert (q.version, q.tee, q.tee_type, q.body_type, q.body) == (version, "tdx", 0x81, body_type, None)
        td = q.td_report
        assert td.mrtd == bytes(theirs.mr_td) and td.mrseam == bytes(theirs.mr_seam)
        assert td.rtmr == tuple(bytes(getattr(theirs, f"rt_mr{i}")) for i in range(4))
        assert td.report_data == bytes(theirs.report_data) and td.tee_tcb_svn == bytes(theirs.tee_tcb_svn)
        assert td.td_attributes.to_bytes(8, "little") == bytes(theirs.td_attributes)
        assert td.xfam.to_bytes(8, "little") == bytes(theirs.xfam) and not td.debug
        assert len(q.pck_chain_pem) == 3 and q.cert_data_type == 5
    assert ratls.parse_quote(v5).td_report.tee_tcb_svn2 == bytes(dcap_qvl.parse_quote(v5).report.tee_tcb_svn2)
    assert ratls.parse_quote(v4).td_report.tee_tcb_svn2 == bytes(16)


def test_the_v4_file_with_go_tdx_guests_trailer_is_refused_for_it(v4):
    with pytest.raises(ratls.VerificationError) as e:
        ratls.parse_quote(v4 + V4_TRAILER)
    assert e.value.reason == R.QUOTE_MALFORMED and f"{len(V4_TRAILER)} trailing bytes" in e.value.message


def test_real_quotes_verify_to_the_intel_root(v4, v5):
    for raw, now, mrtd in ((v4, V4_NOW, V4_MRTD), (v5, V5_NOW, V5_MRTD)):
        ev = ratls.verify_quote(raw, tdx_policy(mrtd=mrtd), now=now)
        q = ratls.parse_quote(raw).td_report
        assert (ev.provider, ev.tee, ev.format, ev.tcb_status, ev.debug) == ("sgx", "tdx", "quote", "Unknown", False)
        assert (ev.mrtd, ev.rtmr, ev.mrseam, ev.mrsignerseam) == (q.mrtd, q.rtmr, q.mrseam, q.mrsignerseam)
        assert (ev.td_attributes, ev.xfam, ev.tee_tcb_svn, ev.report_data) == (q.td_attributes, q.xfam,
                                                                              q.tee_tcb_svn, q.report_data)
        assert ev.mrenclave == bytes(32) and ev.attributes_flags == 0
        assert ev.to_dict()["mrtd"] == mrtd and ev.to_dict()["tee"] == "tdx"
    # The v4 PCK leaf is valid from 2022-09-20.
    refused(R.PCK_CHAIN_UNTRUSTED, v4, tdx_policy(), 1650000000, "not yet valid")


def test_sgx_policies_refuse_tdx_and_tdx_policies_refuse_sgx(v4, testdata):
    sgx_quote = (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()
    sgx_now = 1752919277
    refused(R.TEE_TYPE, v4, ratls.Policy(allowed_tcb_statuses=ANY_TCB), V4_NOW, "TDX", "SGX only")
    refused(R.TEE_TYPE, sgx_quote, tdx_policy(), sgx_now, "from SGX", "TDX only")
    both = ratls.Policy(tees=("tdx", "sgx"), allowed_tcb_statuses=ANY_TCB)
    assert both.tees == ("sgx", "tdx")
    assert ratls.verify_quote(v4, both, now=V4_NOW).tee == "tdx"
    assert ratls.verify_quote(sgx_quote, both, now=sgx_now).tee == "sgx"


def test_mrtd_and_each_rtmr_are_checked(v4):
    q = ratls.parse_quote(v4).td_report
    other = "ab" * 48
    refused(R.MRTD, v4, tdx_policy(mrtd=other), V4_NOW, f"MRTD {V4_MRTD}", f"expected {other}")
    assert ratls.verify_quote(v4, tdx_policy(mrtd=[other, V4_MRTD]), now=V4_NOW).mrtd.hex() == V4_MRTD
    for i in range(4):
        refused(R.RTMR, v4, tdx_policy(**{f"rtmr{i}": other}), V4_NOW, f"RTMR{i} {q.rtmr[i].hex()}")
        ratls.verify_quote(v4, tdx_policy(**{f"rtmr{i}": [q.rtmr[i], other]}), now=V4_NOW)
    every = tdx_policy(mrtd=V4_MRTD, **{f"rtmr{i}": q.rtmr[i] for i in range(4)})
    assert ratls.verify_quote(v4, every, now=V4_NOW).rtmr == q.rtmr
    assert every.replace(rtmr3=other).rtmr3 == (bytes.fromhex(other),)
    refused(R.RTMR, v4, every.replace(rtmr3=other), V4_NOW, "RTMR3")


def test_tdx_module_mrseam_and_minimum_tee_tcb_svn(v4):
    q = ratls.parse_quote(v4).td_report
    assert q.tee_tcb_svn.hex() == "03000400000000000000000000000000"
    refused(R.MRSEAM, v4, tdx_policy(mrseam="ab" * 48), V4_NOW, f"MRSEAM {q.mrseam.hex()}")
    assert ratls.verify_quote(v4, tdx_policy(mrseam=q.mrseam, min_tee_tcb_svn=q.tee_tcb_svn), now=V4_NOW)
    refused(R.TEE_TCB_SVN, v4, tdx_policy(min_tee_tcb_svn="03000500" + "00" * 12), V4_NOW,
            "TEE_TCB_SVN[2] is 4, the policy requires at least 5")
    assert tdx_policy(min_tee_tcb_svn=q.tee_tcb_svn).replace(mrseam=q.mrseam).min_tee_tcb_svn == q.tee_tcb_svn
    with pytest.raises(ratls.PolicyError, match="16 bytes"):
        tdx_policy(min_tee_tcb_svn="0300")
    with pytest.raises(ratls.PolicyError, match="one 16-byte value"):
        tdx_policy(min_tee_tcb_svn=[q.tee_tcb_svn])
    with pytest.raises(ratls.PolicyError, match='add "tdx" to tees'):
        ratls.Policy(min_tee_tcb_svn=q.tee_tcb_svn)


def test_tdx_policy_values_are_checked():
    with pytest.raises(ratls.PolicyError, match="48 bytes"):
        ratls.Policy(tees="tdx", mrtd="ab" * 32)
    with pytest.raises(ratls.PolicyError, match="unknown TEE 'sev'"):
        ratls.Policy(tees=("tdx", "sev"))
    with pytest.raises(ratls.PolicyError, match="empty set"):
        ratls.Policy(tees=())
    with pytest.raises(ratls.PolicyError, match='add "tdx" to tees'):
        ratls.Policy(rtmr1="ab" * 48)
    assert ratls.Policy().tees == ("sgx",)


def test_tdx_policy_file(tmp_path, v4):
    path = tmp_path / "policy.toml"
    path.write_text(f'tees = "tdx"\nmrtd = "{V4_MRTD}"\nrtmr3 = "any"\nallowed_tcb_statuses = ["Unknown"]\n')
    policy = ratls.Policy.from_file(path)
    assert (policy.tees, policy.mrtd, policy.rtmr3) == (("tdx",), (bytes.fromhex(V4_MRTD),), ())
    assert ratls.verify_quote(v4, policy, now=V4_NOW).tee == "tdx"
    path.write_text('tees = ["sgx", "tdx"]\nmrenclave = "any"\nmrsigner = "any"\n')
    with pytest.raises(ratls.PolicyError, match="mrtd missing"):
        ratls.Policy.from_file(path)


# ------------------------------------------------------------------------------------------------ TCB status


def v4_collateral() -> dcap_qvl.QuoteCollateralV3:
    """The v4 quote's collateral as go-tdx-guest serves it to its own tests: the PCS response bodies and the issuer
    chains of their headers (tests/data/tdx/README.md), assembled as dcap-qvl takes it."""
    tcb_info = (DATA / "sample_tcbInfo_response").read_text()
    qe_identity = (DATA / "sample_qeIdentity_response").read_text()
    signing_chain = (DATA / "tcb_signing_issuer_chain.pem").read_text()
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=(DATA / "pck_crl_issuer_chain.pem").read_text(),
        root_ca_crl=(DATA / "rootcrl.der").read_bytes(), pck_crl=(DATA / "pckcrl").read_bytes(),
        tcb_info_issuer_chain=signing_chain, tcb_info=_raw_member(tcb_info, "tcbInfo"),
        tcb_info_signature=bytes.fromhex(json.loads(tcb_info)["signature"]),
        qe_identity_issuer_chain=signing_chain, qe_identity=_raw_member(qe_identity, "enclaveIdentity"),
        qe_identity_signature=bytes.fromhex(json.loads(qe_identity)["signature"]))


def test_v4_tcb_status_at_the_collaterals_time(v4):
    """Inside its window every signature of the collateral verifies and the status is "no matching TCB level": the
    quote's TEE_TCB_SVN (03 00 04 ..) is below the TDX Late Microcode Update SVN 5 that every TCB level of the sample
    TCB Info requires; go-tdx-guest says the same of its sample (TestVerifyUsingTcbInfoV4). Outside the window the
    collateral is refused for its validity, with the window."""
    assert ratls.parse_quote(v4).td_report.tee_tcb_svn[:3] == bytes([3, 0, 4])
    levels = json.loads((DATA / "sample_tcbInfo_response").read_text())["tcbInfo"]["tcbLevels"]
    assert all(level["tcb"]["tdxtcbcomponents"][2]["svn"] == 5 for level in levels)
    policy = tdx_policy()
    for now in (COLLATERAL_FROM, V4_NOW, COLLATERAL_UNTIL):
        with pytest.raises(ratls.VerificationError) as e:
            ratls.verify_quote(v4, policy, now=now, collateral=v4_collateral())
        assert e.value.reason == R.COLLATERAL and "No matching TCB level found" in e.value.message, e.value
    for now in (COLLATERAL_FROM - 1, COLLATERAL_UNTIL + 1):
        with pytest.raises(CollateralValidityError) as e:
            ratls.verify_quote(v4, policy, now=now, collateral=v4_collateral())
        assert (e.value.valid_from, e.value.valid_until) == (COLLATERAL_FROM, COLLATERAL_UNTIL)
    # The TCB Info's own signature is checked: one changed SVN in it and dcap-qvl refuses the collateral.
    coll = json.loads(v4_collateral().to_json())
    coll["tcb_info"] = coll["tcb_info"].replace('"svn":5,', '"svn":4,', 1)
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(v4, policy, now=V4_NOW, collateral=json.dumps(coll))
    assert e.value.reason == R.COLLATERAL and "No matching TCB level" not in e.value.message


def test_tdx_collateral_comes_from_the_tdx_api_of_a_pccs(v4, tmp_path):
    key = CollateralKey.of_quote(v4)
    assert key == CollateralKey("50806F000000", "platform", "tdx") and str(key).endswith("TDX")
    with PccsStub(v4_collateral().to_json(), tee="tdx") as stub:
        with pytest.raises(ratls.VerificationError) as e:
            PCCS(stub.url, cache_dir=tmp_path).evaluate_quote(v4, tdx_policy(), now=V4_NOW)
        assert "No matching TCB level found" in e.value.message
        assert dict(stub.requests) == {"pckcrl": 1, "tcb": 1, "qe/identity": 1, "rootcacrl": 1}
    (tmp_path / "v4.json").write_text(v4_collateral().to_json())
    with pytest.raises(ratls.VerificationError) as e:
        FileCollateral(tmp_path / "v4.json").evaluate_quote(v4, tdx_policy(), now=V4_NOW)
    assert "No matching TCB level found" in e.value.message


def test_v5_has_no_complete_collateral(v5):
    """go-tdx-guest has the v5 quote's TCB Info (2026) but no QE Identity or CRLs of its time: with the 2023 ones the
    collateral is refused as expired (dcap-qvl: the CRLs), which is all that can be said offline."""
    tcb_info = (DATA / "sample_tcbinfo_response_v5").read_text()
    coll = json.loads(v4_collateral().to_json())
    coll["tcb_info"] = _raw_member(tcb_info, "tcbInfo")
    coll["tcb_info_signature"] = json.loads(tcb_info)["signature"]
    with pytest.raises(CollateralValidityError) as e:
        ratls.verify_quote(v5, tdx_policy(), now=V5_NOW, collateral=json.dumps(coll))
    assert e.value.expired and "CrlExpired" in e.value.message


# ------------------------------------------------------------------------------------------------ simulated TDs


@pytest.fixture(scope="module")
def td(sim_ca, measured_tree) -> ratls.Identity:
    rtmrs = tuple(bytes([i + 1]) * 48 for i in range(4))
    return ratls.Identity.create("sim-tdx", sim_ca=sim_ca.path, measured_files=[measured_tree],
                                 measure_root=measured_tree, rtmrs=rtmrs)


def sim_td_policy(sim_ca, mrtd: bytes, **kw) -> ratls.Policy:
    return ratls.Policy(tees="tdx", mrtd=mrtd, allow_simulated=True, sim_root=sim_ca.path,
                        allowed_tcb_statuses=ANY_TCB, **kw)


def test_sim_td_identity(td, sim_ca, measured_tree):
    mrtd = measure(measured_tree, td)
    assert len(mrtd) == 48 and mrtd != ratls.identity.measure([measured_tree], measured_tree)
    ev = ratls.verify_certificate(td.certificate_der, sim_td_policy(sim_ca, mrtd, rtmr2=bytes([3]) * 48))
    assert (ev.provider, ev.tee, ev.mrtd, ev.debug) == ("sim", "tdx", mrtd, False)
    assert ev.rtmr == tuple(bytes([i + 1]) * 48 for i in range(4)) and ev.mrenclave == bytes(32)
    assert td.evidence.mrtd == mrtd and td.provider == "sim-tdx"
    quote = ratls.inspect_certificate(td.certificate_der).quote
    assert (ratls.parse_quote(quote).version, ratls.parse_quote(quote).tee) == (4, "tdx")
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(td.certificate_der, sim_td_policy(sim_ca, bytes(48)))
    assert e.value.reason == R.MRTD
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(td.certificate_der, ratls.Policy(allow_simulated=True, sim_root=sim_ca.path,
                                                                  allowed_tcb_statuses=ANY_TCB))
    assert e.value.reason == R.TEE_TYPE


def measure(tree, identity: ratls.Identity) -> bytes:
    """The MRTD a sim TD running `tree` has (and check that the identity's is it)."""
    mrtd = ratls.identity.measure([tree], tree, td=True)
    assert identity.evidence.mrtd == mrtd
    return mrtd


def test_sim_debug_td_and_v5(sim_ca, measured_tree):
    debug = ratls.Identity.create("sim-tdx", sim_ca=sim_ca.path, measured_files=[measured_tree],
                                  measure_root=measured_tree, debug=True, tdx_version=5)
    mrtd = measure(measured_tree, debug)
    quote = ratls.parse_quote(ratls.inspect_certificate(debug.certificate_der).quote)
    assert (quote.version, quote.body_type, quote.td_report.debug) == (5, 3, True)
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(debug.certificate_der, sim_td_policy(sim_ca, mrtd))
    assert e.value.reason == R.DEBUG_ENCLAVE and "DEBUG TD" in e.value.message
    assert ratls.verify_certificate(debug.certificate_der, sim_td_policy(sim_ca, mrtd, allow_debug=True)).debug
    with pytest.raises(ratls.ProviderError, match="4 or 5"):
        ratls.Identity.create("sim-tdx", sim_ca=sim_ca.path, measured_files=[measured_tree], tdx_version=6)
    with pytest.raises(ratls.ProviderError, match="four 48-byte"):
        ratls.Identity.create("sim-tdx", sim_ca=sim_ca.path, measured_files=[measured_tree], rtmrs=[bytes(48)])


def test_sim_tdx_quote_over_chosen_report_data(sim_ca):
    mrtd, report_data = bytes(range(48)), bytes(range(64, 128))
    for version in (4, 5):
        quote = sim_tdx_quote(report_data, sim_ca=sim_ca.path, mrtd=mrtd, tdx_version=version)
        ev = ratls.verify_quote(quote, sim_td_policy(sim_ca, mrtd))
        assert (ev.report_data, ev.mrtd, ev.provider, ratls.parse_quote(quote).version) == (report_data, mrtd,
                                                                                             "sim", version)
        # Its signed regions are checked like a real quote's: a flipped RTMR0 bit, a flipped QE report bit.
        rtmr0 = quote.index(mrtd) + 4 * 48  # after MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG
        qe_report = quote.index(ratls.parse_quote(quote).qe_report_signature) - 384  # the QE report precedes it
        for offset, reason in ((rtmr0, R.QUOTE_SIGNATURE), (qe_report, R.QE_REPORT_SIGNATURE)):
            bad = bytearray(quote)
            bad[offset] ^= 1
            with pytest.raises(ratls.VerificationError) as e:
                ratls.verify_quote(bytes(bad), sim_td_policy(sim_ca, mrtd))
            assert e.value.reason == reason, (offset, e.value)
    with pytest.raises(ratls.ProviderError, match="64 bytes"):
        sim_tdx_quote(b"short", sim_ca=sim_ca.path, mrtd=mrtd)


def test_tdx_server_and_sgx_client_over_credentials(sim_ca, td, make_identity, measured_tree):
    """A sim TD serves, an SGX (sim) enclave calls: each side's policy names the other's TEE and measurement. A client
    whose policy accepts only SGX refuses the TD, and a TD whose policy accepts only TDX refuses the SGX client."""
    sgx = make_identity()
    td_policy = ratls.Policy(tees="sgx", mrenclave=sgx.mrenclave, allow_simulated=True, sim_root=sim_ca.path,
                             allowed_tcb_statuses=ANY_TCB)
    sgx_policy = sim_td_policy(sim_ca, td.evidence.mrtd)
    with serve(credentials(td_policy, td)) as srv:
        client = credentials(sgx_policy, sgx)
        with client.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
            assert hello(channel) == b"hello world"
            assert (channel.server_evidence.tee, channel.server_evidence.mrtd) == ("tdx", td.evidence.mrtd)
        trusted = list(srv.creds.trusted_clients(srv.grpc_port).values())
        assert [(e.tee, e.mrenclave) for e in trusted] == [("sgx", sgx.mrenclave)]
        sgx_only = ratls.Policy(mrenclave=sgx.mrenclave, allow_simulated=True, sim_root=sim_ca.path,
                                allowed_tcb_statuses=ANY_TCB)
        with credentials(sgx_only, sgx).secure_channel(srv.target, attestation_target=srv.attestation_target) as ch:
            with pytest.raises(ratls.VerificationError) as e:
                ch.reattest()
            assert e.value.reason == R.TEE_TYPE
    # credentials() makes the TD identity itself with provider="sim-tdx".
    made = credentials(sim_td_policy(sim_ca, td.evidence.mrtd), provider="sim-tdx", sim_ca=sim_ca.path,
                       measured_files=[measured_tree], measure_root=measured_tree)
    assert (made.identity.provider, made.identity.evidence.mrtd) == ("sim-tdx", td.evidence.mrtd)
    with serve(made) as srv:
        with credentials(sgx_policy, sgx).secure_channel(srv.target, attestation_target=srv.attestation_target) as ch:
            with pytest.raises(ratls.VerificationError) as e:
                ch.reattest()
            assert e.value.reason == R.PEER_REFUSED and e.value.peer_reason == R.TEE_TYPE


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_inspect_says_what_each_quote_is(v4, v5, testdata, tmp_path, td, sim_ca, capsys):
    from ratls.__main__ import main

    v4_file = tmp_path / "v4.dat"
    v4_file.write_bytes(v4)
    body_type_1 = tmp_path / "v5-sgx-body.dat"
    body_type_1.write_bytes(v5[:48] + b"\x01\x00" + v5[50:])
    cert = tmp_path / "td.der"
    cert.write_bytes(td.certificate_der)
    cases = [
        (testdata / "sgx" / "dcap-qvl" / "sgx_quote", [], "SGX ECDSA quote v3"),
        (v4_file, ["--time", str(V4_NOW)], "TDX quote v4 (TD report 1.0)"),
        (DATA / "quote_v5_sample.dat", ["--time", str(V5_NOW)], "TDX quote v5, body type 3 (TD report 1.5)"),
        (cert, ["--sim-root", str(sim_ca.path)], "TDX quote v4 (TD report 1.0)"),
    ]
    for path, extra, description in cases:
        assert main(["inspect", str(path), "--json", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["quote_type"] == description and report["verification"]["ok"], report
        assert main(["inspect", str(path), *extra]) == 0
        text = capsys.readouterr().out
        assert f"quote:         {description}" in text
        if "TDX" in description:
            assert report["verification"]["evidence"]["tee"] == "tdx"
            assert f"mrtd:          {report['quote']['td_report']['mrtd']}" in text and "rtmr3:" in text
    assert main(["inspect", str(body_type_1)]) == 1
    out = capsys.readouterr().out
    assert "QUOTE_UNSUPPORTED_VERSION" in out and "body type" in out and "X.509" not in out
    assert main(["inspect", str(DATA / "tdx_prod_quote_SPR_E4.dat")]) == 1  # go-tdx-guest's trailer
    assert "39 trailing bytes" in capsys.readouterr().out


def test_sim_tdx_collateral_through_a_sim_pccs_in_the_handshake(tmp_path, measured_tree):
    """The sim CA issues TDX collateral too (TCB Info id TDX with tdxModule and tdxtcbcomponents, QE Identity id
    TD_QE), served by the sim PCCS under /tdx/certification/v4: a TD server and an SGX client, each evaluating the
    other's TCB status inside the attestation handshake from one sim PCCS, each at its own TEE's collateral; a
    status the policy does not allow refuses a TD quote, and one it allows comes with its advisories."""
    ca = ratls.SimCA.init(tmp_path / "ca")
    td = ratls.Identity.create("sim-tdx", sim_ca=ca.path, measured_files=[measured_tree], measure_root=measured_tree)
    sgx = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[measured_tree], measure_root=measured_tree)
    common = {"allow_simulated": True, "sim_root": ca.path, "allowed_tcb_statuses": ("UpToDate",)}
    with SimPCCS(ca) as pccs:
        server = credentials(ratls.Policy(mrenclave=sgx.mrenclave, **common), td, collateral=PCCS(pccs.url))
        client = credentials(ratls.Policy(tees="tdx", mrtd=td.evidence.mrtd, **common), sgx,
                             collateral=PCCS(pccs.url))
        with serve(server) as srv:
            with client.secure_channel(srv.target, attestation_target=srv.attestation_target) as channel:
                assert hello(channel) == b"hello world"
                assert (channel.server_evidence.tee, channel.server_evidence.tcb_status) == ("tdx", "UpToDate")
            trusted = list(srv.creds.trusted_clients(srv.grpc_port).values())
            assert [(e.tee, e.tcb_status) for e in trusted] == [("sgx", "UpToDate")]
        assert pccs.requests["tdx/tcb"] >= 1 and pccs.requests["tdx/qe/identity"] >= 1
        assert pccs.requests["tcb"] >= 1 and pccs.requests["qe/identity"] >= 1
        ca.set_tcb("OutOfDate", ["INTEL-SA-00837"])
        quote = sim_tdx_quote(bytes(64), sim_ca=ca.path, mrtd=td.evidence.mrtd)
        tdx_policy = ratls.Policy(tees="tdx", **common)
        with pytest.raises(ratls.VerificationError) as e:
            ratls.verify_quote(quote, tdx_policy, collateral=PCCS(pccs.url))
        assert e.value.reason == R.TCB_STATUS and "OutOfDate" in e.value.message
    ev = ratls.verify_quote(quote, tdx_policy.replace(allowed_tcb_statuses=("OutOfDate",)),
                            collateral=ca.collateral(tee="tdx"))
    assert (ev.tcb_status, ev.advisory_ids) == ("OutOfDate", ("INTEL-SA-00837",))

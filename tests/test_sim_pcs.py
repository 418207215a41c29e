"""The simulated Intel PCS: sim collateral in Intel's formats under the sim root, judged by dcap-qvl (Intel's QVL
rules) exactly as real collateral is, for every TCB status; served over HTTP by SimPCCS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import ratls
from ratls.__main__ import main
from ratls.policy import ALLOWABLE_TCB_STATUSES
from ratls.sim_pccs import SimPCCS
from ratls.simca import (
    INTEL_TCB_STATUSES,
    PCK_CA_CN,
    SGX_EXTENSION_OID,
    SIM_FMSPC,
    SIM_PCE_SVN,
    SIM_QE_MRSIGNER,
    SIM_QE_SVN,
    SIM_TCB_COMPONENTS,
    SimCA,
    pck_extension,
    sgx_extension,
)

FMSPC = SIM_FMSPC.hex().upper()
API = "/sgx/certification/v4"
ADVISORIES = ("INTEL-SA-00615", "INTEL-SA-00828")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A fresh sim CA and a quote of its platform."""
    ca = SimCA.init(tmp_path_factory.mktemp("sim-pcs") / "ca")
    app = tmp_path_factory.mktemp("app")
    (app / "main.py").write_text("print('judged by simulated collateral')\n")
    identity = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=app)
    return ca, ratls.inspect_certificate(identity.certificate_der).quote


def verify(ca: SimCA, quote: bytes, collateral: str, now: int | None = None):
    return dcap_qvl.verify_with_root_ca(quote, dcap_qvl.QuoteCollateralV3.from_json(collateral), ca.root_der,
                                        int(time.time()) if now is None else now)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def signed_body(body: bytes, field: str) -> tuple[str, bytes]:
    """The exact signed text and the raw signature of a PCS JSON body, which must be in Intel's layout."""
    m = re.fullmatch(rf'\{{"{field}":(\{{.*\}}),"signature":"([0-9a-f]{{128}})"\}}', body.decode())
    assert m, body[:200]
    return m.group(1), bytes.fromhex(m.group(2))


def check_signature(chain_pem: str, text: str, signature: bytes) -> None:
    signer = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    signer.public_key().verify(der, text.encode(), ec.ECDSA(hashes.SHA256()))


def test_settable_statuses_are_intels():
    assert set(INTEL_TCB_STATUSES) == set(ratls.TCB_STATUSES) - {"Unknown"}
    assert len(INTEL_TCB_STATUSES) == 7


@pytest.mark.parametrize("status", INTEL_TCB_STATUSES)
def test_every_status_through_dcap_qvl(platform, status):
    ca, quote = platform
    advisories = () if status == "UpToDate" else ADVISORIES
    ca.set_tcb(status, advisories)
    collateral = ca.collateral()
    if status == "Revoked":  # dcap-qvl refuses a revoked platform outright; the consumer maps this message
        with pytest.raises(ValueError, match="TCB status is invalid: Revoked"):
            verify(ca, quote, collateral)
        return
    report = verify(ca, quote, collateral)
    assert (report.status, list(report.advisory_ids)) == (status, list(advisories))
    levels = json.loads(json.loads(collateral)["tcb_info"])["tcbLevels"]
    own = levels[-1]
    assert own["tcb"] == {"sgxtcbcomponents": [{"svn": c} for c in SIM_TCB_COMPONENTS], "pcesvn": SIM_PCE_SVN}
    assert own["tcbStatus"] == status and own.get("advisoryIDs", []) == list(advisories)
    if status != "UpToDate":  # a newer UpToDate level first, as in Intel's lists
        assert len(levels) == 2 and levels[0]["tcbStatus"] == "UpToDate"
        assert levels[0]["tcb"]["pcesvn"] > SIM_PCE_SVN


def test_sgx_extension_is_encoded_as_intel_encodes_it(testdata):
    # The PCK certificate of a real (Platform CA) quote: its extension, re-encoded from the values read, is
    # byte-identical.
    quote = (testdata / "sgx" / "gramine" / "gramine-cert.legacy_oid_quote.bin").read_bytes()
    pck = x509.load_pem_x509_certificate(ratls.parse_quote(quote).pck_chain_pem[0])
    ext = pck_extension(pck)
    assert ext.fmspc.hex() == dcap_qvl.parse_quote(quote).fmspc().lower() and ext.pce_svn == 11
    assert ext.cpu_svn == bytes(ext.components) and ext.configuration == (True, True, True)
    again = sgx_extension(ppid=ext.ppid, components=ext.components, pce_svn=ext.pce_svn, pce_id=ext.pce_id,
                          fmspc=ext.fmspc, sgx_type=ext.sgx_type, platform_instance_id=ext.platform_instance_id,
                          configuration=ext.configuration)
    assert again == pck.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value


def test_pck_certificate_and_collateral_are_in_intels_layouts(platform):
    ca, quote = platform
    ca.set_tcb("UpToDate")
    parsed = dcap_qvl.parse_quote(quote)
    assert (parsed.fmspc().upper(), parsed.ca()) == (FMSPC, "platform")
    assert parsed.header.pce_svn == SIM_PCE_SVN and parsed.header.qe_svn == SIM_QE_SVN
    ext = ca.pck_extension()
    assert (ext.fmspc, ext.components, ext.pce_svn, ext.cpu_svn, ext.pce_id, ext.sgx_type) == \
        (SIM_FMSPC, SIM_TCB_COMPONENTS, SIM_PCE_SVN, bytes(SIM_TCB_COMPONENTS), b"\0\0", 1)
    pck = x509.load_pem_x509_certificate((ca.path / "pck.crt.pem").read_bytes())
    assert PCK_CA_CN in pck.issuer.rfc4514_string() and "Platform" in PCK_CA_CN
    assert not any(isinstance(e.value, x509.ExtendedKeyUsage) for e in pck.extensions)  # webpki wants none

    doc = json.loads(ca.collateral())
    tcb_info, qe = json.loads(doc["tcb_info"]), json.loads(doc["qe_identity"])
    assert list(tcb_info) == ["id", "version", "issueDate", "nextUpdate", "fmspc", "pceId", "tcbType",
                              "tcbEvaluationDataNumber", "tcbLevels"]
    assert (tcb_info["id"], tcb_info["version"], tcb_info["fmspc"], tcb_info["pceId"], tcb_info["tcbType"]) == \
        ("SGX", 3, FMSPC, "0000", 0)
    issued = dt.datetime.strptime(tcb_info["issueDate"], "%Y-%m-%dT%H:%M:%SZ")
    assert dt.datetime.strptime(tcb_info["nextUpdate"], "%Y-%m-%dT%H:%M:%SZ") - issued == dt.timedelta(days=30)
    assert (qe["id"], qe["version"], qe["isvprodid"], qe["mrsigner"]) == ("QE", 2, 1, SIM_QE_MRSIGNER.hex().upper())
    assert qe["tcbLevels"] == [{"tcb": {"isvsvn": SIM_QE_SVN}, "tcbDate": qe["tcbLevels"][0]["tcbDate"],
                                "tcbStatus": "UpToDate"}]
    # The quote's QE report (signature data offset 128, after the ISV signature and attestation key) is what the
    # QE Identity describes: miscselect and attributes under its masks, mrsigner, product id, SVN.
    qe_report = quote[436 + 128:436 + 128 + 384]
    assert qe_report[16:20] == bytes.fromhex(qe["miscselect"])
    attributes, mask = bytes.fromhex(qe["attributes"]), bytes.fromhex(qe["attributesMask"])
    assert attributes == qe_report[48:64]  # exactly the QE's: INIT|MODE64BIT|PROVISION_KEY, xfrm 3
    assert all(a & m == r & m for a, m, r in zip(attributes, mask, qe_report[48:64], strict=True))
    assert (qe_report[128:160], int.from_bytes(qe_report[256:258], "little"),
            int.from_bytes(qe_report[258:260], "little")) == (SIM_QE_MRSIGNER, 1, SIM_QE_SVN)


def test_crls_and_chains_are_what_webpki_needs(platform):
    ca, quote = platform
    root = x509.load_pem_x509_certificate(ca.root_pem)
    pck_ca = x509.load_pem_x509_certificate((ca.path / "pck_ca.crt.pem").read_bytes())
    for name, issuer in (("root_ca_crl.der", root), ("pck_crl.der", pck_ca)):
        crl = x509.load_der_x509_crl((ca.path / name).read_bytes())
        assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())
        assert crl.next_update_utc == issuer.not_valid_after_utc
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == issuer.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value.digest
    ca.set_tcb("UpToDate")
    doc = json.loads(ca.collateral())
    assert verify(ca, quote, json.dumps(doc)).status == "UpToDate"
    # Revocation status is required for every certificate of every chain (UnknownStatusPolicy::Deny): without
    # the PCK CA's CRL, the PCK certificate is refused.
    with pytest.raises(ValueError, match="UnknownRevocationStatus"):
        verify(ca, quote, json.dumps(dict(doc, pck_crl=doc["root_ca_crl"])))


def test_expired_collateral_is_refused(platform):
    ca, quote = platform
    ca.set_tcb("UpToDate")
    issued = int(time.time()) - 7200
    collateral = ca.collateral(now=issued, validity=dt.timedelta(hours=1))
    assert verify(ca, quote, collateral, now=issued + 3600).status == "UpToDate"
    with pytest.raises(ValueError, match="expired"):
        verify(ca, quote, collateral, now=issued + 3601)


def test_tampered_collateral_fails_the_signature(platform):
    ca, quote = platform
    ca.set_tcb("OutOfDate", ["INTEL-SA-00615"])
    doc = json.loads(ca.collateral())
    tcb_info = doc["tcb_info"]
    i = tcb_info.index('"tcbDate":"') + len('"tcbDate":"') + 3  # one digit of a year
    tampered = tcb_info[:i] + str((int(tcb_info[i]) + 1) % 10) + tcb_info[i + 1:]
    with pytest.raises(ValueError, match="Signature is invalid for tcb_info"):
        verify(ca, quote, json.dumps(dict(doc, tcb_info=tampered)))
    with pytest.raises(ValueError, match="Signature is invalid for qe_identity"):
        verify(ca, quote, json.dumps(dict(doc, qe_identity=doc["qe_identity"].replace('"isvprodid":1',
                                                                                       '"isvprodid":2'))))


def test_sim_pccs_serves_the_pcs_v4_api(platform, monkeypatch):
    ca, quote = platform
    ca.set_tcb("SWHardeningNeeded", ["INTEL-SA-00615"])
    with SimPCCS(ca) as pccs:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", pccs.url)
        status, headers, body = get(f"{pccs.url}{API}/tcb?fmspc={FMSPC}")
        assert status == 200 and headers["Content-Type"] == "application/json"
        tcb_chain = urllib.parse.unquote(headers["TCB-Info-Issuer-Chain"])
        assert tcb_chain == (ca.path / "tcb_signing.crt.pem").read_text() + ca.root_pem.decode()
        tcb_info, tcb_sig = signed_body(body, "tcbInfo")
        check_signature(tcb_chain, tcb_info, tcb_sig)
        assert json.loads(tcb_info)["fmspc"] == FMSPC

        status, headers, body = get(f"{pccs.url}{API}/qe/identity?update=standard")
        assert status == 200
        qe_chain = urllib.parse.unquote(headers["SGX-Enclave-Identity-Issuer-Chain"])
        qe_identity, qe_sig = signed_body(body, "enclaveIdentity")
        check_signature(qe_chain, qe_identity, qe_sig)

        status, headers, pck_crl = get(f"{pccs.url}{API}/pckcrl?ca=platform&encoding=der")
        assert status == 200 and pck_crl == (ca.path / "pck_crl.der").read_bytes()
        crl_chain = urllib.parse.unquote(headers["SGX-PCK-CRL-Issuer-Chain"])
        assert crl_chain == (ca.path / "pck_ca.crt.pem").read_text() + ca.root_pem.decode()
        status, _, root_crl_hex = get(f"{pccs.url}{API}/rootcacrl")
        assert status == 200 and bytes.fromhex(root_crl_hex.decode()) == (ca.path / "root_ca_crl.der").read_bytes()

        for path, code in (("tcb?fmspc=00906ED50000", 404), ("pckcrl?ca=processor&encoding=der", 404),
                           ("nope", 404), ("tcb?fmspc=xyz", 400)):
            status, headers, body = get(f"{pccs.url}{API}/{path}")
            assert status == code and headers["Content-Type"].startswith("text/plain") and body.strip(), path
        assert get(f"{pccs.url}/elsewhere")[0] == 404

        collateral = json.dumps({
            "pck_crl_issuer_chain": crl_chain, "root_ca_crl": root_crl_hex.decode(), "pck_crl": pck_crl.hex(),
            "tcb_info_issuer_chain": tcb_chain, "tcb_info": tcb_info, "tcb_info_signature": tcb_sig.hex(),
            "qe_identity_issuer_chain": qe_chain, "qe_identity": qe_identity, "qe_identity_signature": qe_sig.hex()})
        report = verify(ca, quote, collateral)
        assert (report.status, report.advisory_ids) == ("SWHardeningNeeded", ["INTEL-SA-00615"])

        # dcap-qvl's own PCCS client takes it for a PCCS.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

        async def fetch():
            return await dcap_qvl.get_collateral(pccs.url, quote)

        fetched = asyncio.run(fetch())
        report = dcap_qvl.verify_with_root_ca(quote, fetched, ca.root_der, int(time.time()))
        assert (report.status, report.advisory_ids) == ("SWHardeningNeeded", ["INTEL-SA-00615"])
        counts = pccs.requests
        assert counts["tcb"] == 4 and counts["qe/identity"] == 2 and counts["rootcacrl"] == 2
        assert counts["pckcrl"] == 3 and counts["nope"] == 0 and counts[f"{API}/nope"] == 1


def test_a_status_set_by_the_cli_shows_in_the_next_fetch(platform, capsys):
    ca, _ = platform
    ca.set_tcb("UpToDate")
    with SimPCCS(ca) as pccs:
        url = f"{pccs.url}{API}/tcb?fmspc={FMSPC}"
        first = json.loads(signed_body(get(url)[2], "tcbInfo")[0])
        assert first["tcbLevels"][-1]["tcbStatus"] == "UpToDate"
        assert main(["sim-ca", "tcb", str(ca.path), "--status", "OutOfDateConfigurationNeeded",
                     "--advisory", "INTEL-SA-00828", "--advisory", "INTEL-SA-00615"]) == 0
        assert "OutOfDateConfigurationNeeded with INTEL-SA-00828, INTEL-SA-00615" in capsys.readouterr().out
        second = json.loads(signed_body(get(url)[2], "tcbInfo")[0])
        assert second["tcbLevels"][-1]["tcbStatus"] == "OutOfDateConfigurationNeeded"
        assert second["tcbLevels"][-1]["advisoryIDs"] == ["INTEL-SA-00828", "INTEL-SA-00615"]
        assert second["tcbEvaluationDataNumber"] > first["tcbEvaluationDataNumber"]
        assert pccs.requests["tcb"] == 2
    assert stat.S_IMODE(os.stat(ca.path / "tcb.json").st_mode) == 0o600
    assert sorted(p.name for p in ca.path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_set_tcb_validates(platform):
    ca, _ = platform
    for bad in ("Unknown", "Bogus", ""):
        with pytest.raises(ratls.RatlsError, match="valid statuses are UpToDate, SWHardeningNeeded"):
            ca.set_tcb(bad)
    for bad in (["INTEL-SA-615"], ["CVE-2020-0551"], "INTEL-SA-00615"):
        with pytest.raises(ratls.RatlsError, match="INTEL-SA"):
            ca.set_tcb("OutOfDate", bad)
    state = ca.set_tcb("outofdate", ["intel-sa-00615", "INTEL-SA-00615"])
    assert (state.status, state.advisory_ids) == ("OutOfDate", ("INTEL-SA-00615",))
    assert ca.tcb() == state


def test_cli_bad_status_exits_2(platform):
    ca, _ = platform
    out = subprocess.run([sys.executable, "-m", "ratls", "sim-ca", "tcb", str(ca.path), "--status", "Fine"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert all(status in out.stderr for status in INTEL_TCB_STATUSES), out.stderr


def test_an_old_ca_directory_says_to_recreate_it(tmp_path, capsys):
    ca = SimCA.init(tmp_path / "old")
    for name in ("tcb_signing.crt.pem", "tcb_signing.key.pem", "root_ca_crl.der", "pck_crl.der", "tcb.json"):
        (ca.path / name).unlink()
    old = SimCA(ca.path)  # still a CA: it makes quotes
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("pass\n")
    assert ratls.Identity.create("sim", sim_ca=old.path, measured_files=[app], measure_root=app).certificate_der
    for ask in (old.collateral, old.tcb, lambda: old.set_tcb("OutOfDate"), lambda: old.pcs_response("rootcacrl"),
                lambda: SimPCCS(old)):
        with pytest.raises(ratls.RatlsError, match=r"made before the simulated Intel PCS.*sim-ca init --force"):
            ask()
    assert main(["sim-ca", "tcb", str(old.path), "--status", "UpToDate"]) == 2
    assert "sim-ca init --force" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_sim_pccs_serve_cli_serves_until_sigterm(platform):
    ca, _ = platform
    proc = subprocess.Popen([sys.executable, "-m", "ratls", "sim-pccs", "serve", str(ca.path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert get(f"{url}{API}/qe/identity")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err == ""  # quiet: no per-request lines


# --- Several platforms per CA, each judged at its own TCB status ---------------------------------------------------

def quote_through(sim_ca, app) -> tuple[bytes, bytes]:
    """The certificate (DER) and quote of an identity made through a sim-ca (or platform) directory."""
    identity = ratls.Identity.create("sim", sim_ca=sim_ca, measured_files=[app], measure_root=app)
    return identity.certificate_der, ratls.inspect_certificate(identity.certificate_der).quote


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A sim CA with two platforms besides its default, and a certificate and quote made through each."""
    ca = SimCA.init(tmp_path_factory.mktemp("fleet") / "ca")
    app = tmp_path_factory.mktemp("fleet-app")
    (app / "worker.py").write_text("print('one of several workers')\n")
    dirs = {None: ca.path, "alpha": ca.platform("alpha"), "beta": ca.platform("beta")}
    return ca, {name: quote_through(path, app) for name, path in dirs.items()}


@pytest.mark.parametrize("statuses", [
    {None: ("UpToDate", ()), "alpha": ("OutOfDate", ADVISORIES[:1]), "beta": ("SWHardeningNeeded", ADVISORIES)},
    {None: ("OutOfDate", ADVISORIES), "alpha": ("UpToDate", ()), "beta": ("ConfigurationNeeded", ADVISORIES[1:])},
    {None: ("ConfigurationAndSWHardeningNeeded", ADVISORIES[:1]), "alpha": ("Revoked", ADVISORIES),
     "beta": ("UpToDate", ())},
], ids=["default-up-to-date", "default-out-of-date", "one-revoked"])
def test_each_platform_is_judged_at_its_own_status(fleet, statuses):
    ca, certs = fleet
    for name, (status, advisories) in statuses.items():
        ca.set_tcb(status, advisories, platform=name)
    for name, (status, advisories) in statuses.items():
        assert (ca.tcb(name).status, ca.tcb(name).advisory_ids) == (status, advisories)
    collateral = ca.collateral()
    for name, (status, advisories) in statuses.items():
        quote = certs[name][1]
        if status == "Revoked":
            with pytest.raises(ValueError, match="TCB status is invalid: Revoked"):
                verify(ca, quote, collateral)
            continue
        report = verify(ca, quote, collateral)
        assert (name, report.status, list(report.advisory_ids)) == (name, status, list(advisories))

    # One level per platform, highest first (component SVNs, then PCESVN, as Intel orders them), older dates
    # below; a newer UpToDate level on top when the default (the highest platform) is not UpToDate.
    levels = json.loads(json.loads(collateral)["tcb_info"])["tcbLevels"]
    keys = [([c["svn"] for c in lv["tcb"]["sgxtcbcomponents"]], lv["tcb"]["pcesvn"]) for lv in levels]
    assert keys == sorted(keys, reverse=True) and len(set(map(str, keys))) == len(keys)
    assert [lv["tcbDate"] for lv in levels] == sorted((lv["tcbDate"] for lv in levels), reverse=True)
    newer = statuses[None][0] != "UpToDate"
    assert len(levels) == 3 + newer
    own = levels[newer:]
    for level, name in zip(own, (None, "alpha", "beta"), strict=True):
        ext = ca.pck_extension(name)
        assert keys[levels.index(level)] == (list(ext.components), ext.pce_svn)
        assert (level["tcbStatus"], tuple(level.get("advisoryIDs", ()))) == statuses[name]
    if newer:
        assert levels[0]["tcbStatus"] == "UpToDate" and levels[0]["tcb"]["pcesvn"] > SIM_PCE_SVN


def test_platforms_are_lower_distinct_levels_of_one_fmspc(fleet):
    ca, _ = fleet
    default, alpha, beta = (ca.pck_extension(n) for n in (None, "alpha", "beta"))
    assert ca.platforms() == ["alpha", "beta"]
    for ext in (alpha, beta):
        assert (ext.fmspc, ext.pce_id, ext.pce_svn, ext.sgx_type, ext.configuration) == \
            (default.fmspc, default.pce_id, default.pce_svn, default.sgx_type, default.configuration)
        assert ext.cpu_svn == bytes(ext.components)
    # A chain: each component-wise at or below the one before, and lower in at least one.
    for high, low in ((default, alpha), (alpha, beta)):
        assert all(h >= low_ for h, low_ in zip(high.components, low.components, strict=True))
        assert high.components != low.components
    assert len({default.ppid, alpha.ppid, beta.ppid}) == 3
    assert len({default.platform_instance_id, alpha.platform_instance_id, beta.platform_instance_id}) == 3


def test_a_platform_directory_is_a_sim_ca_of_the_same_root(fleet):
    ca, certs = fleet
    alpha = ca.platform("alpha")
    for name in ("root.crt.pem", "pck_ca.crt.pem", "signer.key.pem", "attestation.key.pem"):
        assert (alpha / name).read_bytes() == (ca.path / name).read_bytes(), name
    assert (alpha / "pck.key.pem").read_bytes() != (ca.path / "pck.key.pem").read_bytes()
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in alpha.iterdir()} == {0o600}
    assert stat.S_IMODE(os.stat(alpha).st_mode) == 0o700
    assert SimCA(alpha).mrsigner == ca.mrsigner  # same MRSIGNER, so one policy fits every worker
    ca.set_tcb("UpToDate")
    ca.set_tcb("OutOfDate", ADVISORIES[:1], platform="beta")
    collateral = ca.collateral()
    # A platform directory as a policy's sim_root names the CA's root: it accepts the CA's other platforms.
    policy = ratls.Policy(sim_root=alpha, allow_simulated=True, mrsigner=ca.mrsigner,
                          allowed_tcb_statuses=ALLOWABLE_TCB_STATUSES)
    for name, status in ((None, "UpToDate"), ("beta", "OutOfDate")):
        evidence = ratls.verify_certificate(certs[name][0], policy, collateral=collateral)
        assert (evidence.provider, evidence.tcb_status) == ("sim", status)
    # Its TCB state and collateral are the CA's: asking the platform directory says where they are.
    with pytest.raises(ratls.RatlsError, match=r"platform directory of the sim CA .*platform='alpha'"):
        SimCA(alpha).tcb()


def test_the_same_name_twice_is_the_same_platform(fleet):
    ca, _ = fleet
    before = (ca.path / "platforms" / "alpha" / "pck.crt.pem").read_bytes()
    number = ca.tcb().tcb_evaluation_data_number
    assert ca.platform("alpha") == ca.path / "platforms" / "alpha"
    assert SimCA(ca.path).platform("alpha") == ca.path / "platforms" / "alpha"
    assert (ca.path / "platforms" / "alpha" / "pck.crt.pem").read_bytes() == before
    assert ca.tcb().tcb_evaluation_data_number == number  # nothing changed
    assert ca.platforms() == ["alpha", "beta"]


@pytest.mark.parametrize("name", ["", "a" * 33, "../x", "a/b", "a b", ".hidden", "caf\u00e9", None])
def test_bad_platform_names_are_refused(fleet, name):
    ca, _ = fleet
    with pytest.raises(ratls.RatlsError, match="invalid sim platform name"):
        ca.platform(name)
    if name is not None:  # platform=None is the default platform
        with pytest.raises(ratls.RatlsError, match="invalid sim platform name"):
            ca.set_tcb("OutOfDate", platform=name)


def test_an_unknown_platform_is_an_error(fleet, capsys):
    ca, _ = fleet
    for ask in (lambda: ca.set_tcb("OutOfDate", platform="gamma"), lambda: ca.tcb("gamma"),
                lambda: ca.pck_extension("gamma")):
        with pytest.raises(ratls.RatlsError, match=r"has no platform 'gamma' \(its platforms: alpha, beta\)"):
            ask()
    assert not (ca.path / "platforms" / "gamma").exists()
    assert main(["sim-ca", "tcb", str(ca.path), "--platform", "gamma", "--status", "OutOfDate"]) == 2
    assert "no platform 'gamma'" in capsys.readouterr().err
    assert main(["sim-ca", "tcb", str(ca.path), "--platform", "gamma"]) == 2


def test_cli_platform_and_tcb_per_platform(tmp_path, capsys):
    ca = SimCA.init(tmp_path / "ca")
    assert main(["sim-ca", "platform", str(ca.path), "w1"]) == 0
    assert capsys.readouterr().out.strip() == str(ca.path / "platforms" / "w1")
    assert main(["sim-ca", "platform", str(ca.path), "w1"]) == 0  # again: the same directory
    assert capsys.readouterr().out.strip() == str(ca.path / "platforms" / "w1")
    assert ca.tcb("w1").status == "UpToDate"  # a new platform starts UpToDate
    assert main(["sim-ca", "tcb", str(ca.path), "--platform", "w1", "--status", "OutOfDate",
                 "--advisory", "INTEL-SA-00615"]) == 0
    assert "platform w1 of" in capsys.readouterr().out
    assert (ca.tcb("w1").status, ca.tcb("w1").advisory_ids) == ("OutOfDate", ("INTEL-SA-00615",))
    assert ca.tcb().status == "UpToDate"  # the default platform is untouched
    assert main(["sim-ca", "tcb", str(ca.path), "--platform", "w1"]) == 0
    assert "is judged OutOfDate with INTEL-SA-00615" in capsys.readouterr().out
    assert main(["sim-ca", "tcb", str(ca.path), "--status", "SWHardeningNeeded"]) == 0
    assert "the default simulated platform" in capsys.readouterr().out
    assert (ca.tcb().status, ca.tcb("w1").status) == ("SWHardeningNeeded", "OutOfDate")
    assert main(["sim-ca", "platform", str(ca.path), "no/slash"]) == 2
    assert "invalid sim platform name" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_concurrent_creation_does_not_corrupt(tmp_path):
    ca = SimCA.init(tmp_path / "ca")
    names = ["p1", "p2", "p3"] * 2
    procs = [subprocess.Popen([sys.executable, "-m", "ratls", "sim-ca", "platform", str(ca.path), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(names), outs
    assert [out.strip() for out, _ in outs] == [str(ca.path / "platforms" / n) for n in names]
    assert ca.platforms() == ["p1", "p2", "p3"]
    assert sorted(os.listdir(ca.path / "platforms")) == ["p1", "p2", "p3"]  # no temporary directory left
    levels = {ca.pck_extension(n).components for n in (None, "p1", "p2", "p3")}
    assert len(levels) == 4
    assert set(json.loads((ca.path / "tcb.json").read_text())["platforms"]) == {"p1", "p2", "p3"}
    assert len(json.loads(json.loads(ca.collateral())["tcb_info"])["tcbLevels"]) == 4


def test_a_ca_made_before_platforms_says_to_recreate_it(tmp_path, capsys):
    ca = SimCA.init(tmp_path / "old")
    (ca.path / "pck_ca.key.pem").unlink()
    with pytest.raises(ratls.RatlsError, match=r"made before sim platforms .*pck_ca\.key\.pem.*sim-ca init --force"):
        ca.platform("w1")
    assert main(["sim-ca", "platform", str(ca.path), "w1"]) == 2
    assert "sim-ca init --force" in capsys.readouterr().err
    assert not (ca.path / "platforms").exists()
    assert ca.collateral()  # otherwise still a CA with collateral
    # init --force re-creates it, platforms gone with the old root.
    SimCA.init(ca.path, force=True).platform("w1")
    fresh = SimCA.init(ca.path, force=True)
    assert fresh.platforms() == [] and stat.S_IMODE(os.stat(ca.path / "pck_ca.key.pem").st_mode) == 0o600


def test_a_single_state_tcb_json_still_reads(tmp_path):
    ca = SimCA.init(tmp_path / "ca")
    (ca.path / "tcb.json").write_text(json.dumps({"status": "OutOfDate", "advisory_ids": ["INTEL-SA-00615"],
                                                  "tcb_evaluation_data_number": 7}))
    assert ca.tcb() == ratls.simca.TcbState("OutOfDate", ("INTEL-SA-00615",), 7)
    levels = json.loads(ca.tcb_info()[0])["tcbLevels"]
    assert [lv["tcbStatus"] for lv in levels] == ["UpToDate", "OutOfDate"]
    ca.platform("w1")
    assert ca.tcb("w1").status == "UpToDate" and ca.tcb().status == "OutOfDate"
    assert ca.tcb().tcb_evaluation_data_number == 8  # a new level is newer TCB Info
    state = ca.set_tcb("Revoked", platform="w1")
    assert state == ca.tcb("w1") and state.tcb_evaluation_data_number == 9


def test_platforms_until_no_lower_level_is_left(tmp_path):
    ca = SimCA.init(tmp_path / "ca")
    count = sum(SIM_TCB_COMPONENTS)  # each platform is at least one unit below the one above
    for i in range(count):
        ca.platform(f"w{i}")
    lowest = ca.pck_extension(f"w{count - 1}")
    assert lowest.components == (0,) * 16 and lowest.pce_svn == SIM_PCE_SVN
    with pytest.raises(ratls.RatlsError, match="no TCB level left for another platform"):
        ca.platform("one-more")
    ca.set_tcb("OutOfDateConfigurationNeeded", ADVISORIES, platform=f"w{count - 1}")
    ca.set_tcb("SWHardeningNeeded", platform=f"w{count - 2}")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("pass\n")
    for name, status in ((f"w{count - 1}", "OutOfDateConfigurationNeeded"), (f"w{count - 2}", "SWHardeningNeeded"),
                         ("w0", "UpToDate")):
        report = verify(ca, quote_through(ca.platform(name), app)[1], ca.collateral())
        assert report.status == status, name

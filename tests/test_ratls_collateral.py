"""TCB evaluation from collateral: the order of checks around it, and where collateral comes from."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from certtools import flip_bit

import ratls
from ratls.__main__ import main
from ratls.errors import CollateralValidityError
from ratls.policy import ALLOWABLE_TCB_STATUSES

DCAP_QVL_VALID_TIME = 1752919277  # min(nextUpdate) - 1 of the sample collateral, as dcap-qvl's own tests use
ISSUED = 1750330571  # 2025-06-19T10:56:11Z: the latest issue date of the sample collateral (its TCB Info's)
BODY = 48
REPORT_DATA = BODY + 320


@pytest.fixture(scope="module")
def real_quote(testdata) -> bytes:
    return (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()


@pytest.fixture(scope="module")
def collateral(testdata):
    return testdata / "sgx" / "dcap-qvl" / "sgx_quote_collateral.json"


LENIENT = dict(allowed_tcb_statuses=ALLOWABLE_TCB_STATUSES)


def rejects(reason, raw, policy, **kw) -> ratls.VerificationError:
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_quote(raw, policy, **kw)
    assert e.value.reason == reason, e.value
    return e.value


def test_status_advisories_and_expiry(real_quote, collateral):
    ev = ratls.verify_quote(real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME, collateral=collateral)
    assert (ev.provider, ev.tcb_status) == ("sgx", "ConfigurationAndSWHardeningNeeded")
    assert sorted(ev.advisory_ids) == ["INTEL-SA-00289", "INTEL-SA-00615"]
    e = rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME + 2,
                collateral=collateral)
    assert "expired" in e.message
    assert isinstance(e, CollateralValidityError) and e.expired
    assert (e.at, e.valid_from, e.valid_until) == (DCAP_QVL_VALID_TIME + 2, ISSUED, DCAP_QVL_VALID_TIME + 1)
    e = rejects(ratls.Reason.TCB_STATUS, real_quote, ratls.Policy(allowed_tcb_statuses=("UpToDate",)),
                now=DCAP_QVL_VALID_TIME, collateral=collateral)
    assert "ConfigurationAndSWHardeningNeeded" in e.message
    # The policy decides: allowing exactly that status passes.
    allowed = ratls.Policy(allowed_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded"))
    assert ratls.verify_quote(real_quote, allowed, now=DCAP_QVL_VALID_TIME, collateral=collateral).tcb_status == \
        "ConfigurationAndSWHardeningNeeded"


def test_collateral_outside_its_validity_says_when_it_is_valid(real_quote, collateral):
    """Expired, or not yet issued: a CollateralValidityError with the validity window; dcap-qvl's refusal of
    collateral within its validity (here a broken TCB Info signature) is not one."""
    e = rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=ISSUED - 1, collateral=collateral)
    assert isinstance(e, CollateralValidityError) and not e.expired
    assert (e.valid_from, e.valid_until) == (ISSUED, DCAP_QVL_VALID_TIME + 1)
    assert "was issued at 2025-06-19T10:56:11+00:00, after the verification time" in e.message
    assert ratls.verify_quote(real_quote, ratls.Policy(**LENIENT), now=ISSUED, collateral=collateral)
    doc = json.loads(collateral.read_text())
    doc["tcb_info_signature"] = doc["tcb_info_signature"][::-1]
    e = rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME,
                collateral=json.dumps(doc))
    assert "dcap-qvl refused" in e.message and not isinstance(e, CollateralValidityError)


def test_inspect_suggests_a_time_when_the_collateral_expired(real_quote, collateral, tmp_path, capsys):
    quote = tmp_path / "quote"
    quote.write_bytes(real_quote)
    expected = ("hint:          collateral expired at 2025-07-19T10:01:18+00:00; to verify as of a time the "
                f"collateral was valid, pass --time <unix seconds>, e.g. --time {DCAP_QVL_VALID_TIME}\n")
    # The default time is now, long after the sample collateral's nextUpdate.
    assert main(["inspect", str(quote), "--collateral", str(collateral)]) == 1
    out = capsys.readouterr().out
    assert "FAILED COLLATERAL: the collateral expired" in out and out.endswith(expected)
    assert main(["inspect", str(quote), "--collateral", str(collateral), "--time", str(ISSUED - 1), "--json"]) == 1
    verification = json.loads(capsys.readouterr().out)["verification"]
    assert verification["hint"].startswith("collateral was issued at 2025-06-19T10:56:11+00:00, after the "
                                           "verification time; ")
    assert verification["hint"].endswith(f", e.g. --time {DCAP_QVL_VALID_TIME}")
    # The suggestion works; and a failure that is not the collateral's validity gets no hint.
    assert main(["inspect", str(quote), "--collateral", str(collateral), "--time", str(DCAP_QVL_VALID_TIME)]) == 0
    assert "ConfigurationAndSWHardeningNeeded" in capsys.readouterr().out
    assert main(["inspect", str(quote), "--collateral", str(tmp_path / "missing.json"), "--json"]) == 1
    assert "hint" not in json.loads(capsys.readouterr().out)["verification"]


@pytest.mark.parametrize("bit", [0, 7, 100, 255, 511])
def test_flipped_report_data_bit_is_a_signature_failure_even_with_collateral(real_quote, collateral, bit):
    tampered = flip_bit(real_quote, REPORT_DATA * 8 + bit)
    assert ratls.parse_quote(tampered).body.report_data != ratls.parse_quote(real_quote).body.report_data
    e = rejects(ratls.Reason.QUOTE_SIGNATURE, tampered, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME,
                collateral=collateral)
    assert "ISV report signature" in e.message


def test_native_checks_come_before_collateral(real_quote, collateral):
    # A wrong measurement is reported as such, whatever the collateral would have said (here: expired).
    policy = ratls.Policy(mrenclave="00" * 32, **LENIENT)
    rejects(ratls.Reason.MRENCLAVE, real_quote, policy, now=DCAP_QVL_VALID_TIME + 2, collateral=collateral)


def test_collateral_from_json_text_and_object(real_quote, collateral):
    import dcap_qvl

    text = collateral.read_text()
    for given in (text, dcap_qvl.QuoteCollateralV3.from_json(text)):
        ev = ratls.verify_quote(real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME, collateral=given)
        assert ev.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_unusable_collateral_is_a_collateral_failure(real_quote, tmp_path):
    e = rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME,
                collateral=tmp_path / "missing.json")
    assert "missing.json" in e.message
    rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME,
            collateral='{"tcb_info": 1}')


def test_sim_certificate_with_intel_collateral(identity, sim_policy, collateral):
    """Simulated evidence has no Intel TCB: its quote passes our checks, then dcap-qvl refuses the collateral."""
    with pytest.raises(ratls.VerificationError) as e:
        ratls.verify_certificate(identity.certificate_der, sim_policy, collateral=collateral)
    assert e.value.reason == ratls.Reason.COLLATERAL


def test_pccs_url_failure_names_the_url(real_quote):
    """The PCCS path (network in real use) against a local server that has no collateral."""
    requests: list[str] = []

    class NoCollateral(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoCollateral)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        e = rejects(ratls.Reason.COLLATERAL, real_quote, ratls.Policy(**LENIENT), now=DCAP_QVL_VALID_TIME,
                    collateral=url)
        assert url in e.message and "404" in e.message
        assert requests and requests[0].startswith("/sgx/certification/v4/pckcrl")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

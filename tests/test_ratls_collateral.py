"""TCB evaluation from collateral: the order of checks around it, and where collateral comes from."""

from __future__ import annotations

import http.server
import threading

import pytest
from certtools import flip_bit

import ratls
from ratls.policy import ALLOWABLE_TCB_STATUSES

DCAP_QVL_VALID_TIME = 1752919277  # min(nextUpdate) - 1 of the sample collateral, as dcap-qvl's own tests use
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
    e = rejects(ratls.Reason.TCB_STATUS, real_quote, ratls.Policy(allowed_tcb_statuses=("UpToDate",)),
                now=DCAP_QVL_VALID_TIME, collateral=collateral)
    assert "ConfigurationAndSWHardeningNeeded" in e.message
    # The policy decides: allowing exactly that status passes.
    allowed = ratls.Policy(allowed_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded"))
    assert ratls.verify_quote(real_quote, allowed, now=DCAP_QVL_VALID_TIME, collateral=collateral).tcb_status == \
        "ConfigurationAndSWHardeningNeeded"


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

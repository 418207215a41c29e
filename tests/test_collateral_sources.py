"""Collateral sources (ratls.collateral): the real Intel quote's collateral served by a local PCCS stub at the
collateral's own time, the cache (freshness, disk, grace, one fetch per key) and every kind of bad response."""

from __future__ import annotations

import json
import threading

import pytest
from pccs_stub import Fault, PccsStub

import ratls
from ratls.collateral import PCCS, CollateralKey, FileCollateral

VALID_TIME = 1752919277  # min(nextUpdate) - 1 of the sample collateral, as dcap-qvl's own tests use
NEXT_UPDATE = VALID_TIME + 1  # the QE Identity's nextUpdate, the earliest of the four items
EXPECTED = ("ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615"))
POLICY = ratls.Policy()  # Intel's root; the TCB rule is the caller's, not the source's


def at(t):
    return lambda: t


@pytest.fixture(scope="module")
def real_quote(testdata) -> bytes:
    return (testdata / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes()


@pytest.fixture(scope="module")
def collateral_json(testdata) -> str:
    return (testdata / "sgx" / "dcap-qvl" / "sgx_quote_collateral.json").read_text()


@pytest.fixture
def stub(collateral_json):
    with PccsStub(collateral_json) as s:
        yield s


def status(evaluation):
    return evaluation.status, evaluation.advisory_ids


def refused(source, quote, *needles, now=None):
    with pytest.raises(ratls.VerificationError) as e:
        source.evaluate_quote(quote, POLICY, now=now)
    assert e.value.reason == ratls.Reason.COLLATERAL, e.value
    for needle in needles:
        assert needle in e.value.message, e.value.message
    return e.value


def test_real_intel_quote_through_a_pccs(stub, real_quote):
    source = PCCS(stub.url, clock=at(VALID_TIME))
    assert status(source.evaluate_quote(real_quote, POLICY)) == EXPECTED
    assert dict(stub.requests) == {"pckcrl": 1, "tcb": 1, "qe/identity": 1, "rootcacrl": 1}
    # Cached: a second evaluation fetches nothing.
    assert status(source.evaluate_quote(real_quote, POLICY)) == EXPECTED
    assert stub.requests["tcb"] == 1 and source.fetches == 1
    assert CollateralKey.of_quote(real_quote) == CollateralKey("00A067110000", "processor")


def test_real_intel_quote_from_a_file_and_a_directory(tmp_path, real_quote, collateral_json):
    (tmp_path / "other.json").write_text("{not json")
    (tmp_path / "platform.json").write_text(collateral_json)
    for path in (tmp_path / "platform.json", tmp_path):
        assert status(FileCollateral(path, clock=at(VALID_TIME)).evaluate_quote(real_quote, POLICY)) == EXPECTED


def test_verify_quote_takes_a_source(stub, real_quote):
    ev = ratls.verify_quote(real_quote, ratls.Policy(allowed_tcb_statuses=[EXPECTED[0]]), now=VALID_TIME,
                            collateral=PCCS(stub.url, clock=at(VALID_TIME)))
    assert (ev.tcb_status, ev.advisory_ids) == EXPECTED


def test_pccs_down_with_an_empty_cache_is_refused(stub, real_quote):
    url = stub.url
    stub.close()
    refused(PCCS(url, timeout=5, clock=at(VALID_TIME)), real_quote, url, "unreachable")


def test_pccs_down_with_fresh_cached_collateral_is_accepted(stub, real_quote, tmp_path):
    PCCS(stub.url, cache_dir=tmp_path, clock=at(VALID_TIME)).evaluate_quote(real_quote, POLICY)
    assert [p.name for p in tmp_path.iterdir()] == ["00A067110000-processor.json"]
    url = stub.url
    stub.close()
    # A new process: the cache on disk is all it has.
    restarted = PCCS(url, cache_dir=tmp_path, timeout=5, clock=at(VALID_TIME))
    assert status(restarted.evaluate_quote(real_quote, POLICY)) == EXPECTED
    assert restarted.fetches == 0


def test_expired_cache_is_refused_outside_the_grace_and_served_within_it(stub, real_quote, tmp_path):
    PCCS(stub.url, cache_dir=tmp_path, clock=at(VALID_TIME)).evaluate_quote(real_quote, POLICY)
    url = stub.url
    stub.close()
    later = NEXT_UPDATE + 60
    refused(PCCS(url, cache_dir=tmp_path, timeout=5, clock=at(later)), real_quote, "unreachable",
            "expired at 2025-07-19")
    refused(PCCS(url, cache_dir=tmp_path, timeout=5, stale_grace=59, clock=at(later)), real_quote,
            "beyond the grace of 59 s")
    # Within the grace the cached collateral is used; dcap-qvl still judges it at the given time, so a source
    # with a grace serves it, and the verifier (which checks every item's validity) has the last word.
    graced = PCCS(url, cache_dir=tmp_path, timeout=5, stale_grace=3600, clock=at(later))
    with pytest.raises(ratls.VerificationError, match="expired"):
        graced.evaluate_quote(real_quote, POLICY)
    assert graced.fetches == 1


def test_max_age_refreshes_valid_collateral_and_keeps_it_when_the_refresh_fails(stub, real_quote):
    now = [VALID_TIME - 1000]
    source = PCCS(stub.url, max_age=100, timeout=5, clock=lambda: now[0])
    source.evaluate_quote(real_quote, POLICY)
    now[0] += 50
    source.evaluate_quote(real_quote, POLICY)
    assert source.fetches == 1
    now[0] += 100
    source.evaluate_quote(real_quote, POLICY)
    assert source.fetches == 2
    stub.faults["tcb"] = Fault(status=503)
    now[0] += 200
    assert status(source.evaluate_quote(real_quote, POLICY)) == EXPECTED  # still valid: the failure is logged
    assert source.fetches == 3


def _flip_signature(body: bytes) -> bytes:
    doc = json.loads(body)
    sig = bytearray(bytes.fromhex(doc["signature"]))
    sig[10] ^= 1
    return body.replace(doc["signature"].encode(), sig.hex().encode())


BAD_RESPONSES = {
    "truncated": ("tcb", Fault(truncate_to=100), ("TCB Info is truncated",)),
    "oversized": ("tcb", Fault(body=lambda b: b + b" " * 10000), ("TCB Info is", "more than the limit of 8192")),
    "bad JSON": ("qe/identity", Fault(body=lambda b: b[:-2]), ("QE Identity is not JSON",)),
    "wrong signature": ("tcb", Fault(body=_flip_signature), ("dcap-qvl refused", "tcb_info")),
    "slow": ("qe/identity", Fault(delay=3), ("timed out after 1 s", "QE Identity")),
    "dripping": ("tcb", Fault(drip=0.05), ("timed out after 1 s", "TCB Info")),
    "HTTP error": ("pckcrl", Fault(status=500), ("HTTP 500", "PCK CRL")),
    "missing header": ("tcb", Fault(body=lambda b: b.replace(b"tcbInfo", b"tcbInfX")), ("lacks 'tcbInfo'",)),
}


@pytest.mark.parametrize("case", BAD_RESPONSES, ids=list(BAD_RESPONSES))
def test_bad_responses_are_refused_with_their_own_message_and_leave_the_cache_sound(stub, real_quote, tmp_path,
                                                                                   case):
    item, fault, needles = BAD_RESPONSES[case]
    stub.faults[item] = fault
    source = PCCS(stub.url, cache_dir=tmp_path, timeout=1, max_response_bytes=8192, clock=at(VALID_TIME))
    refused(source, real_quote, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing cached, on disk or (next line) in memory
    del stub.faults[item]
    assert status(source.evaluate_quote(real_quote, POLICY)) == EXPECTED
    assert source.fetches == 2


def test_concurrent_evaluations_on_a_cold_cache_make_one_fetch(stub, real_quote):
    stub.faults["tcb"] = Fault(delay=0.3)  # every caller arrives while the first fetch is in flight
    source = PCCS(stub.url, clock=at(VALID_TIME))
    barrier = threading.Barrier(8)
    results, errors = [], []

    def evaluate():
        barrier.wait(timeout=10)
        try:
            results.append(status(source.evaluate_quote(real_quote, POLICY)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=evaluate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and results == [EXPECTED] * 8
    assert stub.requests["tcb"] == 1 and source.fetches == 1


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="http"):
        PCCS("ftp://pccs")
    with pytest.raises(ValueError, match="stale_grace"):
        PCCS("http://127.0.0.1:1", stale_grace=-1)
    with pytest.raises(FileNotFoundError, match="nope"):
        FileCollateral(tmp_path / "nope")


def test_unusable_disk_cache_files_are_ignored(stub, real_quote, tmp_path):
    (tmp_path / "00A067110000-processor.json").write_text('{"pck_crl": "zz"}')
    source = PCCS(stub.url, cache_dir=tmp_path, clock=at(VALID_TIME))
    assert status(source.evaluate_quote(real_quote, POLICY)) == EXPECTED
    assert source.fetches == 1
    assert json.loads((tmp_path / "00A067110000-processor.json").read_text())["tcb_info"].startswith('{"id":"SGX"')

"""Visible refusals (issue 17): a refused client is told the server's reason code (VerificationError.reason ==
PEER_REFUSED, .peer_reason == the code, never the server's message or policy values); the server logs every refused
attestation with the peer's address and the reason on the "ratls.attestation" logger; accepting simulated evidence
is logged once per process."""

from __future__ import annotations

import gc
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO
from grpctools import platform_identities, serve

import ratls
from ratls._trust import AttestationEndpoint
from ratls.collateral import PCCS
from ratls.sim_pccs import SimPCCS

LOGGER = "ratls.attestation"
OTHER_MRENCLAVE = bytes(range(32))


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    ca = ratls.SimCA.init(tmp_path_factory.mktemp("refusals-ca"))
    ca.platform("client")
    return ca


@pytest.fixture(scope="module")
def identities(ca, tmp_path_factory):
    return platform_identities(ca, tmp_path_factory.mktemp("apps"))


@pytest.fixture(autouse=True)
def up_to_date(ca):
    yield
    ca.set_tcb("UpToDate", platform="client")


def policy(ca, statuses=("UpToDate", "Unknown"), **kw) -> ratls.Policy:
    kw.setdefault("mrsigner", ca.mrsigner)
    return ratls.Policy(allow_simulated=True, sim_root=ca.path, allowed_tcb_statuses=statuses, **kw)


def refusal_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("refused attestation")]


def wait_for_refusals(caplog, n: int, timeout: float = 5.0) -> list[logging.LogRecord]:
    """The refusal thread logs asynchronously (it waits on the native queue): wait for n records."""
    deadline = time.monotonic() + timeout
    while len(refusal_records(caplog)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return refusal_records(caplog)


def test_refused_client_gets_peer_reason_and_the_server_logs_address_and_reason(ca, identities, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = ratls.credentials(policy(ca, mrenclave=OTHER_MRENCLAVE), identities["server"])
    client = ratls.credentials(policy(ca), identities["client"])
    with serve(server) as running:
        with pytest.raises(ratls.VerificationError) as e:
            client.attest(running.attestation_target)
        assert e.value.reason == ratls.Reason.PEER_REFUSED
        assert e.value.peer_reason == ratls.Reason.MRENCLAVE
        assert e.value.message.startswith("the attestation server refused our certificate: MRENCLAVE (127.0.0.1:")
        # Only the code crossed the wire: nothing of the server's policy (its expected MRENCLAVE) or message.
        stats = server.attestation_stats(running.grpc_port)
        assert OTHER_MRENCLAVE.hex() in stats.last_rejection_message
        assert OTHER_MRENCLAVE.hex() not in str(e.value) and stats.last_rejection_message not in str(e.value)

        (record,) = wait_for_refusals(caplog, 1)
        assert record.levelno == logging.WARNING
        match = re.fullmatch(r"refused attestation from 127\.0\.0\.1:(\d+): MRENCLAVE: (.*)", record.getMessage())
        assert match, record.getMessage()
        assert int(match.group(1)) not in (0, running.attestation_port)  # the client's own end
        assert match.group(2) == stats.last_rejection_message
        assert record.ratls_peer == f"127.0.0.1:{match.group(1)}"
        assert record.ratls_reason == ratls.Reason.MRENCLAVE
        assert stats.refusals_dropped == 0


def test_client_refused_for_its_tcb_status_and_for_collateral(ca, identities, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ca.set_tcb("OutOfDate", ("INTEL-SA-00615",), platform="client")
    with SimPCCS(ca) as pccs:
        server = ratls.credentials(policy(ca, ("UpToDate",)), identities["server"], collateral=PCCS(pccs.url))
        client = ratls.credentials(policy(ca), identities["client"])
        with serve(server) as running:
            with pytest.raises(ratls.VerificationError) as e:
                client.attest(running.attestation_target)
            assert (e.value.reason, e.value.peer_reason) == (ratls.Reason.PEER_REFUSED, ratls.Reason.TCB_STATUS)
            assert "OutOfDate" not in str(e.value)
            (record,) = wait_for_refusals(caplog, 1)
            assert re.fullmatch(r"refused attestation from 127\.0\.0\.1:\d+: TCB_STATUS: TCB status OutOfDate is not "
                                r"allowed by the policy.*", record.getMessage()), record.getMessage()
        dead_url = pccs.url
    # The PCCS is gone: the server cannot evaluate the client's status.
    server = ratls.credentials(policy(ca, ("UpToDate",)), identities["server"], collateral=PCCS(dead_url, timeout=2))
    with serve(server) as running:
        with pytest.raises(ratls.VerificationError) as e:
            client.attest(running.attestation_target)
        assert (e.value.reason, e.value.peer_reason) == (ratls.Reason.PEER_REFUSED, ratls.Reason.COLLATERAL)
        assert dead_url not in str(e.value)
    # close() (serve's exit) logged it, whether or not the thread had.
    records = refusal_records(caplog)
    assert len(records) == 2 and records[1].ratls_reason == ratls.Reason.COLLATERAL
    assert ": COLLATERAL: collateral evaluation failed:" in records[1].getMessage()


def test_peer_reason_is_none_unless_the_server_refused_us(ca, identities, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # We refuse the server: our own reason, no peer reason, and the server logs no refusal of us.
    picky = ratls.credentials(policy(ca, mrenclave=OTHER_MRENCLAVE), identities["client"])
    with serve(ratls.credentials(policy(ca), identities["server"])) as running:
        with pytest.raises(ratls.VerificationError) as e:
            picky.attest(running.attestation_target)
        assert (e.value.reason, e.value.peer_reason) == (ratls.Reason.MRENCLAVE, None)
        port = running.attestation_port
    assert refusal_records(caplog) == []
    # Nobody listening.
    with pytest.raises(ratls.VerificationError) as e:
        picky.attest(f"127.0.0.1:{port}", timeout=2)
    assert e.value.reason == ratls.Reason.IO and e.value.peer_reason is None


def refusal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ratls-refusals-")]


def test_close_joins_the_refusal_thread_promptly_and_collection_stops_it(ca, identities):
    before = set(refusal_threads())
    server = ratls.credentials(policy(ca), identities["server"])
    with serve(server) as running:
        (thread,) = set(refusal_threads()) - before
        assert thread.daemon and thread.name == f"ratls-refusals-{running.attestation_port}"
        started = time.monotonic()
    assert time.monotonic() - started < 2  # one pending 200 ms poll at most, plus the gRPC server's stop
    assert not thread.is_alive()
    # An endpoint nobody closes: garbage collection stops it and its thread.
    endpoint = AttestationEndpoint(identities["server"], policy(ca), "127.0.0.1", 0, handshake_timeout=1,
                                   max_concurrent=1, max_cert_size=32768, trust_ttl=60)
    (thread,) = set(refusal_threads()) - before
    del endpoint
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


SIM_NOTICE_SCRIPT = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    import ratls

    def mark(text):
        print(text, file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp())
    ca = ratls.SimCA.init(tmp / "ca")
    (tmp / "app").mkdir()
    (tmp / "app" / "main.py").write_text("print(1)\\n")
    ids = [ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[tmp / "app"], measure_root=tmp / "app")
           for _ in range(2)]
    ok = ratls.Policy(allow_simulated=True, sim_root=ca.path, mrsigner=ca.mrsigner,
                      allowed_tcb_statuses=("Unknown",))
    wrong = ratls.Policy(allow_simulated=True, sim_root=ca.path, mrenclave=bytes(32),
                         allowed_tcb_statuses=("Unknown",))
    try:
        ratls.verify_certificate(ids[0].certificate_der, wrong)
    except ratls.VerificationError:
        pass
    mark("MARK refused")
    assert ratls.verify_certificate(ids[0].certificate_der, ok).simulated
    mark("MARK first")
    ratls.verify_certificate(ids[1].certificate_der, ok)
    server, client = ratls.credentials(ok, ids[0]), ratls.credentials(ok, ids[1])
    import grpc
    from concurrent import futures
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    grpc_port, port = server.add_secure_port(srv, "127.0.0.1:0")
    assert client.attest(f"127.0.0.1:{port}").evidence.simulated
    assert len(server.trusted_clients(grpc_port)) == 1
    server.close()
    mark("MARK end")
""")


def test_simulated_evidence_is_logged_once_per_process():
    """Without any logging configuration (Python's last-resort handler prints WARNING to stderr): a refused sim
    certificate says nothing, the first accepted one logs the notice, the next verification and both sides of a
    handshake do not log it again."""
    out = subprocess.run([sys.executable, "-c", SIM_NOTICE_SCRIPT], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    notice = "accepted simulated SGX evidence"
    assert err.count(notice) == 1, err
    assert err.index("MARK refused") < err.index(notice) < err.index("MARK first") < err.index("MARK end"), err

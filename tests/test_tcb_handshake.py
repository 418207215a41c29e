"""TCB status inside the attestation handshake (ratls.credentials(collateral=...)): every status Intel defines,
both directions, Gramine's RA_TLS_ALLOW_* table, and one PCCS fetch for many concurrent handshakes.

The sim CA judges each of its platforms at a TCB status we set; a sim PCCS serves that collateral, signed under
the sim root, and dcap-qvl evaluates it exactly as it evaluates Intel's."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest
from grpctools import hello, platform_identities, serve

import ratls
from ratls.collateral import PCCS
from ratls.sim_pccs import SimPCCS

STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
            "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")
ADVISORIES = ("INTEL-SA-00615",)
# Gramine's table (ra_tls_verify_common.c): which RA_TLS_ALLOW_* flags admit a status. Revoked: never.
GRAMINE_FLAGS = {
    "UpToDate": set(),
    "SWHardeningNeeded": {"RA_TLS_ALLOW_SW_HARDENING_NEEDED"},
    "ConfigurationNeeded": {"RA_TLS_ALLOW_HW_CONFIG_NEEDED"},
    "ConfigurationAndSWHardeningNeeded": {"RA_TLS_ALLOW_HW_CONFIG_NEEDED", "RA_TLS_ALLOW_SW_HARDENING_NEEDED"},
    "OutOfDate": {"RA_TLS_ALLOW_OUTDATED_TCB_INSECURE"},
    "OutOfDateConfigurationNeeded": {"RA_TLS_ALLOW_OUTDATED_TCB_INSECURE", "RA_TLS_ALLOW_HW_CONFIG_NEEDED"},
    "Revoked": None,
}
FLAGS = ("RA_TLS_ALLOW_OUTDATED_TCB_INSECURE", "RA_TLS_ALLOW_HW_CONFIG_NEEDED", "RA_TLS_ALLOW_SW_HARDENING_NEEDED")


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    ca = ratls.SimCA.init(tmp_path_factory.mktemp("tcb-ca"))
    ca.platform("client")
    return ca


@pytest.fixture(scope="module")
def pccs(ca):
    with SimPCCS(ca) as server:
        yield server


@pytest.fixture(scope="module")
def identities(ca, tmp_path_factory):
    return platform_identities(ca, tmp_path_factory.mktemp("apps"))


def policy(ca, statuses=("UpToDate",)) -> ratls.Policy:
    return ratls.Policy(allow_simulated=True, sim_root=ca.path, mrsigner=ca.mrsigner, allowed_tcb_statuses=statuses)


def set_status(ca, role, status):
    ca.set_tcb(status, ADVISORIES if status != "UpToDate" else (), platform="client" if role == "client" else None)


@pytest.fixture(autouse=True)
def up_to_date(ca):
    yield
    ca.set_tcb("UpToDate")
    ca.set_tcb("UpToDate", platform="client")


def pair(ca, pccs, identities, server_policy, client_policy):
    """Server and client credentials, each with a fresh (cold) PCCS source."""
    server = ratls.credentials(server_policy, identities["server"], collateral=PCCS(pccs.url))
    client = ratls.credentials(client_policy, identities["client"], collateral=PCCS(pccs.url))
    return server, client


def test_up_to_date_is_accepted_both_ways_with_status_and_a_grpc_call(ca, pccs, identities):
    server, client = pair(ca, pccs, identities, policy(ca), policy(ca))
    with serve(server) as running:
        channel = client.secure_channel(running.target, attestation_target=running.attestation_target)
        assert hello(channel) == b"hello world"
        assert channel.server_evidence.tcb_status == "UpToDate"
        (evidence,) = server.trusted_clients(running.grpc_port).values()
        assert evidence.tcb_status == "UpToDate" and evidence.advisory_ids == ()
        channel.close()


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "UpToDate"])
def test_server_refuses_a_client_platform_at_each_status(ca, pccs, identities, status):
    set_status(ca, "client", status)
    server, client = pair(ca, pccs, identities, policy(ca), policy(ca, STATUSES[:-1]))
    with serve(server) as running:
        with pytest.raises(ratls.VerificationError) as e:
            client.attest(running.attestation_target)
        assert e.value.reason == ratls.Reason.PEER_REFUSED and e.value.peer_reason == ratls.Reason.TCB_STATUS
        assert "refused our certificate: TCB_STATUS" in e.value.message
        stats = server.attestation_stats(running.grpc_port)
        assert (stats.rejected, stats.attested, stats.last_rejection) == (1, 0, ratls.Reason.TCB_STATUS)
        assert f"TCB status {status} is n" in stats.last_rejection_message  # "not allowed", or "never" (Revoked)
        assert server.trusted_clients(running.grpc_port) == {}


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "UpToDate"])
def test_client_refuses_a_server_platform_at_each_status(ca, pccs, identities, status):
    set_status(ca, "server", status)
    server, client = pair(ca, pccs, identities, policy(ca, STATUSES[:-1]), policy(ca))
    with serve(server) as running:
        # The channel attests at its first call, which fails UNAUTHENTICATED (a verdict, not an outage).
        with client.secure_channel(running.target, attestation_target=running.attestation_target) as channel:
            with pytest.raises(ratls.AttestationRpcError) as e:
                hello(channel)
        assert e.value.reason == ratls.Reason.TCB_STATUS and e.value.code().name == "UNAUTHENTICATED"
        assert f"TCB status {status} is n" in e.value.message
        stats = server.attestation_stats(running.grpc_port)
        assert stats.attested == 0  # the client closed on the server: nobody was trusted


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "Revoked"])
def test_evidence_carries_the_status_and_advisories_both_ways(ca, pccs, identities, status):
    set_status(ca, "server", status)
    set_status(ca, "client", status)
    server, client = pair(ca, pccs, identities, policy(ca, STATUSES[:-1]), policy(ca, STATUSES[:-1]))
    with serve(server) as running:
        attested = client.attest(running.attestation_target)
        expected = (status, ADVISORIES if status != "UpToDate" else ())
        assert (attested.evidence.tcb_status, attested.evidence.advisory_ids) == expected
        (evidence,) = server.trusted_clients(running.grpc_port).values()
        assert (evidence.tcb_status, evidence.advisory_ids) == expected


def test_revoked_is_never_admitted(ca, pccs, identities):
    with pytest.raises(ratls.PolicyError, match="Revoked can never be allowed"):
        policy(ca, STATUSES)
    for flags in itertools.chain.from_iterable(itertools.combinations(FLAGS, n) for n in range(4)):
        assert "Revoked" not in _env_policy(ca, flags).allowed_tcb_statuses
    set_status(ca, "client", "Revoked")
    server, client = pair(ca, pccs, identities, _env_policy(ca, FLAGS), policy(ca, ("UpToDate", "Unknown")))
    with serve(server) as running:
        with pytest.raises(ratls.VerificationError, match="TCB_STATUS"):
            client.attest(running.attestation_target)
        assert "TCB status Revoked" in server.attestation_stats(running.grpc_port).last_rejection_message


def _env_policy(ca, flags) -> ratls.Policy:
    env = {"RA_TLS_MRENCLAVE": "any", "RA_TLS_MRSIGNER": ca.mrsigner.hex(), "RA_TLS_ISV_PROD_ID": "any",
           "RA_TLS_ISV_SVN": "any", **{flag: "1" if flag in flags else "0" for flag in FLAGS}}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return ratls.Policy.from_env(sim_root=ca.path, allow_simulated=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("status", STATUSES)
def test_each_gramine_flag_admits_exactly_its_statuses(ca, pccs, identities, status):
    set_status(ca, "client", status)
    server_source = PCCS(pccs.url)
    client = ratls.credentials(policy(ca, ("UpToDate", "Unknown")), identities["client"])
    for flags in itertools.chain.from_iterable(itertools.combinations(FLAGS, n) for n in range(4)):
        needed = GRAMINE_FLAGS[status]
        admitted = needed is not None and needed <= set(flags)
        server = ratls.credentials(_env_policy(ca, flags), identities["server"], collateral=server_source)
        with serve(server) as running:
            try:
                client.attest(running.attestation_target)
                got = True
            except ratls.VerificationError as e:
                assert "TCB_STATUS" in e.message, e
                got = False
        assert got == admitted, (status, flags)
    assert server_source.fetches == 1  # the 8 servers shared one source and its cache


def test_eight_concurrent_handshakes_on_a_cold_cache_make_one_fetch(ca, identities):
    with SimPCCS(ca) as server_pccs, SimPCCS(ca) as client_pccs:
        server = ratls.credentials(policy(ca), identities["server"], collateral=PCCS(server_pccs.url))
        client_source = PCCS(client_pccs.url)
        clients = [ratls.credentials(policy(ca), identities["client"], collateral=client_source) for _ in range(8)]
        with serve(server) as running:
            barrier = threading.Barrier(8)
            results, errors = [], []

            def attest(c):
                barrier.wait(timeout=10)
                try:
                    results.append(c.attest(running.attestation_target).evidence.tcb_status)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=attest, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors and results == ["UpToDate"] * 8
            assert server.attestation_stats(running.grpc_port).attested == 8
        assert server_pccs.requests["tcb"] == 1 and client_pccs.requests["tcb"] == 1


def test_pccs_down_refuses_with_collateral_and_says_so(ca, identities):
    with SimPCCS(ca) as dead:
        url = dead.url
    server = ratls.credentials(policy(ca), identities["server"], collateral=PCCS(url, timeout=2))
    client = ratls.credentials(policy(ca, ("UpToDate", "Unknown")), identities["client"])
    with serve(server) as running:
        with pytest.raises(ratls.VerificationError, match="refused our certificate: COLLATERAL"):
            client.attest(running.attestation_target)
        stats = server.attestation_stats(running.grpc_port)
        assert stats.last_rejection == ratls.Reason.COLLATERAL and "unreachable" in stats.last_rejection_message


def test_re_attestation_picks_up_a_revocation(ca, pccs, identities):
    """A platform revoked while it runs is refused at its next attestation once the source refreshes (max_age)."""
    now = [0.0]
    source = PCCS(pccs.url, max_age=60, clock=lambda: time.time() + now[0])
    server = ratls.credentials(policy(ca), identities["server"], collateral=source)
    client = ratls.credentials(policy(ca, ("UpToDate", "Unknown")), identities["client"])
    with serve(server) as running:
        client.attest(running.attestation_target)
        assert {e.tcb_status for e in server.trusted_clients(running.grpc_port).values()} == {"UpToDate"}
        ca.set_tcb("Revoked", platform="client")
        assert client.attest(running.attestation_target)  # cached collateral: max_age not reached
        assert source.fetches == 1
        now[0] = 61
        with pytest.raises(ratls.VerificationError, match="TCB_STATUS"):
            client.attest(running.attestation_target)
        assert "Revoked" in server.attestation_stats(running.grpc_port).last_rejection_message


def test_gramines_dcap_verifier_as_the_handshakes_source(ca, identities, tmp_path, monkeypatch):
    """--collateral gramine: Gramine's libra_tls_verify_dcap.so inside the handshake, here our sim library under
    Gramine's file name (configured through the environment, as a C program using Gramine's ABI would be). It
    evaluates no collateral for sim evidence, so the status is Unknown: a strict policy refuses it."""
    import shutil

    from ratls.collateral import GramineDcap

    library = tmp_path / "libra_tls_verify_dcap.so"
    shutil.copy(ratls.identity.SIM_LIBRARY, library)
    monkeypatch.setenv("RATLS_SIM_CA_DIR", str(ca.path))
    monkeypatch.setenv("RATLS_SIM_MRENCLAVE", "5e" * 32)
    source = GramineDcap(library)
    calls = []

    class Counting:
        def evaluate_certificate(self, cert_der, policy):
            calls.append(len(cert_der))
            return source.evaluate_certificate(cert_der, policy)

    lenient = policy(ca, ("UpToDate", "Unknown"))
    client = ratls.credentials(lenient, identities["client"])
    with serve(ratls.credentials(lenient, identities["server"], collateral=Counting())) as running:
        client.attest(running.attestation_target)
        (evidence,) = running.creds.trusted_clients(running.grpc_port).values()
        assert evidence.tcb_status == "Unknown" and len(calls) == 1
    with serve(ratls.credentials(policy(ca), identities["server"], collateral=Counting())) as running:
        with pytest.raises(ratls.VerificationError, match="refused our certificate: TCB_STATUS"):
            client.attest(running.attestation_target)
        assert "TCB status Unknown is not allowed" in running.creds.attestation_stats(
            running.grpc_port).last_rejection_message
        assert len(calls) == 2
    # A certificate our native checks refuse never reaches Gramine's library.
    pinned = ratls.Policy(allow_simulated=True, sim_root=ca.path, mrenclave=identities["server"].mrenclave,
                          allowed_tcb_statuses=("UpToDate", "Unknown"))
    with serve(ratls.credentials(pinned, identities["server"], collateral=Counting())) as running:
        with pytest.raises(ratls.VerificationError, match="refused our certificate: MRENCLAVE"):
            client.attest(running.attestation_target)
        assert len(calls) == 2
    monkeypatch.delenv("RATLS_GRAMINE_VERIFY_LIB", raising=False)
    with pytest.raises(ratls.ProviderError, match="libra_tls_verify_dcap"):
        GramineDcap(tmp_path / "missing" / "libra_tls_verify_dcap.so")

"""python -m ratls probe (issue 17): attests a live endpoint as a client without an enclave and prints the server's
evidence, the policy's verdict, whether the server admits unattested clients, and whether the gRPC port serves the
attested certificate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from grpctools import make_app, serve, sim_policy

import ratls


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return ratls.SimCA.init(tmp_path_factory.mktemp("probe-ca"))


@pytest.fixture(scope="module")
def servers(ca, tmp_path_factory):
    root = tmp_path_factory.mktemp("apps")
    return [ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=app)
            for app in (make_app(root, "a"), make_app(root, "b"))]


def probe(*args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "ratls", "probe", "--json", "--timeout", "5", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def policy_file(tmp_path, mrenclave: bytes, ca) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(f'mrenclave = "{mrenclave.hex()}"\nmrsigner = "any"\nallow_simulated = true\n'
                    f'sim_root = "{ca.path}"\nallowed_tcb_statuses = ["Unknown"]\n')
    return str(path)


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_probe_shows_the_server_and_whether_it_admits_unattested_clients(ca, servers, mode, tmp_path):
    me = servers[0]
    with serve(ratls.credentials(sim_policy(ca, me.mrenclave), me), client_attestation=mode) as running:
        rc, out = probe(running.target, "--attestation-port", str(running.attestation_port),
                        "--policy", policy_file(tmp_path, me.mrenclave, ca))
    assert rc == 0
    assert out["server"]["ok"] and out["server"]["evidence"]["mrenclave"] == me.mrenclave.hex()
    assert out["grpc_port"]["certificate_sha256"] == me.evidence.cert_fingerprint.hex()
    if mode == "optional":
        assert out["handshake"] == {"ok": True, "admitted": True, "trust_ttl_s": 3600.0}
        assert out["grpc_port"]["same_as_attested"] is True
    else:
        assert out["handshake"]["admitted"] is False and out["handshake"]["ok"] is True
        assert out["handshake"]["peer_reason"] == "ATTESTATION_REQUIRED"


def test_probe_names_the_policy_failure_and_still_shows_the_claims(ca, servers, tmp_path):
    me, other = servers
    with serve(ratls.credentials(sim_policy(ca, me.mrenclave), me), client_attestation="optional") as running:
        rc, out = probe(running.target, "--attestation-port", str(running.attestation_port),
                        "--policy", policy_file(tmp_path, other.mrenclave, ca))
        # Without a policy: any measurement; the sim root must still be named.
        rc_any, out_any = probe(running.target, "--attestation-port", str(running.attestation_port),
                                "--sim-root", str(ca.path))
    assert rc == 1
    assert out["handshake"]["ok"] is False and out["handshake"]["reason"] == "MRENCLAVE"
    assert out["server"] == {"ok": False, "reason": "MRENCLAVE", "message": out["server"]["message"]}
    assert me.mrenclave.hex() in out["server"]["message"]
    assert rc_any == 0 and out_any["server"]["evidence"]["mrenclave"] == me.mrenclave.hex()


def test_probe_sees_a_grpc_port_served_by_another_server(ca, servers):
    """What an L4 balancer without client affinity looks like: the attestation port and the gRPC port are answered
    by different servers."""
    a, b = servers
    policy = sim_policy(ca, a.mrenclave, b.mrenclave)
    with serve(ratls.credentials(policy, a), client_attestation="optional") as ra, \
            serve(ratls.credentials(policy, b), client_attestation="optional") as rb:
        rc, out = probe(ra.target, "--attestation-port", str(rb.attestation_port), "--sim-root", str(ca.path))
    assert rc == 1
    assert out["handshake"]["admitted"] is True and out["grpc_port"]["same_as_attested"] is False


def test_probe_of_nothing_says_unreachable():
    rc, out = probe("127.0.0.1:1")
    assert rc == 1
    assert out["handshake"]["reason"] == "IO" and "Connection refused" in out["grpc_port"]["error"]

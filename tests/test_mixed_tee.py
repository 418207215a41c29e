"""A federation of two TEEs: an SGX-enclave PS with Intel TDX workers (sim providers), each side's policy naming
the other's TEE; and what a side whose policy does not name it, or a plan role that does not, says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ratls
from runtime.client.ps import PSConnection
from runtime.federation import RolePolicy, load_plan, write_local_plan
from runtime.federation.plan import PlanError
from runtime.model import DLRMConfig
from runtime.server.service import start_server
from runtime.server.state import ParameterServer, PSOptions
from runtime.transport import RatlsTransport, TransportError

REPO = Path(__file__).resolve().parents[1]
STEPS = 30


@pytest.fixture(scope="module")
def sim_ca(tmp_path_factory) -> Path:
    return ratls.SimCA.init(tmp_path_factory.mktemp("mixed-ca")).path


@pytest.mark.timeout(300)
def test_an_sgx_ps_trains_with_tdx_workers(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "runtime.launch", "--out", str(out), "--workers", "2", "--steps",
                           str(STEPS), "--batch-size", "32", "--model", "small", "--worker-tee", "tdx"],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    ps = report["ps"][0]["transport"]
    assert (ps["provider"], ps["tee"], ps["peer_tees"]) == ("sim", "sgx", ["sgx", "tdx"])
    for worker in report["workers"]:
        t = worker["transport"]
        assert (t["provider"], t["tee"], t["peer_tees"]) == ("sim-tdx", "tdx", ["sgx", "tdx"])
        assert worker["eval"]["versions"] == [STEPS]
    assert report["held_out"]["parameter_versions"] == [[STEPS]]
    assert sum(p["samples"] for p in report["participants"]) == report["examples"] == 2 * STEPS * 32
    joins = [json.loads(line) for line in (out / "audit" / "ps0.jsonl").read_text().splitlines()]
    joins = [r for r in joins if r["event"] == "join"]
    assert sorted(r["participant"] for r in joins) == ["worker0", "worker1"]
    # The PS admitted each worker as a TD whose MRTD is this runtime's, under the plan's worker role.
    assert {(r["tee"], r["mrtd"]) for r in joins} == {("tdx", report["attestation"]["mrtd"])}
    plan = load_plan(out / "federation" / "plan.toml")
    assert plan.roles["worker"].mrtd == {bytes.fromhex(report["attestation"]["mrtd"])}
    assert not plan.roles["chief"].admits_tdx
    assert "workers as TDX TDs" in done.stdout


def test_a_td_is_refused_by_a_ps_whose_policy_names_sgx_only(sim_ca):
    ps_net = RatlsTransport(provider="sim", sim_ca=sim_ca, mrenclave=None)
    td_net = RatlsTransport(provider="sim-tdx", sim_ca=sim_ca, mrenclave=None, peer_tees=("sgx",))
    assert (ps_net.policy.tees, td_net.identity.evidence.tee) == (("sgx",), "tdx")
    ps = ParameterServer(PSOptions(config=DLRMConfig.small(), total_steps=5, workers=1, log_every=0))
    running = start_server(ps, ps_net, "127.0.0.1", 0)
    connection = PSConnection(running.endpoint, td_net)
    try:
        with pytest.raises(TransportError) as error:
            connection.connect()
    finally:
        connection.close()
        running.server.stop(0).wait(5)
    assert "TEE_TYPE" in str(error.value), error.value
    assert not error.value.retryable
    assert ps_net.report()["attestation_ports"][0]["last_rejection"] == "TEE_TYPE"


def test_a_plan_role_admits_tds_only_when_it_names_their_mrtd(sim_ca, tmp_path):
    td = ratls.Identity.create(provider="sim-tdx", sim_ca=sim_ca, measured_files=[__file__])
    enclave = ratls.Identity.create(provider="sim", sim_ca=sim_ca, measured_files=[__file__])
    sgx_only = RolePolicy(mrenclave=frozenset({enclave.mrenclave}), mrsigner=None)
    assert sgx_only.refusal(enclave.evidence) is None
    assert sgx_only.refusal(td.evidence) == ("tee: expected an SGX enclave (the role's policy names no mrtd), found "
                                             "a TDX TD")
    both = RolePolicy(mrenclave=frozenset({enclave.mrenclave}), mrsigner=None, admits_tdx=True,
                      mrtd=frozenset({td.evidence.mrtd}))
    assert both.refusal(td.evidence) is None and both.refusal(enclave.evidence) is None
    other = RolePolicy(mrenclave=None, mrsigner=None, admits_tdx=True, mrtd=frozenset({b"\x01" * 48}))
    assert other.refusal(td.evidence) == f"mrtd: expected {'01' * 48}, found {td.evidence.mrtd.hex()}"
    debug_td = ratls.Identity.create(provider="sim-tdx", sim_ca=sim_ca, measured_files=[__file__], debug=True)
    assert both.refusal(debug_td.evidence) == "debug: expected a production TD, found a debug TD"
    with pytest.raises(ValueError, match="mrtd: set for a role that does not admit TDX TDs"):
        RolePolicy(mrenclave=None, mrsigner=None, mrtd=frozenset({td.evidence.mrtd}))

    # In a plan file: "mrtd" is what makes a role admit TDs; a plan without it keeps its digest.
    path, _ = write_local_plan(tmp_path / "a", "f", {"w": ("worker",)}, {"worker": sgx_only}, ())
    text = path.read_text()
    assert "mrtd" not in text
    with_tdx = path.parent / "tdx.toml"
    with_tdx.write_text(text.replace('allow_debug = false', f'allow_debug = false\nmrtd = "{td.evidence.mrtd.hex()}"'))
    loaded = load_plan(with_tdx)
    assert loaded.roles["worker"].mrtd == {td.evidence.mrtd} and loaded.digest != load_plan(path).digest
    assert loaded.roles["worker"].to_dict()["mrtd"] == [td.evidence.mrtd.hex()]
    with_tdx.write_text(text.replace('allow_debug = false', f'allow_debug = false\nmrtd = "{"ab" * 32}"'))
    with pytest.raises(PlanError, match=r"roles.worker.mrtd: expected 96 hex digits, a non-empty list of them"):
        load_plan(with_tdx)

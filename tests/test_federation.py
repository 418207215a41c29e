"""Who is who in a federation (issue 18), end to end over RA-TLS: a PS under a plan admits a participant only with
its signed proof over its own connection, binds the worker id to that connection, and refuses, each with its own
reason, audited and without changing a parameter: a push as another participant, a second live join, a replayed
proof, a proof over another certificate, a participant not in the plan, another plan, a role not granted. Every
process here is one RatlsTransport (its own key and certificate) in this test process."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import grpc
import numpy as np
import pytest
from runtime_tools import (
    Children,
    batch_rows,
    gradients,
    push_request,
    state_fingerprint,
    wait_for_file,
    wait_until,
)
from test_hfl_faults import ps_version_in_log

import ratls
from runtime.chief import Chief
from runtime.chief import start_server as start_chief
from runtime.client.chief import ChiefClient
from runtime.client.ps import Federation, PSConnection
from runtime.client.remote import RemoteError
from runtime.data import shard_sources, synthetic_partitions
from runtime.federation import AuditLog, ParticipantKey, RolePolicy, load_plan, read_audit, write_local_plan
from runtime.federation.admission import sign_join
from runtime.measure import BASE_DIR, runtime_files
from runtime.model import DLRMConfig
from runtime.proto import chief_pb2, ps_pb2
from runtime.protocol import PROTOCOL_VERSION
from runtime.server.service import start_server
from runtime.server.state import ParameterServer, PSOptions
from runtime.transport import RatlsTransport
from runtime.wire.codec import Payload
from runtime.wire.messages import decode_push_reply

PARTICIPANTS = {"alice": ("worker",), "bob": ("worker",), "carol": ("chief",)}


@pytest.fixture(scope="module")
def sim_ca(tmp_path_factory):
    return ratls.SimCA.init(tmp_path_factory.mktemp("federation-ca")).path


def transport(sim_ca) -> RatlsTransport:
    """One process's RA-TLS identity (a fresh key and certificate over the measured runtime)."""
    return RatlsTransport(provider="sim", sim_ca=sim_ca, mrenclave=None)


@pytest.fixture(scope="module")
def nets(sim_ca):
    return {name: transport(sim_ca) for name in ("ps", "alice", "bob", "alice-again", "mallory")}


@pytest.fixture(scope="module")
def plan_files(nets, tmp_path_factory):
    policy = RolePolicy(mrenclave=frozenset({nets["ps"].identity.mrenclave}), mrsigner=None)
    path, keys = write_local_plan(tmp_path_factory.mktemp("plan"), "test-federation", PARTICIPANTS,
                                  {"worker": policy, "chief": policy}, ())
    other_path, _ = write_local_plan(tmp_path_factory.mktemp("other-plan"), "test-federation", PARTICIPANTS,
                                     {"worker": policy, "chief": policy}, ())
    return load_plan(path), {name: ParticipantKey.load(p) for name, p in keys.items()}, load_plan(other_path)


@contextlib.contextmanager
def federated_ps(nets, plan, tmp_path):
    audit = tmp_path / "audit.jsonl"
    ps = ParameterServer(PSOptions(config=DLRMConfig.small(), total_steps=5, workers=2, log_every=0, plan=plan,
                                   audit_log=audit))
    running = start_server(ps, nets["ps"], "127.0.0.1", 0)
    connections: list[PSConnection] = []

    def connect(net_name: str, federation: Federation | None = None) -> PSConnection:
        connection = PSConnection(running.endpoint, nets[net_name], federation=federation)
        connection.connect()
        connections.append(connection)
        return connection

    try:
        yield ps, connect, audit
    finally:
        for connection in connections:
            connection.close()
        running.server.stop(0).wait(5)
        ps.audit.close()


def refusal(audit, reason: str) -> dict:
    records = [r for r in read_audit(audit) if r["event"] == "refusal" and r["reason"] == reason]
    assert records, f"no audited refusal {reason}: {read_audit(audit)}"
    return records[-1]


def refused(call, reason: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> RemoteError:
    with pytest.raises(RemoteError) as error:
        call()
    assert (error.value.reason, error.value.code) == (reason, code), error.value
    return error.value


def challenge(connection: PSConnection) -> bytes:
    return connection.unary("Challenge", ps_pb2.ChallengeRequest(protocol_version=PROTOCOL_VERSION),
                            ps_pb2.ChallengeReply).challenge


def signed_join(plan, key: ParticipantKey, name: str, role: str, fingerprint: bytes,
                nonce: bytes) -> ps_pb2.JoinRequest:
    proof = sign_join(plan, key, name, role, fingerprint, nonce)
    return ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id=name, role=role,
                              plan_digest=proof.plan_digest, challenge=proof.challenge, signature=proof.signature)


def test_every_impersonation_is_refused_with_its_reason_audited_and_changes_nothing(nets, plan_files, tmp_path):
    plan, keys, other_plan = plan_files
    with federated_ps(nets, plan, tmp_path) as (ps, connect, audit):
        alice = connect("alice", Federation(plan, keys["alice"]))
        bob = connect("bob", Federation(plan, keys["bob"]))
        alice.join("alice")
        bob.join("bob")
        assert ps.started and ps.bindings["alice"] == nets["alice"].own_fingerprint()
        before = state_fingerprint(ps)

        # 1. bob pushes as alice over his own attested connection.
        rows = batch_rows(ps.config, 1)
        dense, values = gradients(ps, rows, 2)
        push = push_request("alice", 0, dense, rows, values)
        refused(lambda: bob.bulk("Push", Payload(push), decode_push_reply, timeout=20), "not_bound")
        record = refusal(audit, "not_bound")
        assert (record["participant"], record["certificate"]) == ("alice", nets["bob"].own_fingerprint().hex())
        assert record["mrenclave"] == nets["bob"].identity.mrenclave.hex() and record["tcb_status"] == "Unknown"

        # 2. A second process with alice's key joins as alice while alice is live.
        again = connect("alice-again", Federation(plan, keys["alice"]))
        refused(lambda: again.join("alice"), "participant_live", grpc.StatusCode.FAILED_PRECONDITION)
        assert refusal(audit, "participant_live")["certificate"] == nets["alice-again"].own_fingerprint().hex()

        # 3. A join replayed from a recorded proof: on its own connection, then on another.
        recorded = signed_join(plan, keys["bob"], "bob", "worker", nets["bob"].own_fingerprint(), challenge(bob))
        bob.unary("Join", recorded, ps_pb2.JoinReply)  # the original: accepted (bob joins again, same binding)
        refused(lambda: bob.unary("Join", recorded, ps_pb2.JoinReply), "bad_challenge")
        mallory = connect("mallory")
        refused(lambda: mallory.unary("Join", recorded, ps_pb2.JoinReply), "bad_challenge")

        # 4. A proof over another certificate: a fresh challenge of this connection, signed over alice's certificate.
        nonce = challenge(again)
        forged = signed_join(plan, keys["bob"], "bob", "worker", nets["alice"].own_fingerprint(), nonce)
        refused(lambda: again.unary("Join", forged, ps_pb2.JoinReply), "bad_proof")

        # 5. A participant not in the plan, with a key of its own.
        outsider = ParticipantKey.generate()
        refused(lambda: mallory.unary("Join", signed_join(plan, outsider, "mallory", "worker",
                                                          nets["mallory"].own_fingerprint(), challenge(mallory)),
                                      ps_pb2.JoinReply), "not_in_plan")

        # 6. A worker running another plan (same names, other keys).
        _, other_keys, _ = plan_files
        refused(lambda: PSConnection.join(_connected(connect, "mallory", other_plan, other_keys["bob"]), "bob"),
                "plan_mismatch")

        # 7. A worker-only participant asks for the chief role.
        refused(lambda: PSConnection.join(_connected(connect, "alice-again", plan, keys["alice"], "chief"), "alice"),
                "role_not_allowed")

        assert state_fingerprint(ps) == before  # nothing changed: parameters, version, members, pushes
        assert ps.bindings["alice"] == nets["alice"].own_fingerprint()
        assert ps.bindings["bob"] == nets["bob"].own_fingerprint()
        events = [(r["event"], r.get("reason")) for r in read_audit(audit)]
        assert events.count(("join", None)) == 3 and ("rejoin", None) not in events
        for reason in ("not_bound", "participant_live", "bad_challenge", "bad_proof", "not_in_plan", "plan_mismatch",
                       "role_not_allowed"):
            assert ("refusal", reason) in events
        assert all(r["plan_digest"] == plan.digest_hex for r in read_audit(audit) if r["event"] != "timeout")
        # The refused push is charged to the caller who made it, not to the participant it claimed to be.
        accounts = {p["name"]: p for p in ps.report()["participants"]}
        assert accounts["bob"]["refused_calls"] >= 2 and accounts["alice"]["pushes_refused"] == 0


def _connected(connect, net_name: str, plan, key: ParticipantKey, role: str = "worker") -> PSConnection:
    return connect(net_name, Federation(plan, key, role))


def test_rejoin_after_the_old_binding_is_gone_takes_the_id_over(nets, plan_files, tmp_path):
    """A restarted worker (a new process: a new certificate) gets its id back with a fresh proof once the old
    process left or timed out; the binding moves to the new certificate and the old one can no longer act."""
    plan, keys, _ = plan_files
    with federated_ps(nets, plan, tmp_path) as (ps, connect, audit):
        first = connect("alice", Federation(plan, keys["alice"]))
        first.join("alice")
        with ps.cond:  # what tick() does to a silent worker, without waiting for the timeout
            ps.members["alice"] -= ps.options.worker_timeout + 1
        ps.tick()
        assert "alice" not in ps.members
        second = connect("alice-again", Federation(plan, keys["alice"]))
        second.join("alice")
        assert ps.bindings["alice"] == nets["alice-again"].own_fingerprint()
        refused(lambda: first.heartbeat("alice"), "not_bound")
        assert second.heartbeat("alice")[0] == 0
        events = [r["event"] for r in read_audit(audit)]
        assert events[:3] == ["join", "timeout", "rejoin"]
        assert {p["name"]: p["rejoins"] for p in ps.report()["participants"]}["alice"] == 1


def test_without_a_plan_ids_are_still_bound_to_their_connection(nets, tmp_path):
    ps = ParameterServer(PSOptions(config=DLRMConfig.small(), total_steps=5, workers=2, log_every=0))
    running = start_server(ps, nets["ps"], "127.0.0.1", 0)
    connections = [PSConnection(running.endpoint, nets[name]) for name in ("alice", "bob")]
    try:
        for connection in connections:
            connection.connect()
        connections[0].join("alice")
        refused(lambda: connections[1].join("alice"), "participant_live", grpc.StatusCode.FAILED_PRECONDITION)
        refused(lambda: connections[1].heartbeat("alice"), "not_bound")
        assert connections[0].heartbeat("alice") == (0, False)
    finally:
        for connection in connections:
            connection.close()
        running.server.stop(0).wait(5)


def test_participant_figures_add_up_to_the_totals(nets, plan_files, tmp_path):
    plan, keys, _ = plan_files
    with federated_ps(nets, plan, tmp_path) as (ps, connect, _audit):
        workers = {name: connect(name, Federation(plan, keys[name])) for name in ("alice", "bob")}
        for name, connection in workers.items():
            connection.join(name)
        for step in range(3):
            for i, (name, connection) in enumerate(workers.items()):
                rows = batch_rows(ps.config, 10 * step + i)
                dense, values = gradients(ps, rows, step)
                batch = 8 + i
                connection.bulk("Push", Payload(push_request(name, step, dense, rows, values, batch_size=batch)),
                                decode_push_reply, timeout=20)
        report = ps.report()
    by_name = {p["name"]: p for p in report["participants"]}
    assert set(by_name) == set(PARTICIPANTS)
    assert (by_name["alice"]["samples"], by_name["bob"]["samples"]) == (3 * 8, 3 * 9)
    assert sum(p["samples"] for p in by_name.values()) == report["stats"]["samples"] == 51
    assert sum(p["pushes_accepted"] for p in by_name.values()) == report["stats"]["pushes"] == 6
    for key in ("bytes_received", "bytes_sent"):
        assert sum(p[key] for p in by_name.values()) + report["unattributed"][key] == report["stats"][key]
    assert report["plan_digest"] == plan.digest_hex
    assert np.isfinite(ps.params.dense_flat).all()


def test_worker_killed_and_restarted_rejoins_under_the_plan_and_training_continues(sim_ca, tmp_path):
    """kill -9 of a worker, then the same participant started again (a new process, so a new certificate, and the
    same key): its join is refused while the PS still counts the dead process as live, then accepted as a rejoin
    once the PS dropped it, and it trains to the end."""
    mrenclave = ratls.measure(runtime_files(), root=BASE_DIR)
    policy = RolePolicy(mrenclave=frozenset({mrenclave}), mrsigner=None)
    plan, keys = write_local_plan(tmp_path / "plan", "restart", {"worker0": ("worker",), "worker1": ("worker",)},
                                  {"worker": policy}, ())
    security = ["--security", "ratls", "--provider", "sim", "--sim-ca", str(sim_ca), "--mrenclave", mrenclave.hex()]
    train, held_out = synthetic_partitions(tmp_path / "data", 2, 20000, 256, 1, DLRMConfig.small())
    steps = 1500
    audit = tmp_path / "audit.jsonl"

    def worker(name: str, i: int) -> list[str]:
        return ["runtime.worker", "--ps", ready["address"], "--worker-id", name, "--data", str(train[i]),
                "--eval-data", str(held_out[i]), "--batch-size", "32", "--report-file", str(tmp_path / f"{name}.json"),
                "--plan", str(plan), "--participant-key", str(keys[name]), *security]

    with Children(tmp_path) as children:
        ps = children.start("ps", "runtime.ps", "--steps", str(steps), "--workers", "2", "--min-workers", "1",
                            "--worker-timeout", "3", "--model", "small", "--log-every", "0.5", "--plan", str(plan),
                            "--audit-log", str(audit), "--report-file", str(tmp_path / "ps.json"),
                            "--ready-file", str(tmp_path / "ready.json"), *security)
        ready = wait_for_file(tmp_path / "ready.json", 60, ps)
        for i, name in enumerate(("worker0", "worker1")):
            children.start(name, *worker(name, i))
        wait_until(lambda: ps_version_in_log(children.logs["ps"]) >= 5 or ps.poll() is not None, 120,
                   "training under way")
        os.kill(children.processes["worker1"].pid, signal.SIGKILL)
        children.processes["worker1"].wait(10)
        children.start("worker1-again", *worker("worker1", 1))
        assert children.wait("worker1-again", 300) == 0, children.log("worker1-again")[-4000:]
        assert children.wait("worker0", 300) == 0, children.log("worker0")[-4000:]
        assert children.wait("ps", 60) == 0, children.log("ps")[-4000:]
        restarted_log = children.log("worker1-again")

    report = json.loads((tmp_path / "ps.json").read_text())
    assert report["version"] == steps
    accounts = {p["name"]: p for p in report["participants"]}
    assert accounts["worker1"]["rejoins"] == 1 and accounts["worker1"]["joins"] == 1
    events = [(r["event"], r["participant"], r.get("reason")) for r in read_audit(audit)]
    assert ("rejoin", "worker1", None) in events
    rejoined = events.index(("rejoin", "worker1", None))
    assert ("timeout", "worker1", None) in events[:rejoined]
    restarted = json.loads((tmp_path / "worker1.json").read_text())
    assert restarted["steps"] > 0 and restarted["eval"]["version"] == steps
    if ("refusal", "worker1", "participant_live") in events:  # it came back before the PS dropped the old one
        assert "waiting for it to time out" in restarted_log


def test_sdt_chief_serves_a_worker_only_over_the_connection_its_participant_proved(nets, plan_files, tmp_path):
    plan, keys, other_plan = plan_files
    train, _ = synthetic_partitions(tmp_path / "data", 2, 64, 16, 1, DLRMConfig.small())
    audit = tmp_path / "chief-audit.jsonl"
    chief = Chief(chief_pb2.JobSpec(ps_addresses="127.0.0.1:1", batch_size=8), shard_sources(None, train, 2, "tsv"),
                  ["alice", "bob"], nets["ps"], plan=plan, audit=AuditLog(audit))
    server, endpoint = start_chief(chief, "127.0.0.1", 0)
    clients = []

    def client(net_name: str, name: str, key: ParticipantKey | None, the_plan=plan) -> ChiefClient:
        made = ChiefClient(endpoint, nets[net_name], name, Federation(the_plan, key) if key else None)
        clients.append(made)
        return made

    try:
        assert client("alice", "alice", keys["alice"]).join_and_spec().batch_size == 8
        refused(lambda: client("bob", "alice", None).join_and_spec(), "plan_mismatch")
        spec_request = chief_pb2.JobSpecRequest(protocol_version=PROTOCOL_VERSION, worker_id="alice")
        bob = client("bob", "bob", keys["bob"])
        bob.join_and_spec()
        refused(lambda: bob._call(bob.stub.GetJobSpec, spec_request), "not_bound")
        refused(lambda: client("mallory", "alice", keys["bob"]).join_and_spec(), "bad_proof")
        refused(lambda: client("mallory", "bob", keys["bob"], other_plan).join_and_spec(), "plan_mismatch")
        events = [(r["event"], r["participant"], r.get("reason")) for r in read_audit(audit)]
        assert events.count(("join", "alice", None)) == 1 and ("refusal", "alice", "not_bound") in events
        assert ("refusal", "alice", "bad_proof") in events
        assert chief.bindings == {"alice": nets["alice"].own_fingerprint(), "bob": nets["bob"].own_fingerprint()}
    finally:
        for made in clients:
            made.close()
        server.stop(0).wait(5)
        chief.audit.close()


def test_each_ps_shard_checks_joins_on_its_own(nets, plan_files, tmp_path):
    """A challenge belongs to the shard that issued it: a proof made for shard 0 is refused by shard 1, and each
    shard binds and audits its own joins."""
    plan, keys, _ = plan_files
    with federated_ps(nets, plan, tmp_path / "shard0") as (ps0, connect0, audit0), \
            federated_ps(nets, plan, tmp_path / "shard1") as (ps1, connect1, audit1):
        alice0, alice1 = connect0("alice"), connect1("alice")
        proof = signed_join(plan, keys["alice"], "alice", "worker", nets["alice"].own_fingerprint(), challenge(alice0))
        refused(lambda: alice1.unary("Join", proof, ps_pb2.JoinReply), "bad_challenge")
        alice0.unary("Join", proof, ps_pb2.JoinReply)
        assert "alice" in ps0.bindings and "alice" not in ps1.bindings
        assert [r["event"] for r in read_audit(audit0)] == ["join"]
        assert [(r["event"], r["reason"]) for r in read_audit(audit1)] == [("refusal", "bad_challenge")]

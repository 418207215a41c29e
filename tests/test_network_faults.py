"""Network faults, each a real multi-process job with every role on an emulated host of its own (runtime.netemu: a
network namespace per role on a bridge; tests/netns.py), under RA-TLS and the launcher's federation plan:

- a worker's link drops every packet for 20 s, then heals: training goes on under --min-workers, the worker
  re-attests, rejoins and finishes, and the PS's counters show every update applied once;
- the PS's link flaps: the workers back off, retry, re-attest and finish, every update applied once;
- a link with 2% loss and 50 ms delay: a synchronous job ends bit-identical to the unshaped run;
- a PS bound to every interface advertises the address other hosts reach it at, and a worker on another host
  attests and trains there.

Skipped, with the reason, exactly when this machine cannot create network namespaces (tests/netns.py).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from netns import Network, emulated_hosts, require_namespaces
from runtime_tools import REPO, Children, wait_for_file, wait_until

from runtime import transport
from runtime.data import synthetic_partitions
from runtime.model import DLRMConfig
from runtime.server import checkpoints

HOSTS = ["ps0", "worker0", "worker1"]
SMALL_JOB = ["--workers", "2", "--model", "small", "--batch-size", "32", "--eval-rows", "512", "--threads", "1"]
# Until the fault is over every link runs at 20 Mbit/s, so that the job (a few hundred rounds of ~290 kB per worker
# each way) cannot be over before the fault is (at most ~12 rounds/s); then at full speed, to keep the tests short.
PACING_MBIT = 20
FAULT_PACING_MBIT = 4  # at most ~3 rounds/s: a few hundred rounds outlast a 20 s fault and the recovery after it


def joins(out: Path, participant: str) -> int:
    """The joins of a participant in the PS's audit log so far."""
    path = out / "audit" / "ps0.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line.endswith("}") and json.loads(line)["event"] == "join"
               and json.loads(line)["participant"] == participant)


def ps_log(out: Path) -> str:
    path = out / "logs" / "ps0.log"
    return path.read_text(errors="replace") if path.exists() else ""


def start_job(children: Children, net: Network, out: Path, steps: int, *args: str) -> subprocess.Popen:
    """The launcher with its processes on the network's hosts; returns once a round has been applied."""
    for host in HOSTS:
        net.shape(host, rate_mbit=PACING_MBIT)
    launcher = children.start("launch", "runtime.launch", "--network", str(net.save(out.parent / "network.json")),
                              "--out", str(out), *SMALL_JOB, "--steps", str(steps), *args)
    wait_until(lambda: re.search(r"ps\[0\] step \d+/", ps_log(out)) is not None or launcher.poll() is not None, 120,
               "the first applied rounds")
    assert launcher.poll() is None, children.log("launch")[-3000:]
    return launcher


def finish_job(children: Children, net: Network, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Back to full speed, the launcher's exit, and the run's report and PS audit log."""
    for host in HOSTS:
        net.shape(host)
    assert children.wait("launch", 120) == 0, children.log("launch")[-4000:]
    audit = [json.loads(line) for line in (out / "audit" / "ps0.jsonl").read_text().splitlines()]
    return json.loads((out / "report.json").read_text()), audit


def assert_every_update_applied_once(report: dict[str, Any], steps: int) -> None:
    """The PS applied `steps` rounds, and the pushes it accepted are exactly the ones the workers counted as in:
    none a worker counted is missing (lost), none was accepted twice (a batch recomputed after its first push went
    in); every push the PS found a duplicate is a resend its worker counted as one."""
    ps, workers = report["ps"][0], report["workers"]
    stats = ps["stats"]
    assert ps["version"] == stats["rounds"] == report["steps"] == steps
    assert {w["worker_id"] for w in workers} == {"worker0", "worker1"} and not report["lost_workers"]
    assert all(w["eval"]["version"] == steps for w in workers)
    assert sum(w["rounds"] for w in workers) == stats["pushes"] == sum(p["pushes_accepted"]
                                                                      for p in report["participants"])
    assert sum(w["examples"] for w in workers) == stats["samples"]
    assert stats.get("duplicate_pushes", 0) == sum(w["duplicates"] for w in workers)
    assert report["plan_digest"] and stats.get("leaves") == 2


def attestations(worker: dict[str, Any]) -> int:
    t = worker["transport"]
    return len(t["client_attestation_seconds"]) + t["channel_repins"]


def test_a_worker_cut_off_for_20_s_rejoins_and_every_update_is_applied_once(tmp_path):
    out, steps = tmp_path / "run", 400
    with emulated_hosts(HOSTS) as net, Children(tmp_path) as children:
        start_job(children, net, out, steps, "--min-workers", "1", "--round-timeout", "1", "--worker-timeout", "4")
        # Slower still while worker1 is away, and until it is back (its keepalive notices the dead link within
        # 15 s, then it re-attests): worker0 alone must not finish the job first (seen under CI load).
        for host in HOSTS:
            net.shape(host, rate_mbit=FAULT_PACING_MBIT)
        net.cut("worker1")
        time.sleep(20)
        net.heal("worker1")
        wait_until(lambda: joins(out, "worker1") >= 2, 120, "worker1 joined again")
        report, audit = finish_job(children, net, out)
        worker1_log = (out / "logs" / "worker1.log").read_text(errors="replace")

    assert_every_update_applied_once(report, steps)
    # The PS dropped worker1 as silent and applied rounds without it until it joined again, with a fresh proof.
    events = [(e["event"], e["version"]) for e in audit if e["participant"] == "worker1"]
    kinds = [event for event, _ in events]
    # (Its heartbeat thread and its training loop may both join on the way back: a join of a member is audited too.)
    assert kinds[:3] == ["join", "timeout", "join"] and set(kinds[3:-1]) <= {"join"} and kinds[-1] == "leave", events
    dropped_at, back_at = events[1][1], events[2][1]
    stats = report["ps"][0]["stats"]
    assert back_at > dropped_at and stats["short_rounds"] >= back_at - dropped_at
    assert stats["workers_timed_out"] == 1
    # It lost the PS, re-attested and rejoined, and trained on: it pushed more than it could have before the drop.
    worker1 = next(w for w in report["workers"] if w["worker_id"] == "worker1")
    assert worker1["reconnects"] + worker1["rejoins"] >= 1 and attestations(worker1) >= 2, worker1
    assert "worker1: lost the PS" in worker1_log and "worker1: reconnected" in worker1_log
    accounts = {p["name"]: p for p in report["participants"]}
    assert accounts["worker1"]["pushes_accepted"] > dropped_at + 1
    assert accounts["worker1"]["joins"] == 2 and accounts["worker0"]["joins"] == 1


def test_the_ps_link_flaps_and_the_workers_back_off_retry_and_finish(tmp_path):
    out, steps = tmp_path / "run", 150
    # Down 4 s, up 4 s, twice, then down 18 s: the short outages are ridden out by TCP's own retransmissions, the
    # long one outlasts the channels' keepalive (at most 15 s) and the PS's --worker-timeout (10 s).
    outages = [(4, 4), (4, 4), (18, 0)]
    with emulated_hosts(HOSTS) as net, Children(tmp_path) as children:
        start_job(children, net, out, steps)
        for down, up in outages:
            net.cut("ps0")
            time.sleep(down)
            net.heal("ps0")
            time.sleep(up)
        report, audit = finish_job(children, net, out)
        logs = {w: (out / "logs" / f"{w}.log").read_text(errors="replace") for w in ("worker0", "worker1")}

    assert_every_update_applied_once(report, steps)
    stats = report["ps"][0]["stats"]
    assert stats.get("short_rounds", 0) == 0 and stats["pushes"] == 2 * steps  # synchronous: every round had both
    assert stats["workers_timed_out"] >= 2
    for worker in report["workers"]:
        name = worker["worker_id"]
        assert worker["reconnects"] + worker["rejoins"] >= 1 and attestations(worker) >= 2, worker
        assert f"{name}: lost the PS" in logs[name] or worker["rejoins"], logs[name][-3000:]
        # Dropped as silent during the long outage, joined again with a fresh proof.
        assert [e["event"] for e in audit if e["participant"] == name][:3] == ["join", "timeout", "join"]


def test_2_percent_loss_and_50_ms_delay_give_the_unshaped_runs_parameters_bit_for_bit(tmp_path):
    steps = 20
    runs = {"unshaped": [], "shaped": ["--link", "ps0=delay=50,loss=2"]}
    require_namespaces()  # the launcher makes the networks (--emulate-hosts)
    with Children(tmp_path) as children:
        for name, link in runs.items():  # concurrently: a synchronous job's result does not depend on timing
            children.start(name, "runtime.launch", "--emulate-hosts", *link, "--out", str(tmp_path / name),
                           *SMALL_JOB, "--steps", str(steps))
        for name in runs:
            assert children.wait(name, 180) == 0, children.log(name)[-4000:]
    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in runs}
    shaped = reports["shaped"]
    assert shaped["links"]["ps0"] == {"rate_mbit": None, "delay_ms": 50.0, "loss_pct": 2.0}
    assert set(shaped["emulated_hosts"]) == set(HOSTS) and "127.0.0.1" not in shaped["emulated_hosts"].values()
    # The delay was there: every step is a push-and-pull round trip, at least 2 x 50 ms.
    assert shaped["steady"]["step_ms"]["push_ms"] + shaped["steady"]["step_ms"]["wait_ms"] >= 100, shaped["steady"]
    assert reports["unshaped"]["steady"]["step_ms"]["push_ms"] < 100
    final = {name: checkpoints.load(checkpoints.checkpoint_path(tmp_path / name / "checkpoints" / "ps0", steps))
             for name in runs}
    assert final["shaped"].arrays.keys() == final["unshaped"].arrays.keys()
    for name, value in final["shaped"].arrays.items():
        assert np.array_equal(value, final["unshaped"].arrays[name]), f"{name} differs with loss and delay"


def test_a_ps_bound_to_every_interface_advertises_the_address_other_hosts_reach(tmp_path):
    import ratls
    from runtime.measure import BASE_DIR, runtime_files

    sim_ca = ratls.SimCA.init(tmp_path / "sim-ca")
    security = ["--security", "ratls", "--provider", "sim", "--sim-ca", str(sim_ca.path), "--mrenclave",
                ratls.measure(runtime_files(), root=BASE_DIR).hex()]
    train, held_out = synthetic_partitions(tmp_path / "data", 1, 320, 64, 1, DLRMConfig.small())
    with emulated_hosts(["ps0", "worker0"]) as net, Children(tmp_path) as children:
        ps = children.start("ps", "runtime.ps", "--listen", "0.0.0.0:0", "--advertise", net.address("ps0"),
                            "--steps", "5", "--workers", "1", "--model", "small", "--ready-file",
                            str(tmp_path / "ready.json"), *security, prefix=net.command("ps0", []))
        ready = wait_for_file(tmp_path / "ready.json", 60, ps)
        assert ready["host"] == net.address("ps0")
        assert ready["address"] == f"{net.address('ps0')}:{ready['port']}/{ready['attestation_port']}"
        children.start("worker", "runtime.worker", "--ps", ready["address"], "--worker-id", "worker0", "--data",
                       str(train[0]), "--eval-data", str(held_out[0]), "--batch-size", "32", "--report-file",
                       str(tmp_path / "worker.json"), *security, prefix=net.command("worker0", []))
        assert children.wait("worker", 120) == 0, children.log("worker")[-3000:]
        assert children.wait("ps", 60) == 0, children.log("ps")[-3000:]
        assert f"serving ratls on {ready['address']}" in children.log("ps")
        assert "bound 0.0.0.0" in children.log("ps")
    worker = json.loads((tmp_path / "worker.json").read_text())
    assert worker["eval"]["version"] == 5 and len(worker["transport"]["client_attestation_seconds"]) == 1


def test_advertised_addresses():
    """Without --advertise a server advertises the host it bound, or for a wildcard bind this machine's host name
    (never 0.0.0.0, which names no host); --advertise refuses a wildcard."""
    bound = transport.Endpoint("0.0.0.0", 7000, 7001)
    assert transport.advertised(bound, None) == transport.Endpoint(socket.gethostname(), 7000, 7001)
    assert transport.advertised(bound, "ps0.example") == transport.Endpoint("ps0.example", 7000, 7001)
    assert str(transport.advertised(transport.Endpoint("::", 7000, 9), "fd00::5")) == "[fd00::5]:7000/9"
    assert transport.advertised(transport.Endpoint("10.1.2.3", 7000, 9), None).host == "10.1.2.3"
    for wildcard in ("0.0.0.0", "[::]", "::"):
        done = subprocess.run([sys.executable, "-m", "runtime.ps", "--steps", "1", "--workers", "1", "--advertise",
                               wildcard], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 2 and "a wildcard names no host" in done.stderr, done.stderr


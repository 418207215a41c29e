"""Failures during HFL training: (c) a worker killed with a quorum of one, (d) the PS killed and restarted, and a push
whose reply was lost. Faults of the network itself, on emulated hosts, are in test_network_faults.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from runtime_tools import Children, in_process_worker, ps_with_clients, wait_for_file, wait_until

from runtime.client.ps import ShardedPS
from runtime.client.remote import RemoteError
from runtime.data import CriteoReader, synthetic_partitions
from runtime.model import DLRM, DLRMConfig
from runtime.server.checkpoints import list_versions
from runtime.server.state import ParameterServer, PSOptions
from runtime.worker import Round, Worker


def ps_version_in_log(log: Path) -> int:
    steps = re.findall(r"ps\[0\] step (\d+)/", log.read_text(errors="replace")) if log.exists() else []
    return int(steps[-1]) if steps else -1


def test_worker_killed_mid_run_with_min_workers_1(tmp_path):
    out = tmp_path / "run"
    # Long enough that the kill lands mid-run: the PS's first progress line comes after 2 s, and 300 steps of
    # this model could be over by then on a fast machine.
    steps = 3000
    with Children(tmp_path) as children:
        launcher = children.start("launch", "runtime.launch", "--out", str(out), "--workers", "2", "--min-workers",
                                  "1", "--worker-timeout", "3", "--model", "small", "--steps", str(steps),
                                  "--batch-size", "32", "--eval-rows", "512")
        pids = wait_for_file(out / "processes.json", 60, launcher)
        wait_until(lambda: ps_version_in_log(out / "logs" / "ps0.log") >= 5 or launcher.poll() is not None, 120,
                   "training under way")
        assert launcher.poll() is None, children.log("launch")[-3000:]
        os.kill(pids["worker1"], signal.SIGKILL)
        assert children.wait("launch", 240) == 0, children.log("launch")[-4000:]
        console = children.log("launch")
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == steps
    assert 0 < report["short_rounds"] < steps
    assert f"{report['short_rounds']} short rounds" in console
    assert "worker1 exited with code -9; continuing" in console
    assert report["ps"][0]["stats"]["workers_timed_out"] == 1
    assert [w["worker_id"] for w in report["workers"]] == ["worker0"]
    assert report["held_out"]["examples"] == 512


def test_ps_killed_and_restarted_resumes_and_workers_reattest(tmp_path):
    import ratls
    from runtime.measure import BASE_DIR, runtime_files

    sim_ca = tmp_path / "sim-ca"
    ratls.SimCA.init(sim_ca)
    security = ["--security", "ratls", "--provider", "sim", "--sim-ca", str(sim_ca), "--mrenclave",
                ratls.measure(runtime_files(), root=BASE_DIR).hex()]
    train, held_out = synthetic_partitions(tmp_path / "data", 2, 4000, 256, 1, DLRMConfig.small())
    checkpoints = tmp_path / "checkpoints"
    steps = 200
    ps_args = ["runtime.ps", "--steps", str(steps), "--workers", "2", "--model", "small", "--checkpoint-dir",
               str(checkpoints), "--checkpoint-every", "10", "--log-every", "0.5", *security]
    with Children(tmp_path) as children:
        first = children.start("ps-first", *ps_args, "--listen", "127.0.0.1:0",
                               "--ready-file", str(tmp_path / "ready1.json"))
        ready = wait_for_file(tmp_path / "ready1.json", 60, first)
        for i in range(2):
            children.start(f"worker{i}", "runtime.worker", "--ps", ready["address"], "--worker-id", f"worker{i}",
                           "--data", str(train[i]), "--eval-data", str(held_out[i]), "--batch-size", "32",
                           "--report-file", str(tmp_path / f"worker{i}.json"), *security)
        wait_until(lambda: max(list_versions(checkpoints), default=0) >= 20 or first.poll() is not None,
                   180, "a checkpoint at version 20")
        assert first.poll() is None, children.log("ps-first")[-3000:]
        first.kill()  # SIGKILL: no chance to write anything more
        first.wait(10)
        killed_at = ps_version_in_log(children.logs["ps-first"])
        saved = max(list_versions(checkpoints))
        assert 20 <= saved < steps

        children.start("ps-second", *ps_args, "--listen", f"127.0.0.1:{ready['port']}",
                                "--attestation-port", str(ready["attestation_port"]),
                                "--report-file", str(tmp_path / "ps.json"))
        for i in range(2):
            assert children.wait(f"worker{i}", 240) == 0, children.log(f"worker{i}")[-4000:]
        assert children.wait("ps-second", 60) == 0, children.log("ps-second")[-4000:]

    ps_report = json.loads((tmp_path / "ps.json").read_text())
    assert ps_report["resumed_from_version"] >= saved >= 20 and ps_report["version"] == steps
    assert f"resumed from {checkpoints}" in children.log("ps-second")
    assert killed_at < steps
    for i in range(2):
        worker = json.loads((tmp_path / f"worker{i}.json").read_text())
        attestations = len(worker["transport"]["client_attestation_seconds"]) + worker["transport"]["channel_repins"]
        assert attestations >= 2, worker["transport"]  # attested the first PS and again the restarted one
        assert worker["reconnects"] + worker["rejoins"] >= 1
        assert worker["eval"]["version"] == steps and worker["eval"]["auc"] is not None


@contextlib.contextmanager
def one_worker_in_process(tmp_path: Path) -> Iterator[tuple[ParameterServer, ShardedPS, Worker, Callable]]:
    """An in-process synchronous PS of one worker, that worker's client and Worker (joined), and step(): one
    Worker._step of a batch of its data."""
    config = DLRMConfig.small()
    with ps_with_clients(PSOptions(config=config, total_steps=10, workers=1, log_every=0)) as (ps, (client,)):
        worker = in_process_worker(client)
        worker.connect()
        train, _ = synthetic_partitions(tmp_path / "data", 1, 64, 16, 1, config)
        batch = next(iter(CriteoReader(train[0], config, 16)))
        model = DLRM(config)
        yield ps, client, worker, lambda: worker._step(model, Round.of([(batch, batch.lookup())]), [0],
                                                       synchronous=True)


def losing_the_first_reply(client: ShardedPS) -> list:
    """Makes client's first push reach the PS and then fail as a dead link would, its reply lost; returns the list
    that receives that lost reply."""
    real_push = client.push
    lost: list = []

    def push_losing_the_first_reply(*push_args):
        reply = real_push(*push_args)
        if not lost:
            lost.append(reply)
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, "Socket closed (the reply was lost)")
        return reply

    client.push = push_losing_the_first_reply
    return lost


def test_a_push_whose_reply_was_lost_is_resent_not_recomputed(tmp_path):
    """A link that dies between the PS applying a push and its reply arriving: the worker reconnects and resends
    the same push (same step), which the PS recognises as a duplicate, instead of recomputing the batch on newer
    parameters and so applying it twice (tests/test_network_faults.py cuts real links; this is the case made
    certain)."""
    with one_worker_in_process(tmp_path) as (ps, client, worker, step):
        lost = losing_the_first_reply(client)
        assert step() is not None and lost and lost[0].versions == [1]  # the PS had applied it: round 0 closed
        assert ps.version == 1 and ps.stats["pushes"] == 1 and ps.stats["rounds"] == 1
        assert ps.stats["duplicate_pushes"] == 1 and worker.stats.duplicates == 1
        assert worker.stats.reconnects == 1 and worker.stats.stale == 0


@contextlib.contextmanager
def asynchronous_workers_in_process(tmp_path: Path, workers: int
                                    ) -> Iterator[tuple[ParameterServer, list[ShardedPS], list[Worker], Callable]]:
    """An in-process asynchronous PS (staleness 1) of `workers` workers, their clients and Workers (joined; the
    first pipelined, stopping after 3 steps), and batches(i): (batch, lookup) pairs of worker i's data."""
    config = DLRMConfig.small()
    options = PSOptions(config=config, total_steps=100, workers=workers, staleness=1, log_every=0)
    with ps_with_clients(options) as (ps, clients):
        pool = [in_process_worker(client, max_steps=3) for client in clients]
        pool[0].args.pipeline = True
        for worker in pool:
            worker.connect()
        train, _ = synthetic_partitions(tmp_path / "data", workers, 160, 16, 1, config)
        yield ps, clients, pool, lambda i: ((b, b.lookup()) for b in CriteoReader(train[i], config, 16))


def test_a_pipelined_batch_is_redone_only_once_no_push_is_in_flight(tmp_path):
    """The pipelined loop redoes a batch whose push came back stale while its next push is still in flight. Were the
    batch redone at once, it could pull the version that push was computed at and push that step a second time,
    which the PS refuses as a duplicate (CI saw it under load). It waits for the push in flight, so every step is
    pushed once."""
    with asynchronous_workers_in_process(tmp_path, 2) as (ps, clients, (pipelined, other), batches):
        model, other_model = DLRM(ps.config), DLRM(ps.config)
        other_batches = batches(1)
        real_pull, real_push = clients[0].pull, clients[0].push
        pulls, comm_pushes = [], []

        def pull(*pull_args, **kwargs):
            pulls.append(1)
            if len(pulls) == 2:
                # While the first push waits behind this pull, the other worker moves the PS two versions on, so
                # that push (of version 0) comes back stale and this pull brings version 2.
                for _ in range(2):
                    assert other._step(other_model, Round.of([next(other_batches)]), [0]) is not None
            return real_pull(*pull_args, **kwargs)

        def push(*push_args):
            if threading.current_thread().name.startswith("comm"):
                comm_pushes.append(push_args[0])
                if len(comm_pushes) == 2:
                    time.sleep(0.5)  # the second push is still in flight when the first one's batch is redone
            return real_push(*push_args)

        clients[0].pull, clients[0].push = pull, push
        pipelined.train(model, batches(0), [0], synchronous=False)
        assert comm_pushes[:2] == [[0], [2]]
        assert pipelined.stats.stale == 1 and pipelined.stats.steps == 3
        assert not ps.stats.get("duplicate_pushes") and pipelined.stats.duplicates == 0
        assert ps.stats["pushes"] == 2 + 3 and ps.accounts["worker0"]["pushes_accepted"] == 3


def test_a_pipelined_push_whose_reply_was_lost_is_resent_not_recomputed(tmp_path):
    """A pipelined push applied by the PS whose reply is lost: the worker resends that push (same
    step), which the PS recognises as a duplicate, instead of recomputing the batch and applying it twice."""
    with asynchronous_workers_in_process(tmp_path, 1) as (ps, clients, (pipelined,), batches):
        lost = losing_the_first_reply(clients[0])
        pipelined.train(DLRM(ps.config), batches(0), [0], synchronous=False)
        assert lost and lost[0].versions == [1]  # the PS had applied it
        assert pipelined.stats.steps == 3 and pipelined.stats.duplicates == 1
        assert ps.stats["duplicate_pushes"] == 1 and ps.stats["pushes"] == 3 and ps.version == 3


@pytest.mark.parametrize("reason", ["future_step", "not_started"])
def test_a_push_a_restarted_ps_cannot_take_is_recomputed_on_its_parameters(tmp_path, reason):
    """A PS restarted from an older checkpoint refuses a resent push of a step it has not reached (future_step), and
    one that waits for its workers refuses every push (not_started): the worker pulls again and recomputes."""
    with one_worker_in_process(tmp_path) as (ps, client, worker, step):
        real_push, real_pull = client.push, client.pull
        calls = []

        def push_refused_once(*push_args):
            calls.append("push")
            if calls.count("push") == 1:
                raise RemoteError(grpc.StatusCode.FAILED_PRECONDITION, f"{reason}: (as a restarted PS says)")
            return real_push(*push_args)

        def pull(*pull_args, **kwargs):
            calls.append("pull")
            return real_pull(*pull_args, **kwargs)

        client.push, client.pull = push_refused_once, pull
        assert step() is not None
        assert calls == ["pull", "push", "pull", "push"]
        assert ps.version == 1 and ps.stats["pushes"] == 1 and not ps.stats.get("duplicate_pushes")

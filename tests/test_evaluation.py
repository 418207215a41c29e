"""The held-out evaluation is of one parameter version, the final one, even when the evaluating worker stops
training while another goes on pushing (runtime.worker.Worker.evaluate)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from runtime_tools import in_process_worker, ps_with_clients

from runtime.data import CriteoReader, synthetic_partitions
from runtime.model import DLRM, DLRMConfig
from runtime.server.state import PSOptions

TOTAL = 40


class SlowDLRM(DLRM):
    """Training steps that take a while, so that one worker's training spans the other's evaluation."""

    def loss_and_grads_flat(self, *args, **kwargs):
        time.sleep(0.02)
        return super().loss_and_grads_flat(*args, **kwargs)


def test_a_worker_that_stops_early_evaluates_the_final_version_only(tmp_path: Path):
    config = DLRMConfig.small()
    train, held_out = synthetic_partitions(tmp_path / "data", 2, 256, 512, 1, config)
    with ps_with_clients(PSOptions(config=config, total_steps=TOTAL, workers=2, staleness=4, log_every=0)) as (
            ps, clients):
        early, late = in_process_worker(clients[0], max_steps=2), in_process_worker(clients[1])
        versions = [early.connect(), late.connect()]

        def batches(path: Path):
            return itertools.cycle([(b, b.lookup()) for b in CriteoReader(path, config, 16)])

        other = threading.Thread(target=late.train, args=(SlowDLRM(config), batches(train[1]), versions[1], False),
                                 daemon=True)
        other.start()
        model = DLRM(config)
        early.train(model, batches(train[0]), versions[0], False)
        assert early.stats.steps == 2 and ps.version < TOTAL  # the other worker is still training

        served = []
        real_pull = clients[0].pull

        def recording_pull(*args, **kwargs):
            pulled = real_pull(*args, **kwargs)
            if pulled.ready:
                served.append(list(pulled.versions))
            return pulled

        clients[0].pull = recording_pull
        eval_batches = list(CriteoReader(held_out[0], config, 32))  # 16 pulls of rows
        result, labels, _ = early.evaluate(model, eval_batches, wait_seconds=60)
        other.join(timeout=60)
        assert not other.is_alive()
    assert ps.version == TOTAL
    assert all(v == [TOTAL] for v in served), served  # no pull of the evaluation read another version
    assert len(served) == 1 + len(eval_batches)
    assert result["versions"] == [TOTAL] and result["version"] == TOTAL
    assert result["examples"] == len(labels) == 512 and result["auc"] is not None


def test_evaluation_that_cannot_see_the_end_of_training_says_so(tmp_path: Path):
    """Training that does not finish within the wait: nothing is evaluated, and the result gives the reason."""
    config = DLRMConfig.small()
    train, held_out = synthetic_partitions(tmp_path / "data", 1, 64, 64, 1, config)
    with ps_with_clients(PSOptions(config=config, total_steps=TOTAL, workers=1, staleness=4, log_every=0)) as (
            _, (client,)):
        worker = in_process_worker(client, max_steps=1)
        worker.connect()
        model = DLRM(config)
        worker.train(model, iter([(b, b.lookup()) for b in CriteoReader(train[0], config, 16)]), [0], False)
        result, labels, _ = worker.evaluate(model, list(CriteoReader(held_out[0], config, 32)), wait_seconds=0.3)
    assert result["examples"] == 0 and labels.size == 0
    assert "did not finish within 0.3 s" in result["skipped"] and f"final [{TOTAL}]" in result["skipped"]

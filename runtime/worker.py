"""A training worker: python -m runtime.worker --ps ADDRESSES --worker-id ID (--data FILES | --synthetic ROWS).

Joins every PS shard, then loops: read a batch of its own data, pull the dense weights and the embedding rows
the batch touches, compute the DLRM loss and gradients in TensorFlow, push them. Under FedAvg (the PS's
--local-steps K > 1, told at join) a round reads K batches, pulls the rows any of them touches once, takes K SGD
steps on its own copy and pushes the model delta. It stops when the PS says
training is done, evaluates the final parameters on its held-out data (loss, accuracy, AUC) and leaves.
If a PS goes away the worker reconnects (re-attesting under ratls) and joins again, for up to
--reconnect-timeout seconds; a step whose round closed without it is recomputed on the same batch.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from runtime import metrics, transport
from runtime.client.chief import ChiefClient
from runtime.client.ps import Pulled, ShardedPS
from runtime.client.remote import CONNECTION_CODES, RemoteError
from runtime.data import (
    CriteoReader,
    DataError,
    Prefetcher,
    TrainingStream,
    add_format_arguments,
    add_max_bad_fraction_argument,
    synthetic_partitions,
)
from runtime.federation import arguments as federation_arguments
from runtime.model import Batch, DLRMConfig, Lookup, apply_sgd_rows
from runtime.protocol import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_BYTES,
    MAX_WAIT_MS,
    PRECISIONS,
    WORKER_ID_RULE,
    valid_worker_id,
)
from runtime.report import write_json_atomically
from runtime.rows import RowSet
from runtime.transport import TransportError

EVAL_BATCH_SIZE = 4096
# Refusals of a push that the PS cannot take as it stands, after which the batch is recomputed on parameters pulled
# again: a PS restarted from an older checkpoint does not have the push's step yet (future_step), or waits for its
# workers to join again (not_started).
_PULL_AGAIN = ("future_step", "not_started")


@dataclass
class StepTimes:
    data: float = 0.0
    pull: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    push: float = 0.0

    def as_dict(self, steps: int) -> dict[str, float]:
        per = 1000.0 / max(steps, 1)
        return {f"{k}_ms": round(v * per, 3) for k, v in vars(self).items()}


@dataclass
class Round:
    """The batches one push covers, and the rows they touch (pulled once for all of them): one batch, whose
    gradients are pushed, or under FedAvg the job's local steps, after which the model delta is pushed."""

    batches: list[tuple[Batch, Lookup]]
    rows: RowSet

    @classmethod
    def of(cls, batches: list[tuple[Batch, Lookup]]) -> Round:
        rows = batches[0][1].rows if len(batches) == 1 else RowSet.union([lookup.rows for _, lookup in batches])
        return cls(batches, rows)

    @property
    def samples(self) -> int:
        return sum(len(batch) for batch, _ in self.batches)


def train_locally(model: Any, work: Round, dense: np.ndarray, rows: np.ndarray, learning_rate: float
                  ) -> tuple[list[float], np.ndarray, np.ndarray]:
    """FedAvg's local part: SGD with the job's learning rate over the round's batches, in order, on a copy of the
    pulled dense parameters and rows (those of work.rows, in its order). Returns each batch's loss and the model
    delta (the copy after training minus what was pulled), dense and rows."""
    local_dense, local_rows = dense.copy(), rows.copy()
    lr = np.float32(learning_rate)
    losses = []
    for batch, lookup in work.batches:
        positions = work.rows.positions_of(lookup.rows)
        loss, dense_grad, row_grads = model.loss_and_grads_flat(local_dense, local_rows[positions], lookup, batch)
        local_dense -= lr * dense_grad
        apply_sgd_rows(local_rows, positions, row_grads, learning_rate)
        losses.append(loss)
    return losses, local_dense - dense, local_rows - rows


class Computed(NamedTuple):
    """What one round pushes, computed at the pulled parameters: each batch's loss, and the dense and row parts
    (gradients, or under FedAvg the model delta)."""

    losses: list[float]
    dense: np.ndarray
    rows: np.ndarray


class InFlight(NamedTuple):
    """A push the pipelined loop handed to its communication thread: the call, its batch, the parameters it was
    computed at and what it pushes (to resend if the call fails)."""

    future: futures.Future
    batch: Batch
    lookup: Lookup
    pulled: Pulled
    computed: Computed


@dataclass
class WorkerStats:
    steps: int = 0  # batches trained on (under FedAvg, local steps)
    rounds: int = 0  # pushes accepted
    examples: int = 0
    duplicates: int = 0
    stale: int = 0
    reconnects: int = 0
    rejoins: int = 0
    not_ready: int = 0
    unique_rows: int = 0
    times: StepTimes = field(default_factory=StepTimes)  # since the end of the warm-up
    losses: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # the parameter version each step's gradient was taken at


class TensorBoardLog:
    """Scalars in TensorBoard's event format, written with TensorFlow's own summary ops (the tensorboard
    package, which tf.summary.scalar needs, is not a dependency)."""

    def __init__(self, directory: Path) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(directory))
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

        # Traced once per set of tags: 0.5 ms for four scalars, where writing them op by op took 2 ms of the
        # training thread.
        @tf.function(autograph=False)
        def write(step: tf.Tensor, values: dict[str, tf.Tensor]) -> None:
            with self.writer.as_default():
                for tag, value in values.items():
                    tf.summary.write(tag, value, step=step, metadata=metadata)

        self._write = write

    def scalars(self, step: int, values: dict[str, float]) -> None:
        tf = self.tf
        self._write(tf.constant(step, tf.int64), {tag: tf.constant(value, tf.float32) for tag, value in values.items()})

    def flush(self) -> None:
        self.writer.flush()


class Heartbeat(threading.Thread):
    """Tells every shard we are alive; re-joins a shard that dropped us."""

    def __init__(self, client: ShardedPS, interval: float, stats: WorkerStats) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client = client
        self.interval = interval
        self.stats = stats
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for connection in self.client.connections:
                try:
                    connection.heartbeat(self.client.worker_id)
                except RemoteError as error:
                    if error.reason == "unknown_worker":
                        try:
                            connection.join(self.client.worker_id)
                            self.stats.rejoins += 1
                        except (RemoteError, TransportError):
                            pass  # the training loop deals with lasting failures
                except TransportError:
                    pass


class StepLog:
    """What a worker tells about its accepted steps: the counters, the end of the warm-up, progress lines on
    stdout, TensorBoard points, and the steady-state report."""

    def __init__(self, client: ShardedPS, stats: WorkerStats, args: argparse.Namespace) -> None:
        self.client = client
        self.stats = stats
        self.args = args
        self.tb: TensorBoardLog | None = None
        # (time, steps, rounds, examples, unique rows, wire bytes) when the warm-up ended
        self.steady_from: tuple[float, int, int, int, int, int] | None = None
        self.started = time.perf_counter()
        self._last_line = (self.started, 0, 0)  # (time, examples, wire bytes) of the last progress line

    def _wire(self) -> int:
        return self.client.bytes_sent + self.client.bytes_received

    def start(self) -> None:
        """Training starts: progress lines count from now."""
        self._last_line = (time.perf_counter(), 0, self._wire())

    def accepted(self, work: Round, version: int, losses: list[float]) -> None:
        """A round whose push the PS accepted: each of its batches, then the round."""
        for (batch, _), loss in zip(work.batches, losses, strict=True):
            self._count_step(batch, version, loss)
        stats = self.stats
        stats.rounds += 1
        stats.unique_rows += len(work.rows)
        if self.steady_from is None and stats.steps >= self.args.warmup_steps:  # the warm-up steps are over
            self.steady_from = (time.perf_counter(), stats.steps, stats.rounds, stats.examples, stats.unique_rows,
                                self._wire())
            stats.times = StepTimes()

    def _count_step(self, batch: Batch, version: int, loss: float) -> None:
        stats = self.stats
        stats.steps += 1
        stats.examples += len(batch)
        stats.losses.append(loss)
        stats.versions.append(version)
        if self.tb is not None and stats.steps % self.args.tb_every == 0:
            elapsed = time.perf_counter() - self.started
            self.tb.scalars(version, {"train/loss": loss, "train/samples_per_s": stats.examples / elapsed,
                                      "wire/bytes_per_step": self._wire() / stats.steps})
        now = time.perf_counter()
        last, logged_examples, logged_bytes = self._last_line
        if self.args.log_every > 0 and now - last >= self.args.log_every:
            wire = self._wire()
            print(f"{self.client.worker_id} step {version} loss {loss:.4f} samples/s "
                  f"{(stats.examples - logged_examples) / (now - last):.0f} wire MB/s "
                  f"{(wire - logged_bytes) / (now - last) / 1e6:.2f}", flush=True)
            self._last_line = (now, stats.examples, wire)

    def steady_report(self, end: float) -> dict[str, Any]:
        """Throughput, step-time breakdown and bytes per step (under FedAvg per local step, and per round) after
        the warm-up steps."""
        if self.steady_from is None:
            return {"steps": 0}
        start, steps0, rounds0, examples0, unique0, bytes0 = self.steady_from
        stats, config = self.stats, self.client.config
        assert config is not None
        steps, rounds = stats.steps - steps0, stats.rounds - rounds0
        if steps <= 0:
            return {"steps": 0}
        wire = (self._wire() - bytes0) / steps
        unique = (stats.unique_rows - unique0) / steps
        dense_values = sum(int(np.prod(shape)) for _, shape in config.layer_shapes())
        # Per round: rows pulled and their gradients (deltas) pushed, dense weights pulled and pushed, float32.
        minimum = 2 * unique * config.embedding_dim * 4 + 2 * dense_values * 4 * rounds / steps
        return {"steps": steps, "rounds": rounds,
                "samples_per_s": round((stats.examples - examples0) / (end - start), 1),
                "step_ms": stats.times.as_dict(steps), "bytes_per_step": round(wire, 1),
                "bytes_per_round": round(wire * steps / rounds, 1) if rounds else 0.0,
                "unique_rows_per_step": round(unique, 1), "min_bytes_per_step": round(minimum, 1),
                "wire_over_min": round(wire / minimum, 4)}


class Worker:
    def __init__(self, client: ShardedPS, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.stats = WorkerStats()
        self.log = StepLog(client, self.stats, args)

    def connect(self, reason: str | None = None) -> list[int]:
        """(Re)connect and join every shard; returns their versions. Retries while the PS is unreachable, for
        up to --reconnect-timeout seconds; a rejection (attestation, protocol) is raised at once."""
        deadline = time.monotonic() + self.args.reconnect_timeout
        delay = 0.2
        if reason is not None:
            print(f"{self.client.worker_id}: lost the PS ({reason}); reconnecting", flush=True)
        while True:
            try:
                replies = self.client.connect_and_join()
                break
            except (RemoteError, TransportError) as error:
                retryable = error.retryable if isinstance(error, TransportError) else error.code in CONNECTION_CODES
                # A restarted worker's id is still held by its dead predecessor until the PS drops it as silent.
                taken = isinstance(error, RemoteError) and error.reason == "participant_live"
                if taken and delay == 0.2:
                    print(f"{self.client.worker_id}: the PS still holds our id for our previous process; "
                          "waiting for it to time out", flush=True)
                if not (retryable or taken):
                    raise
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(f"PS unreachable for {self.args.reconnect_timeout} s: {error}") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if reason is not None:
            self.stats.reconnects += 1
            print(f"{self.client.worker_id}: reconnected at version {[r.version for r in replies]}", flush=True)
        return [r.version for r in replies]

    def train(self, model: Any, batches: Iterator[tuple[Batch, Lookup]], min_versions: list[int],
              synchronous: bool) -> None:
        """Train on (batch, its row lookup) until the PS says done (or --max-steps)."""
        self.log.start()
        if synchronous or not self.args.pipeline:
            self._train_serial(model, batches, min_versions, synchronous)
        else:
            self._train_pipelined(model, batches)

    @property
    def local_steps(self) -> int:
        """Batches per push: the job's FedAvg local steps (1: each push is one batch's gradients)."""
        return self.client.jobs[0].local_steps

    def _train_serial(self, model: Any, batches: Iterator[tuple[Batch, Lookup]], min_versions: list[int],
                      synchronous: bool) -> None:
        """One round at a time: pull, compute, push. Each push also brings the parameters for the next round
        (one PushPull round trip), so a round costs one call, not two; what a pull sees is unchanged."""
        pulled: Pulled | None = None  # the parameters for `current`, when the last push brought them
        per_round = self.local_steps
        max_steps = self.args.max_steps
        current = self._next_round(batches, per_round)
        while max_steps is None or self.stats.steps < max_steps:
            following = None
            if max_steps is None or self.stats.steps + per_round < max_steps:
                following = self._next_round(batches, per_round)
            step = self._step(model, current, min_versions, pulled,
                              following.rows if following is not None else None, synchronous)
            if step is None:
                return
            used, losses, pulled = step
            self.log.accepted(current, used.versions[0], losses)
            min_versions = self._next_min_versions(used, synchronous)
            if following is None:
                return
            current = following

    def _next_round(self, batches: Iterator[tuple[Batch, Lookup]], size: int) -> Round:
        return Round.of([self._next_batch(batches) for _ in range(size)])

    def _next_batch(self, batches: Iterator[tuple[Batch, Lookup]]) -> tuple[Batch, Lookup]:
        """The next (batch, lookup), its wait counted as data time."""
        started = time.perf_counter()
        item = next(batches)
        self.stats.times.data += time.perf_counter() - started
        return item

    @staticmethod
    def _next_min_versions(pulled: Pulled, synchronous: bool) -> list[int]:
        """What the next pull waits for: synchronous, the round this step's push is in; else nothing."""
        return [v + 1 for v in pulled.versions] if synchronous else [0] * len(pulled.versions)

    def _compute(self, model: Any, work: Round, pulled: Pulled) -> tuple[list[float], np.ndarray, np.ndarray]:
        """Each batch's loss, and what to push: one batch's gradients, or (FedAvg) the model delta after training
        locally on the round's batches."""
        assert pulled.dense is not None
        if self.local_steps == 1:
            ((batch, lookup),) = work.batches
            loss, dense_grad, row_grads = model.loss_and_grads_flat(pulled.dense, pulled.rows, lookup, batch)
            return [loss], dense_grad, row_grads
        config = self.client.config
        assert config is not None
        rate = config.learning_rate_at(pulled.versions[0], self.client.jobs[0].total_steps)
        return train_locally(model, work, pulled.dense, pulled.rows, rate)

    def _step(self, model: Any, work: Round, min_versions: list[int], pulled: Pulled | None = None,
              following: RowSet | None = None, synchronous: bool = False,
              unsettled: Computed | None = None) -> tuple[Pulled, list[float], Pulled | None] | None:
        """Pull (unless `pulled` already holds this round's parameters), compute and push one round until its
        push is in: reconnects (re-attesting) when a PS is lost, re-joins when dropped, recomputes when the
        round closed without us. A push whose call failed may have been applied all the same (its reply lost):
        it is resent as it was, same step, once the PS is back, and the PS's (worker id, step) de-duplication
        decides: a duplicate was in already, a current step goes in now, a stale one is recomputed. So a round
        is applied once whatever the link does. With `following`, the push also pulls the rows of the following
        round. `unsettled` is a push of this round computed at `pulled` whose call failed elsewhere (the pipelined
        loop's): it is resent the same way. Returns (the parameters used, each batch's loss, the following round's
        parameters or None); None when training is done."""
        stats, client, times = self.stats, self.client, self.stats.times
        wait_ms = self.args.pull_wait_ms
        computed = unsettled  # what this round pushes, computed at `pulled`, not yet known to be in
        while True:
            try:
                if computed is None:
                    t1 = time.perf_counter()
                    if pulled is None:
                        pulled = client.pull(min_versions, work.rows, wait_ms=wait_ms)
                        times.pull += (time.perf_counter() - t1) - pulled.waited_seconds
                    times.wait += pulled.waited_seconds
                    t2 = time.perf_counter()
                    if pulled.done:
                        return None
                    if not pulled.ready:
                        stats.not_ready += 1
                        pulled = None
                        continue
                    computed = Computed(*self._compute(model, work, pulled))
                    times.compute += time.perf_counter() - t2
                assert pulled is not None
                losses, dense_push, row_push = computed
                t3 = time.perf_counter()
                samples = work.samples
                loss = sum(batch_loss * len(batch) for batch_loss, (batch, _) in zip(losses, work.batches,
                                                                                       strict=True)) / samples
                ahead = None
                if following is None:
                    pushed = client.push(pulled.versions, samples, loss, dense_push, work.rows, row_push,
                                         self.local_steps)
                else:
                    pushed, ahead = client.push_pull(pulled.versions, samples, loss, dense_push, work.rows,
                                                     row_push, following, self._next_min_versions(pulled, synchronous),
                                                     wait_ms, self.local_steps)
                times.push += time.perf_counter() - t3 - (ahead.waited_seconds if ahead is not None else 0.0)
            except RemoteError as error:
                if computed is None or error.reason in _PULL_AGAIN:
                    pulled = computed = None
                if error.code in CONNECTION_CODES:
                    min_versions = self.connect(str(error))
                    continue
                if error.reason == "unknown_worker":
                    min_versions = [r.version for r in client.connect_and_join()]
                    stats.rejoins += 1
                    continue
                if error.reason == "training_done":
                    return None
                if error.reason in _PULL_AGAIN:
                    min_versions = [0] * client.num_shards  # whatever the PS has now
                    continue
                raise
            except TransportError as error:
                if not error.retryable:
                    raise
                if computed is None:
                    pulled = None
                min_versions = self.connect(str(error))
                continue
            if any(pushed.stale):
                # Our round closed without us (or, asynchronous, we fell too far behind): take the newer parameters
                # and redo this batch.
                stats.stale += 1
                min_versions = [0 if s else v + 1 for s, v in zip(pushed.stale, pulled.versions, strict=True)]
                pulled = computed = None
                continue
            # A duplicate answers a resend: this round was in already (the pipelined loop hands a batch here only
            # when none of its pushes is in flight, so no other push of ours can have taken this step).
            stats.duplicates += sum(pushed.duplicate)
            return pulled, losses, ahead

    def _train_pipelined(self, model: Any, batches: Iterator[tuple[Batch, Lookup]]) -> None:
        """Asynchronous mode: while batch t is computed, a communication thread pushes the gradients of batch
        t-1 and pulls the parameters for batch t+1, so a step costs about max(compute, push + pull) instead
        of their sum. The parameters of batch t+1 lack this worker's update t (one more version of staleness;
        the PS's bound still applies). A batch whose push the PS finds too stale, or whose parameters are no newer
        than those of the push before it (the PS de-duplicates pushes by step), is redone through _step, which
        recomputes as the serial loop does; a push whose call failed is resent there as it was (its reply may be
        all that was lost). Either happens only once no push is in flight: a batch redone beside an unsettled push
        could pull the version that push was computed at, and the second push of that step would be refused.
        Step times count only the waits the training thread sees: pull is the wait for the next parameters."""
        stats, client = self.stats, self.client
        latest = [0] * client.num_shards  # asynchronous pulls do not wait for a version
        sent = [-1] * client.num_shards  # per shard, the step of the newest push handed to the thread
        max_steps = self.args.max_steps
        pushes: collections.deque[InFlight] = collections.deque()

        def pull(lookup: Lookup) -> Pulled:
            return client.pull(latest, lookup.rows, wait_ms=self.args.pull_wait_ms)

        def redo(batch: Batch, lookup: Lookup, pulled: Pulled | None = None,
                 unsettled: Computed | None = None) -> bool:
            """The serial step for one batch (resending `unsettled`, computed at `pulled`, if given), once the
            pushes still in flight have finished; False when training is done."""
            futures.wait([push.future for push in pushes])
            work = Round.of([(batch, lookup)])
            step = self._step(model, work, latest, pulled, unsettled=unsettled)
            if step is None:
                return False
            sent[:] = [max(s, v) for s, v in zip(sent, step[0].versions, strict=True)]
            self.log.accepted(work, step[0].versions[0], step[1])
            return True

        def settle(push: InFlight) -> bool:
            """Count a finished push, or redo its batch; False when training is done."""
            try:
                pushed = push.future.result()
            except (RemoteError, TransportError) as error:
                if isinstance(error, RemoteError) and error.reason == "training_done":
                    return False
                return redo(push.batch, push.lookup, push.pulled, push.computed)
            if any(pushed.stale) or any(pushed.duplicate):
                stats.stale += any(pushed.stale)
                stats.duplicates += any(pushed.duplicate)
                return redo(push.batch, push.lookup)
            self.log.accepted(Round.of([(push.batch, push.lookup)]), push.pulled.versions[0], push.computed.losses)
            return True

        def settle_until(left: int) -> bool:
            """Settle the oldest pushes until `left` remain; False when training is done."""
            while len(pushes) > left:
                if not settle(pushes.popleft()):
                    return False
            return True

        with futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="comm") as comm:
            current = self._next_batch(batches)
            pulling = comm.submit(pull, current[1])
            while max_steps is None or stats.steps + len(pushes) < max_steps:
                t1 = time.perf_counter()
                try:
                    pulled: Pulled | None = pulling.result()
                except (RemoteError, TransportError):
                    pulled = None  # the batch is redone below
                stats.times.pull += time.perf_counter() - t1
                # Every push but the newest was queued before this pull, so it has finished.
                if not settle_until(1):
                    return
                if pulled is not None and pulled.done:
                    break
                batch, lookup = current
                current = self._next_batch(batches)
                t3 = time.perf_counter()
                if pulled is None or not pulled.ready or any(v <= s for v, s in zip(pulled.versions, sent,
                                                                                      strict=True)):
                    if not settle_until(0) or not redo(batch, lookup):
                        return
                    pulling = comm.submit(pull, current[1])
                    continue
                pulling = comm.submit(pull, current[1])
                loss, dense_grad, row_grads = model.loss_and_grads_flat(pulled.dense, pulled.rows, lookup, batch)
                stats.times.compute += time.perf_counter() - t3
                future = comm.submit(client.push, pulled.versions, len(batch), loss, dense_grad, lookup.rows,
                                     row_grads)
                pushes.append(InFlight(future, batch, lookup, pulled, Computed([loss], dense_grad, row_grads)))
                sent[:] = pulled.versions
            settle_until(0)

    def evaluate(self, model: Any, batches: Sequence[Batch], wait_seconds: float
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Held-out metrics of one parameter version, the final one: waits (at most wait_seconds) until every PS
        shard has finished training, after which the parameters no longer change, and checks that every pull
        served exactly that version. A worker that stops early (--max-steps) so evaluates what the others go on
        to train, and two workers evaluate the same model. If training does not finish in time, nothing is
        evaluated and the result says why."""
        client = self.client
        final = [job.total_steps for job in client.jobs]
        deadline = time.monotonic() + wait_seconds
        while True:
            wait_ms = max(0, min(MAX_WAIT_MS, int((deadline - time.monotonic()) * 1000)))
            pulled = client.pull(final, RowSet.empty(), dense=True, wait_ms=wait_ms)
            if pulled.ready or wait_ms == 0:
                break
        if not pulled.ready:
            return ({"examples": 0, "skipped": f"training did not finish within {wait_seconds:g} s (PS versions "
                                              f"{pulled.versions}, final {final})"},
                    np.zeros(0, np.float32), np.zeros(0, np.float32))
        versions, dense = pulled.versions, pulled.dense
        assert dense is not None
        labels, probs = [], []
        for batch in batches:
            lookup = batch.lookup()
            pulled = client.pull(versions, lookup.rows, dense=False, wait_ms=0)
            if pulled.versions != versions:
                raise RuntimeError(f"evaluation: a pull served parameter versions {pulled.versions}, not the final "
                                   f"{versions} the evaluation started on")
            probs.append(model.predict_flat(dense, pulled.rows, lookup, batch))
            labels.append(batch.labels)
        if not labels:
            return {"examples": 0}, np.zeros(0, np.float32), np.zeros(0, np.float32)
        y, p = np.concatenate(labels), np.concatenate(probs)
        result: dict[str, Any] = {"examples": int(y.size), "version": versions[0], "versions": versions,
                                  "log_loss": metrics.log_loss(y, p), "accuracy": metrics.accuracy(y, p)}
        try:
            result["auc"] = metrics.auc(y, p)
        except ValueError as error:  # one class only
            result["auc"] = None
            result["auc_note"] = str(error)
        return result, y, p


def _eval_batches(paths: Sequence[Path], config: DLRMConfig, args: argparse.Namespace, file_format: str
                  ) -> list[Batch]:
    reader = CriteoReader(paths, config, EVAL_BATCH_SIZE, max_bad_fraction=args.max_bad_fraction,
                          layout=args.layout, file_format=file_format)
    return list(reader)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ps", help="the PS shards, in shard order: host:port[/attestation_port],...")
    parser.add_argument("--chief", help="SDT: take the job spec (PS addresses, batch size, model) and this "
                                        "worker's data shard from the chief at host:port[/attestation_port] "
                                        "instead of --ps and --data; the shard is held in memory only")
    parser.add_argument("--worker-id", required=True,
                        help=f"this worker's stable name ({WORKER_ID_RULE}); pushes are de-duplicated by "
                             "(worker id, step), and rounds combine workers in worker-id order")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, nargs="+", help="Criteo TSV files (plain or gzip) to train on")
    add_format_arguments(data)
    data.add_argument("--data-shard", default="0/1",
                      help="i/n: train on lines i, i+n, i+2n, ... of --data, or on synthetic partition i of n "
                           "(default 0/1)")
    data.add_argument("--synthetic", type=int, metavar="ROWS",
                      help="instead of --data: generate ROWS synthetic training rows (planted signal)")
    data.add_argument("--synthetic-eval-rows", type=int, default=4096,
                      help="held-out synthetic rows (default 4096)")
    data.add_argument("--data-seed", type=int, default=1, help="synthetic data seed (default 1)")
    data.add_argument("--eval-data", type=Path, nargs="+", help="held-out Criteo TSV files")
    data.add_argument("--eval-batches", type=int, default=2,
                      help="without --eval-data: hold out the first K batches of each pass over --data "
                           "(default 2)")
    data.add_argument("--batch-size", type=int, default=128, help="default 128")
    add_max_bad_fraction_argument(data)
    wire = parser.add_argument_group("wire")
    wire.add_argument("--wire-dtype", choices=sorted(PRECISIONS), default="fp32",
                      help="float format of weights and gradients on the wire (default fp32: exact)")
    wire.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_SIZE,
                      help=f"largest chunk sent (default {DEFAULT_CHUNK_SIZE}; the PS's limit applies too)")
    wire.add_argument("--pull-wait-ms", type=int, default=10_000,
                      help="how long one pull may wait at the PS for the next version (default 10000)")
    wire.add_argument("--pipeline", action="store_true",
                      help="asynchronous mode: overlap the push of batch t-1 and the pull for batch t+1 with the "
                           "computation of batch t. Hides network latency (PS across a WAN) at the price of one "
                           "more version of staleness; no gain where the CPU is the bottleneck (default: off)")
    wire.add_argument("--reconnect-timeout", type=float, default=120.0,
                      help="seconds to keep trying to reach a lost PS (default 120)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow threads (intra-op and inter-op pools); results are bit-reproducible "
                             "across processes with the same count (default 0: TensorFlow's default, the number "
                             "of cores)")
    out = parser.add_argument_group("output")
    out.add_argument("--max-steps", type=int, help="stop after this many steps even if the PS is not done")
    out.add_argument("--eval-wait", type=float, default=600.0, metavar="SECONDS",
                     help="how long to wait, after training here, for the PS to finish so that the held-out "
                          "evaluation is of the final parameters (default 600)")
    out.add_argument("--warmup-steps", type=int, default=5,
                     help="steps left out of the steady-state throughput and timing figures (default 5)")
    out.add_argument("--report-file", type=Path, help="write this worker's statistics and metrics as JSON")
    out.add_argument("--scores-file", type=Path, help="write held-out labels and scores (npz) here")
    out.add_argument("--logdir", type=Path, help="TensorBoard log directory (a subdirectory per worker)")
    out.add_argument("--tb-every", type=int, default=10, help="steps between TensorBoard points (default 10)")
    out.add_argument("--log-every", type=float, default=0.0,
                     help="seconds between progress lines on stdout; 0 for none (default 0)")
    transport.add_arguments(parser)
    federation_arguments.add_arguments(parser, joins=True, audit=False)


def _parse_shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise ValueError(f"--data-shard: expected i/n, found {text!r}") from None
    if not sep or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--data-shard: expected i/n with 0 <= i < n, found {text!r}")
    return shard


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not valid_worker_id(args.worker_id):
        raise ValueError(f"--worker-id: expected {WORKER_ID_RULE}, found {args.worker_id[:140]!r}")
    net = transport.from_args(args)
    chief: ChiefClient | None = None
    shard_fd: int | None = None
    if args.chief is not None:
        if args.data is not None or args.synthetic is not None or args.ps is not None:
            raise ValueError("--chief gives the PS addresses and the data: no --ps, --data or --synthetic with it")
        chief = ChiefClient(transport.Endpoint.parse(args.chief), net, args.worker_id,
                            federation_arguments.federation_from_args(args, "worker"))
        spec = chief.join_and_spec()
        args.ps, args.batch_size, args.layout = spec.ps_addresses, spec.batch_size, spec.layout
        args.eval_batches, args.max_bad_fraction = spec.eval_batches, spec.max_bad_fraction
        args.file_format = "tsv"  # the chief streams every shard as Criteo TSV, whatever its own files are
        shard_fd = chief.shard_to_memory()
        args.data = [Path(f"/proc/self/fd/{shard_fd}")]
        print(f"{args.worker_id}: SDT: job spec and {chief.shard_bytes} shard bytes from the chief (in memory)",
              flush=True)
    try:
        report = _train(args, net)
    finally:
        if shard_fd is not None:
            os.close(shard_fd)
    if chief is not None:
        chief.report_metrics(report)
        chief.close()
    return report


def _train(args: argparse.Namespace, net: transport.Transport) -> dict[str, Any]:
    if args.ps is None:
        raise ValueError("give --ps (or --chief)")
    if (args.data is None) == (args.synthetic is None):
        raise ValueError("give exactly one of --data and --synthetic")
    for name, value, low, high in (("--chunk-bytes", args.chunk_bytes, 1, MAX_CHUNK_BYTES),
                                   ("--batch-size", args.batch_size, 1, 1 << 24),
                                   ("--pull-wait-ms", args.pull_wait_ms, 0, 600_000),
                                   ("--warmup-steps", args.warmup_steps, 0, 1 << 30),
                                   ("--tb-every", args.tb_every, 1, 1 << 30)):
        if not low <= value <= high:
            raise ValueError(f"{name}: expected {low}..{high}, found {value}")
    shard = _parse_shard(args.data_shard)
    federation = federation_arguments.federation_from_args(args, "worker")
    client = ShardedPS(transport.parse_endpoints(args.ps), net, args.worker_id, chunk_bytes=args.chunk_bytes,
                       precision=args.wire_dtype, federation=federation)
    worker = Worker(client, args)
    started = time.perf_counter()
    worker.connect()
    replies = client.jobs
    join_seconds = time.perf_counter() - started
    config = client.config
    assert config is not None
    synchronous = replies[0].synchronous
    mode = 'synchronous' if synchronous else f'asynchronous, staleness {replies[0].staleness}'
    if replies[0].local_steps > 1:
        mode += f", FedAvg with {replies[0].local_steps} local steps per push"
    print(f"{args.worker_id}: joined {len(replies)} PS shard(s) over {net.security} in {join_seconds:.3f} s "
          f"at version {replies[0].version}/{replies[0].total_steps} ({mode})", flush=True)

    heartbeat = Heartbeat(client, max(replies[0].heartbeat_interval, 0.1), worker.stats)
    heartbeat.start()

    # After joining: a PS that rejects us should not cost a TensorFlow start-up.
    from runtime.model import DLRM, configure_threads

    if args.threads:
        configure_threads(args.threads, inter_op=args.threads)

    with tempfile.TemporaryDirectory(prefix="worker-data-") as tmp:
        if args.synthetic is not None:
            train_files, eval_files = synthetic_partitions(Path(tmp), shard[1], args.synthetic,
                                                           args.synthetic_eval_rows, args.data_seed, config)
            reader = CriteoReader(train_files[shard[0]], config, args.batch_size,
                                  max_bad_fraction=args.max_bad_fraction)
            eval_paths: list[Path] | None = [eval_files[shard[0]]]
        else:
            reader = CriteoReader(args.data, config, args.batch_size, max_bad_fraction=args.max_bad_fraction,
                                  layout=args.layout, file_format=args.file_format, shard=shard)
            eval_paths = args.eval_data
        stream = TrainingStream(reader, 0 if eval_paths else args.eval_batches)
        eval_batches = _eval_batches(eval_paths, config, args, reader.file_format) if eval_paths else None
        model = DLRM(config)
        # TensorFlow leaves ~300k long-lived objects, which every full collection walks (~250 ms): exempt them.
        gc.freeze()
        if args.logdir is not None:
            worker.log.tb = TensorBoardLog(args.logdir / args.worker_id)
        worker.log.started = time.perf_counter()
        prefetcher = Prefetcher(iter(stream))
        try:
            worker.train(model, prefetcher, [r.version for r in replies], synchronous)
        finally:
            prefetcher.close()
        train_seconds = time.perf_counter() - worker.log.started
        steady = worker.log.steady_report(worker.log.started + train_seconds)  # before evaluation adds traffic
        held_out = eval_batches if eval_batches is not None else stream.heldout
        evaluation, labels, scores = worker.evaluate(model, held_out, args.eval_wait)
    heartbeat.stop.set()
    heartbeat.join(timeout=5)
    try:
        client.leave()
    except RemoteError as error:
        print(f"{args.worker_id}: leave failed ({error}); the PS will time us out", flush=True)
    client.close()
    stats = worker.stats
    tb = worker.log.tb
    if tb is not None:
        tb.scalars(max(evaluation.get("version", 0), 0),
                   {f"eval/{key}": evaluation[key] for key in ("log_loss", "accuracy", "auc")
                    if evaluation.get(key) is not None})
        tb.flush()
    if args.scores_file is not None:
        np.savez(args.scores_file, labels=labels, scores=scores)
    steps = max(stats.steps, 1)
    report = {
        "worker_id": args.worker_id, "steps": stats.steps, "rounds": stats.rounds,
        "local_steps": replies[0].local_steps, "examples": stats.examples,
        "batch_size": args.batch_size, "train_seconds": round(train_seconds, 3),
        "samples_per_s": round(stats.examples / train_seconds, 1) if train_seconds > 0 else 0.0,
        "steady": steady,
        "bytes_sent": client.bytes_sent, "bytes_received": client.bytes_received,
        "bytes_per_step": round((client.bytes_sent + client.bytes_received) / steps, 1),
        "duplicates": stats.duplicates, "stale": stats.stale, "reconnects": stats.reconnects,
        "rejoins": stats.rejoins, "not_ready": stats.not_ready, "join_seconds": round(join_seconds, 4),
        "first_loss": stats.losses[0] if stats.losses else None,
        "last_loss": stats.losses[-1] if stats.losses else None,
        # Training loss against the parameter version each step read, made from the losses kept in memory.
        "loss_curve_by_version": metrics.loss_curve(stats.versions, stats.losses),
        "data": stream.line_counts(), "eval": evaluation, "wire_dtype": args.wire_dtype,
        "pipelined": args.pipeline and not synchronous,
        "transport": net.report(),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = transport.command_parser("python -m runtime.worker", __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError, DataError, ConnectionError, RemoteError) as error:
        print(f"{args.worker_id}: error: {error}", file=sys.stderr, flush=True)
        return 2
    if args.report_file is not None:
        write_json_atomically(args.report_file, report)
    e = report["eval"]
    auc_text = f"{e['auc']:.4f}" if e.get("auc") is not None else "n/a"
    data = report["data"]
    print(f"{args.worker_id}: data: {data['lines']} lines, {data['bad_lines']} bad (skipped)", flush=True)
    print(f"{args.worker_id}: done: {report['steps']} steps, {report['samples_per_s']:.0f} samples/s; held-out "
          f"{e.get('examples', 0)} examples: loss {e.get('log_loss', float('nan')):.4f} accuracy "
          f"{e.get('accuracy', float('nan')):.4f} AUC {auc_text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The parameter server's state machine, independent of gRPC: one shard's parameters (runtime.server.parameters),
which workers are alive, how pushes are combined (runtime.server.aggregation) and applied, pulls, checkpoints and
resuming from them. The update rules are the ones `python -m runtime.ps --help` states (runtime/ps.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.federation import AuditLog, ChallengeBook, Plan
from runtime.federation.admission import caller_fields, join_refusal
from runtime.model import DLRMConfig
from runtime.protocol import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_BYTES,
    MAX_LOCAL_STEPS,
    MAX_WAIT_MS,
    NO_PROOF,
    ROLES,
    UNPROVED,
    Caller,
    JobInfo,
    JoinProof,
    PullReply,
    PullRequest,
    PushReply,
    PushRequest,
    Rejected,
    StatusInfo,
    check_worker_id,
)
from runtime.rows import RowSet
from runtime.server import checkpoints
from runtime.server.aggregation import Contribution, Update, combine, combine_deltas
from runtime.server.parameters import OPTIMIZERS, ShardParameters

# Job keys that checkpoints written before the key existed lack, with the value those jobs had.
JOB_META_DEFAULTS = {"local_steps": 1}


class CheckpointMismatch(Exception):
    """The checkpoint directory belongs to a different job (model, shard layout or optimizer)."""


@dataclass
class PSOptions:
    config: DLRMConfig
    total_steps: int
    workers: int
    shard: int = 0
    num_shards: int = 1
    min_workers: int | None = None  # default: workers
    round_timeout: float | None = None
    staleness: int | None = None  # None: synchronous
    local_steps: int = 1  # > 1: FedAvg, workers push model deltas after this many local steps (synchronous, SGD)
    worker_timeout: float = 10.0
    start_timeout: float = 60.0
    heartbeat_interval: float = 1.0
    optimizer: str = "sgd"
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    chunk_bytes: int = DEFAULT_CHUNK_SIZE
    batch_size: int | None = None  # the job's per-worker batch size: pushes claiming more are refused
    max_grad_norm: float = 100.0  # pushes whose gradient L2 norm is larger are refused; 0: no bound
    max_message_bytes: int | None = None  # None: the job's request bound (runtime.wire.messages.request_bound)
    stream_timeout: float = 30.0  # seconds a streamed request may take to arrive
    linger: float = 5.0
    log_every: float = 2.0  # seconds between progress lines; 0: none
    plan: Plan | None = None  # the federation plan: who may join, in which role, proved how (runtime.federation)
    audit_log: Path | None = None  # JSON lines of every join, rejoin, leave, timeout and refusal of a caller

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers: expected >= 1, found {self.workers}")
        if self.num_shards < 1:
            raise ValueError(f"--num-shards: expected >= 1, found {self.num_shards}")
        if self.min_workers is None:
            self.min_workers = self.workers
        if not 1 <= self.min_workers <= self.workers:
            raise ValueError(f"--min-workers: expected 1..{self.workers} (--workers), found {self.min_workers}")
        if self.total_steps < 1:
            raise ValueError(f"--steps: expected >= 1, found {self.total_steps}")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"--shard: expected 0..{self.num_shards - 1}, found {self.shard}")
        if not 1 <= self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"--chunk-bytes: expected 1..{MAX_CHUNK_BYTES}, found {self.chunk_bytes}")
        if self.staleness is not None and self.staleness < 0:
            raise ValueError(f"--staleness: expected >= 0, found {self.staleness}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer: expected one of {OPTIMIZERS}, found {self.optimizer}")
        if not 1 <= self.local_steps <= MAX_LOCAL_STEPS:
            raise ValueError(f"--local-steps: expected 1..{MAX_LOCAL_STEPS}, found {self.local_steps}")
        if self.local_steps > 1 and self.staleness is not None:
            raise ValueError("--local-steps > 1 (FedAvg) runs synchronous rounds: it cannot be combined with "
                             "--staleness (asynchronous updates)")
        if self.local_steps > 1 and self.optimizer != "sgd":
            raise ValueError(f"--local-steps > 1 (FedAvg) needs --optimizer sgd, found {self.optimizer}: with "
                             "Adagrad each worker would need the PS's accumulators for every parameter it "
                             "pulls (twice the bytes of a pull) and a rule for merging their changes, which this "
                             "runtime does not define")
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every: expected >= 1, found {self.checkpoint_every}")
        if not self.worker_timeout >= 2 * self.heartbeat_interval:
            raise ValueError(f"--worker-timeout: expected at least two heartbeat intervals "
                             f"({2 * self.heartbeat_interval:g} s), found {self.worker_timeout}")
        for name, value in (("--round-timeout", self.round_timeout), ("--start-timeout", self.start_timeout),
                            ("--linger", self.linger), ("--log-every", self.log_every)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, found {value}")
        if self.max_message_bytes is not None and self.max_message_bytes < 1:
            raise ValueError(f"--max-message-bytes: expected >= 1, found {self.max_message_bytes}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size: expected >= 1, found {self.batch_size}")
        if not self.max_grad_norm >= 0:
            raise ValueError(f"--max-grad-norm: expected a number >= 0, found {self.max_grad_norm}")
        if not self.stream_timeout > 0:
            raise ValueError(f"--stream-timeout: expected a number > 0, found {self.stream_timeout}")


class ParameterServer:
    """The PS state machine, independent of gRPC: methods take decoded requests (runtime.protocol), return domain
    results and raise Rejected.

    All state is guarded by one condition variable; a rejected request changes nothing.
    """

    def __init__(self, options: PSOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.config = options.config
        self.clock = clock
        self.params = ShardParameters(options.config, options.shard, options.num_shards, options.optimizer)
        self.cond = threading.Condition()
        self.version = 0
        self.members: dict[str, float] = {}  # live worker -> last time heard from
        # worker id -> the certificate fingerprint of the connection that joined under it (None: an insecure
        # transport proves nothing). Kept after a worker leaves: its id is free again only through a new join.
        self.bindings: dict[str, bytes | None] = {}
        self.bound_names: dict[bytes, str] = {}  # every fingerprint ever bound -> its worker id, for accounting
        # worker id (or UNATTRIBUTED) -> samples, pushes_accepted, pushes_refused, refused_calls, bytes, joins...
        self.accounts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.challenges = ChallengeBook()
        self.audit = AuditLog(options.audit_log) if options.audit_log is not None else None
        self.pending: dict[str, Contribution | None] = {}  # synchronous mode: pushes for step == version
        self.refused_pushes: defaultdict[str, Counter[str]] = defaultdict(Counter)  # worker -> reason -> count
        self.round_first_push: float | None = None
        self.last_step: dict[str, int] = {}  # highest step received per worker (resends are duplicates)
        self.started = False
        self.first_join: float | None = None
        self.idle_since = clock()
        self.stats: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        # Accepted pushes by staleness (versions applied since the one they were computed on): how stale
        # asynchronous training actually runs, against the bound.
        self.push_staleness: Counter[int] = Counter()
        self.resumed_from = 0
        self.checkpoint_seconds: list[float] = []
        self.final_checkpoint_written = options.checkpoint_dir is None
        self._progress = _Progress(clock())
        if options.checkpoint_dir is not None:
            found = checkpoints.restore_latest(options.checkpoint_dir, self._restore)
            if found is not None:
                self.resumed_from = found.version
                print(f"ps[{options.shard}]: resumed from {found.path} at version {found.version}", flush=True)

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def synchronous(self) -> bool:
        return self.options.staleness is None

    @property
    def fedavg(self) -> bool:
        """Pushes are model deltas after local_steps local steps, averaged (runtime.server.aggregation)."""
        return self.options.local_steps > 1

    @property
    def done(self) -> bool:
        return self.version >= self.options.total_steps

    # -- membership ----------------------------------------------------------------------------------------

    def challenge(self, caller: Caller) -> tuple[bytes, str, bytes]:
        """A fresh challenge for the caller's certificate, with this PS's federation name and plan digest."""
        if caller.fingerprint is None:
            raise Rejected("not_attested", "a challenge is bound to the caller's certificate; this connection "
                           "has none")
        plan = self.options.plan
        return (self.challenges.issue(caller.fingerprint), plan.federation if plan else "",
                plan.digest if plan else b"")

    def join(self, worker_id: str, caller: Caller = UNPROVED, proof: JoinProof = NO_PROOF) -> JobInfo:
        """Admits worker_id and binds it to the caller's certificate. Under a plan the proof must show that the
        caller speaks for the participant worker_id (runtime.federation): a refused join changes nothing but the
        spent challenge, and is audited. A second join under a live worker's id from another certificate is
        refused; once the old one left or timed out, a join with a fresh proof takes the id over (a restarted
        worker has a new key, so a new certificate)."""
        check_worker_id(worker_id)
        role = proof.role or "worker"
        if role not in ROLES:
            raise Rejected("bad_role", f"JoinRequest.role: expected one of {', '.join(ROLES)}, found {role[:32]!r}")
        if self.options.plan is not None:
            self._check_proof(worker_id, role, caller, proof)
        with self.cond:
            now = self.clock()
            bound = self.bindings.get(worker_id, caller.fingerprint)
            if bound != caller.fingerprint and worker_id in self.members:
                raise self._refuse("participant_live", f"{worker_id!r} is live on another connection "
                                   f"(certificate {_short(bound)}); a second join is refused, a restarted worker "
                                   f"is admitted once the old one has left or been silent for "
                                   f"{self.options.worker_timeout:g} s", worker_id, caller)
            event = "rejoin" if worker_id in self.bindings and bound != caller.fingerprint else "join"
            if worker_id not in self.members:
                self.stats["joins"] += 1
                self.accounts[worker_id][event + "s"] += 1
            self.bindings[worker_id] = caller.fingerprint
            if caller.fingerprint is not None:
                self.bound_names[caller.fingerprint] = worker_id
            self.members[worker_id] = now
            if self.first_join is None:
                self.first_join = now
            self._audit(event, worker_id, caller, role=role)
            self._update_started(now)
            self.cond.notify_all()
            version = self.version
        o = self.options
        return JobInfo(version=version, total_steps=o.total_steps, shard=o.shard, num_shards=o.num_shards,
                       config=self.config, synchronous=self.synchronous, staleness=o.staleness or 0,
                       heartbeat_interval=o.heartbeat_interval, max_chunk_bytes=o.chunk_bytes,
                       local_steps=o.local_steps)

    def _check_proof(self, worker_id: str, role: str, caller: Caller, proof: JoinProof) -> None:
        """runtime.federation.join_refusal, audited: nothing changes but the spent challenge."""
        assert self.options.plan is not None
        refusal = join_refusal(self.options.plan, self.challenges, worker_id, role, caller, proof)
        if refusal is not None:
            with self.cond:
                raise self._refuse(*refusal, worker_id, caller, role=role)

    def heartbeat(self, worker_id: str, caller: Caller = UNPROVED) -> tuple[int, bool]:
        """(version, done)."""
        check_worker_id(worker_id)
        with self.cond:
            self._touch(worker_id, caller)
            return self.version, self.done

    def leave(self, worker_id: str, caller: Caller = UNPROVED) -> int:
        """The version at which the worker left."""
        check_worker_id(worker_id)
        with self.cond:
            self._member(worker_id, caller)
            del self.members[worker_id]
            self.stats["leaves"] += 1
            self._audit("leave", worker_id, caller)
            if not self.members:
                self.idle_since = self.clock()
            self._maybe_close_round(self.clock())
            self.cond.notify_all()
            return self.version

    def _member(self, worker_id: str, caller: Caller) -> None:
        """worker_id is live and bound to the caller's certificate: a caller cannot act under another's id."""
        if worker_id not in self.members:
            raise Rejected("unknown_worker", f"worker_id {worker_id!r} is not a live member: Join first")
        bound = self.bindings.get(worker_id)
        if bound != caller.fingerprint:
            raise self._refuse("not_bound", f"worker_id {worker_id!r} joined over another connection "
                               f"(certificate {_short(bound)}, this one {_short(caller.fingerprint)})",
                               worker_id, caller)

    def _touch(self, worker_id: str, caller: Caller) -> None:
        self._member(worker_id, caller)
        self.members[worker_id] = self.clock()

    def _refuse(self, reason: str, detail: str, worker_id: str, caller: Caller, **extra: Any) -> Rejected:
        """A refusal of a caller's identity, counted for the caller's own participant and audited (with the lock
        held)."""
        self.accounts[self._account_of(caller)]["refused_calls"] += 1
        self._audit("refusal", worker_id, caller, reason=reason, detail=detail, **extra)
        return Rejected(reason, detail)

    def _account_of(self, caller: Caller) -> str:
        if caller.fingerprint is None:
            return UNATTRIBUTED
        return self.bound_names.get(caller.fingerprint, UNATTRIBUTED)

    def _audit(self, event: str, worker_id: str, caller: Caller, **fields: Any) -> None:
        if self.audit is None:
            return
        self.audit.record(event, shard=self.options.shard, participant=worker_id,
                          **caller_fields(caller, self.options.plan), version=self.version, **fields)

    def _update_started(self, now: float) -> None:
        if self.started or self.first_join is None:
            return
        o = self.options
        if len(self.members) >= o.workers or (len(self.members) >= o.min_workers
                                              and now - self.first_join >= o.start_timeout):
            self.started = True
            self._progress = _Progress(now, self.wire_bytes())
            print(f"ps[{o.shard}]: training starts at version {self.version} with workers "
                  f"{', '.join(sorted(self.members))}", flush=True)

    # -- pull ----------------------------------------------------------------------------------------------

    def pull(self, request: PullRequest, caller: Caller = UNPROVED) -> PullReply:
        """Rows come back in request order, values only (the ids are the request's); the dense parameters are
        this version's array, which updates replace and never write."""
        self._check_owned(request.rows, "PullRequest.rows")
        return self._serve_pull(request, caller)

    def push_pull(self, push: PushRequest, pull: PullRequest, wire_bytes: int = 0,
                  caller: Caller = UNPROVED) -> tuple[PushReply, PullReply]:
        """The push handled as push() does, then the pull served as pull() does. The pull is checked first, so a
        call refused for either part changes nothing."""
        self._check_kind(push)
        self._check_owned(pull.rows, "PullRequest.rows")
        return self.push(push, wire_bytes, caller), self._serve_pull(pull, caller)

    def _serve_pull(self, request: PullRequest, caller: Caller) -> PullReply:
        wait = min(request.wait_ms, MAX_WAIT_MS) / 1000.0
        with self.cond:
            self._touch(request.worker_id, caller)
            started = self.clock()
            while not self.done and not (self.started and self.version >= request.min_version):
                remaining = started + wait - self.clock()
                if remaining <= 0:
                    return PullReply(self.version, False, False, self.clock() - started)
                self.cond.wait(remaining)
                self._member(request.worker_id, caller)  # dropped (or taken over) while waiting?
            waited = self.clock() - started
            dense = self.params.dense_flat if request.dense else None
            rows = self.params.read_rows(request.rows) if len(request.rows) else None
            return PullReply(self.version, self.done, True, waited, dense, rows)

    def _check_owned(self, rows: RowSet, field: str) -> None:
        if not self.params.owns_rows(rows):
            raise Rejected("wrong_shard", f"{field}: some rows belong to another shard than {self.options.shard} "
                           f"of {self.options.num_shards}")

    # -- push ----------------------------------------------------------------------------------------------

    def _check_kind(self, request: PushRequest) -> None:
        """A push must be what the job's mode averages: gradients of one batch, or (FedAvg) a model delta after
        exactly the job's local steps. Checked before anything else, so a wrong push changes no state."""
        want = self.options.local_steps
        if request.local_steps != want:
            def kind(k: int) -> str:
                return "one batch's gradients" if k == 1 else f"a model delta after {k} local steps"
            raise Rejected("wrong_local_steps", f"PushRequest.local_steps: this job takes {kind(want)} "
                           f"(--local-steps {want}), found {request.local_steps}: {kind(request.local_steps)}")

    def _poison(self, request: PushRequest) -> Rejected | None:
        """Why a well-formed push must still not be applied: it claims more examples than the job's batch size
        (its weight in the average would be inflated), or its gradient is beyond the bound (one such push could
        take the parameters to infinity). Refused, not clipped: a clipped hostile push would still pull the model
        its way every round, with the largest step allowed. A FedAvg delta covers local_steps batches, and K SGD
        steps of gradients within the bound move the parameters by at most K x learning rate x the bound."""
        o = self.options
        batches = o.local_steps
        if o.batch_size is not None and request.batch_size > batches * o.batch_size:
            per_push = f"{o.batch_size}" if batches == 1 else f"{batches * o.batch_size} ({batches} x {o.batch_size})"
            return Rejected("batch_too_large", f"PushRequest.batch_size: expected at most the job's {per_push}, "
                            f"found {request.batch_size}")
        if o.max_grad_norm:
            bound = o.max_grad_norm * (batches * self.config.learning_rate if self.fedavg else 1.0)
            values = request.rows.values
            # float32 dot products: a sum that overflows is inf, which is over any bound, as it should be.
            with np.errstate(over="ignore"):
                squares = float(np.dot(request.dense, request.dense))
                if values is not None and values.size:
                    squares += float(np.dot(values.reshape(-1), values.reshape(-1)))
            if not squares <= bound ** 2:
                what = "model delta" if self.fedavg else "gradient"
                return Rejected("gradient_too_large", f"PushRequest: {what} L2 norm {squares ** 0.5:.4g} is over "
                                f"the bound {bound:g} (--max-grad-norm)")
        return None

    def push(self, request: PushRequest, wire_bytes: int = 0, caller: Caller = UNPROVED) -> PushReply:
        self._check_kind(request)
        self._check_owned(request.rows, "PushRequest.row_grads")
        poison = self._poison(request)
        with self.cond:
            self._touch(request.worker_id, caller)
            try:
                return self._push_member(request, wire_bytes, poison)
            except Rejected:
                self.accounts[request.worker_id]["pushes_refused"] += 1
                raise

    def _push_member(self, request: PushRequest, wire_bytes: int, poison: Rejected | None) -> PushReply:
        """push() for a live member over its own connection, with the lock held."""
        worker, step = request.worker_id, request.step
        if step <= self.last_step.get(worker, -1):
            self.stats["duplicate_pushes"] += 1
            return PushReply(self.version, duplicate=True, applied=step < self.version)
        if not self.started:
            raise Rejected("not_started", f"training has not started ({len(self.members)} of "
                           f"{self.options.workers} workers joined)")
        if self.done:
            raise Rejected("training_done", f"training finished at version {self.version}")
        if step > self.version:
            raise Rejected("future_step", f"PushRequest.step: expected at most the current version "
                           f"{self.version}, found {step}")
        oldest = self.version if self.synchronous else self.version - self.options.staleness
        if step < oldest:
            raise Rejected("stale_step", f"PushRequest.step: expected at least {oldest} (version "
                           f"{self.version}), found {step}; pull again")
        self.last_step[worker] = step
        if poison is not None:
            # The step is spent: a synchronous round closes without this worker's push, and a resend is a
            # duplicate. Counted per worker for the report.
            self.refused_pushes[worker][poison.reason] += 1
            if self.synchronous:
                self._add_to_round(worker, None)
            raise poison
        self.stats["pushes"] += 1
        self.stats["samples"] += request.batch_size
        self.accounts[worker]["pushes_accepted"] += 1
        self.accounts[worker]["samples"] += request.batch_size
        self.push_staleness[self.version - step] += 1
        contribution = Contribution(worker, step, request.batch_size, request.dense, request.rows, request.loss,
                                    wire_bytes)
        if self.synchronous:
            self._add_to_round(worker, contribution)
        else:
            self._apply([contribution])
        return PushReply(self.version, duplicate=False, applied=self.version > step)

    def _add_to_round(self, worker: str, contribution: Contribution | None) -> None:
        """A worker's push for the current round (None: refused, the round goes on without it)."""
        if not self.pending:
            self.round_first_push = self.clock()
        self.pending[worker] = contribution
        self._maybe_close_round(self.clock())

    # -- rounds --------------------------------------------------------------------------------------------

    def _maybe_close_round(self, now: float) -> None:
        if not self.synchronous or not self.pending or self.done:
            return
        quorum = len(self.pending) >= self.options.min_workers
        complete = all(worker in self.pending for worker in self.members)
        timeout = self.options.round_timeout
        timed_out = timeout is not None and now - (self.round_first_push or now) >= timeout
        if quorum and (complete or timed_out):
            contributions = [c for c in self.pending.values() if c is not None]
            self.pending.clear()
            self.round_first_push = None
            self._apply(contributions)

    def _apply(self, contributions: list[Contribution]) -> None:
        """The next version: the contributions combined and applied (none, when every push of a round was
        refused: the version advances with the parameters unchanged)."""
        if contributions:
            if self.fedavg:
                update = combine_deltas(contributions)
                self.params.add(update)
            else:
                update = combine(contributions)
                self.params.apply(update, self.config.learning_rate_at(self.version, self.options.total_steps))
            self._progress.add(update)
        self.version += 1
        self.stats["rounds"] += 1
        if self.synchronous and len(contributions) < self.options.workers:
            self.stats["short_rounds"] += 1
        o = self.options
        if o.checkpoint_dir is not None and (self.done or self.version % o.checkpoint_every == 0):
            self._write_checkpoint()
        self.cond.notify_all()

    def tick(self) -> None:
        """Periodic work: drop silent workers, start training, close timed-out rounds, print progress."""
        with self.cond:
            now = self.clock()
            for worker, seen in list(self.members.items()):
                if now - seen > self.options.worker_timeout:
                    del self.members[worker]
                    self.stats["workers_timed_out"] += 1
                    if self.audit is not None:
                        self.audit.record("timeout", shard=self.options.shard, participant=worker,
                                          certificate=_hex(self.bindings.get(worker)), version=self.version,
                                          silent_seconds=round(now - seen, 3))
                    print(f"ps[{self.options.shard}]: worker {worker} silent for "
                          f"{self.options.worker_timeout:g} s: dropped from the live set", flush=True)
                    if not self.members:
                        self.idle_since = now
            self._update_started(now)
            self._maybe_close_round(now)
            self.cond.notify_all()
            if self.options.log_every > 0 and now - self._progress.since >= self.options.log_every \
                    and self._progress.updates:
                print(self._progress.line(self, now), flush=True)
                self._progress = _Progress(now, self.wire_bytes())

    def finished(self) -> bool:
        """Training is done, the final checkpoint written and every worker has left (or timed out)."""
        with self.cond:
            return (self.done and self.final_checkpoint_written and not self.members
                    and self.clock() - self.idle_since >= self.options.linger)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def _job_meta(self) -> dict[str, Any]:
        o = self.options
        return {"config": self.config.to_dict(), "shard": o.shard, "num_shards": o.num_shards,
                "optimizer": o.optimizer, "local_steps": o.local_steps}

    def _write_checkpoint(self) -> None:
        assert self.options.checkpoint_dir is not None
        started = time.perf_counter()
        meta = dict(self._job_meta(), last_step=self.last_step, rounds=self.stats["rounds"],
                    short_rounds=self.stats["short_rounds"])
        checkpoints.save(self.options.checkpoint_dir, self.version, self.params.state_arrays(), meta)
        self.checkpoint_seconds.append(time.perf_counter() - started)
        if self.done:
            self.final_checkpoint_written = True

    def _restore(self, found: checkpoints.Checkpoint) -> None:
        meta = found.meta
        job = self._job_meta()
        for key, value in job.items():
            if meta.get(key, JOB_META_DEFAULTS.get(key)) != value:
                raise CheckpointMismatch(f"checkpoint {found.path} belongs to another job: {key} is "
                                         f"{meta.get(key)!r}, this PS has {value!r}")
        last_step = meta.get("last_step")
        if not isinstance(last_step, dict) or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in last_step.items()):
            raise ValueError(f"checkpoint {found.path}: bad last_step")
        self.params.load_state_arrays(found.arrays)
        self.version = found.version
        self.last_step = dict(last_step)
        self.stats["rounds"] = int(meta.get("rounds", 0))
        self.stats["short_rounds"] = int(meta.get("short_rounds", 0))
        self.final_checkpoint_written = self.options.checkpoint_dir is None or self.done

    # -- status --------------------------------------------------------------------------------------------

    def status(self) -> StatusInfo:
        with self.cond:
            return StatusInfo(
                version=self.version, total_steps=self.options.total_steps, done=self.done,
                shard=self.options.shard, num_shards=self.options.num_shards, live_workers=sorted(self.members),
                rounds=self.stats["rounds"], short_rounds=self.stats["short_rounds"], pushes=self.stats["pushes"],
                duplicate_pushes=self.stats["duplicate_pushes"], rejected_calls=sum(self.rejections.values()),
                bytes_received=self.stats["bytes_received"], bytes_sent=self.stats["bytes_sent"],
                resumed_from_version=self.resumed_from)

    def wire_bytes(self) -> int:
        return self.stats["bytes_received"] + self.stats["bytes_sent"]

    def count(self, caller: Caller = UNPROVED, **amounts: int) -> None:
        """Adds to the totals (bytes_received, bytes_sent, ...) and to the caller's participant's account."""
        with self.cond:
            self.stats.update(amounts)
            self.accounts[self._account_of(caller)].update(amounts)

    def reject(self, reason: str) -> None:
        with self.cond:
            self.rejections[reason] += 1

    def report(self) -> dict[str, Any]:
        with self.cond:
            return {
                "shard": self.options.shard, "num_shards": self.options.num_shards, "version": self.version,
                "total_steps": self.options.total_steps, "done": self.done,
                "synchronous": self.synchronous, "local_steps": self.options.local_steps,
                "resumed_from_version": self.resumed_from, "rounds": self.stats["rounds"],
                "bytes_per_round": round(self.wire_bytes() / self.stats["rounds"], 1) if self.stats["rounds"] else 0.0,
                "stats": dict(self.stats), "rejections": dict(self.rejections),
                "push_staleness": {str(k): v for k, v in sorted(self.push_staleness.items())},
                "refused_pushes": {w: dict(reasons) for w, reasons in sorted(self.refused_pushes.items())},
                "limits": {"batch_size": self.options.batch_size, "max_grad_norm": self.options.max_grad_norm},
                "checkpoint_seconds": [round(t, 4) for t in self.checkpoint_seconds],
                "plan_digest": self.options.plan.digest_hex if self.options.plan else None,
                "participants": self._participants(),
                "unattributed": {key: self.accounts[UNATTRIBUTED][key] for key in ACCOUNT_FIELDS},
            }

    def _participants(self) -> list[dict[str, Any]]:
        """One entry per participant of the plan (or, without one, per worker id that joined), with its
        accounts: with "unattributed" (calls from connections no join was bound to) they add up to the totals."""
        plan = self.options.plan
        names = sorted(set(plan.participants) if plan else set(self.accounts) - {UNATTRIBUTED})
        return [dict(name=name, **{key: self.accounts[name][key] for key in ACCOUNT_FIELDS}) for name in names]


# Where calls from connections that never joined are counted.
UNATTRIBUTED = ""
ACCOUNT_FIELDS = ("samples", "pushes_accepted", "pushes_refused", "refused_calls", "bytes_received", "bytes_sent",
                  "joins", "rejoins")


def _hex(fingerprint: bytes | None) -> str | None:
    return fingerprint.hex() if fingerprint is not None else None


def _short(fingerprint: bytes | None) -> str:
    return fingerprint.hex()[:16] if fingerprint is not None else "none"


class _Progress:
    """What happened since the last progress line."""

    def __init__(self, since: float, wire_bytes: int = 0) -> None:
        self.since = since
        self.wire_bytes = wire_bytes
        self.updates = 0
        self.examples = 0
        self.loss_sum = 0.0

    def add(self, update: Update) -> None:
        self.updates += 1
        self.examples += update.examples
        self.loss_sum += update.loss * update.examples

    def line(self, ps: ParameterServer, now: float) -> str:
        elapsed = max(now - self.since, 1e-9)
        rate_bytes = (ps.wire_bytes() - self.wire_bytes) / elapsed
        return (f"ps[{ps.options.shard}] step {ps.version}/{ps.options.total_steps} "
                f"loss {self.loss_sum / max(self.examples, 1):.4f} samples/s {self.examples / elapsed:.0f} "
                f"wire MB/s {rate_bytes / 1e6:.2f} workers {len(ps.members)} short {ps.stats['short_rounds']}")

"""The runtime protocol's rules and messages, as every side sees them (protos/ is the wire form, version 2).

One home for: the protocol version, the PS service's name, methods and limits, the worker-id rule, the domain
form of the bulk messages (what runtime.wire.messages encodes and decodes), and Rejected, the refusal with a
stable reason word that a server sends back (the gRPC service maps reasons to status codes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.model.config import DLRMConfig
from runtime.rows import RowSet

PROTOCOL_VERSION = 2

SERVICE = "runtime.v1.ParameterServer"
UNARY_METHODS = ("Challenge", "Join", "Heartbeat", "Leave", "Status")
# Each bulk call exists streamed (chunks both ways) and as <method>One: one chunk each way, unary, for a
# request and reply that each fit in one chunk (no per-call stream machinery).
BULK_METHODS = ("Pull", "Push", "PushPull")

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # the largest chunk anyone may be configured to send
# Per-chunk framing (offset, sizes, CRC, tags) is well under this; gRPC's receive limit is chunk size + this.
CHUNK_OVERHEAD = 1024
MAX_RANK = 8
MAX_BATCH_SIZE = 1 << 24
# FedAvg (--local-steps K): the most local steps a job may take between pushes.
MAX_LOCAL_STEPS = 1 << 16
MAX_WAIT_MS = 60_000
# A PushPullReply is its PullReply plus a PushReply (three varints) and two field headers: at most this more.
PUSH_PULL_REPLY_EXTRA = 64
PUSH_REPLY_BOUND = 256  # a PushReply is a few varints
MAX_REQUEST_BYTES = 1 << 30  # above any job's request bound (runtime.wire.messages.request_bound) we allow
# Streamed calls one caller (one certificate; without one, one connection) may have open at once: a worker has at
# most two (a pipelined push and pull) per PS shard.
MAX_STREAMS_PER_CALLER = 4
# How floats travel: exact fp32, or fp16 / bf16 (half the bytes; the receiver widens to float32).
PRECISIONS = ("fp32", "fp16", "bf16")

# What a participant may be in a federation (runtime.federation): a worker trains; a chief hands out SDT data and
# pulls the final model.
ROLES = ("worker", "chief")

WORKER_ID_RULE = "1-128 characters [A-Za-z0-9_.-] not starting with a punctuation mark"
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Rejected(Exception):
    """A request (or reply) broke the protocol or does not fit the job's state: `reason` is a stable word a peer
    can act on, `detail` says what was expected and what was found."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def valid_worker_id(worker_id: str) -> bool:
    return _WORKER_ID.fullmatch(worker_id) is not None


def check_worker_id(worker_id: str, field: str = "worker_id") -> None:
    if not valid_worker_id(worker_id):
        raise Rejected("bad_worker_id", f"{field}: expected {WORKER_ID_RULE}, found {worker_id[:140]!r}")


def check_version(version: int, what: str) -> None:
    if version != PROTOCOL_VERSION:
        raise Rejected("bad_protocol_version",
                       f"{what}.protocol_version: expected {PROTOCOL_VERSION}, found {version}")


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as its transport proved it: the SHA-256 of the certificate its connection presented
    (for RA-TLS, of its attested RA-TLS certificate; None over an insecure transport, where nothing is proved)
    and, under RA-TLS, its Evidence (read for mrenclave, mrsigner, isv_svn, debug, tcb_status)."""

    fingerprint: bytes | None
    evidence: Any = None


# A caller over an insecure transport, and in-process callers of the state machine (tests): nothing proved.
UNPROVED = Caller(None)


@dataclass(frozen=True)
class JoinProof:
    """The federation part of a Join (runtime.federation): the role asked for, the plan digest the joiner runs,
    the PS's challenge and the participant's signature over the JoinStatement."""

    role: str = "worker"
    plan_digest: bytes = b""
    challenge: bytes = b""
    signature: bytes = b""


NO_PROOF = JoinProof()


@dataclass(frozen=True)
class PullRequest:
    """Parameters a worker wants from one PS shard: the dense ones (if `dense`) and `rows` (ids only), once the
    shard is at version >= min_version, waiting at most wait_ms; floats back in `precision`."""

    worker_id: str
    min_version: int = 0
    dense: bool = False
    rows: RowSet = RowSet.empty()
    wait_ms: int = 0
    precision: str = "fp32"


@dataclass(frozen=True)
class PullReply:
    """A shard's answer: its version, whether training is done, whether the wait was met (`ready`; if not,
    nothing else is sent), the dense parameters (flat) and the requested rows' values, in request order."""

    version: int
    done: bool
    ready: bool
    waited_seconds: float = 0.0
    dense: np.ndarray | None = None
    rows: np.ndarray | None = None


@dataclass(frozen=True)
class PushRequest:
    """One worker's gradients for one shard, computed at version `step` on batch_size examples: the shard's dense
    gradients (flat) and row gradients (a RowSet with values). With local_steps K > 1 (FedAvg) they are instead the
    model delta after K local steps from the parameters of version `step`, and batch_size the K batches' samples."""

    worker_id: str
    step: int
    batch_size: int
    loss: float
    dense: np.ndarray
    rows: RowSet
    local_steps: int = 1


@dataclass(frozen=True)
class PushReply:
    version: int
    duplicate: bool = False  # a resend of a step already received
    applied: bool = False  # the step's update is already in the parameters


@dataclass(frozen=True)
class JobInfo:
    """What a joining worker learns about the job and this shard."""

    version: int
    total_steps: int
    shard: int
    num_shards: int
    config: DLRMConfig
    synchronous: bool
    staleness: int
    heartbeat_interval: float
    max_chunk_bytes: int
    local_steps: int = 1  # > 1: FedAvg, a push is the model delta after this many local steps


@dataclass(frozen=True)
class StatusInfo:
    version: int
    total_steps: int
    done: bool
    shard: int
    num_shards: int
    live_workers: list[str]
    rounds: int
    short_rounds: int
    pushes: int
    duplicate_pushes: int
    rejected_calls: int
    bytes_received: int
    bytes_sent: int
    resumed_from_version: int

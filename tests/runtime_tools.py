"""Helpers for the runtime tests: an in-process PS on port 0 driven with raw protobuf messages, valid pushes to
mutate into bad ones, a fingerprint of all PS state, and child processes that are always reaped."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from runtime.client.ps import ShardedPS
from runtime.model import DLRMConfig
from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import PROTOCOL_VERSION, SERVICE
from runtime.rows import RowSet
from runtime.server import sharding
from runtime.server.service import start_server
from runtime.server.state import ParameterServer, PSOptions
from runtime.transport import InsecureTransport
from runtime.wire.chunks import payload_chunks
from runtime.wire.codec import Payload
from runtime.wire.messages import Shapes
from runtime.wire.tensors import encode_ids, encode_tensor
from runtime.worker import Worker

REPO = Path(__file__).resolve().parents[1]
CALL_TIMEOUT = 20.0


def _raw(value: bytes) -> bytes:
    return value


@dataclass
class RawPS:
    """An in-process PS and a channel that sends whatever bytes a test gives it."""

    ps: ParameterServer
    channel: grpc.Channel

    def unary(self, method: str, request: bytes | ps_pb2.JoinRequest) -> bytes:
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw)
        return call(raw, timeout=CALL_TIMEOUT)

    def stream(self, method: str, chunks: list[bytes]) -> bytes:
        """Send raw Chunk messages; returns the reassembled reply payload (reply chunks are trusted here)."""
        call = self.channel.stream_stream(f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw)
        replies = [tensor_pb2.Chunk.FromString(r) for r in call(iter(chunks), timeout=CALL_TIMEOUT)]
        return b"".join(c.data for c in replies)

    def bulk(self, method: str, message, chunk_size: int = 1 << 20):
        chunks = [c.SerializeToString() for c in chunk_payload(message, chunk_size)]
        reply_type = {"Pull": ps_pb2.PullReply, "Push": ps_pb2.PushReply, "PushPull": ps_pb2.PushPullReply}[method]
        return reply_type.FromString(self.stream(method, chunks))

    def join(self, worker_id: str) -> ps_pb2.JoinReply:
        raw = self.unary("Join", ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id=worker_id))
        return ps_pb2.JoinReply.FromString(raw)

    def status(self) -> ps_pb2.StatusReply:
        return ps_pb2.StatusReply.FromString(
            self.unary("Status", ps_pb2.StatusRequest(protocol_version=PROTOCOL_VERSION)))

    def pull(self, worker_id: str, rows: dict[int, np.ndarray], min_version: int = 0, dense: bool = True,
             wait_ms: int = 5000, wire_dtype: int = tensor_pb2.FLOAT32) -> ps_pb2.PullReply:
        request = ps_pb2.PullRequest(worker_id=worker_id, min_version=min_version, dense=dense, wait_ms=wait_ms,
                                     wire_dtype=wire_dtype, rows=table_rows(rows))
        return self.bulk("Pull", request)

    def push(self, request: ps_pb2.PushRequest, chunk_size: int = 1 << 20) -> ps_pb2.PushReply:
        return self.bulk("Push", request, chunk_size)


@contextlib.contextmanager
def raw_ps(**overrides) -> Iterator[RawPS]:
    options = dict(config=DLRMConfig.small(), total_steps=10, workers=2, chunk_bytes=64 * 1024,
                   max_message_bytes=8 << 20, log_every=0)
    options.update(overrides)
    ps = ParameterServer(PSOptions(**options))
    running = start_server(ps, InsecureTransport(), "127.0.0.1", 0)
    channel = grpc.insecure_channel(running.endpoint.target,
                                    options=[("grpc.max_send_message_length", 64 << 20),
                                             ("grpc.max_receive_message_length", 64 << 20)])
    try:
        yield RawPS(ps, channel)
    finally:
        channel.close()
        running.server.stop(0).wait(5)


@contextlib.contextmanager
def ps_with_clients(options: PSOptions) -> Iterator[tuple[ParameterServer, list[ShardedPS]]]:
    """An in-process PS serving plaintext gRPC on loopback, and one client per worker of `options` (worker0,
    worker1, ...; not joined yet). Closes the clients and stops the server on the way out."""
    ps = ParameterServer(options)
    net = InsecureTransport()
    running = start_server(ps, net, "127.0.0.1", 0)
    clients = [ShardedPS([running.endpoint], net, f"worker{i}") for i in range(options.workers)]
    try:
        yield ps, clients
    finally:
        for client in clients:
            client.close()
        running.server.stop(0).wait(5)


def batch_rows(config: DLRMConfig, seed: int, count: int = 8, shard: int = 0,
               num_shards: int = 1) -> dict[int, np.ndarray]:
    """A few sorted distinct row ids per table, only those the given shard owns."""
    rng = np.random.default_rng(seed)
    rows = {}
    for t, size in enumerate(config.table_sizes):
        ids = np.unique(rng.integers(0, size, count))
        ids = ids[sharding.row_shards(t, ids, num_shards) == shard]
        if ids.size:
            rows[t] = ids
    return rows


def gradients(ps: ParameterServer, rows: dict[int, np.ndarray], seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    dense = {name: rng.normal(0, 0.01, shape).astype(np.float32) for name, shape in ps.params.dense_shapes.items()}
    values = {t: rng.normal(0, 0.01, (ids.size, ps.config.embedding_dim)).astype(np.float32)
              for t, ids in rows.items()}
    return dense, values


def row_arrays(rows: dict[int, np.ndarray]) -> RowSet:
    """Decoded rows of tables in the dict's order (ids only), as a PS passes them to its parameters."""
    return RowSet(list(rows), np.array([ids.size for ids in rows.values()], dtype=np.int64),
                  np.concatenate([np.asarray(ids, dtype=np.int64) for ids in rows.values()]))


def shapes(ps: ParameterServer) -> Shapes:
    """What the PS's service decodes requests against."""
    return Shapes(ps.config.table_sizes, ps.config.embedding_dim, ps.params.dense_size)


def chunk_payload(message, chunk_size: int) -> Iterator[tensor_pb2.Chunk]:
    """A message (or Payload) as Chunk messages of at most chunk_size data bytes (at least one)."""
    payload = message if isinstance(message, Payload) else Payload(message)
    for raw in payload_chunks(payload, chunk_size):
        yield tensor_pb2.Chunk.FromString(raw)


def table_rows(rows: dict[int, np.ndarray], values: dict[int, np.ndarray] | None = None) -> ps_pb2.TableRows:
    """A TableRows message of these tables' ids (and values), in dict order."""
    message = ps_pb2.TableRows(tables=list(rows), counts=[ids.size for ids in rows.values()])
    if rows:
        message.ids.CopyFrom(encode_ids(np.concatenate(list(rows.values()))))
    if values is not None and rows:
        message.values.CopyFrom(encode_tensor(np.concatenate([values[t] for t in rows])))
    return message


def push_request(worker_id: str, step: int, dense: dict, rows: dict, values: dict, batch_size: int = 16,
                 loss: float = 0.5) -> ps_pb2.PushRequest:
    """dense: gradients by name, flattened in dict order (give them in the shard's canonical order)."""
    flat = np.concatenate([grad.reshape(-1) for grad in dense.values()]) if dense else np.zeros(0, np.float32)
    return ps_pb2.PushRequest(worker_id=worker_id, step=step, batch_size=batch_size, loss=loss,
                              dense_grads=encode_tensor(flat), row_grads=table_rows(rows, values))


def state_fingerprint(ps: ParameterServer) -> str:
    """A digest of the training state (parameters, version, membership, pending and accepted pushes); counters
    of rejections, duplicates and bytes are not state."""
    h = hashlib.sha256()
    with ps.cond:
        h.update(json.dumps([ps.version, sorted(ps.members), sorted(ps.pending), ps.last_step, ps.started,
                             ps.stats["pushes"], ps.stats["rounds"]], sort_keys=True).encode())
        for name in sorted(ps.params.dense):
            h.update(name.encode() + ps.params.dense[name].tobytes())
        for table, mask in zip(ps.params.tables, ps.params.initialized, strict=True):
            h.update(table.tobytes() + mask.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# child processes


class Children:
    """Child processes that are always killed and reaped (use as a context manager)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, *args: str, prefix: Sequence[str] = ()) -> subprocess.Popen:
        """python -m args..., run under `prefix` if given (e.g. an emulated host's Network.command(host, []))."""
        log = self.directory / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            process = subprocess.Popen([*prefix, sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=REPO,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.processes[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running after {timeout} s; log:\n{self.log(name)[-3000:]}") from None

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(10)


def in_process_worker(client, max_steps: int | None = None) -> Worker:
    """A Worker driven by a test in its own process: no warm-up, no progress lines, 5 s pull waits."""
    args = argparse.Namespace(pull_wait_ms=5000, reconnect_timeout=30.0, warmup_steps=0, log_every=0.0,
                              tb_every=10, max_steps=max_steps, pipeline=False)
    return Worker(client, args)


def wait_for_file(path: Path, timeout: float, process: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before writing {path}")
        time.sleep(0.05)
    raise AssertionError(f"{path} not written within {timeout} s")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

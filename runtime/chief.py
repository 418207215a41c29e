"""The SDT chief: python -m runtime.chief --ps ADDRESSES --workers N (--data FILES | --synthetic ROWS).

Holds the dataset and the job definition. Workers attest (RA-TLS, the same measured-MRENCLAVE policy as every
other link), join under one of the job's worker ids, take the job spec (PS addresses, batch size, data layout,
model config) and stream their data shard: shard i of --data is every n-th line starting at line i over all
files (as `runtime.worker --data-shard i/n`); shard i of --synthetic is the i-th synthetic partition (as the HFL
launcher gives worker i). The chief reads its files as it streams, in chunks of whole lines of at most
--chunk-bytes, each with a CRC-32, so it never holds a whole shard; a worker that asks again (e.g. after a
restart) gets its shard again from the beginning. Once every worker has reported its metrics, the chief pulls
the final parameters from the PS and writes the model (a SavedModel and the raw parameters) to its --out only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from runtime import transport
from runtime.client.chief import pull_final_parameters
from runtime.client.remote import RemoteError
from runtime.data import (
    DataError,
    ShardSource,
    add_format_arguments,
    add_max_bad_fraction_argument,
    shard_sources,
    synthetic_partitions,
)
from runtime.federation import AuditLog, ChallengeBook, Plan
from runtime.federation import arguments as federation_arguments
from runtime.federation.admission import caller_fields, join_refusal
from runtime.model import add_model_arguments, model_config
from runtime.model.export import evaluate_saved_model, export_model
from runtime.proto import chief_pb2, chief_pb2_grpc, ps_pb2, tensor_pb2
from runtime.protocol import DEFAULT_CHUNK_SIZE, PROTOCOL_VERSION, WORKER_ID_RULE, Caller, JoinProof, valid_worker_id
from runtime.report import write_json_atomically
from runtime.server.service import status_code
from runtime.wire.chunks import crc32c


def shard_digest(source: ShardSource) -> tuple[int, int]:
    """(size, CRC-32C) of a shard as streamed: a first pass over its lines, so that the shard travels in the
    same chunked format as every large payload (each chunk carries the whole payload's size and checksum)."""
    size = crc = 0
    for line in source.lines():
        size += len(line)
        crc = crc32c(line, crc)
    return size, crc


def shard_chunks(source: ShardSource, chunk_bytes: int, digest: tuple[int, int]) -> Iterator[tensor_pb2.Chunk]:
    """The shard as Chunks of whole lines, each at most chunk_bytes (or one line if a line is longer)."""
    total, crc = digest
    offset = size = 0
    pending: list[bytes] = []

    def chunk() -> tensor_pb2.Chunk:
        return tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=offset, total_size=total, crc32c=crc,
                                data=b"".join(pending))

    for line in source.lines():
        if pending and size + len(line) > chunk_bytes:
            yield chunk()
            offset += size
            pending, size = [], 0
        pending.append(line)
        size += len(line)
    if offset + size != total:
        raise DataError(f"shard data changed while streaming: {offset + size} bytes now, {total} when sized")
    yield chunk()


@dataclass
class WorkerState:
    shard: int
    joins: int = 0
    shard_starts: int = 0
    shard_completions: int = 0
    shard_bytes_sent: int = 0
    metrics: dict[str, Any] | None = None
    mrenclave: str | None = None


@dataclass
class Chief:
    spec: chief_pb2.JobSpec
    sources: list[ShardSource]
    worker_ids: list[str]
    net: transport.Transport
    chunk_bytes: int = DEFAULT_CHUNK_SIZE
    plan: Plan | None = None  # who may run workers (in SDT, the compute provider's participants), proved how
    audit: AuditLog | None = None
    workers: dict[str, WorkerState] = field(default_factory=dict)
    # worker id -> the certificate of the connection that joined under it: the job spec, the shard and the metrics
    # of that worker go only over a connection with that certificate.
    bindings: dict[str, bytes | None] = field(default_factory=dict)
    challenges: ChallengeBook = field(default_factory=ChallengeBook)
    refused: list[str] = field(default_factory=list)
    digests: dict[int, tuple[int, int]] = field(default_factory=dict)  # shard -> (size, CRC-32C), computed once
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.workers = {wid: WorkerState(shard=i) for i, wid in enumerate(self.worker_ids)}

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        """Who is calling, as the transport proved it; a caller the transport does not admit is refused here."""
        try:
            return self.net.caller(context)
        except transport.PeerRejected as error:
            code = grpc.StatusCode.UNAUTHENTICATED if error.reason == "not_attested" else \
                grpc.StatusCode.PERMISSION_DENIED
            context.abort(code, str(error))
            raise AssertionError("abort returns only by raising") from None

    def _refuse(self, context: grpc.ServicerContext, reason: str, detail: str, worker_id: str, caller: Caller) -> None:
        self._audit("refusal", worker_id, caller, reason=reason, detail=detail)
        context.abort(status_code(reason), f"{reason}: {detail}")

    def _audit(self, event: str, worker_id: str, caller: Caller, **fields: Any) -> None:
        if self.audit is None:
            return
        self.audit.record(event, server="chief", participant=worker_id[:128], **caller_fields(caller, self.plan),
                          **fields)

    def _member(self, request: Any, context: grpc.ServicerContext, joined: bool = True) -> WorkerState:
        if request.protocol_version != PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"bad_version: protocol_version expected "
                                                               f"{PROTOCOL_VERSION}, found {request.protocol_version}")
        caller = self._caller(context)
        evidence = caller.evidence
        mrenclave = evidence.mrenclave.hex() if evidence is not None else None
        state = self.workers.get(request.worker_id)
        if state is None:
            with self.lock:
                self.refused.append(request.worker_id[:128])
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"unknown_worker: worker_id {request.worker_id[:128]!r} is not one of {self.worker_ids}")
        if joined and state.joins == 0:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not_joined: {request.worker_id} must Join first")
        if joined and self.bindings.get(request.worker_id) != caller.fingerprint:
            self._refuse(context, "not_bound", f"worker_id {request.worker_id!r} joined over another connection",
                         request.worker_id, caller)
        if mrenclave is not None:
            state.mrenclave = mrenclave
        return state

    def Challenge(self, request: ps_pb2.ChallengeRequest, context: grpc.ServicerContext) -> ps_pb2.ChallengeReply:
        caller = self._caller(context)
        if caller.fingerprint is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "not_attested: a challenge is bound to the caller's "
                          "certificate; this connection has none")
        return ps_pb2.ChallengeReply(challenge=self.challenges.issue(caller.fingerprint),
                                     federation=self.plan.federation if self.plan else "",
                                     plan_digest=self.plan.digest if self.plan else b"")

    def Join(self, request: chief_pb2.ChiefJoinRequest, context: grpc.ServicerContext) -> chief_pb2.ChiefJoinReply:
        """Under a plan, the worker's participant proof (runtime.federation), checked as the PS checks it; then
        the worker id is bound to this connection (a restarted worker, with a fresh proof, takes it over)."""
        state = self._member(request, context, joined=False)
        caller = self._caller(context)
        if self.plan is not None:
            proof = JoinProof(role=request.role or "worker", plan_digest=request.plan_digest,
                              challenge=request.challenge, signature=request.signature)
            refusal = join_refusal(self.plan, self.challenges, request.worker_id, proof.role, caller, proof)
            if refusal is not None:
                self._refuse(context, *refusal, request.worker_id, caller)
        with self.lock:
            event = "rejoin" if self.bindings.get(request.worker_id, caller.fingerprint) != caller.fingerprint \
                else "join"
            self.bindings[request.worker_id] = caller.fingerprint
            state.joins += 1
        self._audit(event, request.worker_id, caller, shard=state.shard)
        print(f"chief: {request.worker_id} joined (shard {state.shard}/{len(self.sources)}, join {state.joins})",
              flush=True)
        return chief_pb2.ChiefJoinReply(shard_index=state.shard, num_shards=len(self.sources))

    def GetJobSpec(self, request: chief_pb2.JobSpecRequest, context: grpc.ServicerContext) -> chief_pb2.JobSpec:
        self._member(request, context)
        return self.spec

    def StreamShard(self, request: chief_pb2.ShardRequest,
                    context: grpc.ServicerContext) -> Iterator[tensor_pb2.Chunk]:
        state = self._member(request, context)
        with self.lock:
            state.shard_starts += 1
            digest = self.digests.get(state.shard)
        if digest is None:
            digest = shard_digest(self.sources[state.shard])
            with self.lock:
                self.digests[state.shard] = digest
        for chunk in shard_chunks(self.sources[state.shard], self.chunk_bytes, digest):
            if not context.is_active():
                return
            # Counted as handed to gRPC, before the worker can have seen them.
            with self.lock:
                state.shard_bytes_sent += len(chunk.data)
                state.shard_completions += chunk.offset + len(chunk.data) == chunk.total_size
            yield chunk

    def ReportMetrics(self, request: chief_pb2.MetricsReport,
                      context: grpc.ServicerContext) -> chief_pb2.MetricsReply:
        state = self._member(request, context)
        try:
            metrics = json.loads(request.report_json)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad_report: report_json is not JSON ({error})")
        with self.lock:
            state.metrics = metrics
            if all(s.metrics is not None for s in self.workers.values()):
                self.done.set()
        return chief_pb2.MetricsReply()

    def report(self) -> dict[str, Any]:
        with self.lock:
            workers = {wid: {"shard": s.shard, "joins": s.joins, "shard_starts": s.shard_starts,
                             "shard_completions": s.shard_completions, "shard_bytes_sent": s.shard_bytes_sent,
                             "mrenclave": s.mrenclave, "metrics": s.metrics} for wid, s in self.workers.items()}
            return {"workers": workers, "refused_worker_ids": list(self.refused), "transport": self.net.report()}


def start_server(chief: Chief, host: str, port: int, attestation_port: int | None = None) -> tuple[grpc.Server,
                                                                                                    transport.Endpoint]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4 * len(chief.worker_ids) + 8,
                                                    thread_name_prefix="chief"), options=chief.net.server_options())
    chief_pb2_grpc.add_ChiefServicer_to_server(chief, server)
    endpoint = chief.net.add_port(server, host, port, attestation_port)
    server.start()
    return server, endpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ps", required=True, help="the PS shards, in shard order: host:port[/attestation_port],...")
    parser.add_argument("--workers", type=int, required=True, help="the job's number of workers (= data shards)")
    parser.add_argument("--worker-ids", help="comma-separated worker ids, shard i to the i-th "
                                             "(default worker0,...,worker{N-1})")
    parser.add_argument("--steps", type=int, required=True, help="the job's steps (as given to the PS)")
    transport.add_server_arguments(parser)
    parser.add_argument("--ready-file", type=Path, help="write {address, pid} as JSON here once serving")
    parser.add_argument("--report-file", type=Path, help="write the per-worker shard counters and metrics here")
    parser.add_argument("--out", type=Path, required=True,
                        help="the chief's directory: synthetic data and the final model (<out>/model: "
                             "saved_model/, parameters.npz)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, nargs="+", help="Criteo TSV files (plain or gzip)")
    data.add_argument("--synthetic", type=int, metavar="ROWS", help="instead: ROWS synthetic rows per worker")
    data.add_argument("--data-seed", type=int, default=1, help="synthetic data seed (default 1)")
    data.add_argument("--eval-data", type=Path, nargs="+",
                      help="held-out Criteo TSV files for the chief's final evaluation of the saved model")
    data.add_argument("--eval-rows", type=int, default=2048,
                      help="with --synthetic: held-out rows per worker for the final evaluation (default 2048)")
    add_format_arguments(data)
    data.add_argument("--batch-size", type=int, default=128)
    data.add_argument("--eval-batches", type=int, default=2,
                      help="held-out batches at the start of each pass over a shard (default 2)")
    add_max_bad_fraction_argument(data)
    data.add_argument("--chunk-bytes", type=int, default=1 << 20, help="largest shard chunk (default 1 MiB)")
    add_model_arguments(parser)
    transport.add_arguments(parser)
    federation_arguments.add_arguments(parser, joins=True, audit=True)


def run(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.synthetic is None):
        raise ValueError("give exactly one of --data and --synthetic")
    for name, value, low, high in (("--workers", args.workers, 1, 4096), ("--batch-size", args.batch_size, 1, 1 << 24),
                                   ("--chunk-bytes", args.chunk_bytes, 1024, 64 << 20),
                                   ("--eval-batches", args.eval_batches, 0, 1 << 20),
                                   ("--eval-rows", args.eval_rows, 1, 1 << 30)):
        if not low <= value <= high:
            raise ValueError(f"{name}: expected {low}..{high}, found {value}")
    worker_ids = args.worker_ids.split(",") if args.worker_ids else [f"worker{i}" for i in range(args.workers)]
    if len(worker_ids) != args.workers or len(set(worker_ids)) != len(worker_ids) or \
            not all(map(valid_worker_id, worker_ids)):
        raise ValueError(f"--worker-ids: expected {args.workers} distinct ids, each {WORKER_ID_RULE}, found "
                         f"{worker_ids}")
    transport.parse_endpoints(args.ps)
    config = model_config(args)
    synthetic_files = None
    if args.synthetic is not None:
        synthetic_files, eval_files = synthetic_partitions(args.out / "data", args.workers, args.synthetic,
                                                           args.eval_rows, args.data_seed, config)
        eval_paths: list[Path] = list(eval_files)
        eval_format = "tsv"
    else:
        eval_paths = list(args.eval_data or [])
        eval_format = args.file_format
    sources = shard_sources(args.data, synthetic_files, args.workers, args.file_format)
    spec = chief_pb2.JobSpec(ps_addresses=args.ps, batch_size=args.batch_size, eval_batches=args.eval_batches,
                             layout=args.layout, max_bad_fraction=args.max_bad_fraction,
                             model_config_json=json.dumps(config.to_dict()), steps=args.steps)
    federation = federation_arguments.federation_from_args(args, "chief")
    net = transport.from_args(args)
    chief = Chief(spec, sources, worker_ids, net, chunk_bytes=args.chunk_bytes,
                  plan=federation.plan if federation else None,
                  audit=AuditLog(args.audit_log) if args.audit_log is not None else None)
    host, port = transport.parse_listen(args.listen)
    server, bound = start_server(chief, host, port, args.attestation_port)
    endpoint = transport.advertised(bound, args.advertise)
    print(f"chief: serving {net.security} on {endpoint}"
          f"{f' (bound {bound.host})' if bound.host != endpoint.host else ''}; {args.workers} workers, shards "
          f"{'of ' + ' '.join(map(str, args.data)) if args.data else 'synthetic'}", flush=True)
    if args.ready_file is not None:
        write_json_atomically(args.ready_file, {"address": str(endpoint), "pid": os.getpid()})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _n, _f: stop.set())
    deadline = time.monotonic() + args.timeout
    while not chief.done.wait(0.2) and not stop.is_set() and time.monotonic() < deadline:
        pass
    server.stop(grace=1.0).wait(5)
    report = chief.report()
    if args.report_file is not None:
        write_json_atomically(args.report_file, report)
    if not chief.done.is_set():
        print("chief: stopped before every worker reported", flush=True)
        return 1
    started = time.perf_counter()
    config, dense, tables = pull_final_parameters(args.ps, net, args.steps, federation)
    saved = export_model(config, dense, tables, args.out / "model")
    report["model"] = {"saved_model": str(saved), "parameters": str(saved.parent / "parameters.npz"),
                       "export_seconds": round(time.perf_counter() - started, 3)}
    if args.report_file is not None:
        write_json_atomically(args.report_file, report)
    print(f"chief: final model in {saved.parent} (SavedModel and parameters.npz)", flush=True)
    if eval_paths:
        report["final_eval"] = evaluate_saved_model(saved, eval_paths, config, args.layout, eval_format)
        if args.report_file is not None:
            write_json_atomically(args.report_file, report)
        e = report["final_eval"]
        if e["examples"]:
            auc = f"{e['auc']:.4f}" if e.get("auc") is not None else "n/a"
            print(f"chief: final evaluation of the saved model on {e['examples']} held-out examples: loss "
                  f"{e['log_loss']:.4f} accuracy {e['accuracy']:.4f} AUC {auc}", flush=True)
    print(f"chief: done; shard bytes sent: "
          f"{ {w: s['shard_bytes_sent'] for w, s in report['workers'].items()} }", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = transport.command_parser("python -m runtime.chief", __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, ConnectionError, RuntimeError, RemoteError, DataError) as error:
        print(f"chief: error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

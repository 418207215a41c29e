"""The parameter server: python -m runtime.ps (--help lists the options).

Holds one shard of the DLRM parameters (runtime.server.sharding), tracks which workers are alive, combines their
pushes and applies the optimizer, serves pulls, writes checkpoints and resumes from them.

Update rules:
- synchronous (default): step s is applied once every live worker has pushed s, combined in worker-id order
  (runtime.server.aggregation), so the result equals single-process training on the concatenated batches. With
  --min-workers M and --round-timeout T a round also closes T seconds after its first push if at least M
  pushes are in; a worker silent for --worker-timeout seconds is dropped from the live set. Rounds applied
  with fewer pushes than --workers are counted as short.
- asynchronous (--staleness K): each push is applied on arrival if it was computed at most K versions ago.
- FedAvg (--local-steps K > 1, synchronous, SGD): each worker takes K SGD steps on its own copy of what it pulled
  and pushes the model delta; a round's deltas are averaged, each parameter over the workers that pushed a delta
  for it, weighted by their samples, and added to the parameters (runtime.server.aggregation).
Training starts once --workers workers have joined (or, after --start-timeout, at least --min-workers).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from pathlib import Path

from runtime import transport
from runtime.federation import arguments as federation_arguments
from runtime.model import add_model_arguments, model_config
from runtime.protocol import DEFAULT_CHUNK_SIZE
from runtime.report import write_json_atomically
from runtime.server.parameters import OPTIMIZERS
from runtime.server.service import start_server
from runtime.server.state import CheckpointMismatch, ParameterServer, PSOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    transport.add_server_arguments(parser)
    parser.add_argument("--ready-file", type=Path,
                        help="write {host, port, attestation_port, address, pid} as JSON here once serving")
    parser.add_argument("--report-file", type=Path, help="write the final statistics as JSON here")
    parser.add_argument("--steps", type=int, required=True, help="parameter updates to train for")
    parser.add_argument("--workers", type=int, required=True, help="the job's number of workers")
    parser.add_argument("--min-workers", type=int,
                        help="synchronous: fewest pushes a round may be applied with (default: --workers)")
    parser.add_argument("--round-timeout", type=float,
                        help="synchronous: seconds after a round's first push after which it is applied with "
                             "the pushes that are in, if at least --min-workers (default: wait for every live "
                             "worker)")
    parser.add_argument("--staleness", type=int,
                        help="asynchronous updates, accepting gradients computed at most K versions ago "
                             "(default: synchronous)")
    parser.add_argument("--local-steps", type=int, default=1,
                        help="FedAvg: workers take K local SGD steps per round and push the model delta, which "
                             "the PS averages (sample-weighted; rows over the workers that touched them) and adds; "
                             "synchronous and --optimizer sgd only; told to workers when they join (default 1: "
                             "every push is one batch's gradients)")
    parser.add_argument("--worker-timeout", type=float, default=10.0,
                        help="seconds without a call from a worker before it is dropped (default 10)")
    parser.add_argument("--start-timeout", type=float, default=60.0,
                        help="seconds to wait for all --workers to join before starting with --min-workers "
                             "(default 60)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="default sgd")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="write checkpoints here and resume from the newest one (default: none)")
    parser.add_argument("--checkpoint-every", type=int, default=100,
                        help="versions between checkpoints; one is also written at the end (default 100)")
    parser.add_argument("--shard", type=int, default=0, help="this PS's index among --num-shards (default 0)")
    parser.add_argument("--num-shards", type=int, default=1, help="PS processes sharing the parameters")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"largest chunk sent or accepted (default {DEFAULT_CHUNK_SIZE})")
    parser.add_argument("--batch-size", type=int,
                        help="the job's per-worker batch size: a push claiming more examples is refused "
                             "(batch_too_large), so no worker can inflate its weight in the average (default: no "
                             "check)")
    parser.add_argument("--max-grad-norm", type=float, default=100.0,
                        help="refuse a push whose gradient L2 norm is larger (gradient_too_large; honest DLRM "
                             "gradients are about 1); a refused push is counted per worker and a synchronous "
                             "round closes without it; 0: no bound (default 100)")
    parser.add_argument("--max-message-bytes", type=int,
                        help="largest reassembled request (default: the most a request of this job's model can "
                             "need, at most 1 GiB); memory is taken as chunks arrive, not as a request claims")
    parser.add_argument("--stream-timeout", type=float, default=30.0,
                        help="seconds a streamed request may take to arrive before it is cancelled (default 30); "
                             "a caller may have 4 streamed calls open at once")
    parser.add_argument("--linger", type=float, default=5.0,
                        help="seconds to keep serving after training is done and every worker left "
                             "(default 5)")
    parser.add_argument("--log-every", type=float, default=2.0,
                        help="seconds between progress lines; 0 for none (default 2)")
    add_model_arguments(parser)
    transport.add_arguments(parser)
    federation_arguments.add_arguments(parser, joins=False, audit=True)


def options_from_args(args: argparse.Namespace) -> PSOptions:
    return PSOptions(
        config=model_config(args), total_steps=args.steps, workers=args.workers, shard=args.shard,
        num_shards=args.num_shards, min_workers=args.min_workers, round_timeout=args.round_timeout,
        staleness=args.staleness, local_steps=args.local_steps, worker_timeout=args.worker_timeout,
        start_timeout=args.start_timeout,
        optimizer=args.optimizer, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        chunk_bytes=args.chunk_bytes, batch_size=args.batch_size, max_grad_norm=args.max_grad_norm,
        max_message_bytes=args.max_message_bytes, stream_timeout=args.stream_timeout,
        linger=args.linger, log_every=args.log_every, plan=federation_arguments.plan_from_args(args),
        audit_log=args.audit_log)


def main(argv: list[str] | None = None) -> int:
    parser = transport.command_parser("python -m runtime.ps", __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        host, port = transport.parse_listen(args.listen)
        net = transport.from_args(args)
        ps = ParameterServer(options)
        running = start_server(ps, net, host, port, args.attestation_port)
        endpoint = transport.advertised(running.endpoint, args.advertise)
        gc.freeze()  # the start-up objects are long-lived: keep them out of every full collection
    except (ValueError, OSError, CheckpointMismatch) as error:
        print(f"ps: error: {error}", file=sys.stderr, flush=True)
        return 2
    bound = f", bound {running.endpoint.host}" if running.endpoint.host != endpoint.host else ""
    print(f"ps[{options.shard}]: serving {net.security} on {endpoint} (version {ps.version}, "
          f"{options.total_steps} steps, {options.workers} workers{bound})", flush=True)
    plan = options.plan
    print(f"ps[{options.shard}]: " + (f"federation {plan.federation}, plan {plan.digest_hex[:16]}, participants "
                                      f"{', '.join(sorted(plan.participants))}" if plan else
                                      "no federation plan: any attested worker may join under any free worker id"),
          flush=True)
    if args.ready_file is not None:
        write_json_atomically(args.ready_file, {"host": endpoint.host, "port": endpoint.port,
                                                "attestation_port": endpoint.attestation_port,
                                                "address": str(endpoint), "pid": os.getpid()})
    stop = threading.Event()
    signals = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: (signals.setdefault("signal", number), stop.set()))
    while not stop.wait(0.1):
        ps.tick()
        if ps.finished():
            break
    running.server.stop(grace=1.0).wait(5)
    if args.report_file is not None:
        write_json_atomically(args.report_file, dict(ps.report(), transport=net.report()))
    if "signal" in signals:
        print(f"ps[{options.shard}]: stopped by signal {signals['signal']} at version {ps.version}", flush=True)
        return 128 + signals["signal"]
    print(f"ps[{options.shard}]: done at version {ps.version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Native TensorFlow baselines for DLRM: ParameterServerStrategy training and the single-process compute ceiling.

    python bench/tf_ps_baseline.py tfps --train FILE... --eval FILE... --batch-size B --steps S [--workers 2]
        [model options as runtime.launch] --report OUT.json
    python bench/tf_ps_baseline.py ceiling --train FILE... --batch-size B --steps S [model options] --report OUT.json

tfps: TensorFlow's own tf.distribute.experimental.ParameterServerStrategy with a ClusterCoordinator (this
process), one PS and --workers workers, each a tf.distribute.Server in its own local process. There is no
security: TensorFlow's distributed runtime offers none. The model is the same DLRM as runtime.model (same
architecture, same initial values from runtime.model's init functions, mean BCE, plain SGD at --learning-rate),
written as native TensorFlow: variables on the PS, tf.nn.embedding_lookup (the PS gathers the rows, the
gradients are IndexedSlices applied with scatter_sub on the PS). ParameterServerStrategy trains asynchronously:
every scheduled step is one worker's batch, read against the current variables and applied on its own, so
S x workers steps of B samples are scheduled (the samples of S synchronous steps of our runtime; compare.py
passes --learning-rate lr / workers, which makes the SGD step per sample the same as ours).
Each worker reads its own line shard of the TSV files (lines i, i+W, ... as CriteoReader's shard=(i, W)) with a
tf.data pipeline on the worker (TextLineDataset, decode_csv, hex decoding in TensorFlow ops; the same
preprocessing as runtime.data). Held-out metrics: the final variables are read back and scored with
runtime.model.reference.evaluate, the code our runtime's numbers are compared with.

ceiling: runtime.model.DLRM loss_and_grads plus the numpy SGD of runtime.model.reference in one process, on batches
parsed before the clock starts: the compute rate of one training process with TensorFlow's default thread pool.

Both print one JSON report (also written to --report): samples/s, step time, peak RSS per process and, for
tfps, TCP bytes on the cluster's connections per step and held-out metrics.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.data import CriteoReader
from runtime.metrics import loss_curve
from runtime.model import (
    DLRM,
    NUM_CATEGORICAL,
    NUM_DENSE,
    DLRMConfig,
    add_model_arguments,
    init_dense_params,
    init_embedding_table,
    model_config,
)
from runtime.model.reference import ModelParams, evaluate, train_single_process

SERVER_START_TIMEOUT = 180.0  # three TensorFlow imports at once are slow on a busy 2-core machine
STOP_TIMEOUT = 5.0
WORKER_TRAIN_FILE = "train.tsv"  # relative: each worker server runs in its own directory (see _split_shards)
EVAL_BATCH_SIZE = 4096


# ---------------------------------------------------------------------------------------------------------
# Process measurements shared with compare.py


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class TcpBytes:
    """Payload bytes of the TCP connections accepted on given local ports, both directions, from the kernel.

    `ss -ti` reports tcp_info bytes_received and bytes_sent per socket. Counting only sockets whose local port
    is one of the servers' listening ports sees each connection once (its server end) and nothing else on the
    machine. These are TCP payload bytes: gRPC/HTTP2 framing and TLS records included, TCP/IP headers not.
    A connection closed between two samples loses what it carried since the previous sample, so callers sample
    while the connections are open.
    """

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = sorted(set(ports))
        self.seen: dict[tuple[str, str], int] = {}

    def connections(self) -> dict[tuple[str, str], int]:
        """(local, peer) -> bytes so far, for each open connection accepted on self.ports."""
        if not self.ports:
            return {}
        query = " or ".join(f"sport = :{port}" for port in self.ports)
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( {query} )"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        result: dict[tuple[str, str], int] = {}
        key: tuple[str, str] | None = None
        for line in out.splitlines():
            if not line.startswith((" ", "\t")):
                fields = line.split()
                key = (fields[-2], fields[-1]) if len(fields) >= 2 else None
                continue
            if key is None:
                continue
            total = 0
            for item in line.split():
                name, _, value = item.partition(":")
                if name in ("bytes_sent", "bytes_received"):
                    total += int(value)
            result[key] = total
            key = None
        return result

    def sample(self) -> int:
        """Remember the latest count of every open connection; returns the total over all connections seen."""
        for key, count in self.connections().items():
            self.seen[key] = max(self.seen.get(key, 0), count)
        return sum(self.seen.values())


def free_ports(count: int) -> list[int]:
    """Ports the kernel gave for port 0, all held open at once so they are distinct. TF_CONFIG-style cluster
    specs need real ports, so another process could still take one before the server binds it (reported as a
    failed start)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def die_with_parent() -> None:
    """preexec_fn: PR_SET_PDEATHSIG, so a child dies with this process even if it is killed outright."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


# ---------------------------------------------------------------------------------------------------------
# The model in native TensorFlow


def _tril_indices(features: int) -> list[int]:
    """Row-major strict lower triangle of the features x features dot matrix: the reference's pair order."""
    return [i * features + j for i in range(features) for j in range(i)]


class BaselineDLRM:
    """DLRM with its parameters as tf.Variables (on the PS when created in a ParameterServerStrategy scope).

    Same math as runtime.model.DLRM: bottom MLP (ReLU after every layer), bottom output first then the 26
    embeddings, strict-lower-triangle dots, top MLP with a linear last layer, mean sigmoid cross-entropy.
    """

    def __init__(self, config: DLRMConfig, total_updates: int, count_staleness: bool = False) -> None:
        import tensorflow as tf

        self.tf = tf
        self.config = config
        self.count_staleness = count_staleness
        initial = init_dense_params(config)
        self.dense = {name: tf.Variable(initial[name], name=name.replace("/", "_"))
                      for name, _ in config.layer_shapes()}
        self.tables = [tf.Variable(init_embedding_table(config, t), name=f"table_{t}")
                       for t in range(config.num_tables)]
        self.tril = tf.constant(_tril_indices(config.num_tables + 1), dtype=tf.int32)
        # Update i's learning rate is rates[i] (DLRMConfig.learning_rate_at, the runtime's schedule); the counter
        # lives with the variables, so asynchronous workers number their updates in the order they take them.
        self.rates = tf.constant([config.learning_rate_at(i, total_updates) for i in range(total_updates)],
                                 tf.float32)
        self.updates = tf.Variable(0, dtype=tf.int64, name="updates")

    def _mlp(self, x, prefix: str, layers: int, relu_last: bool):
        tf = self.tf
        for i in range(layers):
            x = tf.matmul(x, self.dense[f"{prefix}/{i}/kernel"]) + self.dense[f"{prefix}/{i}/bias"]
            if relu_last or i < layers - 1:
                x = tf.nn.relu(x)
        return x

    def logits(self, dense, cat):
        tf = self.tf
        x = self._mlp(dense, "bottom", len(self.config.bottom_mlp), relu_last=True)
        embedded = [tf.nn.embedding_lookup(table, cat[:, t]) for t, table in enumerate(self.tables)]
        stacked = tf.stack([x, *embedded], axis=1)  # [B, 1 + T, dim], bottom output first
        dots = tf.matmul(stacked, stacked, transpose_b=True)
        features = self.config.num_tables + 1
        pairs = tf.gather(tf.reshape(dots, [-1, features * features]), self.tril, axis=1)
        top = self._mlp(tf.concat([x, pairs], axis=1), "top", len(self.config.top_mlp), relu_last=False)
        return tf.reshape(top, [-1])

    def sgd_step(self, dense, cat, labels):
        """One plain-SGD step on this batch; returns the mean loss before the update, and with count_staleness
        (loss, staleness): the updates other workers applied between the step's first read and its gradients, as
        our PS counts its pushes' staleness. TensorFlow reads each variable when an op first uses it, so this
        counts from a read of the update counter that the forward pass waits for. The two extra counter reads
        cost TF-PS about 10% of its b128 throughput (6.4k against 7.1k samples/s), hence opt-in."""
        tf = self.tf
        variables = [*self.dense.values(), *self.tables]
        read_at = self.updates.read_value() if self.count_staleness else None
        with tf.control_dependencies([read_at] if read_at is not None else []), tf.GradientTape() as tape:
            logits = self.logits(dense, cat)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        grads = tape.gradient(loss, variables)
        # Ops on one variable run in program order, so this step's own increment is between the two reads.
        taken = self.updates.assign_add(1) - 1
        result = loss
        if read_at is not None:
            with tf.control_dependencies([g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]):
                result = (loss, self.updates.read_value() - read_at - 1)
        update = tf.minimum(taken, tf.cast(tf.size(self.rates), tf.int64) - 1)
        learning_rate = tf.gather(self.rates, update)
        for variable, grad in zip(variables, grads, strict=True):
            if isinstance(grad, tf.IndexedSlices):  # embedding tables: only the looked-up rows, repeats summed
                variable.scatter_sub(tf.IndexedSlices(learning_rate * grad.values, grad.indices,
                                                      grad.dense_shape))
            else:
                variable.assign_sub(learning_rate * grad)
        return result

    def params(self) -> ModelParams:
        """The current values as numpy arrays (read from wherever the variables live)."""
        return ModelParams(dense={name: v.numpy() for name, v in self.dense.items()},
                           tables=[t.numpy() for t in self.tables])


def parse_tsv_batch(lines, table_sizes: Sequence[int]):
    """A batch of Criteo TSV lines -> (dense [B,13] float32, cat [B,26] int64, labels [B] float32) in TensorFlow
    ops, with runtime.data's preprocessing: missing -> 0, negatives -> 0, ln(x + 1); hex hash mod table size.

    Unlike CriteoReader it does not skip bad lines: a malformed line fails the batch (the benchmark's data is
    generated and checked by runtime.data).
    """
    import tensorflow as tf

    defaults = [tf.constant(0, tf.int64)] * (1 + NUM_DENSE) + [tf.constant("", tf.string)] * NUM_CATEGORICAL
    fields = tf.io.decode_csv(lines, defaults, field_delim="\t", use_quote_delim=False)
    labels = tf.cast(fields[0], tf.float32)
    ints = tf.maximum(tf.stack(fields[1:1 + NUM_DENSE], axis=1), 0)
    dense = tf.math.log(tf.cast(ints, tf.float32) + 1.0)
    hexes = tf.stack(fields[1 + NUM_DENSE:], axis=1)  # [B, 26] strings of 0-8 hex digits
    length = tf.cast(tf.strings.length(hexes), tf.int64)[..., None]
    chars = tf.cast(tf.io.decode_raw(hexes, tf.uint8, fixed_length=8), tf.int64)  # zero-padded on the right
    digits = tf.where(chars <= ord("9"), chars - ord("0"), tf.bitwise.bitwise_or(chars, 32) - (ord("a") - 10))
    position = tf.range(8, dtype=tf.int64)
    shift = 4 * (length - 1 - position)  # digit k of an n-digit number has weight 16^(n-1-k)
    terms = tf.where(position < length, tf.bitwise.left_shift(digits, tf.maximum(shift, 0)), 0)
    raw = tf.reduce_sum(terms, axis=-1)
    cat = tf.math.floormod(raw, tf.constant(table_sizes, tf.int64))
    return dense, cat, labels


# ---------------------------------------------------------------------------------------------------------
# The ParameterServerStrategy cluster


def _split_shards(paths: Sequence[Path], workers: int, directory: Path) -> list[Path]:
    """Line shards of the training files, one directory per worker holding WORKER_TRAIN_FILE: worker i gets
    lines i, i+W, ... counted over all files in order, exactly CriteoReader(shard=(i, W)). Each worker server
    runs in its directory, so the one dataset function the coordinator ships to every worker reads that
    worker's own shard."""
    dirs = [directory / f"worker{i}" for i in range(workers)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    outputs = [open(d / WORKER_TRAIN_FILE, "wb") for d in dirs]  # noqa: SIM115 - closed below
    try:
        index = 0
        for path in paths:
            with open(path, "rb") as source:
                for line in source:
                    outputs[index % workers].write(line if line.endswith(b"\n") else line + b"\n")
                    index += 1
    finally:
        for f in outputs:
            f.close()
    return dirs


class Cluster:
    """One PS and W workers, each `python tf_ps_baseline.py serve` (a tf.distribute.Server) in its own process;
    always stopped by close()."""

    def __init__(self, workers: int, worker_dirs: Sequence[Path], log_dir: Path) -> None:
        ports = free_ports(workers + 1)
        self.spec = {"worker": [f"localhost:{p}" for p in ports[:workers]], "ps": [f"localhost:{ports[-1]}"]}
        self.ports = ports
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = []
        cores = len(os.sched_getaffinity(0))
        # TensorFlow's PS tutorial: with fewer cores than workers + 1, give servers workers + 1 inter-op threads.
        inter_op = workers + 1 if cores < workers + 1 else 0
        roles = [("ps", 0, log_dir)] + [("worker", i, worker_dirs[i]) for i in range(workers)]
        try:
            for job, index, cwd in roles:
                log = open(log_dir / f"{job}{index}.log", "wb")  # noqa: SIM115 - closed in close()
                self.logs.append(log)
                self.processes[f"{job}{index}"] = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "serve", "--cluster", json.dumps(self.spec),
                     "--job", job, "--index", str(index), "--inter-op", str(inter_op)],
                    cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_parent)
            self._wait_listening(log_dir)
        except BaseException:
            self.close()
            raise

    def _wait_listening(self, log_dir: Path) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        pending = dict(zip(self.processes, [self.ports[-1], *self.ports[:-1]], strict=True))
        while pending:
            for role, port in list(pending.items()):
                if self.processes[role].poll() is not None:
                    raise RuntimeError(f"TF server {role} exited with code {self.processes[role].returncode}; "
                                       f"see {log_dir / (role + '.log')}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    del pending[role]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"TF servers {sorted(pending)} not listening after {SERVER_START_TIMEOUT} s")
            time.sleep(0.1)

    def check_alive(self) -> str | None:
        for role, process in self.processes.items():
            if process.poll() is not None:
                return f"TF server {role} exited with code {process.returncode}"
        return None

    def peak_rss(self) -> dict[str, int | None]:
        return {role: peak_rss_bytes(p.pid) for role, p in self.processes.items()}

    def close(self) -> None:
        for process in self.processes.values():
            stop_process(process)
        for log in self.logs:
            log.close()
        self.logs = []


class Watchdog(threading.Thread):
    """ClusterCoordinator waits forever for a lost worker to come back; this bounds the run instead: if a
    server dies or the deadline passes, stop the servers and exit the process."""

    def __init__(self, cluster: Cluster, timeout: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.cluster = cluster
        self.deadline = time.monotonic() + timeout
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            problem = self.cluster.check_alive()
            if problem is None and time.monotonic() > self.deadline:
                problem = "timeout"
            if problem is not None:
                print(f"tfps: error: {problem}; stopping", file=sys.stderr, flush=True)
                self.cluster.close()
                os._exit(1)


def run_tfps(config: DLRMConfig, train: Sequence[Path], eval_paths: Sequence[Path], batch_size: int, steps: int,
             workers: int, work_dir: Path, timeout: float, warmup_steps: int = 5,
             count_staleness: bool = False) -> dict[str, Any]:
    worker_dirs = _split_shards(train, workers, work_dir)
    cluster = Cluster(workers, worker_dirs, work_dir)
    watchdog = Watchdog(cluster, timeout)
    watchdog.start()
    try:
        import tensorflow as tf

        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster.spec), rpc_layer="grpc")
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        with strategy.scope():
            model = BaselineDLRM(config, steps * workers, count_staleness)
        sizes = config.table_sizes

        def dataset_fn():
            lines = tf.data.TextLineDataset(WORKER_TRAIN_FILE).repeat()
            return lines.batch(batch_size, drop_remainder=True).map(
                lambda batch: parse_tsv_batch(batch, sizes)).prefetch(tf.data.AUTOTUNE)

        iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

        @tf.function
        def worker_step(iterator):
            dense, cat, labels = next(iterator)
            return strategy.run(model.sgd_step, args=(dense, cat, labels))

        wire = TcpBytes(cluster.ports)
        total_steps = steps * workers
        untimed = min(warmup_steps, steps - 1) * workers
        # The warm-up steps (real training steps) also trace the step function, register it on every server and
        # fill the input pipelines; the clock starts after them, as our workers' steady-state figures do.
        results = [coordinator.schedule(worker_step, args=(iterator,)) for _ in range(untimed)]
        coordinator.join()
        start_bytes = wire.sample()
        started = time.perf_counter()
        for _ in range(total_steps - untimed):
            results.append(coordinator.schedule(worker_step, args=(iterator,)))
        coordinator.join()
        elapsed = time.perf_counter() - started
        end_bytes = wire.sample()
        fetched = [r.fetch() for r in results]
        losses = [float(f[0] if count_staleness else f) for f in fetched]
        staleness = collections.Counter(int(behind) for _, behind in fetched) if count_staleness else {}
        rss = cluster.peak_rss()
        # While the servers still run: the coordinator's eager context registers every new function (here the
        # evaluation's) on them and logs errors once they are gone.
        held_out = evaluate(config, model.params(), CriteoReader(eval_paths, config, EVAL_BATCH_SIZE))
        rss["coordinator"] = peak_rss_bytes(os.getpid())
    finally:
        watchdog.stop.set()
        cluster.close()
    timed_samples = (total_steps - untimed) * batch_size
    samples_per_s = timed_samples / elapsed
    rounds = (total_steps - untimed) / workers
    return {
        "system": "tf-ps", "batch_size": batch_size, "workers": workers, "steps": steps,
        "samples": total_steps * batch_size, "warmup_steps_per_worker": untimed // workers,
        "timed_samples": timed_samples, "train_seconds": round(elapsed, 4),
        "samples_per_s": samples_per_s, "step_ms": 1000.0 * workers * batch_size / samples_per_s,
        "wire_bytes_per_step": (end_bytes - start_bytes) / rounds,
        "first_loss": losses[0], "last_loss": losses[-1], "held_out": held_out, "peak_rss_bytes": rss,
        # Updates by staleness, as our PS reports its pushes' (push_staleness); with --count-staleness only.
        "update_staleness": {str(k): v for k, v in sorted(staleness.items())},
        # Training loss against the samples trained on before each step, in the order the steps were scheduled
        # (asynchronous: about the samples the parameters a step read had seen, as ours reports it).
        "loss_curve": loss_curve([i * batch_size for i in range(len(losses))], losses),
        "cluster": cluster.spec, "cores": len(os.sched_getaffinity(0)),
    }


# ---------------------------------------------------------------------------------------------------------
# The single-process compute ceiling


def run_ceiling(config: DLRMConfig, train: Sequence[Path], batch_size: int, steps: int,
                warmup: int = 5) -> dict[str, Any]:
    batches = []
    for batch in CriteoReader(train, config, batch_size, drop_remainder=True):
        batches.append(batch)
        if len(batches) == warmup + steps:
            break
    if len(batches) < warmup + steps:
        raise ValueError(f"ceiling: the training data gives {len(batches)} batches of {batch_size}, "
                         f"{warmup + steps} needed")
    params = ModelParams.initial(config)
    model = DLRM(config)
    train_single_process(config, batches[:warmup], warmup, params=params, model=model)  # trace, warm caches
    started = time.perf_counter()
    train_single_process(config, batches[warmup:], steps, params=params, model=model)
    elapsed = time.perf_counter() - started
    import tensorflow as tf

    samples_per_s = steps * batch_size / elapsed
    return {"system": "ceiling", "batch_size": batch_size, "steps": steps, "samples": steps * batch_size,
            "train_seconds": round(elapsed, 4), "samples_per_s": samples_per_s,
            "step_ms": 1000.0 * batch_size / samples_per_s,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
            "cores": len(os.sched_getaffinity(0)), "peak_rss_bytes": {"process": peak_rss_bytes(os.getpid())}}


# ---------------------------------------------------------------------------------------------------------
# Command line


def _serve(args: argparse.Namespace) -> int:
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto()
    if args.inter_op:
        config.inter_op_parallelism_threads = args.inter_op
    server = tf.distribute.Server(tf.train.ClusterSpec(json.loads(args.cluster)), job_name=args.job,
                                  task_index=args.index, config=config, protocol="grpc", start=True)
    server.join()
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/tf_ps_baseline.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("tfps", "train with ParameterServerStrategy"),
                            ("ceiling", "single-process step rate of runtime.model")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--train", type=Path, nargs="+", required=True, help="Criteo TSV training files")
        p.add_argument("--batch-size", type=_positive, required=True, help="per worker")
        p.add_argument("--steps", type=_positive, required=True,
                       help="tfps: steps per worker (steps x workers are scheduled); ceiling: timed steps")
        p.add_argument("--report", type=Path, help="also write the JSON report here")
        add_model_arguments(p)
        if name == "tfps":
            p.add_argument("--eval", type=Path, nargs="+", required=True, help="held-out Criteo TSV files")
            p.add_argument("--workers", type=_positive, default=2)
            p.add_argument("--timeout", type=float, default=1800.0, help="stop everything after this many s")
            p.add_argument("--work-dir", type=Path, help="shards and server logs (default: a temporary dir)")
            p.add_argument("--count-staleness", action="store_true",
                           help="count each update's staleness (costs about 10%% of the throughput)")
    serve = sub.add_parser("serve", help="internal: one tf.distribute.Server")
    serve.add_argument("--cluster", required=True)
    serve.add_argument("--job", choices=("ps", "worker"), required=True)
    serve.add_argument("--index", type=int, required=True)
    serve.add_argument("--inter-op", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    config = model_config(args)
    if config.num_dense != NUM_DENSE or config.num_tables != NUM_CATEGORICAL:
        parser.error("the baselines read Criteo data: 13 dense and 26 categorical features")
    try:
        if args.command == "ceiling":
            report = run_ceiling(config, args.train, args.batch_size, args.steps)
        elif args.work_dir is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            report = run_tfps(config, args.train, args.eval, args.batch_size, args.steps, args.workers,
                              args.work_dir, args.timeout, count_staleness=args.count_staleness)
        else:
            with tempfile.TemporaryDirectory(prefix="tfps-") as tmp:
                report = run_tfps(config, args.train, args.eval, args.batch_size, args.steps, args.workers,
                                  Path(tmp), args.timeout, count_staleness=args.count_staleness)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"{args.command}: error: {error}", file=sys.stderr, flush=True)
        return 1
    report["config"] = config.to_dict()
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report is not None:
        args.report.write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    exit_code = main()
    # After tfps the servers are gone, and at interpreter exit TensorFlow's eager context would try to delete
    # its functions on them, retrying and logging errors for seconds. Nothing else is left to clean up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)

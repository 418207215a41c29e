"""Single-process DLRM training: the baselines the distributed runtime is checked against.

train_single_process: each step does what a synchronous PS step does for the concatenated batch of all workers:
pull the batch's unique rows from full in-memory tables, DLRM.loss_and_grads, then the same numpy SGD helpers the
PS applies. train_fedavg_single_process: FedAvg (--local-steps K) with full per-worker copies of the model.

CLI (quick learning check): python -m runtime.model.reference [--config small|kaggle] [--steps 300] [--batch 128]
    [--threads N] [--train FILE... --eval FILE...]; without files it trains on synthetic data and evaluates on a
    held-out part.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import metrics
from runtime.data import CriteoReader, synth
from runtime.model import (
    DLRM,
    Batch,
    DLRMConfig,
    apply_sgd,
    apply_sgd_rows,
    configure_threads,
    init_dense_params,
    init_embedding_table,
)


@dataclass
class ModelParams:
    """All parameters: dense MLP weights by name and every embedding table in full."""

    dense: dict[str, np.ndarray]
    tables: list[np.ndarray]

    @classmethod
    def initial(cls, config: DLRMConfig) -> ModelParams:
        return cls(dense=init_dense_params(config),
                   tables=[init_embedding_table(config, t) for t in range(config.num_tables)])

    def rows(self, batch: Batch) -> list[np.ndarray]:
        """The rows batch.unique_ids() names, per table: what a worker pulls."""
        return [table[ids] for table, (ids, _) in zip(self.tables, batch.unique_ids(), strict=True)]


def train_single_process(config: DLRMConfig, batches: Iterable[Batch], steps: int | None, *,
                         params: ModelParams | None = None, model: DLRM | None = None,
                         on_step: Callable[[int, float], None] | None = None) -> ModelParams:
    """Plain SGD (config.learning_rate_at each step of `steps`), one step per batch; `steps` batches, or all of
    them if None (then at a constant rate: a decay needs the run's length).

    Starts from `params` (updated in place) or from the seeded initialisation. Raises ValueError if the
    batches run out before `steps`.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps: expected an integer >= 0 or None, found {steps!r}")
    params = params if params is not None else ModelParams.initial(config)
    model = model if model is not None else DLRM(config)
    if steps is None and config.lr_decay:
        raise ValueError("train_single_process: lr_decay needs the number of steps")
    done = 0
    iterator = iter(batches)
    while steps is None or done < steps:
        batch = next(iterator, None)
        if batch is None:
            if steps is None:
                break
            raise ValueError(f"train_single_process: batches ran out after {done} of {steps} steps")
        batch.check(config)
        loss, dense_grads, emb_grads = model.loss_and_grads(params.dense, params.rows(batch), batch)
        lr = config.learning_rate if steps is None else config.learning_rate_at(done, steps)
        apply_sgd(params.dense, dense_grads, lr)
        for table, (ids, _), grads in zip(params.tables, batch.unique_ids(), emb_grads, strict=True):
            apply_sgd_rows(table, ids, grads, lr)
        if on_step is not None:
            on_step(done, loss)
        done += 1
    return params


def train_fedavg_single_process(config: DLRMConfig, worker_batches: Sequence[Iterable[Batch]], rounds: int,
                                local_steps: int, *, model: DLRM | None = None) -> ModelParams:
    """FedAvg in one process, written from its definition rather than from the runtime's code: every round, each
    worker copies the whole model, trains it with SGD on its next `local_steps` batches, and the model moves by the
    sample-weighted mean of the workers' changes; a dense parameter over every worker, an embedding row over the
    workers whose batches touched it (a worker that did not touch a row did not change it)."""
    params = ModelParams.initial(config)
    model = model if model is not None else DLRM(config)
    iterators = [iter(batches) for batches in worker_batches]
    for round_index in range(rounds):
        # Every local step of a round trains at the round's rate (the PS version the workers pulled).
        local_config = dataclasses.replace(config, learning_rate=config.learning_rate_at(round_index, rounds),
                                           lr_decay=0.0)
        dense_sum = {name: np.zeros(value.shape, np.float64) for name, value in params.dense.items()}
        row_sums = [np.zeros(table.shape, np.float64) for table in params.tables]
        row_samples = [np.zeros(table.shape[0], np.float64) for table in params.tables]
        total = 0
        for iterator in iterators:
            local = ModelParams({name: value.copy() for name, value in params.dense.items()},
                                [table.copy() for table in params.tables])
            samples = 0
            touched: list[set[int]] = [set() for _ in params.tables]
            for _ in range(local_steps):
                batch = next(iterator)
                batch.check(config)
                train_single_process(local_config, [batch], 1, params=local, model=model)
                samples += len(batch)
                for seen, (ids, _) in zip(touched, batch.unique_ids(), strict=True):
                    seen.update(ids.tolist())
            total += samples
            for name, value in local.dense.items():
                dense_sum[name] += samples * (value.astype(np.float64) - params.dense[name])
            for t, seen in enumerate(touched):
                ids = np.array(sorted(seen), dtype=np.int64)
                row_sums[t][ids] += samples * (local.tables[t][ids].astype(np.float64) - params.tables[t][ids])
                row_samples[t][ids] += samples
        for name, value in params.dense.items():
            value += (dense_sum[name] / total).astype(np.float32)
        for table, sums, weights in zip(params.tables, row_sums, row_samples, strict=True):
            ids = np.flatnonzero(weights)
            table[ids] += (sums[ids] / weights[ids, None]).astype(np.float32)
    return params


def evaluate(config: DLRMConfig, params: ModelParams, batches: Iterable[Batch],
             model: DLRM | None = None) -> dict[str, float]:
    """AUC, log loss and accuracy of the model over all batches."""
    model = model if model is not None else DLRM(config)
    labels, probs = [], []
    for batch in batches:
        batch.check(config)
        labels.append(batch.labels)
        probs.append(model.predict(params.dense, params.rows(batch), batch))
    if not labels:
        raise ValueError("evaluate: no examples")
    y, p = np.concatenate(labels), np.concatenate(probs)
    return {"examples": float(y.size), "auc": metrics.auc(y, p), "log_loss": metrics.log_loss(y, p),
            "accuracy": metrics.accuracy(y, p)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.model.reference",
                                     description="Train DLRM in one process and report held-out metrics.")
    parser.add_argument("--config", choices=("small", "kaggle"), default="small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="model seed and synthetic-data seed")
    parser.add_argument("--eval-rows", type=int, default=10_000, help="held-out synthetic rows")
    parser.add_argument("--train", nargs="*", default=[], help="Criteo TSV files to train on")
    parser.add_argument("--eval", nargs="*", default=[], help="Criteo TSV files to evaluate on")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (fixes the last bits of results); 0: TF default")
    args = parser.parse_args(argv)
    if args.threads:
        configure_threads(args.threads)
    config = DLRMConfig.small(seed=args.seed) if args.config == "small" else DLRMConfig.kaggle(seed=args.seed)
    if bool(args.train) != bool(args.eval):
        parser.error("--train and --eval go together")
    model = DLRM(config)
    meter = metrics.Meter()

    def report(step: int, loss: float) -> None:
        meter.update(args.batch)
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss:.4f}, {meter.lap():.0f} samples/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        train_files, eval_files = args.train, args.eval
        if not train_files:
            train_rows = args.steps * args.batch
            train_files, eval_files = synth(Path(tmp) / "synth.tsv", train_rows + args.eval_rows, args.seed,
                                            config=config, partitions=[train_rows, args.eval_rows])
        params = train_single_process(config, CriteoReader(train_files, config, args.batch), args.steps,
                                      model=model, on_step=report)
        result = evaluate(config, params, CriteoReader(eval_files, config, 4096), model)
    print("held-out: " + ", ".join(f"{k} {v:.4f}" if k != "examples" else f"{k} {int(v)}"
                                   for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

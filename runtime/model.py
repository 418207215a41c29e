"""DLRM (facebookresearch/dlrm Kaggle architecture) in TensorFlow, with parameters held outside the model.

The model owns no variables: dense parameters and the embedding rows a batch touches are passed in as arrays,
and gradients come back as arrays. That is what a parameter-server worker needs (pull rows, compute, push
gradients) and what the single-process reference trainer uses, so both run the very same TensorFlow function.

Determinism: TensorFlow runs on the CPU in float32. The ops used here (MatMul, BatchMatMul, gather,
UnsortedSegmentSum for the gather gradient, reductions) split work over the intra-op thread pool in a way fixed by
the shapes and the pool size, so repeated calls return bit-identical results, also across processes, as long as
the intra-op pool has the same size (measured: 1 and 2 threads give different last bits; the inter-op pool size
makes no difference). TensorFlow's default pool size is the machine's core count, so processes that must agree
bit for bit on different machines should call configure_threads(n) with the same n first. We do not call
tf.config.experimental.enable_op_determinism(): it is process-wide, and the results above did not need it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

# Kaggle Display Advertising Challenge vocabulary sizes (dlrm-reference.md §1), in column order C1..C26.
KAGGLE_TABLE_SIZES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
    5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
NUM_CATEGORICAL = 26
NUM_DENSE = 13
# Raw categorical values are 32-bit hashes, so a table with more rows than this could never be filled.
MAX_TABLE_SIZE = 2**32
_MAX_SEED = 2**64


def _capped(sizes: Sequence[int], cap: int | None) -> tuple[int, ...]:
    return tuple(sizes) if cap is None else tuple(min(s, cap) for s in sizes)


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    # bool is an int subclass; a JSON "true" must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"DLRMConfig.{name}: expected an integer, found {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"DLRMConfig.{name}: expected {lo} <= value <= {hi}, found {value}")
    return value


def _check_int_tuple(name: str, value: Any, lo: int, hi: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"DLRMConfig.{name}: expected a sequence of integers, found {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"DLRMConfig.{name}: expected at least one entry, found none")
    return tuple(_check_int(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


@dataclass(frozen=True)
class DLRMConfig:
    """Architecture and optimizer settings; travels in job specs as JSON (to_dict/from_dict)."""

    num_dense: int = NUM_DENSE
    table_sizes: tuple[int, ...] = field(default_factory=lambda: _capped(KAGGLE_TABLE_SIZES, 100_000))
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)
    top_mlp: tuple[int, ...] = (512, 256, 1)
    learning_rate: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so the config stays hashable and comparable.
        object.__setattr__(self, "num_dense", _check_int("num_dense", self.num_dense, 1, 4096))
        object.__setattr__(
            self, "table_sizes", _check_int_tuple("table_sizes", self.table_sizes, 1, MAX_TABLE_SIZE))
        if len(self.table_sizes) > 1024:
            raise ValueError(
                f"DLRMConfig.table_sizes: expected at most 1024 tables, found {len(self.table_sizes)}")
        object.__setattr__(self, "embedding_dim", _check_int("embedding_dim", self.embedding_dim, 1, 4096))
        object.__setattr__(self, "bottom_mlp", _check_int_tuple("bottom_mlp", self.bottom_mlp, 1, 65536))
        object.__setattr__(self, "top_mlp", _check_int_tuple("top_mlp", self.top_mlp, 1, 65536))
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"DLRMConfig.bottom_mlp: last layer width must equal embedding_dim {self.embedding_dim} "
                f"(the dot interaction needs equal widths), found {self.bottom_mlp[-1]}")
        if self.top_mlp[-1] != 1:
            raise ValueError(
                f"DLRMConfig.top_mlp: last layer must have width 1 (one logit), found {self.top_mlp[-1]}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"DLRMConfig.learning_rate: expected a finite number > 0, found {lr!r}")
        object.__setattr__(self, "learning_rate", float(lr))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0, _MAX_SEED - 1))

    @classmethod
    def kaggle(cls, max_table_size: int | None = 100_000, **overrides: Any) -> DLRMConfig:
        """The reference Kaggle architecture; tables larger than max_table_size are hashed down to it."""
        if max_table_size is not None:
            _check_int("max_table_size", max_table_size, 1, MAX_TABLE_SIZE)
        return cls(table_sizes=_capped(KAGGLE_TABLE_SIZES, max_table_size), **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> DLRMConfig:
        """A narrow model for tests and demos: Kaggle table shapes capped at 1000 rows, small MLPs."""
        args: dict[str, Any] = dict(table_sizes=_capped(KAGGLE_TABLE_SIZES, 1000), embedding_dim=16,
                                    bottom_mlp=(64, 32, 16), top_mlp=(64, 32, 1))
        args.update(overrides)
        return cls(**args)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    def interaction_width(self) -> int:
        """Top-MLP input width: bottom output plus the strict lower triangle of the (T+1)x(T+1) dots."""
        features = self.num_tables + 1
        return self.embedding_dim + features * (features - 1) // 2

    def layer_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Dense parameter names and shapes, in the canonical order used everywhere (wire, checkpoints)."""
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for prefix, fan_in, widths in (("bottom", self.num_dense, self.bottom_mlp),
                                       ("top", self.interaction_width, self.top_mlp)):
            for i, fan_out in enumerate(widths):
                shapes.append((f"{prefix}/{i}/kernel", (fan_in, fan_out)))
                shapes.append((f"{prefix}/{i}/bias", (fan_out,)))
                fan_in = fan_out
        return shapes

    @property
    def dense_size(self) -> int:
        """Number of dense parameters: the length of the flat vector that holds them all in canonical order."""
        return sum(math.prod(shape) for _, shape in self.layer_shapes())

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_dense": self.num_dense,
            "table_sizes": list(self.table_sizes),
            "embedding_dim": self.embedding_dim,
            "bottom_mlp": list(self.bottom_mlp),
            "top_mlp": list(self.top_mlp),
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DLRMConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"DLRMConfig: expected a JSON object, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"DLRMConfig: unknown field(s) {', '.join(unknown)}")
        missing = sorted(known - set(data))
        if missing:
            raise ValueError(f"DLRMConfig: missing field(s) {', '.join(missing)}")
        return cls(**dict(data))


# ---------------------------------------------------------------------------------------------------------
# Initialisation


def init_dense_params(config: DLRMConfig) -> dict[str, np.ndarray]:
    """MLP weights as in the reference: W ~ N(0, sqrt(2/(fan_in+fan_out))), b ~ N(0, sqrt(1/fan_out))."""
    # Domain-separated from the embedding stream; SeedSequence hashing is stable across numpy versions.
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([config.seed, 0x44454E5345])))
    params: dict[str, np.ndarray] = {}
    for name, shape in config.layer_shapes():
        fan_out = shape[-1]
        if name.endswith("/kernel"):
            std = math.sqrt(2.0 / (shape[0] + fan_out))
        else:
            std = math.sqrt(1.0 / fan_out)
        params[name] = rng.normal(0.0, std, size=shape).astype(np.float32)
    return params


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_INIT_CHUNK_ROWS = 1 << 16


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea, Flood 2014) on uint64 arrays; wraps modulo 2**64."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _table_keys(seed: int, tables: np.ndarray) -> np.ndarray:
    """The SplitMix64 stream key of each table in `tables` (uint64)."""
    key = _mix64(np.array([seed], dtype=np.uint64) + _GOLDEN_GAMMA)
    return _mix64(key + (tables.astype(np.uint64) + np.uint64(1)) * _GOLDEN_GAMMA)


def init_embedding_rows(config: DLRMConfig, tables: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Initial values of rows `ids`: U(-sqrt(1/n), sqrt(1/n)), n = size of the row's table.

    `tables` is one table index for all ids, or an array with each id's table (so a PS initialises the fresh
    rows of all tables of a request in one pass). Each value is a pure function of (seed, table, id, column):
    element k = id*dim + column of the SplitMix64 stream keyed by (seed, table). Any process holding any subset
    of rows therefore initialises the same values as a process holding the whole table.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-D integer array, found dtype {ids.dtype} with shape {ids.shape}")
    sizes = np.asarray(config.table_sizes, dtype=np.int64)
    if isinstance(tables, (int, np.integer)) and not isinstance(tables, bool):
        if not 0 <= tables < config.num_tables:
            raise ValueError(f"table index: expected 0 <= table < {config.num_tables}, found {tables!r}")
        limit = sizes[tables]  # one number, not one per id: a whole table can be large
        tables = np.broadcast_to(np.int64(tables), ids.shape)
    elif not (isinstance(tables, np.ndarray) and tables.dtype.kind in "iu" and tables.shape == ids.shape):
        raise ValueError(f"tables: expected a table index or an integer array shaped like ids {ids.shape}, "
                         f"found {tables!r}")
    else:
        if tables.size and (tables.min() < 0 or tables.max() >= config.num_tables):
            raise ValueError(f"tables: expected values in [0, {config.num_tables}), found range "
                             f"[{tables.min()}, {tables.max()}]")
        limit = sizes[tables]
    outside = (ids < 0) | (ids >= limit)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f"ids for table {int(tables[k])}: expected values in [0, {int(sizes[tables[k]])}), "
                         f"found {int(ids[k])}")
    dim = config.embedding_dim
    keys = _table_keys(config.seed, np.arange(config.num_tables))
    bounds = np.sqrt(1.0 / sizes)
    out = np.empty((ids.size, dim), dtype=np.float32)
    columns = np.arange(dim, dtype=np.uint64)
    for start in range(0, ids.size, _INIT_CHUNK_ROWS):
        end = start + _INIT_CHUNK_ROWS
        chunk_tables = tables[start:end]
        counter = ids[start:end].astype(np.uint64)[:, None] * np.uint64(dim) + columns[None, :]
        bits = _mix64(keys[chunk_tables, None] + (counter + np.uint64(1)) * _GOLDEN_GAMMA)
        # The top 24 bits give a float in [0, 1) that float32 holds exactly.
        unit = (bits >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))
        out[start:end] = ((2.0 * unit - 1.0) * bounds[chunk_tables, None]).astype(np.float32)
    return out


def init_embedding_table(config: DLRMConfig, table: int) -> np.ndarray:
    """A whole table, equal row for row to init_embedding_rows."""
    return init_embedding_rows(config, table, np.arange(config.table_sizes[table], dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """One minibatch: dense [B, num_dense] float32 (log-transformed), cat [B, T] int64 row ids, labels [B]."""

    dense: np.ndarray
    cat: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        for name, arr, ndim, dtype in (("dense", self.dense, 2, np.float32), ("cat", self.cat, 2, np.int64),
                                       ("labels", self.labels, 1, np.float32)):
            if not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.dtype != dtype:
                found = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"Batch.{name}: expected a {ndim}-D {np.dtype(dtype)} array, found {found}")
        b = self.labels.shape[0]
        if self.dense.shape[0] != b or self.cat.shape[0] != b:
            raise ValueError(f"Batch: row counts differ: dense {self.dense.shape[0]}, "
                             f"cat {self.cat.shape[0]}, labels {b}")
        if b == 0:
            raise ValueError("Batch: expected at least one example, found 0")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check(self, config: DLRMConfig) -> None:
        """Raise ValueError unless this batch fits config (widths, table count, ids in range)."""
        if self.dense.shape[1] != config.num_dense:
            raise ValueError(f"Batch.dense: expected {config.num_dense} columns, found {self.dense.shape[1]}")
        if self.cat.shape[1] != config.num_tables:
            raise ValueError(f"Batch.cat: expected {config.num_tables} columns, found {self.cat.shape[1]}")
        sizes = np.asarray(config.table_sizes, dtype=np.int64)
        bad = (self.cat < 0) | (self.cat >= sizes[None, :])
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"Batch.cat[{row}, {col}]: expected a row id in [0, {sizes[col]}), "
                             f"found {self.cat[row, col]}")
        if not np.isfinite(self.dense).all():
            raise ValueError("Batch.dense: found a non-finite value")

    def unique_ids(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per table: (sorted unique row ids, int64 index of each example's id in them)."""
        lookup = self.lookup()
        offsets = lookup.offsets
        return [(ids, lookup.index[:, t] - offsets[t]) for t, ids in enumerate(lookup.ids)]

    def lookup(self) -> Lookup:
        # One sort for all tables: key (table, id) as table * span + id keeps tables apart and in order.
        tables = self.cat.shape[1]
        span = int(self.cat.max()) + 1
        keys = self.cat + np.arange(tables, dtype=np.int64) * span
        unique, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(unique // span, minlength=tables)
        ids = np.split(unique % span, np.cumsum(counts)[:-1])
        return Lookup(ids, inverse.reshape(self.cat.shape).astype(np.int64, copy=False))

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Examples of all batches in order: the batch a synchronous step over several workers amounts to."""
        if not batches:
            raise ValueError("Batch.concat: expected at least one batch")
        return Batch(dense=np.concatenate([b.dense for b in batches]),
                     cat=np.concatenate([b.cat for b in batches]),
                     labels=np.concatenate([b.labels for b in batches]))


def split_flat(flat: np.ndarray, shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Named views of a flat vector holding tensors of these (name, shape)s one after another, in order."""
    views, start = {}, 0
    for name, shape in shapes:
        end = start + math.prod(shape)
        views[name] = flat[start:end].reshape(shape)
        start = end
    if start != flat.size:
        raise ValueError(f"flat vector: expected {start} values, found {flat.size}")
    return views


def join_flat(tensors: Mapping[str, np.ndarray], shapes: Iterable[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """The inverse of split_flat: tensors[name] for each (name, shape), in order, in one float32 vector."""
    shapes = list(shapes)
    flat = np.empty(sum(math.prod(shape) for _, shape in shapes), dtype=np.float32)
    for name, view in split_flat(flat, shapes).items():
        view[...] = tensors[name]
    return flat


@dataclass(frozen=True)
class Lookup:
    """The embedding rows a batch touches, as a worker pulls them: every table's sorted unique ids, and for each
    example and table the position of its row in the stack of those rows (table 0's rows, then table 1's, ...).
    The stack is what the model takes and what the PS sends back, so no per-table copies are made."""

    ids: list[np.ndarray]  # per table: sorted unique row ids
    index: np.ndarray  # [B, T] int64 positions in the stacked rows

    @property
    def rows(self) -> int:
        return sum(ids.size for ids in self.ids)

    @property
    def offsets(self) -> np.ndarray:
        """Where each table's rows start in the stack, and (last entry) their total: T + 1 values."""
        return np.cumsum([0] + [ids.size for ids in self.ids])


# ---------------------------------------------------------------------------------------------------------
# Optimisers (numpy, in place). The PS and the reference trainer share them: their updates agree bit for bit.


def apply_sgd(params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> None:
    """params[name] -= lr * grads[name] in float32, in place, for every name in grads."""
    lr32 = np.float32(lr)
    for name, grad in grads.items():
        param = params[name]
        if grad.shape != param.shape or grad.dtype != np.float32 or param.dtype != np.float32:
            raise ValueError(f"apply_sgd {name}: expected float32 gradient of shape {param.shape}, "
                             f"found {grad.dtype} {grad.shape}")
        param -= lr32 * grad


def apply_sgd_rows(table: np.ndarray, ids: np.ndarray, grads: np.ndarray, lr: float) -> None:
    """table[ids] -= lr * grads for distinct ids (as from Batch.unique_ids), float32, in place."""
    _check_rows(table, ids, grads)
    table[ids] -= np.float32(lr) * grads


def _check_rows(table: np.ndarray, ids: np.ndarray, grads: np.ndarray) -> None:
    if ids.ndim != 1 or grads.shape != (ids.shape[0],) + table.shape[1:] or grads.dtype != np.float32:
        want = (ids.shape[0],) + table.shape[1:]
        raise ValueError(f"row update: expected float32 gradients of shape {want}, "
                         f"found {grads.dtype} {grads.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"row update: expected ids in [0, {table.shape[0]}), "
                         f"found range [{ids.min()}, {ids.max()}]")
    increasing = ids.size < 2 or bool((ids[1:] > ids[:-1]).all())  # the PS's case: no sort needed
    if not increasing and np.unique(ids).size != ids.size:
        raise ValueError("row update: ids must be distinct (a repeated id would be updated once, not summed)")


class AdagradState:
    """Adagrad accumulators, TF1 AdagradOptimizer semantics (as in the cczoo HFL example).

    acc += g*g; p -= lr * g / sqrt(acc). Accumulators start at initial_accumulator (> 0, so no epsilon is
    needed), are created lazily per parameter name with the parameter's shape, and are float32.
    """

    def __init__(self, initial_accumulator: float = 0.1) -> None:
        if not initial_accumulator > 0:
            raise ValueError(f"initial_accumulator: expected > 0, found {initial_accumulator}")
        self.initial_accumulator = float(initial_accumulator)
        self.accumulators: dict[str, np.ndarray] = {}

    def _acc(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        acc = self.accumulators.get(name)
        if acc is None:
            acc = np.full(shape, self.initial_accumulator, dtype=np.float32)
            self.accumulators[name] = acc
        elif acc.shape != shape:
            raise ValueError(f"Adagrad {name}: accumulator shape {acc.shape} differs from "
                             f"parameter shape {shape}")
        return acc

    def apply(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float) -> None:
        lr32 = np.float32(lr)
        for name, grad in grads.items():
            param = params[name]
            if grad.shape != param.shape or grad.dtype != np.float32:
                raise ValueError(f"Adagrad {name}: expected float32 gradient of shape {param.shape}, "
                                 f"found {grad.dtype} {grad.shape}")
            acc = self._acc(name, param.shape)
            acc += grad * grad
            param -= lr32 * grad / np.sqrt(acc)

    def apply_rows(self, name: str, table: np.ndarray, ids: np.ndarray, grads: np.ndarray, lr: float) -> None:
        _check_rows(table, ids, grads)
        acc = self._acc(name, table.shape)
        rows_acc = acc[ids] + grads * grads
        acc[ids] = rows_acc
        table[ids] -= np.float32(lr) * grads / np.sqrt(rows_acc)


# ---------------------------------------------------------------------------------------------------------
# The TensorFlow model


def configure_threads(intra_op: int, inter_op: int | None = None) -> None:
    """Fix TensorFlow's intra-op pool size, which decides the last bits of results (see module docstring), and
    optionally the inter-op pool's, which does not. A process that shares the machine's cores with others should
    set both: with more inter-op threads than its share of cores, TensorFlow runs independent ops side by side
    and its idle pool threads spin, spending CPU the other processes need (measured on the Kaggle model at batch
    128 with one intra-op thread: 2 inter-op threads (the default on 2 cores) take 12.3 ms of CPU per training
    step where 1 takes 10.6 ms).

    Must run before TensorFlow executes its first op; afterwards TensorFlow raises RuntimeError unless the
    sizes are unchanged.
    """
    import tensorflow as tf

    for name, value in (("intra_op", intra_op), ("inter_op", inter_op)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive integer, found {value!r}")
    if tf.config.threading.get_intra_op_parallelism_threads() != intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op is not None and tf.config.threading.get_inter_op_parallelism_threads() != inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


class _Graphs:
    """The traced TensorFlow functions for one config (pure functions of their tensor inputs).

    They take five tensors: all dense parameters flattened into one vector (canonical order), the unique rows
    of all tables stacked into one [U, dim] matrix, per-example indices into that matrix [B, T], the dense
    features and the labels. Few, large arguments keep the per-call Python overhead small, calling the traced
    (concrete) functions skips tf.function's argument binding (about 0.7 ms of a 7.4 ms b128 step of the Kaggle
    model), and the None batch dimensions mean one trace serves every batch size.
    """

    def __init__(self, config: DLRMConfig) -> None:
        import tensorflow as tf  # deferred: data tools and config parsing must not pay TF's import cost

        self.config = config
        self._tf = tf
        self.layers = config.layer_shapes()
        self.sizes = [math.prod(shape) for _, shape in self.layers]
        features = config.num_tables + 1
        # Row-major strict lower triangle (i, j), j < i, of the features x features dot matrix.
        tril = [i * features + j for i in range(features) for j in range(i)]
        self._tril = tf.constant(tril, dtype=tf.int32)
        f32 = tf.float32
        signature = [
            tf.TensorSpec([sum(self.sizes)], f32),
            tf.TensorSpec([None, config.embedding_dim], f32),
            tf.TensorSpec([None, config.num_tables], tf.int64),
            tf.TensorSpec([None, config.num_dense], f32),
        ]
        self.grad_fn = tf.function(self._loss_and_grads, input_signature=signature + [tf.TensorSpec([None], f32)]
                                   ).get_concrete_function()
        self.predict_fn = tf.function(self._probabilities, input_signature=signature).get_concrete_function()

    def tensors(self, *arrays: np.ndarray) -> list:
        """numpy arrays as the tensors the concrete functions take (which, unlike tf.function, do not convert)."""
        return [self._tf.constant(array) for array in arrays]

    def _mlp(self, x, params, prefix: str, layers: int, relu_last: bool):
        tf = self._tf
        for i in range(layers):
            x = tf.matmul(x, params[f"{prefix}/{i}/kernel"]) + params[f"{prefix}/{i}/bias"]
            if relu_last or i < layers - 1:
                x = tf.nn.relu(x)
        return x

    def _logits(self, flat_params, rows, index, dense):
        tf = self._tf
        pieces = tf.split(flat_params, self.sizes)
        params = {name: tf.reshape(piece, shape) for (name, shape), piece in zip(self.layers, pieces, strict=True)}
        x = self._mlp(dense, params, "bottom", len(self.config.bottom_mlp), relu_last=True)
        embedded = tf.gather(rows, index)  # [B, T, dim]
        stacked = tf.concat([x[:, None, :], embedded], axis=1)  # bottom output first
        dots = tf.matmul(stacked, stacked, transpose_b=True)
        features = self.config.num_tables + 1
        flat = tf.reshape(dots, [-1, features * features])
        top_in = tf.concat([x, tf.gather(flat, self._tril, axis=1)], axis=1)
        logits = self._mlp(top_in, params, "top", len(self.config.top_mlp), relu_last=False)
        return tf.reshape(logits, [-1])

    def _probabilities(self, flat_params, rows, index, dense):
        return self._tf.sigmoid(self._logits(flat_params, rows, index, dense))

    def _loss_and_grads(self, flat_params, rows, index, dense, labels):
        tf = self._tf
        with tf.GradientTape() as tape:
            tape.watch([flat_params, rows])
            logits = self._logits(flat_params, rows, index, dense)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        flat_grad, row_grad = tape.gradient(loss, [flat_params, rows])
        # The gather gradient is IndexedSlices over batch positions; densifying sums them per unique row.
        return loss, flat_grad, tf.convert_to_tensor(row_grad)


def _check_float32(what: str, array: Any, shape: tuple[int, ...], note: str = "") -> None:
    """ValueError unless array is a float32 numpy array of this shape."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != shape:
        found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{what}: expected float32 {shape}{note}, found {found}")


_GRAPHS: dict[tuple, _Graphs] = {}
_GRAPHS_LOCK = threading.Lock()


class DLRM:
    """Forward/backward of DLRM for given parameters (numpy in, numpy out).

    Instances whose configs have the same layer shapes (table sizes, seed and learning rate play no part in the
    graph) share one set of traced functions, so each architecture is traced once per process.
    """

    def __init__(self, config: DLRMConfig) -> None:
        self.config = config
        key = (config.num_dense, config.num_tables, config.embedding_dim, config.bottom_mlp, config.top_mlp)
        with _GRAPHS_LOCK:
            graphs = _GRAPHS.get(key)
            if graphs is None:
                graphs = _GRAPHS[key] = _Graphs(config)
        self._graphs = graphs
        self._layers = graphs.layers

    def _flat_params(self, dense_params: Mapping[str, np.ndarray]) -> np.ndarray:
        names = [name for name, _ in self._layers]
        if set(dense_params) != set(names):
            missing = sorted(set(names) - set(dense_params))
            extra = sorted(set(dense_params) - set(names))
            raise ValueError(f"dense params: missing {missing}, unexpected {extra}")
        for name, shape in self._layers:
            _check_float32(f"dense param {name}", dense_params[name], shape)
        return join_flat(dense_params, self._layers)

    def _stacked_rows(self, emb_rows: Sequence[np.ndarray], lookup: Lookup) -> np.ndarray:
        config = self.config
        if len(emb_rows) != config.num_tables:
            raise ValueError(f"emb_rows: expected {config.num_tables} tables, found {len(emb_rows)}")
        for t, (ids, rows) in enumerate(zip(lookup.ids, emb_rows, strict=True)):
            _check_float32(f"emb_rows[{t}]", rows, (ids.shape[0], config.embedding_dim), " (one row per unique id)")
        return np.concatenate(emb_rows)

    def _check_flat(self, flat_params: np.ndarray, rows: np.ndarray, lookup: Lookup, batch: Batch) -> None:
        config = self.config
        if batch.dense.shape[1] != config.num_dense or batch.cat.shape[1] != config.num_tables:
            raise ValueError(f"batch: expected {config.num_dense} dense and {config.num_tables} categorical "
                             f"columns, found {batch.dense.shape[1]} and {batch.cat.shape[1]}")
        _check_float32("flat params", flat_params, (config.dense_size,))
        _check_float32("rows", rows, (lookup.rows, config.embedding_dim))
        if lookup.index.shape != batch.cat.shape:
            raise ValueError(f"lookup: expected an index of shape {batch.cat.shape}, found {lookup.index.shape}")

    def loss_and_grads_flat(self, flat_params: np.ndarray, rows: np.ndarray, lookup: Lookup,
                            batch: Batch) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean BCE loss and its gradients, parameters as they travel: all dense parameters in one vector
        (canonical order) and the stacked rows of batch.lookup(). Returns (loss, flat gradient, row gradients)."""
        self._check_flat(flat_params, rows, lookup, batch)
        graphs = self._graphs
        loss, flat_grad, row_grad = graphs.grad_fn(*graphs.tensors(flat_params, rows, lookup.index, batch.dense,
                                                                   batch.labels))
        return float(loss), flat_grad.numpy(), row_grad.numpy()

    def predict_flat(self, flat_params: np.ndarray, rows: np.ndarray, lookup: Lookup, batch: Batch) -> np.ndarray:
        """Click probabilities, float32 [B], parameters as in loss_and_grads_flat."""
        self._check_flat(flat_params, rows, lookup, batch)
        graphs = self._graphs
        return graphs.predict_fn(*graphs.tensors(flat_params, rows, lookup.index, batch.dense)).numpy()

    def loss_and_grads(self, dense_params: Mapping[str, np.ndarray], emb_rows: Sequence[np.ndarray],
                       batch: Batch) -> tuple[float, dict[str, np.ndarray], list[np.ndarray]]:
        """Mean BCE loss and its gradients w.r.t. the dense params and the unique rows of each table."""
        lookup = batch.lookup()
        loss, flat_grad, row_grad = self.loss_and_grads_flat(
            self._flat_params(dense_params), self._stacked_rows(emb_rows, lookup), lookup, batch)
        grads = split_flat(flat_grad, self._layers)
        offsets = lookup.offsets
        emb_grads = [row_grad[offsets[t]:offsets[t + 1]] for t in range(self.config.num_tables)]
        return loss, grads, emb_grads

    def predict(self, dense_params: Mapping[str, np.ndarray], emb_rows: Sequence[np.ndarray],
                batch: Batch) -> np.ndarray:
        """Click probabilities, float32 [B]."""
        lookup = batch.lookup()
        return self.predict_flat(self._flat_params(dense_params), self._stacked_rows(emb_rows, lookup), lookup,
                                 batch)

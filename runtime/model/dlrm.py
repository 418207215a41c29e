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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.model.batch import Batch, Lookup, join_flat, split_flat
from runtime.model.config import DLRMConfig


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
        _check_float32("rows", rows, (len(lookup.rows), config.embedding_dim))
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

"""The trained model as a TensorFlow SavedModel (serve(dense f32[B,13], cat int64[B,26])) and parameters.npz, and
the evaluation of the model exactly as exported (loaded back)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime import metrics
from runtime.data import CriteoReader
from runtime.model.batch import join_flat
from runtime.model.config import DLRMConfig
from runtime.model.dlrm import DLRM


def export_model(config: DLRMConfig, dense: dict[str, np.ndarray], tables: Sequence[np.ndarray],
                 out_dir: Path) -> Path:
    """Writes the trained DLRM to out_dir: a TensorFlow SavedModel (out_dir/saved_model; its `serve` function and
    serving signature map dense float32 [B, 13] and cat int64 [B, 26] (row ids, as Batch.cat) to click
    probabilities [B]) and the raw parameters (out_dir/parameters.npz). Returns the SavedModel directory."""
    import tensorflow as tf

    names = [name for name, _ in config.layer_shapes()]
    for t, table in enumerate(tables):
        if table.shape != (config.table_sizes[t], config.embedding_dim) or table.dtype != np.float32:
            raise ValueError(f"table {t}: expected float32 {(config.table_sizes[t], config.embedding_dim)}, "
                             f"found {table.dtype} {table.shape}")
    graphs = DLRM(config)._graphs
    offsets = np.cumsum([0, *config.table_sizes[:-1]]).astype(np.int64)

    class Served(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat_params = tf.Variable(join_flat(dense, config.layer_shapes()), trainable=False)
            self.rows = tf.Variable(np.concatenate(list(tables)), trainable=False)
            self.offsets = tf.constant(offsets)

        @tf.function(input_signature=[tf.TensorSpec([None, config.num_dense], tf.float32, name="dense"),
                                      tf.TensorSpec([None, config.num_tables], tf.int64, name="cat")])
        def serve(self, dense_features: tf.Tensor, cat: tf.Tensor) -> tf.Tensor:
            return graphs._probabilities(self.flat_params, self.rows, cat + self.offsets, dense_features)

    out_dir.mkdir(parents=True, exist_ok=True)
    module = Served()
    saved = out_dir / "saved_model"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    np.savez(out_dir / "parameters.npz", **{f"dense/{n}": dense[n] for n in names},
             **{f"table/{t}": table for t, table in enumerate(tables)})
    return saved


def evaluate_saved_model(saved: Path, paths: Sequence[Path], config: DLRMConfig, layout: str,
                         file_format: str = "tsv") -> dict[str, Any]:
    """The final evaluation, on the chief's held-out data, of the model exactly as exported (loaded back)."""
    import tensorflow as tf

    model = tf.saved_model.load(str(saved))
    labels, scores = [], []
    for batch in CriteoReader(list(paths), config, 4096, layout=layout, file_format=file_format):
        scores.append(model.serve(tf.constant(batch.dense), tf.constant(batch.cat.astype(np.int64))).numpy())
        labels.append(batch.labels)
    if not labels:
        return {"examples": 0}
    y, p = np.concatenate(labels), np.concatenate(scores)
    return {"examples": int(y.size), "log_loss": metrics.log_loss(y, p), "accuracy": metrics.accuracy(y, p),
            "auc": metrics.auc(y, p) if 0 < y.sum() < y.size else None}

"""DLRM: the configuration (and its command-line options), initial values, batches, optimisers, the TensorFlow
model, the single-process reference trainer and the SavedModel export. The names below are the package's API."""

from runtime.model.batch import Batch, Lookup, join_flat, split_flat
from runtime.model.config import (
    KAGGLE_TABLE_SIZES,
    MAX_TABLE_SIZE,
    NUM_CATEGORICAL,
    NUM_DENSE,
    DLRMConfig,
    add_model_arguments,
    model_config,
)
from runtime.model.dlrm import DLRM, configure_threads
from runtime.model.init import init_dense_params, init_embedding_rows, init_embedding_table
from runtime.model.optimizers import AdagradState, apply_sgd, apply_sgd_rows

__all__ = [
    "DLRM", "KAGGLE_TABLE_SIZES", "MAX_TABLE_SIZE", "NUM_CATEGORICAL", "NUM_DENSE", "AdagradState", "Batch",
    "DLRMConfig", "Lookup", "add_model_arguments", "apply_sgd", "apply_sgd_rows", "configure_threads",
    "init_dense_params", "init_embedding_rows", "init_embedding_table", "join_flat", "model_config", "split_flat",
]

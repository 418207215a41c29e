"""The DLRM configuration: architecture, table sizes, seed and learning rate, and the command-line options every
process that builds one takes (--model, --max-table-size, --learning-rate, --seed, --model-config)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    # The final fraction of the run's parameter updates over which the learning rate decays (see
    # learning_rate_at); 0: constant.
    lr_decay: float = 0.0
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
        decay = self.lr_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"DLRMConfig.lr_decay: expected a fraction in [0, 1), found {decay!r}")
        object.__setattr__(self, "lr_decay", float(decay))
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

    def learning_rate_at(self, update: int, total_updates: int) -> float:
        """The learning rate of parameter update `update` (0-based) of a run of `total_updates`: constant, then over
        the final ceil(lr_decay x total_updates) updates a power-2 polynomial decay, the shape of facebook DLRM's
        LRPolicyScheduler, anchored at the end of the run. Why: at a constant rate the model's overall click-rate
        offset keeps swinging from one SGD step to the next, so the held-out log loss of the last parameters
        depends on the step training happens to stop at (docs in bench/compare.py); a short final decay settles
        it at almost no cost in AUC."""
        decaying = math.ceil(self.lr_decay * total_updates)
        into = update - (total_updates - decaying)
        if decaying == 0 or into < 0:
            return self.learning_rate
        return self.learning_rate * (max(decaying - into, 0) / decaying) ** 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_dense": self.num_dense,
            "table_sizes": list(self.table_sizes),
            "embedding_dim": self.embedding_dim,
            "bottom_mlp": list(self.bottom_mlp),
            "top_mlp": list(self.top_mlp),
            "learning_rate": self.learning_rate,
            "lr_decay": self.lr_decay,
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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=("kaggle", "small"), default="kaggle",
                       help="architecture: the reference Kaggle DLRM, or a narrow one for tests (default kaggle)")
    group.add_argument("--max-table-size", type=int, default=100_000,
                       help="hash embedding tables larger than this down to it; <= 0 for none (default 100000)")
    group.add_argument("--learning-rate", type=float, default=0.1, help="default 0.1")
    group.add_argument("--lr-decay", type=float, default=0.0, metavar="FRACTION",
                       help="decay the learning rate (power 2) to 0 over this final fraction of the parameter updates "
                            "(default 0: constant)")
    group.add_argument("--seed", type=int, default=0, help="parameter initialisation seed (default 0)")
    group.add_argument("--model-config", type=Path,
                       help="a JSON DLRMConfig (DLRMConfig.to_dict()); overrides the options above")


def model_config(args: argparse.Namespace) -> DLRMConfig:
    if args.model_config is not None:
        return DLRMConfig.from_dict(json.loads(args.model_config.read_text()))
    cap = None if args.max_table_size <= 0 else args.max_table_size
    base = DLRMConfig.small() if args.model == "small" else DLRMConfig.kaggle(None)
    sizes = tuple(size if cap is None else min(size, cap) for size in base.table_sizes)
    return dataclasses.replace(base, table_sizes=sizes, learning_rate=args.learning_rate,
                               lr_decay=args.lr_decay, seed=args.seed)

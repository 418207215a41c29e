"""Optimisers (numpy, in place). The PS and the reference trainer share them: their updates agree bit for bit."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


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

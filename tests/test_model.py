"""DLRM model: config, initialisation, gradients against an independent float64 implementation, determinism."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from runtime.model import (
    DLRM,
    KAGGLE_TABLE_SIZES,
    AdagradState,
    Batch,
    DLRMConfig,
    apply_sgd,
    apply_sgd_rows,
    configure_threads,
    init_dense_params,
    init_embedding_rows,
    init_embedding_table,
    join_flat,
    split_flat,
)
from runtime.model.reference import ModelParams, train_single_process


def random_batch(config: DLRMConfig, size: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, n, size) for n in config.table_sizes], axis=1).astype(np.int64)
    dense = np.log1p(rng.integers(0, 1000, (size, config.num_dense))).astype(np.float32)
    labels = (rng.random(size) < 0.3).astype(np.float32)
    return Batch(dense=dense, cat=cat, labels=labels)


def pulled_rows(config: DLRMConfig, batch: Batch) -> list[np.ndarray]:
    return [init_embedding_rows(config, t, ids) for t, (ids, _) in enumerate(batch.unique_ids())]


# --- config -------------------------------------------------------------------------------------------------


def test_kaggle_config_matches_reference_architecture():
    config = DLRMConfig.kaggle()
    assert config.num_tables == 26 and config.num_dense == 13 and config.embedding_dim == 16
    assert config.interaction_width == 367  # 16 + 27*26/2
    shapes = dict(config.layer_shapes())
    assert shapes["bottom/0/kernel"] == (13, 512) and shapes["bottom/3/kernel"] == (64, 16)
    assert shapes["top/0/kernel"] == (367, 512) and shapes["top/2/kernel"] == (256, 1)
    assert list(shapes)[-1] == "top/2/bias"
    assert sum(math.prod(s) for s in shapes.values()) == 475_985
    assert config.table_sizes == tuple(min(n, 100_000) for n in KAGGLE_TABLE_SIZES)
    assert DLRMConfig.kaggle(None).table_sizes == KAGGLE_TABLE_SIZES
    assert sum(KAGGLE_TABLE_SIZES) == 33_762_577
    assert DLRMConfig() == config


def test_config_json_round_trip():
    config = DLRMConfig.small(seed=7, learning_rate=0.05)
    wire = json.loads(json.dumps(config.to_dict()))
    assert DLRMConfig.from_dict(wire) == config


@pytest.mark.parametrize("change, message", [
    ({"bottom_mlp": [64, 32, 8]}, "embedding_dim"),
    ({"top_mlp": [64, 2]}, "width 1"),
    ({"table_sizes": [10, 0]}, "table_sizes[1]"),
    ({"table_sizes": []}, "at least one"),
    ({"table_sizes": [2**32 + 1]}, "table_sizes[0]"),
    ({"embedding_dim": True}, "integer"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"seed": -1}, "seed"),
    ({"num_dense": "13"}, "num_dense"),
    ({"extra": 1}, "unknown field"),
])
def test_config_rejects_bad_values(change, message):
    data = DLRMConfig.small().to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DLRMConfig.from_dict(data)


def test_config_rejects_missing_field_and_non_object():
    data = DLRMConfig.small().to_dict()
    del data["seed"]
    with pytest.raises(ValueError, match="missing field"):
        DLRMConfig.from_dict(data)
    with pytest.raises(ValueError, match="JSON object"):
        DLRMConfig.from_dict([1, 2])


# --- initialisation -----------------------------------------------------------------------------------------


def test_dense_init_is_seeded_and_follows_reference_scales():
    config = DLRMConfig.kaggle()
    a, b = init_dense_params(config), init_dense_params(config)
    assert list(a) == [name for name, _ in config.layer_shapes()]
    assert all(a[k].dtype == np.float32 and np.array_equal(a[k], b[k]) for k in a)
    other = init_dense_params(DLRMConfig.kaggle(seed=1))
    assert not np.array_equal(a["top/0/kernel"], other["top/0/kernel"])
    kernel = a["top/0/kernel"]  # 367 x 512 draws
    assert abs(kernel.std() / math.sqrt(2 / (367 + 512)) - 1) < 0.02
    assert abs(kernel.mean()) < 0.002
    assert abs(a["top/0/bias"].std() / math.sqrt(1 / 512) - 1) < 0.15


def test_join_flat_is_the_inverse_of_split_flat():
    config = DLRMConfig.small()
    params = init_dense_params(config)
    flat = join_flat(params, config.layer_shapes())
    assert flat.dtype == np.float32 and flat.shape == (config.dense_size,)
    assert np.array_equal(flat, np.concatenate([params[name].ravel() for name, _ in config.layer_shapes()]))
    back = split_flat(flat, config.layer_shapes())
    assert list(back) == list(params) and all(np.array_equal(back[k], params[k]) for k in params)
    assert join_flat({}, []).shape == (0,)  # a PS shard may hold no dense tensor


def test_embedding_rows_identical_for_any_subset():
    config = DLRMConfig.small(seed=3)
    for table in (0, 8, 25):
        full = init_embedding_table(config, table)
        n = config.table_sizes[table]
        rng = np.random.default_rng(table)
        subset = rng.integers(0, n, 50)  # unsorted, with repeats
        assert np.array_equal(init_embedding_rows(config, table, subset), full[subset])
        assert np.array_equal(init_embedding_rows(config, table, np.array([n - 1], dtype=np.int32)), full[-1:])
        bound = math.sqrt(1 / n)
        assert full.dtype == np.float32 and full.shape == (n, 16)
        assert full.min() >= -bound and full.max() < bound
    big = init_embedding_table(DLRMConfig.kaggle(seed=3), 2)  # 100k x 16 draws of U(-b, b)
    bound = math.sqrt(1 / 100_000)
    assert abs(big.mean()) < 0.01 * bound
    assert abs(big.var() / (bound * bound / 3) - 1) < 0.01
    # Rows differ between tables, seeds and neighbouring ids.
    assert not np.array_equal(init_embedding_table(config, 0)[:3], init_embedding_table(config, 1)[:3])
    assert not np.array_equal(init_embedding_table(config, 0),
                              init_embedding_table(DLRMConfig.small(seed=4), 0))
    assert len({tuple(r) for r in big[:1000]}) == 1000


def test_embedding_rows_of_several_tables_in_one_call():
    config = DLRMConfig.small(seed=3)
    rng = np.random.default_rng(7)
    tables = rng.integers(0, config.num_tables, 300)
    ids = np.array([rng.integers(0, config.table_sizes[t]) for t in tables])
    one_call = init_embedding_rows(config, tables, ids)
    for k in (0, 17, 299):
        assert np.array_equal(one_call[k], init_embedding_rows(config, int(tables[k]), ids[k:k + 1])[0])
    assert init_embedding_rows(config, tables[:0], ids[:0]).shape == (0, 16)


@pytest.mark.parametrize("tables, ids, message", [
    (np.array([0, 26]), np.array([0, 0]), r"tables: expected values in \[0, 26\)"),
    (np.array([0, 1]), np.array([0, 1000]), r"ids for table 1: expected values in \[0, \d+\), found 1000"),
    (np.array([0]), np.array([0, 1]), "shaped like ids"),
    (np.array([0.0, 1.0]), np.array([0, 1]), "integer array shaped like ids"),
    (True, np.array([0]), "integer array shaped like ids"),
])
def test_embedding_rows_reject_bad_tables(tables, ids, message):
    with pytest.raises(ValueError, match=message):
        init_embedding_rows(DLRMConfig.small(), tables, ids)


def test_embedding_rows_reject_bad_ids():
    config = DLRMConfig.small()
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        init_embedding_rows(config, 0, np.array([1000]))
    with pytest.raises(ValueError, match="integer array"):
        init_embedding_rows(config, 0, np.array([1.0]))
    with pytest.raises(ValueError, match="table index"):
        init_embedding_rows(config, 26, np.array([0]))


# --- batches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 128])
def test_batch_lookup_stacks_each_tables_unique_ids(size):
    config = DLRMConfig.kaggle(max_table_size=None)  # ids up to 10^7: the (table, id) keys must stay apart
    batch = random_batch(config, size, size)
    lookup = batch.lookup()
    start = 0
    for t, ids in enumerate(lookup.ids):
        want, inverse = np.unique(batch.cat[:, t], return_inverse=True)
        assert ids.dtype == np.int64 and np.array_equal(ids, want)
        assert np.array_equal(lookup.index[:, t], inverse.reshape(-1) + start)
        start += ids.size
    assert len(lookup.rows) == start and lookup.index.dtype == np.int64


def test_batch_unique_ids_and_validation():
    config = DLRMConfig.small()
    batch = random_batch(config, 64, 0)
    for t, (ids, inverse) in enumerate(batch.unique_ids()):
        assert ids.dtype == np.int64 and inverse.dtype == np.int64
        assert np.all(np.diff(ids) > 0)
        assert np.array_equal(ids[inverse], batch.cat[:, t])
    assert len(batch.unique_ids()[8][0]) <= 3  # a 3-row table: duplicates guaranteed
    both = Batch.concat([batch, random_batch(config, 10, 1)])
    assert len(both) == 74 and np.array_equal(both.cat[:64], batch.cat)
    batch.check(config)
    bad = Batch(batch.dense, batch.cat.copy(), batch.labels)
    bad.cat[5, 8] = 3
    with pytest.raises(ValueError, match=r"cat\[5, 8\].*\[0, 3\)"):
        bad.check(config)
    with pytest.raises(ValueError, match="int64"):
        Batch(batch.dense, batch.cat.astype(np.int32), batch.labels)
    with pytest.raises(ValueError, match="row counts"):
        Batch(batch.dense[:3], batch.cat, batch.labels)


# --- forward/backward ---------------------------------------------------------------------------------------


def test_kaggle_shapes():
    config = DLRMConfig.kaggle()
    model = DLRM(config)
    params = init_dense_params(config)
    batch = random_batch(config, 8, 1)
    rows = pulled_rows(config, batch)
    loss, grads, emb_grads = model.loss_and_grads(params, rows, batch)
    assert math.isfinite(loss) and loss > 0
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in params.items()}
    assert all(g.dtype == np.float32 for g in grads.values())
    assert [g.shape for g in emb_grads] == [r.shape for r in rows]
    probs = model.predict(params, rows, batch)
    assert probs.shape == (8,) and probs.dtype == np.float32 and np.all((probs > 0) & (probs < 1))


def reference_loss_fn(config: DLRMConfig, batch: Batch):
    """An independent float64 DLRM over full tables, written as plainly as possible (explicit pair loop)."""
    y = tf.constant(batch.labels, tf.float64)

    def loss_fn(dense: dict[str, tf.Variable], tables: list[tf.Variable]):
        x = tf.constant(batch.dense, tf.float64)
        for i in range(len(config.bottom_mlp)):
            x = tf.nn.relu(x @ dense[f"bottom/{i}/kernel"] + dense[f"bottom/{i}/bias"])
        features = [x] + [tf.gather(table, batch.cat[:, t]) for t, table in enumerate(tables)]
        pairs = [tf.reduce_sum(features[i] * features[j], axis=1)
                 for i in range(len(features)) for j in range(i)]
        h = tf.concat([x, tf.stack(pairs, axis=1)], axis=1)
        layers = len(config.top_mlp)
        for i in range(layers):
            h = h @ dense[f"top/{i}/kernel"] + dense[f"top/{i}/bias"]
            if i < layers - 1:
                h = tf.nn.relu(h)
        p = tf.sigmoid(h[:, 0])
        return -tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))

    return loss_fn


def test_gradients_match_independent_float64_implementation():
    config = DLRMConfig.small(seed=5)
    batch = random_batch(config, 48, 2)
    params = init_dense_params(config)
    full_tables = [init_embedding_table(config, t) for t in range(config.num_tables)]
    rows = [full_tables[t][ids] for t, (ids, _) in enumerate(batch.unique_ids())]
    loss, grads, emb_grads = DLRM(config).loss_and_grads(params, rows, batch)

    dense_vars = {k: tf.Variable(v.astype(np.float64)) for k, v in params.items()}
    table_vars = [tf.Variable(t.astype(np.float64)) for t in full_tables]
    loss_fn = reference_loss_fn(config, batch)
    with tf.GradientTape() as tape:
        ref_loss = loss_fn(dense_vars, table_vars)
    ref_dense, ref_tables = tape.gradient(ref_loss, (dense_vars, table_vars))
    assert abs(loss - float(ref_loss)) < 1e-5

    def close(got, want):
        return np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want)) + 1e-9

    for name in params:
        assert close(grads[name], ref_dense[name].numpy()), name
    for t, (ids, _) in enumerate(batch.unique_ids()):
        full_grad = tf.convert_to_tensor(ref_tables[t]).numpy()
        assert close(emb_grads[t], full_grad[ids]), t
        untouched = np.setdiff1d(np.arange(config.table_sizes[t]), ids)
        assert not full_grad[untouched].any()
    assert np.abs(emb_grads[8]).max() > 0  # the duplicated 3-row table gets summed, nonzero gradients

    # The float64 reference itself against central finite differences on a few coordinates.
    def loss_at(var, index, delta):
        old = var.numpy()
        changed = old.copy()
        changed[index] += delta
        var.assign(changed)
        value = float(loss_fn(dense_vars, table_vars))
        var.assign(old)
        return value

    eps = 1e-6
    ids8 = batch.unique_ids()[8][0]
    for var, grad, index in [
        (dense_vars["bottom/0/kernel"], ref_dense["bottom/0/kernel"].numpy(), (3, 7)),
        (dense_vars["top/0/bias"], ref_dense["top/0/bias"].numpy(), (5,)),
        (dense_vars["top/2/kernel"], ref_dense["top/2/kernel"].numpy(), (1, 0)),
        (table_vars[8], tf.convert_to_tensor(ref_tables[8]).numpy(), (int(ids8[0]), 4)),
    ]:
        numeric = (loss_at(var, index, eps) - loss_at(var, index, -eps)) / (2 * eps)
        assert abs(numeric - grad[index]) <= 1e-6 * max(1.0, abs(grad[index])) + 1e-9, index


def test_bit_identical_results_and_single_trace():
    config = DLRMConfig.small(seed=1)
    params = init_dense_params(config)
    batch = random_batch(config, 128, 3)
    rows = pulled_rows(config, batch)
    first = DLRM(config).loss_and_grads(params, rows, batch)
    model = DLRM(config)
    for _ in range(3):
        again = model.loss_and_grads(params, rows, batch)
        assert again[0] == first[0]
        assert all(np.array_equal(again[1][k], first[1][k]) for k in params)
        assert all(np.array_equal(a, b) for a, b in zip(again[2], first[2], strict=True))
    assert np.array_equal(model.predict(params, rows, batch), model.predict(params, rows, batch))
    # The graphs are traced once, when the first model of this architecture is built, as concrete functions
    # (which cannot retrace): every batch size runs in them, and every model of the architecture shares them.
    graphs = model._graphs
    for size in (1, 7, 300):
        b = random_batch(config, size, size)
        assert len(model.loss_and_grads(params, pulled_rows(config, b), b)[2][0]) == np.unique(b.cat[:, 0]).size
        assert model.predict(params, pulled_rows(config, b), b).shape == (size,)
    assert DLRM(DLRMConfig.small(seed=2))._graphs is graphs and model._graphs is graphs


DIGEST_SCRIPT = """
import hashlib, sys
import numpy as np
from runtime.model import DLRM, Batch, DLRMConfig, configure_threads, init_dense_params, init_embedding_rows
configure_threads(int(sys.argv[1]))
config = DLRMConfig.small(seed=4)
rng = np.random.default_rng(6)
cat = np.stack([rng.integers(0, n, 256) for n in config.table_sizes], axis=1)
batch = Batch(rng.random((256, 13), dtype=np.float32) * 5, cat, (rng.random(256) < 0.3).astype(np.float32))
rows = [init_embedding_rows(config, t, ids) for t, (ids, _) in enumerate(batch.unique_ids())]
loss, grads, emb_grads = DLRM(config).loss_and_grads(init_dense_params(config), rows, batch)
digest = hashlib.sha256(np.float32(loss).tobytes())
for array in list(grads.values()) + emb_grads:
    digest.update(array.tobytes())
print(digest.hexdigest())
"""


def test_bit_identical_across_processes_with_same_thread_count():
    repo = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", DIGEST_SCRIPT, "1"], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    try:
        digests = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    with pytest.raises(ValueError, match="positive integer"):
        configure_threads(0)
    with pytest.raises(ValueError, match="inter_op: expected a positive integer"):
        configure_threads(1, inter_op=0)  # refused before either pool is touched


def test_loss_and_grads_reject_mismatched_inputs():
    config = DLRMConfig.small()
    model = DLRM(config)
    params = init_dense_params(config)
    batch = random_batch(config, 16, 4)
    rows = pulled_rows(config, batch)
    with pytest.raises(ValueError, match=r"emb_rows\[2\]"):
        model.loss_and_grads(params, rows[:2] + [rows[2][1:]] + rows[3:], batch)
    with pytest.raises(ValueError, match="26 tables"):
        model.loss_and_grads(params, rows[:-1], batch)
    with pytest.raises(ValueError, match="missing"):
        model.loss_and_grads({k: v for k, v in params.items() if k != "top/1/bias"}, rows, batch)
    with pytest.raises(ValueError, match="top/0/kernel"):
        model.loss_and_grads({**params, "top/0/kernel": params["top/0/kernel"].astype(np.float64)}, rows, batch)


def test_concatenated_batch_gradient_is_size_weighted_mean_of_parts():
    # What a synchronous PS step relies on: the mean-loss gradient of the concatenated batch equals the
    # example-count-weighted mean of the workers' gradients.
    config = DLRMConfig.small(seed=2)
    model = DLRM(config)
    params = init_dense_params(config)
    parts = [random_batch(config, 40, 10), random_batch(config, 24, 11)]
    whole = Batch.concat(parts)
    _, whole_grads, _ = model.loss_and_grads(params, pulled_rows(config, whole), whole)
    part_grads = [model.loss_and_grads(params, pulled_rows(config, p), p)[1] for p in parts]
    for name in params:
        combined = (40 * part_grads[0][name] + 24 * part_grads[1][name]) / 64
        scale = np.max(np.abs(whole_grads[name]))
        assert np.max(np.abs(combined - whole_grads[name])) <= 1e-5 * scale + 1e-9, name


# --- optimisers and the reference trainer -------------------------------------------------------------------


def test_sgd_helpers_and_reference_step():
    config = DLRMConfig.small(seed=9, learning_rate=0.25)
    batch = random_batch(config, 32, 5)
    start = ModelParams.initial(config)
    _, grads, emb_grads = DLRM(config).loss_and_grads(start.dense, start.rows(batch), batch)
    trained = train_single_process(config, [batch], 1)
    for name in grads:
        assert np.array_equal(trained.dense[name], start.dense[name] - np.float32(0.25) * grads[name])
    for t, (ids, _) in enumerate(batch.unique_ids()):
        expected = start.tables[t].copy()
        expected[ids] -= np.float32(0.25) * emb_grads[t]
        assert np.array_equal(trained.tables[t], expected)
    with pytest.raises(ValueError, match="ran out after 1 of 2"):
        train_single_process(config, [batch], 2)

    table = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="distinct"):
        apply_sgd_rows(table, np.array([1, 1]), np.ones((2, 2), np.float32), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        apply_sgd_rows(table, np.array([5]), np.ones((1, 2), np.float32), 0.1)
    with pytest.raises(ValueError, match="float32"):
        apply_sgd({"w": table}, {"w": np.ones((5, 2))}, 0.1)


def test_adagrad_matches_formula_dense_and_rows():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    g1, g2 = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(2))
    state = AdagradState(initial_accumulator=0.1)
    dense = {"w": w.copy()}
    state.apply(dense, {"w": g1}, 0.5)
    state.apply(dense, {"w": g2}, 0.5)
    acc = np.float32(0.1) + g1 * g1
    expected = w - np.float32(0.5) * g1 / np.sqrt(acc)
    acc = acc + g2 * g2
    expected = expected - np.float32(0.5) * g2 / np.sqrt(acc)
    assert np.allclose(dense["w"], expected, rtol=1e-6, atol=1e-7)

    rows_state = AdagradState(initial_accumulator=0.1)
    table = w.copy()
    ids = np.array([1, 4])
    rows_state.apply_rows("t", table, ids, g1[ids], 0.5)
    row_expected = w.copy()
    row_expected[ids] = w[ids] - np.float32(0.5) * g1[ids] / np.sqrt(np.float32(0.1) + g1[ids] ** 2)
    assert np.allclose(table, row_expected, rtol=1e-6, atol=1e-7)
    assert np.array_equal(table[[0, 2, 3, 5]], w[[0, 2, 3, 5]])
    assert np.array_equal(rows_state.accumulators["t"][0], np.full(3, 0.1, np.float32))

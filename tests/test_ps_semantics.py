"""The PS state machine without gRPC: synchronous rounds, quorum and timeouts, liveness, bounded-staleness
asynchronous updates, checkpoints and resume, sharding and the reproducible combination of gradients."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_tools import batch_rows, gradients, push_request, row_arrays, shapes

from runtime.model import DLRMConfig, init_embedding_rows
from runtime.proto import ps_pb2
from runtime.protocol import Rejected
from runtime.rows import RowSet
from runtime.server import checkpoints, sharding
from runtime.server.aggregation import Contribution, combine
from runtime.server.state import CheckpointMismatch, ParameterServer, PSOptions
from runtime.wire.messages import decode_pull_request, decode_push_request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_ps(clock=None, **overrides) -> ParameterServer:
    options = dict(config=DLRMConfig.small(), total_steps=10, workers=2, log_every=0)
    options.update(overrides)
    return ParameterServer(PSOptions(**options), clock=clock or Clock())


def join(ps, *workers):
    for w in workers:
        ps.join(w)


def push(ps, worker, step, seed, batch_size=16):
    rows = batch_rows(ps.config, seed, shard=ps.options.shard, num_shards=ps.options.num_shards)
    dense, values = gradients(ps, rows, seed)
    request = push_request(worker, step, dense, rows, values, batch_size=batch_size)
    return ps.push(decode_push_request(request.SerializeToString(), shapes(ps)))


def test_round_waits_for_every_live_worker():
    ps = make_ps()
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    assert ps.version == 0 and set(ps.pending) == {"a"}
    push(ps, "b", 0, 2)
    assert ps.version == 1 and not ps.pending and ps.stats["short_rounds"] == 0


def test_training_starts_only_when_the_job_is_complete():
    clock = Clock()
    ps = make_ps(clock, workers=3, min_workers=2, start_timeout=30)
    join(ps, "a", "b")
    ps.tick()
    assert not ps.started
    with pytest.raises(Rejected, match="not_started"):
        push(ps, "a", 0, 1)
    for _ in range(4):
        clock.now += 8
        join(ps, "a", "b")  # joining again doubles as a sign of life
    ps.tick()  # 32 s after the first join: start with the quorum
    assert ps.started


def test_quorum_and_round_timeout():
    clock = Clock()
    ps = make_ps(clock, workers=3, min_workers=2, round_timeout=5.0)
    join(ps, "a", "b", "c")
    push(ps, "a", 0, 1)
    clock.now += 6
    ps.tick()
    assert ps.version == 0, "a round never closes below the quorum"
    push(ps, "b", 0, 2)
    assert ps.version == 1, "quorum reached after the timeout: applied at once"
    assert ps.stats["short_rounds"] == 1
    with pytest.raises(Rejected, match="stale_step"):
        push(ps, "c", 0, 3)
    join(ps, "a", "b", "c")
    push(ps, "a", 1, 4)
    clock.now += 2
    push(ps, "b", 1, 5)
    ps.tick()
    assert ps.version == 1, "c is alive and 5 s have not passed since the round's first push"
    clock.now += 3.5
    ps.tick()
    assert ps.version == 2 and ps.stats["short_rounds"] == 2


def test_silent_worker_is_dropped_and_rounds_go_on_short():
    clock = Clock()
    ps = make_ps(clock, workers=2, min_workers=1, worker_timeout=3.0)
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    push(ps, "b", 0, 2)
    assert ps.version == 1
    push(ps, "a", 1, 3)
    clock.now += 2
    ps.heartbeat("a")
    clock.now += 2
    ps.tick()
    assert list(ps.members) == ["a"] and ps.version == 2 and ps.stats["short_rounds"] == 1
    with pytest.raises(Rejected, match="unknown_worker"):
        push(ps, "b", 2, 4)


def test_min_workers_holds_rounds_while_too_few_are_alive():
    clock = Clock()
    ps = make_ps(clock, workers=2, worker_timeout=3.0)  # min_workers defaults to all
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    clock.now += 2
    ps.heartbeat("a")
    clock.now += 2
    ps.tick()
    assert list(ps.members) == ["a"] and ps.version == 0
    join(ps, "b")  # it comes back (e.g. restarted) and catches up
    push(ps, "b", 0, 2)
    assert ps.version == 1 and ps.stats["short_rounds"] == 0


def test_leaving_worker_does_not_block_the_round():
    ps = make_ps(workers=2, min_workers=1)
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    ps.leave("b")
    assert ps.version == 1 and ps.stats["short_rounds"] == 1


def test_asynchronous_bounded_staleness():
    ps = make_ps(workers=2, staleness=1)
    join(ps, "a", "b")
    assert push(ps, "a", 0, 1).applied and ps.version == 1
    assert push(ps, "b", 0, 2).applied and ps.version == 2  # one version old: accepted
    push(ps, "a", 2, 3)
    with pytest.raises(Rejected, match="stale_step"):
        push(ps, "b", 1, 4)  # two versions old
    assert ps.version == 3 and ps.stats["short_rounds"] == 0
    assert ps.report()["push_staleness"] == {"0": 2, "1": 1}  # accepted pushes only


def test_a_pull_reply_keeps_its_version_while_later_updates_apply():
    # The PS serves a version's dense parameters without copying them: an update must publish a new array.
    ps = make_ps(staleness=4)
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    request = ps_pb2.PullRequest(worker_id="b", dense=True, min_version=1)
    reply = ps.pull(decode_pull_request(request.SerializeToString(), shapes(ps)))
    served = reply.dense.tobytes()
    served_dense = ps.params.dense_flat.copy()
    push(ps, "b", 1, 2)
    push(ps, "a", 1, 3)
    assert ps.version == 3 and not np.array_equal(ps.params.dense_flat, served_dense)
    assert reply.dense.tobytes() == served
    np.testing.assert_array_equal(reply.dense, served_dense)


def test_combination_is_order_independent_and_weighted():
    rng = np.random.default_rng(0)
    contributions = []
    for i, b in enumerate((3, 5, 8)):
        # Each worker has rows of tables 2 and 0 (in that order, as a push may list them) and worker 1 of table 4.
        tables = [2, 0, 4] if i == 1 else [2, 0]
        ids = [np.unique(rng.integers(0, 20, 10)) for _ in tables]
        rows = RowSet(tables, np.array([x.size for x in ids]), np.concatenate(ids),
                              rng.normal(size=(sum(x.size for x in ids), 4)).astype(np.float32))
        contributions.append(Contribution(f"w{i}", 0, b, rng.normal(size=12).astype(np.float32), rows))
    a = combine(contributions)
    b = combine(contributions[::-1])
    np.testing.assert_array_equal(a.dense, b.dense)
    assert a.rows.tables == b.rows.tables == [0, 2, 4]
    for field in ("counts", "ids", "values"):
        np.testing.assert_array_equal(getattr(a.rows, field), getattr(b.rows, field))
    expected = sum(c.batch_size * c.dense.astype(np.float64) for c in contributions) / 16
    np.testing.assert_allclose(a.dense, expected, rtol=1e-6, atol=1e-6)
    dense_rows = np.zeros((5, 20, 4))
    for c in contributions:
        row_tables = c.rows.row_tables()
        np.add.at(dense_rows, (row_tables, c.rows.ids), c.batch_size / 16 * c.rows.values)
    start = 0
    for table, count in zip(a.rows.tables, a.rows.counts, strict=True):
        ids = a.rows.ids[start:start + count]
        touched = np.unique(np.concatenate([c.rows.ids[c.rows.row_tables() == table]
                                            for c in contributions]))
        np.testing.assert_array_equal(ids, touched)
        np.testing.assert_allclose(a.rows.values[start:start + count], dense_rows[table, ids], rtol=1e-6, atol=1e-7)
        start += count


def test_combination_of_contributions_without_rows():
    empty = RowSet([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    dense = np.ones(3, np.float32)
    update = combine([Contribution("w0", 0, 2, dense, empty), Contribution("w1", 0, 2, dense, empty)])
    assert update.rows.tables == [] and update.rows.ids.size == 0 and update.rows.values.shape == (0, 4)
    np.testing.assert_array_equal(update.dense, dense)


def test_sharding_partitions_every_row_once():
    config = DLRMConfig.small()
    for n in (1, 2, 3):
        owners = sharding.dense_owners(config, n)
        assert set(owners) == {name for name, _ in config.layer_shapes()} and set(owners.values()) <= set(range(n))
        for t, size in enumerate(config.table_sizes):
            ids = np.arange(size)
            shard_of = sharding.row_shards(t, ids, n)
            for s in range(n):
                mine = ids[shard_of == s]
                assert mine.size == sharding.local_table_rows(size, t, s, n)
                local = sharding.local_index(mine, n)
                np.testing.assert_array_equal(local, np.arange(mine.size))
                np.testing.assert_array_equal(sharding.global_ids(local, t, s, n), mine)


def test_sharded_ps_rows_agree_with_single_process_init():
    config = DLRMConfig.small()
    ps = make_ps(num_shards=3, shard=2)
    tables = (8, 0, 25)
    owned = []
    for t in tables:
        ids = np.arange(config.table_sizes[t])
        owned.append(ids[sharding.row_shards(t, ids, 3) == 2])
        np.testing.assert_array_equal(ps.params.read_rows(row_arrays({t: owned[-1]})),
                                      init_embedding_rows(config, t, owned[-1]))
    # Several tables in one read, some rows already initialised and some fresh.
    ps = make_ps(num_shards=3, shard=2)
    ps.params.read_rows(row_arrays({0: owned[1][:5]}))
    every = row_arrays(dict(zip(tables, owned, strict=True)))
    got = ps.params.read_rows(every)
    want = np.concatenate([init_embedding_rows(config, t, ids) for t, ids in zip(tables, owned, strict=True)])
    np.testing.assert_array_equal(got, want)
    assert ps.params.owns_rows(every)
    assert not ps.params.owns_rows(row_arrays({0: owned[1][:2] + 1}))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_checkpoint_resume_restores_everything(tmp_path, optimizer):
    ps = make_ps(checkpoint_dir=tmp_path, checkpoint_every=2, optimizer=optimizer, num_shards=2, shard=1)
    join(ps, "a", "b")
    for step in range(3):
        push(ps, "a", step, 10 + step)
        push(ps, "b", step, 20 + step)
    assert ps.version == 3 and checkpoints.list_versions(tmp_path) == [2]
    ps.options.checkpoint_every = 1
    push(ps, "a", 3, 30)
    push(ps, "b", 3, 31)
    assert checkpoints.list_versions(tmp_path) == [2, 4]

    resumed = make_ps(checkpoint_dir=tmp_path, optimizer=optimizer, num_shards=2, shard=1)
    assert resumed.version == 4 and resumed.resumed_from == 4
    assert resumed.last_step == {"a": 3, "b": 3}
    for name in ps.params.dense:
        np.testing.assert_array_equal(resumed.params.dense[name], ps.params.dense[name])
    for t in range(len(ps.params.tables)):
        np.testing.assert_array_equal(resumed.params.initialized[t], ps.params.initialized[t])
        np.testing.assert_array_equal(resumed.params.tables[t], ps.params.tables[t])
    if optimizer == "adagrad":
        for key, acc in ps.params.adagrad.accumulators.items():
            np.testing.assert_array_equal(resumed.params.adagrad.accumulators[key], acc)
    # Both continue identically.
    join(resumed, "a", "b")
    for server in (ps, resumed):
        push(server, "a", 4, 40)
        push(server, "b", 4, 41)
    for name in ps.params.dense:
        np.testing.assert_array_equal(resumed.params.dense[name], ps.params.dense[name])
    # A resend from before the checkpoint is still a duplicate.
    assert push(resumed, "a", 3, 30).duplicate


def test_resume_skips_a_corrupt_checkpoint(tmp_path):
    ps = make_ps(checkpoint_dir=tmp_path, checkpoint_every=1)
    join(ps, "a", "b")
    for step in range(2):
        push(ps, "a", step, step)
        push(ps, "b", step, 10 + step)
    newest = checkpoints.checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:1000])  # torn write of a file that somehow got its final name
    resumed = make_ps(checkpoint_dir=tmp_path)
    assert resumed.version == 1


def test_checkpoint_of_another_job_is_refused(tmp_path):
    ps = make_ps(checkpoint_dir=tmp_path, checkpoint_every=1)
    join(ps, "a", "b")
    push(ps, "a", 0, 1)
    push(ps, "b", 0, 2)
    with pytest.raises(CheckpointMismatch, match="config"):
        make_ps(checkpoint_dir=tmp_path, config=DLRMConfig.small(seed=5))


def test_final_checkpoint_and_finish(tmp_path):
    clock = Clock()
    ps = make_ps(clock, checkpoint_dir=tmp_path, checkpoint_every=100, total_steps=2, linger=1.0)
    join(ps, "a", "b")
    for step in range(2):
        push(ps, "a", step, step)
        push(ps, "b", step, 10 + step)
    assert ps.done and checkpoints.list_versions(tmp_path) == [2]
    assert not ps.finished(), "workers are still members (evaluating)"
    for w in ("a", "b"):
        ps.leave(w)
    assert not ps.finished()
    clock.now += 1.5
    assert ps.finished()


def poisoned_push(ps, worker, step, seed, scale=3e38, batch_size=16):
    """A push whose every gradient is finite but huge (a hostile worker's; finding: one took the largest dense
    parameter from 0.959 to 1.5e37)."""
    rows = batch_rows(ps.config, seed)
    dense, values = gradients(ps, rows, seed)
    dense = {name: np.full_like(g, scale) for name, g in dense.items()}
    values = {t: np.full_like(v, scale) for t, v in values.items()}
    request = push_request(worker, step, dense, rows, values, batch_size=batch_size)
    return ps.push(decode_push_request(request.SerializeToString(), shapes(ps)))


def test_a_poisoned_push_is_refused_counted_and_the_round_goes_on():
    ps = make_ps()
    join(ps, "a", "b")
    before = ps.params.dense_flat.copy()
    push(ps, "a", 0, 1)
    with pytest.raises(Rejected, match="gradient_too_large: PushRequest: gradient L2 norm inf is over the bound 100"):
        poisoned_push(ps, "b", 0, 2)
    # The round closed with the honest push alone; the parameters moved, and stayed finite.
    assert ps.version == 1 and ps.stats["short_rounds"] == 1 and ps.stats["pushes"] == 1
    assert np.isfinite(ps.params.dense_flat).all() and not np.array_equal(ps.params.dense_flat, before)
    assert float(np.abs(ps.params.dense_flat).max()) < 10
    assert ps.report()["refused_pushes"] == {"b": {"gradient_too_large": 1}}
    # Its step is spent: the resend is a duplicate; the next round is normal.
    assert poisoned_push(ps, "b", 0, 2).duplicate
    push(ps, "a", 1, 3)
    push(ps, "b", 1, 4)
    assert ps.version == 2 and ps.stats["short_rounds"] == 1


def test_a_push_claiming_more_examples_than_the_job_batch_is_refused():
    ps = make_ps(batch_size=16, staleness=2)
    join(ps, "a", "b")
    push(ps, "a", 0, 1, batch_size=16)
    push(ps, "a", 1, 2, batch_size=5)  # a pass's last, smaller batch is fine
    with pytest.raises(Rejected, match="batch_too_large: PushRequest.batch_size: expected at most the job's 16, "
                                       "found 16777216"):
        push(ps, "b", 2, 3, batch_size=1 << 24)
    assert ps.version == 2 and ps.report()["refused_pushes"] == {"b": {"batch_too_large": 1}}


def test_a_round_of_only_refused_pushes_advances_without_changing_anything():
    ps = make_ps(max_grad_norm=1e-6)  # every push is "too large"
    join(ps, "a", "b")
    before = ps.params.dense_flat.copy()
    for worker, seed in (("a", 1), ("b", 2)):
        with pytest.raises(Rejected, match="gradient_too_large"):
            push(ps, worker, 0, seed)
    assert ps.version == 1 and np.array_equal(ps.params.dense_flat, before)
    assert ps.report()["refused_pushes"] == {"a": {"gradient_too_large": 1}, "b": {"gradient_too_large": 1}}
    unbounded = make_ps(max_grad_norm=0, workers=1)
    join(unbounded, "a")
    poisoned_push(unbounded, "a", 0, 1, scale=1e3)  # no bound: applied
    assert unbounded.stats["pushes"] == 1

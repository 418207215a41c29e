"""FedAvg (--local-steps K): the averaging rule, refusals of pushes of the wrong kind and of modes FedAvg does not
run in, the wire field, and end-to-end runs: K = 1 bit-identical to a run without the option, K = 4 equal to a
single-process FedAvg on the same batches."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_tools import raw_ps, state_fingerprint
from test_hfl import assert_trained_like, final_checkpoint, launch

from runtime.data import CriteoReader
from runtime.model import DLRMConfig
from runtime.model.reference import train_fedavg_single_process
from runtime.proto import ps_pb2
from runtime.protocol import MAX_LOCAL_STEPS, PullRequest, PushRequest, Rejected
from runtime.rows import RowSet
from runtime.server.state import ParameterServer, PSOptions
from runtime.wire import codec
from runtime.wire.messages import Shapes, decode_push_request, encode_push_request


def make_ps(**overrides) -> ParameterServer:
    options = dict(config=DLRMConfig.small(), total_steps=10, workers=2, log_every=0, local_steps=4)
    options.update(overrides)
    ps = ParameterServer(PSOptions(**options))
    ps.join("a")
    ps.join("b")
    return ps


def rows_of(table: int, ids: list[int], values: np.ndarray | None = None) -> RowSet:
    return RowSet([table], np.array([len(ids)], np.int64), np.array(ids, np.int64), values)


def delta_push(ps: ParameterServer, worker: str, samples: int, ids: list[int], seed: int,
               local_steps: int = 4) -> tuple[PushRequest, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(0, 0.01, ps.params.dense_size).astype(np.float32)
    values = rng.normal(0, 0.01, (len(ids), ps.config.embedding_dim)).astype(np.float32)
    request = PushRequest(worker, ps.version, samples, 0.5, dense, rows_of(0, ids, values), local_steps)
    return request, dense, values


def test_deltas_are_averaged_by_samples_and_rows_over_the_workers_that_touched_them():
    ps = make_ps()
    dense0 = ps.params.dense_flat.copy()
    rows0 = ps.params.read_rows(rows_of(0, [1, 2, 3]))
    push_a, dense_a, rows_a = delta_push(ps, "a", 96, [1, 2], seed=1)
    push_b, dense_b, rows_b = delta_push(ps, "b", 32, [2, 3], seed=2)
    ps.push(push_b)
    assert ps.version == 0, "a round waits for every worker's delta"
    ps.push(push_a)
    assert ps.version == 1
    np.testing.assert_allclose(ps.params.dense_flat, dense0 + (96 * dense_a + 32 * dense_b) / 128, rtol=0, atol=1e-7)
    rows = ps.params.read_rows(rows_of(0, [1, 2, 3]))
    np.testing.assert_allclose(rows[0], rows0[0] + rows_a[0], rtol=0, atol=1e-7)  # only a touched row 1
    np.testing.assert_allclose(rows[1], rows0[1] + (96 * rows_a[1] + 32 * rows_b[0]) / 128, rtol=0, atol=1e-7)
    np.testing.assert_allclose(rows[2], rows0[2] + rows_b[1], rtol=0, atol=1e-7)  # only b touched row 3
    assert ps.report()["rounds"] == 1 and ps.stats["samples"] == 128


def test_a_push_of_the_other_kind_is_refused_and_changes_nothing():
    fedavg = make_ps()
    gradient, _, _ = delta_push(fedavg, "a", 32, [1], seed=1, local_steps=1)
    other_k, _, _ = delta_push(fedavg, "a", 32, [1], seed=1, local_steps=8)
    before = state_fingerprint(fedavg)
    for request in (gradient, other_k):
        with pytest.raises(Rejected, match="wrong_local_steps.*--local-steps 4"):
            fedavg.push(request)
        with pytest.raises(Rejected, match="wrong_local_steps"):
            fedavg.push_pull(request, PullRequest("a", dense=True))
    assert state_fingerprint(fedavg) == before and fedavg.last_step == {}

    sgd = make_ps(local_steps=1)
    delta, _, _ = delta_push(sgd, "a", 32, [1], seed=1)
    before = state_fingerprint(sgd)
    with pytest.raises(Rejected, match="wrong_local_steps: PushRequest.local_steps: this job takes one batch's "
                                       "gradients"):
        sgd.push(delta)
    assert state_fingerprint(sgd) == before


def test_a_delta_may_carry_the_samples_of_its_local_steps_and_no_more():
    ps = make_ps(batch_size=32)
    ps.push(delta_push(ps, "a", 4 * 32, [1], seed=1)[0])
    with pytest.raises(Rejected, match=r"batch_too_large: .* 128 \(4 x 32\), found 129"):
        ps.push(delta_push(ps, "b", 4 * 32 + 1, [1], seed=2)[0])


def test_a_delta_is_bounded_by_what_local_steps_of_bounded_gradients_can_move():
    ps = make_ps(max_grad_norm=1.0)  # learning rate 0.1: a delta of 4 steps moves at most 0.4
    request, _, _ = delta_push(ps, "a", 32, [1], seed=1)
    scaled = PushRequest(request.worker_id, 0, 32, 0.5, request.dense * (0.5 / np.linalg.norm(request.dense)),
                         rows_of(0, [1], np.zeros((1, ps.config.embedding_dim), np.float32)), 4)
    with pytest.raises(Rejected, match="gradient_too_large: PushRequest: model delta L2 norm 0.5 is over the bound "
                                       "0.4"):
        ps.push(scaled)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(staleness=2), "cannot be combined with --staleness"),
    (dict(optimizer="adagrad"), "needs --optimizer sgd, found adagrad"),
    (dict(local_steps=0), "--local-steps: expected 1.."),
])
def test_fedavg_runs_synchronous_sgd_only(overrides, message):
    with pytest.raises(ValueError, match=message):
        PSOptions(config=DLRMConfig.small(), total_steps=10, workers=2, **dict(dict(local_steps=4), **overrides))


def test_the_wire_says_what_a_push_is_and_a_gradient_push_is_unchanged():
    config = DLRMConfig.small()
    shapes = Shapes(config.table_sizes, config.embedding_dim, 3)
    dense = np.ones(3, np.float32)
    rows = rows_of(0, [1], np.ones((1, config.embedding_dim), np.float32))
    gradient = encode_push_request(PushRequest("a", 0, 8, 0.5, dense, rows)).tobytes()
    legacy = ps_pb2.PushRequest.FromString(gradient)
    # No local_steps field: a gradient push is the bytes it was before FedAvg existed.
    assert ps_pb2.PushRequest.LOCAL_STEPS_FIELD_NUMBER not in {number for number, _, _ in codec.fields(gradient, "")}
    assert decode_push_request(gradient, shapes).local_steps == 1
    delta = encode_push_request(PushRequest("a", 0, 8, 0.5, dense, rows, 16)).tobytes()
    assert ps_pb2.PushRequest.FromString(delta).local_steps == 16
    assert decode_push_request(delta, shapes).local_steps == 16
    legacy.local_steps = MAX_LOCAL_STEPS + 1
    with pytest.raises(Rejected, match="bad_local_steps"):
        decode_push_request(legacy.SerializeToString(), shapes)


def test_the_ps_tells_joining_workers_its_local_steps():
    with raw_ps(local_steps=4) as ps:
        assert ps.join("a").local_steps == 4
    with raw_ps() as ps:
        assert ps.join("a").local_steps == 1


COMMON = ["--workers", "2", "--model", "small", "--batch-size", "32", "--eval-rows", "256", "--threads", "1",
          "--security", "insecure"]


def test_one_local_step_is_todays_synchronous_sgd_bit_for_bit(tmp_path):
    steps = 8
    plain, _ = launch(tmp_path / "plain", *COMMON, "--steps", str(steps))
    one, _ = launch(tmp_path / "one", *COMMON, "--steps", str(steps), "--local-steps", "1")
    assert one["local_steps"] == plain["local_steps"] == 1
    assert one["rounds"] == plain["rounds"] == steps
    assert one["ps"][0]["stats"]["pushes"] == plain["ps"][0]["stats"]["pushes"] == 2 * steps
    a, b = final_checkpoint(tmp_path / "plain", steps), final_checkpoint(tmp_path / "one", steps)
    assert a.arrays.keys() == b.arrays.keys()
    for name, value in a.arrays.items():
        assert np.array_equal(value, b.arrays[name]), f"{name} differs with --local-steps 1"


def test_fedavg_equals_a_single_process_fedavg_on_the_same_batches(tmp_path):
    rounds, k, batch = 4, 4, 32
    report, console = launch(tmp_path / "run", *COMMON, "--steps", str(rounds), "--local-steps", str(k))
    assert "FedAvg with 4 local steps per push" in console
    assert report["local_steps"] == k and report["rounds"] == rounds and report["bytes_per_round"] > 0
    assert [(w["steps"], w["rounds"], w["examples"]) for w in report["workers"]] == [(rounds * k, rounds,
                                                                                       rounds * k * batch)] * 2
    ps = report["ps"][0]
    assert ps["stats"]["samples"] == 2 * rounds * k * batch and ps["stats"]["pushes"] == 2 * rounds
    assert ps["rounds"] == rounds and ps["bytes_per_round"] > 0

    got = final_checkpoint(tmp_path / "run", rounds)
    config = DLRMConfig.from_dict(got.meta["config"])
    data = sorted((tmp_path / "run" / "data").glob("synthetic.tsv.[01]"))
    reference = train_fedavg_single_process(config, [CriteoReader(path, config, batch) for path in data], rounds, k)

    assert_trained_like(got, reference)

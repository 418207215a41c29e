"""Protocol conformance: a live PS (gRPC, port 0) driven with raw protobuf messages and raw bytes.

Every bad input must get the documented gRPC status and reason word, and must leave the PS state (parameters,
version, membership, pending pushes, de-duplication record) exactly as it was.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from runtime_tools import (
    batch_rows,
    chunk_payload,
    gradients,
    push_request,
    raw_ps,
    row_arrays,
    state_fingerprint,
    table_rows,
)

from runtime.model import DLRMConfig, init_dense_params, init_embedding_rows, split_flat
from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import MAX_LOCAL_STEPS, PROTOCOL_VERSION
from runtime.wire.chunks import crc32c
from runtime.wire.tensors import decode_tensor, encode_tensor

CHUNK = 64 * 1024  # the PS under test accepts chunks of at most this many data bytes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def served():
    """A PS with two joined workers, training started, at version 0."""
    with raw_ps() as raw:
        raw.join("w0")
        raw.join("w1")
        yield raw


def valid_push(raw, worker="w0", step=0, seed=1):
    rows = batch_rows(raw.ps.config, seed)
    dense, values = gradients(raw.ps, rows, seed)
    return push_request(worker, step, dense, rows, values)


def expect_rejected(raw, send, code, reason):
    """send() must fail with `code` and details starting with `reason`, changing no state."""
    before = state_fingerprint(raw.ps)
    rejected_before = raw.ps.rejections[reason]
    with pytest.raises(grpc.RpcError) as info:
        send()
    assert info.value.code() == code, info.value.details()
    if reason is not None:
        assert info.value.details().startswith(reason + ":"), info.value.details()
        assert raw.ps.rejections[reason] == rejected_before + 1
    assert state_fingerprint(raw.ps) == before, "a rejected call changed PS state"
    return info.value.details()


def chunks_of(message, chunk_size=CHUNK):
    return [c.SerializeToString() for c in chunk_payload(message, chunk_size)]


# ----------------------------------------------------------------------------------------------------------
# framing: versions, chunks, sizes, malformed bytes


def test_valid_push_is_accepted_in_several_chunks(served):
    request = valid_push(served)
    chunks = chunks_of(request, 16 * 1024)
    assert len(chunks) > 4  # the dense gradients alone are ~110 kB
    reply = ps_pb2.PushReply.FromString(served.stream("Push", chunks))
    assert not reply.duplicate and reply.version == 0
    assert set(served.ps.pending) == {"w0"}


@pytest.mark.parametrize("method", ["Join", "Heartbeat", "Leave", "Status"])
def test_unary_wrong_protocol_version(served, method):
    message_type = {"Join": ps_pb2.JoinRequest, "Heartbeat": ps_pb2.HeartbeatRequest,
                    "Leave": ps_pb2.LeaveRequest, "Status": ps_pb2.StatusRequest}[method]
    request = message_type(protocol_version=PROTOCOL_VERSION + 1)
    if method != "Status":
        request.worker_id = "w0"
    details = expect_rejected(served, lambda: served.unary(method, request), PRECONDITION, "bad_protocol_version")
    assert f"expected {PROTOCOL_VERSION}, found {PROTOCOL_VERSION + 1}" in details


@pytest.mark.parametrize("method", ["Pull", "Push"])
def test_chunk_wrong_protocol_version(served, method):
    message = valid_push(served) if method == "Push" else ps_pb2.PullRequest(worker_id="w0")
    chunks = [tensor_pb2.Chunk.FromString(c) for c in chunks_of(message)]
    chunks[-1].protocol_version = 0
    expect_rejected(served, lambda: served.stream(method, [c.SerializeToString() for c in chunks]), PRECONDITION,
                    "bad_protocol_version")


@pytest.mark.parametrize("method", ["Join", "Heartbeat", "Leave", "Status"])
def test_unary_malformed_bytes(served, method):
    expect_rejected(served, lambda: served.unary(method, b"\xff\xff\xff\x0f\x00garbage"), INVALID,
                    "malformed_message")


@pytest.mark.parametrize("method", ["Pull", "Push"])
def test_chunk_message_malformed(served, method):
    expect_rejected(served, lambda: served.stream(method, [b"\x0a\xff\xff\xff\xff\x0f"]), INVALID,
                    "malformed_message")


@pytest.mark.parametrize("method", ["Pull", "Push"])
def test_payload_malformed_with_valid_framing(served, method):
    payload = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
    chunk = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=0, total_size=len(payload),
                             crc32c=crc32c(payload), data=payload)
    expect_rejected(served, lambda: served.stream(method, [chunk.SerializeToString()]), INVALID,
                    "malformed_message")


def mutate_chunks(raw, mutation):
    chunks = [tensor_pb2.Chunk.FromString(c) for c in chunks_of(valid_push(raw), 16 * 1024)]
    chunks = mutation(chunks)
    return [c.SerializeToString() for c in chunks]


def _bad_crc(chunks):
    for c in chunks:
        c.crc32c ^= 1
    return chunks


def _flip_byte(chunks):
    data = bytearray(chunks[1].data)
    data[10] ^= 0x40
    chunks[1].data = bytes(data)
    return chunks


def _gap(chunks):
    chunks[2].offset += 1
    return chunks


def _other_total(chunks):
    chunks[1].total_size += 1
    return chunks


def _overrun(chunks):
    chunks[-1].data += b"x"
    return chunks


@pytest.mark.parametrize("mutation,code,reason", [
    (_bad_crc, INVALID, "bad_checksum"),
    (_flip_byte, INVALID, "bad_checksum"),
    (_gap, INVALID, "bad_chunk"),
    (_other_total, INVALID, "bad_chunk"),
    (_overrun, INVALID, "bad_chunk"),
    (lambda chunks: chunks[:-1], INVALID, "truncated_payload"),
    (lambda chunks: [chunks[0], chunks[2], chunks[1]] + chunks[3:], INVALID, "bad_chunk"),
    (lambda chunks: chunks[:1] + chunks, INVALID, "bad_chunk"),
    (lambda chunks: [], INVALID, "empty_stream"),
])
def test_bad_chunking(served, mutation, code, reason):
    chunks = mutate_chunks(served, mutation)
    expect_rejected(served, lambda: served.stream("Push", chunks), code, reason)


def test_chunk_over_the_servers_chunk_size(served):
    # Just over the limit: our check; far over it: gRPC's own message size limit. Both RESOURCE_EXHAUSTED.
    request = valid_push(served)
    details = expect_rejected(served, lambda: served.stream("Push", chunks_of(request, CHUNK + 100)), EXHAUSTED,
                              "chunk_too_large")
    assert f"expected at most {CHUNK} bytes" in details
    expect_rejected(served, lambda: served.stream("Push", chunks_of(request, 1 << 20)), EXHAUSTED, None)


def test_payload_over_the_message_limit(served):
    limit = served.ps.options.max_message_bytes
    chunk = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=0, total_size=limit + 1, crc32c=0,
                             data=b"\0" * 100)
    details = expect_rejected(served, lambda: served.stream("Push", [chunk.SerializeToString()]), EXHAUSTED,
                              "payload_too_large")
    assert str(limit) in details


# ----------------------------------------------------------------------------------------------------------
# push content


DENSE_SIZE = DLRMConfig.small().dense_size


def _set_dense(tensor):
    def mutate(request):
        request.dense_grads.CopyFrom(tensor)
    return mutate


def _nan_dense(request):
    array = np.frombuffer(request.dense_grads.data, np.float32).copy()
    array[len(array) // 2] = np.nan
    request.dense_grads.data = array.tobytes()


def _inf_rows(request):
    array = np.frombuffer(request.row_grads.values.data, np.float32).copy()
    array[-1] = -np.inf
    request.row_grads.values.data = array.tobytes()


def _set_ids(rows, edit):
    ids = np.frombuffer(rows.ids.data, np.int32).copy()
    edit(ids, int(rows.counts[0]))
    rows.ids.CopyFrom(encode_tensor(ids, tensor_pb2.INT32))


def _reverse_ids(rows):
    """Table rows.tables[0]'s ids in decreasing order."""
    _set_ids(rows, lambda ids, first: ids.__setitem__(slice(0, first), ids[:first][::-1].copy()))


def _id_out_of_range(rows):
    _set_ids(rows, lambda ids, first: ids.__setitem__(first - 1, 1_000_000))


def _wrong_row_width(rows):
    n = rows.values.shape[0]
    rows.values.CopyFrom(encode_tensor(np.zeros((n, 17), np.float32)))


@pytest.mark.parametrize("mutate,reason", [
    (lambda r: setattr(r, "worker_id", ""), "bad_worker_id"),
    (lambda r: setattr(r, "worker_id", "../etc/passwd"), "bad_worker_id"),
    (lambda r: setattr(r, "batch_size", 0), "bad_batch_size"),
    (lambda r: setattr(r, "loss", float("nan")), "non_finite"),
    (lambda r: r.ClearField("dense_grads"), "missing_tensor"),
    (_set_dense(encode_tensor(np.zeros(DENSE_SIZE - 1, np.float32))), "bad_shape"),
    (_set_dense(encode_tensor(np.zeros((DENSE_SIZE, 1), np.float32))), "bad_shape"),
    (_set_dense(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[DENSE_SIZE], data=b"\0" * (DENSE_SIZE * 4 - 4))),
     "bad_size"),
    (_set_dense(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[DENSE_SIZE, 1, 1, 1, 1, 1, 1, 1, 1],
                                  data=b"\0" * (DENSE_SIZE * 4))), "bad_shape"),
    (_set_dense(encode_tensor(np.zeros(DENSE_SIZE, np.int32), tensor_pb2.INT32)), "bad_dtype"),
    (_set_dense(tensor_pb2.Tensor(dtype=99, shape=[DENSE_SIZE], data=b"\0" * (DENSE_SIZE * 4))), "bad_dtype"),
    (_nan_dense, "non_finite"),
    (_inf_rows, "non_finite"),
    (lambda r: r.row_grads.tables.__setitem__(0, 26), "bad_table"),
    (lambda r: r.row_grads.tables.__setitem__(1, r.row_grads.tables[0]), "repeated_table"),
    (lambda r: r.row_grads.counts.append(1), "bad_counts"),
    (lambda r: r.row_grads.counts.__setitem__(0, r.row_grads.counts[0] + 1), "bad_shape"),
    (lambda r: r.row_grads.ClearField("values"), "missing_tensor"),
    (lambda r: _reverse_ids(r.row_grads), "unsorted_ids"),
    (lambda r: _id_out_of_range(r.row_grads), "bad_row_id"),
    (lambda r: _wrong_row_width(r.row_grads), "bad_shape"),
    (lambda r: r.row_grads.ids.CopyFrom(encode_tensor(np.arange(3, dtype=np.float32))), "bad_dtype"),
    (lambda r: setattr(r, "step", 1), "future_step"),
])
def test_bad_push_content(served, mutate, reason):
    request = valid_push(served)
    mutate(request)
    expect_rejected(served, lambda: served.push(request, CHUNK), INVALID, reason)


def test_push_from_unknown_worker(served):
    request = valid_push(served, worker="w7")
    expect_rejected(served, lambda: served.push(request, CHUNK), PRECONDITION, "unknown_worker")


def test_push_before_training_starts():
    with raw_ps() as raw:
        raw.join("w0")  # the job has 2 workers: not started
        request = valid_push(raw)
        expect_rejected(raw, lambda: raw.push(request, CHUNK), PRECONDITION, "not_started")


def test_stale_step_is_rejected_and_late_joiner_catches_up(served):
    served.push(valid_push(served, "w0", 0, seed=1), CHUNK)
    served.push(valid_push(served, "w1", 0, seed=2), CHUNK)
    assert served.ps.version == 1
    served.join("w2")
    details = expect_rejected(served, lambda: served.push(valid_push(served, "w2", 0), CHUNK),
                              grpc.StatusCode.ABORTED, "stale_step")
    assert "expected at least 1" in details
    assert not served.push(valid_push(served, "w2", 1), CHUNK).duplicate


def test_push_after_training_is_done():
    with raw_ps(total_steps=1, workers=1) as raw:
        raw.join("w0")
        raw.push(valid_push(raw, "w0", 0), CHUNK)
        assert raw.ps.done
        raw.join("w1")
        expect_rejected(raw, lambda: raw.push(valid_push(raw, "w1", 1), CHUNK), PRECONDITION, "training_done")


# ----------------------------------------------------------------------------------------------------------
# pull content, membership calls


def pull_request(raw, rows=None, **fields):
    request = ps_pb2.PullRequest(worker_id="w0", dense=True, wait_ms=100,
                                 rows=table_rows(rows if rows is not None else batch_rows(raw.ps.config, 3)))
    for key, value in fields.items():
        setattr(request, key, value)
    return request


def test_pull_serves_initial_parameters(served):
    rows = batch_rows(served.ps.config, 3)
    reply = served.pull("w0", rows)
    assert reply.ready and reply.version == 0 and not reply.done
    config = served.ps.config
    dense = decode_tensor(reply.dense, "dense", kind="float", shape=(config.dense_size,))
    initial = init_dense_params(config)
    for name, value in split_flat(dense, config.layer_shapes()).items():
        np.testing.assert_array_equal(value, initial[name])
    values = decode_tensor(reply.rows, "rows", kind="float", shape=(sum(ids.size for ids in rows.values()), 16))
    start = 0
    for t, ids in rows.items():
        np.testing.assert_array_equal(values[start:start + ids.size], init_embedding_rows(config, t, ids))
        start += ids.size


@pytest.mark.parametrize("wire,tolerance", [(tensor_pb2.FLOAT16, 1e-3), (tensor_pb2.BFLOAT16, 8e-3)])
def test_pull_compressed(served, wire, tolerance):
    exact = served.pull("w0", batch_rows(served.ps.config, 3))
    reply = served.pull("w0", batch_rows(served.ps.config, 3), wire_dtype=wire)
    assert reply.dense.dtype == reply.rows.dtype == wire
    assert reply.ByteSize() < 0.6 * exact.ByteSize()
    for name in ("dense", "rows"):
        x = decode_tensor(getattr(exact, name), name, kind="float")
        y = decode_tensor(getattr(reply, name), name, kind="float")
        assert np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-2)) < tolerance


def test_pull_not_ready_before_min_version(served):
    before = state_fingerprint(served.ps)
    reply = served.bulk("Pull", pull_request(served, min_version=5, wait_ms=200))
    assert not reply.ready and reply.version == 0 and not reply.HasField("dense") and not reply.HasField("rows")
    assert reply.waited_seconds >= 0.19
    assert state_fingerprint(served.ps) == before



# ----------------------------------------------------------------------------------------------------------
# PullOne / PushOne: the same calls, one chunk each way


@pytest.fixture
def served_1mib():
    """As `served`, with 1 MiB chunks: a push of the small model fits in one."""
    with raw_ps(chunk_bytes=1 << 20) as raw:
        raw.join("w0")
        raw.join("w1")
        yield raw


def one_chunk(message) -> bytes:
    (chunk,) = chunks_of(message, 1 << 20)
    return chunk


def test_pull_one_equals_pull_and_push_one_applies(served_1mib):
    served = served_1mib
    request = pull_request(served, dense=False)
    streamed = ps_pb2.PullReply.FromString(served.stream("Pull", chunks_of(request)))
    reply = tensor_pb2.Chunk.FromString(served.unary("PullOne", one_chunk(request)))
    assert (reply.offset, reply.total_size, reply.crc32c) == (0, len(reply.data), crc32c(reply.data))
    one = ps_pb2.PullReply.FromString(reply.data)
    one.ClearField("waited_seconds")
    streamed.ClearField("waited_seconds")
    assert one == streamed and streamed.rows.shape[0] > 0
    pushed = tensor_pb2.Chunk.FromString(served.unary("PushOne", one_chunk(valid_push(served))))
    assert not ps_pb2.PushReply.FromString(pushed.data).duplicate
    assert set(served.ps.pending) == {"w0"}


def test_pull_one_whose_reply_needs_more_than_one_chunk(served):
    """The small model's dense tensors are ~110 kB, more than the PS's 64 KiB chunks: refused before any row
    is read, and the streaming call serves the same request."""
    request = pull_request(served)
    assert len(chunks_of(request)) == 1
    details = expect_rejected(served, lambda: served.unary("PullOne", one_chunk(request)), EXHAUSTED,
                              "reply_too_large")
    assert f"more than one chunk of {CHUNK}" in details
    assert served.bulk("Pull", request).ready


@pytest.mark.parametrize("method", ["PullOne", "PushOne"])
def test_one_chunk_calls_check_framing(served_1mib, method):
    served = served_1mib
    message = valid_push(served) if method == "PushOne" else pull_request(served, dense=False)
    chunk = tensor_pb2.Chunk.FromString(one_chunk(message))
    expect_rejected(served, lambda: served.unary(method, b"\x0a\xff\xff\xff\xff\x0f"), INVALID,
                    "malformed_message")
    partial = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=0, total_size=chunk.total_size,
                               crc32c=chunk.crc32c, data=chunk.data[:-1])
    expect_rejected(served, lambda: served.unary(method, partial.SerializeToString()), INVALID,
                    "truncated_payload")
    chunk.protocol_version = PROTOCOL_VERSION + 1
    expect_rejected(served, lambda: served.unary(method, chunk.SerializeToString()), PRECONDITION,
                    "bad_protocol_version")

# ----------------------------------------------------------------------------------------------------------
# PushPull: a push and the pull of the next batch in one call


def push_pull_request(raw, worker="w0", step=0, seed=1, **pull_fields):
    return ps_pb2.PushPullRequest(push=valid_push(raw, worker, step, seed),
                                  pull=pull_request(raw, worker_id=worker, **pull_fields))


def test_push_pull_is_a_push_then_a_pull(served):
    first = served.bulk("PushPull", push_pull_request(served, "w0", seed=1, min_version=1, wait_ms=100), CHUNK)
    assert not first.push.duplicate and not first.push.applied and set(served.ps.pending) == {"w0"}
    assert not first.pull.ready and first.pull.waited_seconds >= 0.09  # the round waits for w1's push
    second = served.bulk("PushPull", push_pull_request(served, "w1", seed=2, min_version=1), CHUNK)
    assert second.push.applied and second.pull.ready and second.pull.version == 1
    plain = served.bulk("Pull", pull_request(served, worker_id="w1"), CHUNK)
    second.pull.ClearField("waited_seconds")
    plain.ClearField("waited_seconds")
    assert second.pull == plain  # what Push then Pull would have given
    assert served.bulk("PushPull", push_pull_request(served, "w1", seed=2), CHUNK).push.duplicate


def _mutated(make, mutate):
    """A request builder for parametrize: make(raw), then mutate(request)."""
    def build(raw):
        request = make(raw)
        mutate(request)
        return request
    return build


@pytest.mark.parametrize("build,code,reason", [
    (_mutated(push_pull_request, lambda r: setattr(r.pull, "wire_dtype", tensor_pb2.INT64)), INVALID, "bad_dtype"),
    (_mutated(push_pull_request, lambda r: r.pull.rows.tables.__setitem__(0, 100)), INVALID, "bad_table"),
    (_mutated(push_pull_request, lambda r: setattr(r.pull, "worker_id", "w1")), INVALID, "worker_mismatch"),
    (_mutated(push_pull_request, lambda r: r.ClearField("pull")), INVALID, "missing_field"),
    (_mutated(push_pull_request, lambda r: r.ClearField("push")), INVALID, "missing_field"),
    (_mutated(push_pull_request, lambda r: setattr(r.push, "batch_size", 0)), INVALID, "bad_batch_size"),
    (lambda raw: push_pull_request(raw, "nobody"), PRECONDITION, "unknown_worker"),
])
def test_bad_push_pull_changes_nothing(served, build, code, reason):
    """Either part bad: refused before the push is applied."""
    request = build(served)
    expect_rejected(served, lambda: served.bulk("PushPull", request, CHUNK), code, reason)


def test_stale_push_pull_serves_no_pull(served):
    served.push(valid_push(served, "w0", 0, seed=1), CHUNK)
    served.push(valid_push(served, "w1", 0, seed=2), CHUNK)
    served.join("w2")
    expect_rejected(served, lambda: served.bulk("PushPull", push_pull_request(served, "w2", 0), CHUNK),
                    grpc.StatusCode.ABORTED, "stale_step")


def test_push_pull_one_equals_push_pull(served_1mib):
    served = served_1mib
    request = push_pull_request(served, dense=False)
    reply = tensor_pb2.Chunk.FromString(served.unary("PushPullOne", one_chunk(request)))
    one = ps_pb2.PushPullReply.FromString(reply.data)
    assert not one.push.duplicate and one.pull.ready and one.pull.rows.shape[0] > 0
    assert set(served.ps.pending) == {"w0"}
    again = served.bulk("PushPull", request, CHUNK)  # the same push again: a duplicate, the same pull
    assert again.push.duplicate
    one.pull.ClearField("waited_seconds")
    again.pull.ClearField("waited_seconds")
    assert one.pull == again.pull


def test_push_pull_one_whose_reply_needs_more_than_one_chunk():
    """The request fits in one chunk, the reply cannot: refused before the push is applied, and the streaming
    call does the same work."""
    with raw_ps(chunk_bytes=200 * 1024) as raw:
        raw.join("w0")
        raw.join("w1")
        # ~150 kB of request (the ~117 kB push, 3,397 row ids), ~334 kB of reply (dense and 3,397 rows).
        request = push_pull_request(raw, rows=batch_rows(raw.ps.config, 7, count=200))
        expect_rejected(raw, lambda: raw.unary("PushPullOne", one_chunk(request)), EXHAUSTED, "reply_too_large")
        assert not raw.bulk("PushPull", request, 200 * 1024).push.duplicate


@pytest.mark.parametrize("build,code,reason", [
    (_mutated(pull_request, lambda r: setattr(r, "wire_dtype", tensor_pb2.INT64)), INVALID, "bad_dtype"),
    (_mutated(pull_request, lambda r: setattr(r, "wire_dtype", 42)), INVALID, "bad_dtype"),
    (_mutated(pull_request, lambda r: r.rows.tables.__setitem__(0, 100)), INVALID, "bad_table"),
    (_mutated(pull_request, lambda r: r.rows.tables.__setitem__(1, r.rows.tables[0])), INVALID, "repeated_table"),
    (_mutated(pull_request, lambda r: r.rows.counts.pop()), INVALID, "bad_counts"),
    (_mutated(pull_request, lambda r: _reverse_ids(r.rows)), INVALID, "unsorted_ids"),
    (_mutated(pull_request, lambda r: _id_out_of_range(r.rows)), INVALID, "bad_row_id"),
    (_mutated(pull_request, lambda r: r.rows.values.CopyFrom(encode_tensor(np.zeros((1, 16), np.float32)))), INVALID,
     "unexpected_values"),
    (_mutated(pull_request, lambda r: r.rows.ids.CopyFrom(tensor_pb2.Tensor(
        dtype=tensor_pb2.INT64, shape=[sum(r.rows.counts)], data=b"\0" * 12))), INVALID, "bad_size"),
    (_mutated(pull_request, lambda r: setattr(r, "worker_id", "nobody")), PRECONDITION, "unknown_worker"),
    (_mutated(pull_request, lambda r: setattr(r, "worker_id", "bad id")), INVALID, "bad_worker_id"),
])
def test_bad_pull(served, build, code, reason):
    request = build(served)
    expect_rejected(served, lambda: served.bulk("Pull", request), code, reason)


def test_pull_of_rows_another_shard_owns():
    with raw_ps(num_shards=2, shard=1) as raw:
        raw.join("w0")
        mine = batch_rows(raw.ps.config, 4, shard=1, num_shards=2)
        assert raw.pull("w0", mine, wait_ms=0).ready is False  # not started: 1 of 2 workers
        theirs = batch_rows(raw.ps.config, 4, shard=0, num_shards=2)
        expect_rejected(raw, lambda: raw.pull("w0", theirs), INVALID, "wrong_shard")


@pytest.mark.parametrize("method,reply_type", [("Heartbeat", ps_pb2.HeartbeatRequest),
                                               ("Leave", ps_pb2.LeaveRequest)])
def test_membership_calls_from_unknown_worker(served, method, reply_type):
    request = reply_type(protocol_version=PROTOCOL_VERSION, worker_id="stranger")
    expect_rejected(served, lambda: served.unary(method, request), PRECONDITION, "unknown_worker")


def test_join_with_bad_worker_id(served):
    request = ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id="x" * 129)
    expect_rejected(served, lambda: served.unary("Join", request), INVALID, "bad_worker_id")


def test_join_reply_describes_the_job(served):
    reply = served.join("w0")  # a re-join is harmless
    assert reply.protocol_version == PROTOCOL_VERSION and reply.total_steps == 10 and reply.synchronous
    assert reply.num_shards == 1 and reply.max_chunk_bytes == CHUNK
    assert DLRMConfig.from_dict(json.loads(reply.model_config_json)) == served.ps.config
    status = served.status()
    assert list(status.live_workers) == ["w0", "w1"] and status.version == 0


# ----------------------------------------------------------------------------------------------------------
# (b) a resent push is applied once


def test_resent_push_is_applied_once(served):
    ps = served.ps
    config = ps.config
    rows0, rows1 = batch_rows(config, 11), batch_rows(config, 12)
    dense0, values0 = gradients(ps, rows0, 11)
    dense1, values1 = gradients(ps, rows1, 12)
    push0 = push_request("w0", 0, dense0, rows0, values0, batch_size=16)
    push1 = push_request("w1", 0, dense1, rows1, values1, batch_size=48)
    initial_dense = {k: v.copy() for k, v in ps.params.dense.items()}
    initial_rows = {t: ps.params.read_rows(row_arrays({t: ids})) for t, ids in rows0.items()}

    assert not served.push(push0, CHUNK).duplicate
    after_first = state_fingerprint(ps)
    resend = served.push(push0, CHUNK)  # e.g. the reply was lost and the worker retried
    assert resend.duplicate and not resend.applied
    assert state_fingerprint(ps) == after_first

    reply = served.push(push1, CHUNK)
    assert reply.applied and reply.version == 1
    after_round = state_fingerprint(ps)
    late = served.push(push0, CHUNK)  # a resend arriving after the round was applied
    assert late.duplicate and late.applied and late.version == 1
    assert state_fingerprint(ps) == after_round
    assert ps.stats["duplicate_pushes"] == 2 and ps.stats["rounds"] == 1 and ps.stats["pushes"] == 2

    # The update is the example-weighted mean (16 and 48 examples), exactly once.
    lr = np.float32(config.learning_rate)
    w0, w1 = np.float32(16 / 64), np.float32(48 / 64)
    for name, before in initial_dense.items():
        expected = before - lr * (dense0[name] * w0 + dense1[name] * w1)
        np.testing.assert_array_equal(ps.params.dense[name], expected)
    for t, ids in rows0.items():
        grad = values0[t] * w0
        if t in rows1:
            common, i0, i1 = np.intersect1d(ids, rows1[t], return_indices=True)
            grad[i0] = values0[t][i0] * w0 + values1[t][i1] * w1
        np.testing.assert_array_equal(ps.params.read_rows(row_arrays({t: ids})), initial_rows[t] - lr * grad)


# ----------------------------------------------------------------------------------------------------------
# FedAvg (--local-steps K): a push must be what the job averages


def test_a_push_of_the_other_kind_is_refused_on_the_wire():
    with raw_ps(local_steps=4) as raw:
        raw.join("w0")
        raw.join("w1")
        gradient = valid_push(raw)  # no local_steps: one batch's gradients
        details = expect_rejected(raw, lambda: raw.push(gradient, CHUNK), PRECONDITION, "wrong_local_steps")
        assert "this job takes a model delta after 4 local steps (--local-steps 4), found 1" in details
        other = valid_push(raw)
        other.local_steps = 2
        expect_rejected(raw, lambda: raw.push(other, CHUNK), PRECONDITION, "wrong_local_steps")
        delta = valid_push(raw)
        delta.local_steps = 4
        assert not raw.push(delta, CHUNK).duplicate and raw.ps.pending.keys() == {"w0"}


def test_a_delta_push_to_a_gradient_job_and_an_impossible_local_steps_are_refused(served):
    delta = valid_push(served)
    delta.local_steps = 4
    expect_rejected(served, lambda: served.push(delta, CHUNK), PRECONDITION, "wrong_local_steps")
    delta.local_steps = MAX_LOCAL_STEPS + 1
    expect_rejected(served, lambda: served.push(delta, CHUNK), INVALID, "bad_local_steps")

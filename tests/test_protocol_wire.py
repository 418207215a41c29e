"""The wire format helpers: tensors (all dtypes, fp16/bf16 compression), hand-spliced messages, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import (
    Payload,
    ProtocolError,
    assemble_payload,
    bfloat16_to_float32,
    chunk_payload,
    decode_ids,
    decode_tensor,
    encode_ids,
    encode_tensor,
    float32_to_bfloat16,
    named_tensor_payload,
    parse_payload,
    sparse_rows_payload,
    table_ids_payload,
)


def test_tensor_round_trip_is_exact_for_float32_and_ints():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(decode_tensor(encode_tensor(values), "v", kind="float", shape=(7, None)), values)
    ids = np.array([0, 5, 2**31 - 1], dtype=np.int64)
    assert encode_ids(ids).dtype == tensor_pb2.INT32
    np.testing.assert_array_equal(decode_ids(encode_ids(ids), "ids", 2**31), ids)
    big = np.array([3, 2**40], dtype=np.int64)
    assert encode_ids(big).dtype == tensor_pb2.INT64
    np.testing.assert_array_equal(decode_ids(encode_ids(big), "ids", 2**41), big)


def test_bfloat16_rounds_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, 1e-40], dtype=np.float32)
    halves = float32_to_bfloat16(values)
    back = bfloat16_to_float32(halves)
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa wins (1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6.
    np.testing.assert_array_equal(back[:4], np.array([1.0, 1.0, 1.015625, -2.5], dtype=np.float32))
    normal = slice(0, 5)  # (the subnormal keeps fewer mantissa bits, as in bfloat16 hardware)
    assert np.all(np.abs(back[normal] - values[normal]) <= np.abs(values[normal]) * 2.0**-8)
    assert abs(back[5] - values[5]) < 2.0**-126 * 2.0**-7


@pytest.mark.parametrize("wire,bits", [(tensor_pb2.FLOAT16, 11), (tensor_pb2.BFLOAT16, 8)])
def test_compressed_floats_halve_the_bytes(wire, bits):
    values = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    tensor = encode_tensor(values, wire)
    assert len(tensor.data) == 2000
    back = decode_tensor(tensor, "v", kind="float", finite=True)
    assert back.dtype == np.float32
    assert np.max(np.abs(back - values) / np.abs(values)) <= 2.0**-bits


def test_spliced_messages_parse_as_the_same_message():
    rng = np.random.default_rng(2)
    dense = {"a/kernel": rng.normal(size=(3, 4)).astype(np.float32), "a/bias": np.zeros(4, np.float32)}
    ids = np.array([1, 4, 9])
    values = rng.normal(size=(3, 16)).astype(np.float32)
    spliced = Payload(ps_pb2.PushRequest(worker_id="w", step=7, batch_size=32, loss=0.25))
    for name, grad in dense.items():
        spliced.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER, named_tensor_payload(name, grad))
    spliced.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER, sparse_rows_payload(3, ids, values))
    built = ps_pb2.PushRequest(worker_id="w", step=7, batch_size=32, loss=0.25)
    for name, grad in dense.items():
        built.dense_grads.add(name=name, tensor=encode_tensor(grad))
    built.row_grads.add(table=3, ids=encode_ids(ids), values=encode_tensor(values))
    assert ps_pb2.PushRequest.FromString(spliced.tobytes()) == built
    assert spliced.size == len(spliced.tobytes()) == built.ByteSize()

    pull = Payload(ps_pb2.PullRequest(worker_id="w", dense=True))
    pull.add_field(ps_pb2.PullRequest.ROWS_FIELD_NUMBER, table_ids_payload(0, ids))
    assert ps_pb2.PullRequest.FromString(pull.tobytes()) == ps_pb2.PullRequest(
        worker_id="w", dense=True, rows=[tensor_pb2.TableIds(table=0, ids=encode_ids(ids))])


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1 << 20])
def test_chunks_reassemble_across_part_boundaries(chunk_size):
    payload = Payload(ps_pb2.PushRequest(worker_id="w", step=1, batch_size=2))
    payload.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER,
                      named_tensor_payload("x", np.arange(50, dtype=np.float32)))
    chunks = list(chunk_payload(payload, chunk_size))
    assert all(len(c.data) <= chunk_size for c in chunks)
    assert len(chunks) == -(-payload.size // chunk_size)
    joined = assemble_payload(iter(chunks), max_bytes=1 << 20, max_chunk_bytes=chunk_size)
    assert bytes(joined) == payload.tobytes()


def test_empty_payload_is_one_chunk():
    (chunk,) = chunk_payload(ps_pb2.PullRequest(), 16)
    assert chunk.total_size == 0
    assert parse_payload(ps_pb2.PullRequest, assemble_payload(iter([chunk]), max_bytes=1, max_chunk_bytes=1)) == \
        ps_pb2.PullRequest()


def test_tensor_size_checks_do_not_trust_the_shape():
    # A shape claiming far more elements than the data holds is rejected before any allocation.
    huge = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[1 << 40, 1 << 20], data=b"\0" * 8)
    with pytest.raises(ProtocolError, match="bad_size"):
        decode_tensor(huge, "t", kind="float")

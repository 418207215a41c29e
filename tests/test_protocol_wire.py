"""The wire format helpers: tensors (all dtypes, fp16/bf16 compression), table rows, hand-spliced messages,
chunking and the zero-copy Chunk parser."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_tools import chunk_payload

from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import PROTOCOL_VERSION, Rejected
from runtime.rows import RowSet
from runtime.wire.chunks import assemble_payload, crc32c, parse_chunk
from runtime.wire.codec import Payload
from runtime.wire.messages import (
    decode_table_rows,
    encode_table_rows,
    parse_message,
    read_pull_reply,
    read_pull_request,
    read_push_pull_reply,
    read_push_pull_request,
    read_push_request,
    read_table_rows,
)
from runtime.wire.tensors import (
    bfloat16_to_float32,
    decode_tensor,
    encode_ids,
    encode_tensor,
    float32_to_bfloat16,
    tensor_payload,
)


def table_rows_payload(tables, counts, ids, values=None) -> Payload:
    return encode_table_rows(RowSet(list(tables), np.asarray(counts, np.int64), np.asarray(ids, np.int64), values))


def test_tensor_round_trip_is_exact_for_float32_and_ints():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(decode_tensor(encode_tensor(values), "v", kind="float", shape=(7, None)), values)
    ids = np.array([0, 5, 2**31 - 1], dtype=np.int64)
    assert encode_ids(ids).dtype == tensor_pb2.INT32
    np.testing.assert_array_equal(decode_tensor(encode_ids(ids), "ids", kind="int"), ids)
    big = np.array([3, 2**40], dtype=np.int64)
    assert encode_ids(big).dtype == tensor_pb2.INT64
    np.testing.assert_array_equal(decode_tensor(encode_ids(big), "ids", kind="int"), big)


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
    dense = rng.normal(size=20).astype(np.float32)
    ids = np.array([1, 4, 9, 0, 2])
    values = rng.normal(size=(5, 16)).astype(np.float32)
    spliced = Payload(ps_pb2.PushRequest(worker_id="w", step=7, batch_size=32, loss=0.25))
    spliced.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER, tensor_payload(dense))
    spliced.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER, table_rows_payload([3, 5], [3, 2], ids, values))
    built = ps_pb2.PushRequest(worker_id="w", step=7, batch_size=32, loss=0.25, dense_grads=encode_tensor(dense),
                               row_grads=ps_pb2.TableRows(tables=[3, 5], counts=[3, 2], ids=encode_ids(ids),
                                                          values=encode_tensor(values)))
    assert ps_pb2.PushRequest.FromString(spliced.tobytes()) == built
    assert spliced.size == len(spliced.tobytes()) == built.ByteSize()

    pull = Payload(ps_pb2.PullRequest(worker_id="w", dense=True))
    pull.add_field(ps_pb2.PullRequest.ROWS_FIELD_NUMBER, table_rows_payload([0], [3], ids[:3]))
    assert ps_pb2.PullRequest.FromString(pull.tobytes()) == ps_pb2.PullRequest(
        worker_id="w", dense=True, rows=ps_pb2.TableRows(tables=[0], counts=[3], ids=encode_ids(ids[:3])))


SIZES = (10, 3, 1000)


def wire(message: ps_pb2.TableRows):
    """The message as the PS reads it off the wire."""
    return read_table_rows(message.SerializeToString(), "r")


def table_rows(tables, counts, ids, values=None) -> ps_pb2.TableRows:
    message = ps_pb2.TableRows(tables=tables, counts=counts, ids=encode_tensor(np.asarray(ids, np.int64)))
    if values is not None:
        message.values.CopyFrom(encode_tensor(np.asarray(values, np.float32)))
    return message


def test_table_rows_decode_table_after_table():
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    rows = decode_table_rows(wire(table_rows([2, 0], [3, 2], [5, 6, 999, 0, 9], values)), "r", SIZES, 2,
                             values=True)
    assert rows.tables == [2, 0]
    np.testing.assert_array_equal(rows.counts, [3, 2])
    np.testing.assert_array_equal(rows.ids, [5, 6, 999, 0, 9])  # a new table may start lower
    np.testing.assert_array_equal(rows.values, values)
    empty = decode_table_rows(wire(ps_pb2.TableRows()), "r", SIZES, 2, values=False)
    assert empty.tables == [] and empty.ids.size == 0


@pytest.mark.parametrize("message,want_values,reason,where", [
    (table_rows([3], [1], [0]), False, "bad_table", "r.tables[0]"),
    (table_rows([1, 1], [1, 1], [0, 1]), False, "repeated_table", "r.tables[1]"),
    (table_rows([0, 1], [2], [0, 1]), False, "bad_counts", "r.counts"),
    (table_rows([0, 1], [2, 0], [0, 1]), False, "bad_counts", "r.counts[1]"),
    (table_rows([1], [4], [0, 1, 2, 3]), False, "bad_counts", "r.counts[0]"),  # more ids than the table's rows
    (ps_pb2.TableRows(tables=[0], counts=[2**64 - 1]), False, "bad_counts", "r.counts[0]"),
    (table_rows([0], [2], [0, 1, 2]), False, "bad_shape", "r.ids"),
    (ps_pb2.TableRows(tables=[0], counts=[1]), False, "missing_tensor", "r.ids"),
    (table_rows([0, 1], [1, 2], [9, 0, 3]), False, "bad_row_id", "r.ids[2]"),
    (table_rows([0], [2], [-1, 3]), False, "bad_row_id", "r.ids[0]"),
    (table_rows([0, 2], [2, 2], [1, 2, 7, 7]), False, "unsorted_ids", "r.ids[3]"),
    (table_rows([0], [2], [4, 3]), False, "unsorted_ids", "r.ids[1]"),
    (table_rows([0], [1], [4], [[1.0, 2.0]]), False, "unexpected_values", "r.values"),
    (table_rows([0], [1], [4]), True, "missing_tensor", "r.values"),
    (table_rows([0], [1], [4], [[1.0, 2.0, 3.0]]), True, "bad_shape", "r.values"),
    (table_rows([0], [1], [4], [[1.0, np.nan]]), True, "non_finite", "r.values"),
])
def test_table_rows_are_checked(message, want_values, reason, where):
    with pytest.raises(Rejected) as caught:
        decode_table_rows(wire(message), "r", SIZES, 2, values=want_values)
    assert caught.value.reason == reason
    assert caught.value.detail.startswith(where), caught.value.detail


def test_chunk_parser_reads_what_protobuf_reads():
    chunk = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=3, total_size=2**40, crc32c=2**32 - 1,
                             data=b"payload")
    raw = chunk.SerializeToString()
    unknown = b"\x30\x05" + b"\x39" + b"\0" * 8 + b"\x3a\x02hi" + b"\x45" + b"\0" * 4  # fields 6 and 7, all types
    reordered = (tensor_pb2.Chunk(data=b"old", offset=1).SerializeToString() + unknown
                 + tensor_pb2.Chunk(data=b"payload", crc32c=2**32 - 1).SerializeToString()
                 + tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=3, total_size=2**40).SerializeToString())
    for encoding in (raw, reordered):
        reference = tensor_pb2.Chunk.FromString(encoding)
        reference.DiscardUnknownFields()
        assert reference == chunk  # protobuf's parser reads the same from both
        view = parse_chunk(encoding)
        assert (view.protocol_version, view.offset, view.total_size, view.crc32c, bytes(view.data)) == \
            (PROTOCOL_VERSION, 3, 2**40, 2**32 - 1, b"payload")
    assert parse_chunk(raw).data.obj is raw  # a view, not a copy
    assert parse_chunk(b"") == (0, 0, 0, 0, b"")


def test_message_readers_read_what_protobuf_reads():
    rng = np.random.default_rng(5)
    push = ps_pb2.PushRequest(worker_id="wörker", step=2**40, batch_size=2**32 - 1, loss=-0.125,
                              dense_grads=encode_tensor(rng.normal(size=(3, 4)).astype(np.float32)),
                              row_grads=ps_pb2.TableRows(tables=[7, 2], counts=[1, 2], ids=encode_ids(np.arange(3)),
                                                         values=encode_tensor(np.ones((3, 2), np.float32))))
    unknown = b"\x98\x06\x01" + b"\xa2\x06\x01x"  # fields 99 and 100
    got = read_push_request(push.SerializeToString() + unknown)
    assert (got.worker_id, got.step, got.batch_size, got.loss) == ("wörker", 2**40, 2**32 - 1, -0.125)
    assert got.row_grads.tables == [7, 2] and got.row_grads.counts == [1, 2]
    assert (got.dense_grads.dtype, got.dense_grads.shape) == (tensor_pb2.FLOAT32, (3, 4))
    assert bytes(got.dense_grads.data) == push.dense_grads.data
    assert bytes(got.row_grads.values.data) == push.row_grads.values.data
    # Repeated integers not packed (protobuf's parser accepts both forms; so must we).
    unpacked = b"\x08\x07\x08\x02\x10\x01\x10\x02"
    assert read_table_rows(unpacked, "r").tables == [7, 2] and read_table_rows(unpacked, "r").counts == [1, 2]
    reply = ps_pb2.PullReply(version=9, done=True, ready=True, waited_seconds=0.5,
                             dense=encode_tensor(np.arange(4, dtype=np.float32)),
                             rows=encode_tensor(np.zeros((2, 2), np.float32), tensor_pb2.BFLOAT16))
    got = read_pull_reply(reply.SerializeToString())
    assert (got.version, got.done, got.ready, got.waited_seconds) == (9, True, True, 0.5)
    assert got.rows.dtype == tensor_pb2.BFLOAT16 and got.rows.shape == (2, 2) and got.dense.shape == (4,)
    assert read_pull_reply(b"").dense is None
    pull = ps_pb2.PullRequest(worker_id="w", min_version=3, dense=True, wire_dtype=tensor_pb2.FLOAT16, wait_ms=7,
                              rows=ps_pb2.TableRows(tables=[1], counts=[1], ids=encode_ids(np.array([4]))))
    got = read_pull_request(pull.SerializeToString())
    assert (got.worker_id, got.min_version, got.dense, got.wire_dtype, got.wait_ms) == ("w", 3, True, 2, 7)
    assert got.rows.tables == [1] and got.rows.values is None
    got_push, got_pull = read_push_pull_request(ps_pb2.PushPullRequest(push=push, pull=pull).SerializeToString())
    assert got_push == read_push_request(push.SerializeToString())
    assert got_pull == read_pull_request(pull.SerializeToString())
    pushed = ps_pb2.PushReply(version=5, duplicate=True, applied=True)
    got_reply, got_pulled = read_push_pull_reply(ps_pb2.PushPullReply(push=pushed, pull=reply).SerializeToString())
    assert got_reply == pushed and got_pulled == read_pull_reply(reply.SerializeToString())


@pytest.mark.parametrize("message,missing", [
    (ps_pb2.PushPullRequest(push=ps_pb2.PushRequest(worker_id="w")), "PushPullRequest.pull"),
    (ps_pb2.PushPullRequest(pull=ps_pb2.PullRequest()), "PushPullRequest.push"),
    (ps_pb2.PushPullReply(push=ps_pb2.PushReply()), "PushPullReply.pull"),
])
def test_push_pull_needs_both_parts(message, missing):
    read = read_push_pull_request if isinstance(message, ps_pb2.PushPullRequest) else read_push_pull_reply
    with pytest.raises(Rejected, match=f"{missing}: expected a message, found none") as caught:
        read(message.SerializeToString())
    assert caught.value.reason == "missing_field"


@pytest.mark.parametrize("read,raw,what", [
    (parse_chunk, b"\x08", "truncated varint"),
    (parse_chunk, b"\x08" + b"\xff" * 10 + b"\x01", "over-long varint"),
    (parse_chunk, b"\x2a\x05abc", "runs 5 bytes past the end"),
    (parse_chunk, b"\x39\0\0", "runs 8 bytes past the end"),
    (parse_chunk, b"\x0b", "wire type 3"),
    (parse_chunk, b"\x00\x01", "field number 0"),
    (read_push_request, ps_pb2.PushRequest(worker_id="w").SerializeToString()[:-1], "runs 1 bytes past the end"),
    (read_push_request, b"\x0a\x02\xff\xfe", "not valid UTF-8"),
    (read_push_request, b"\x22\x00\x22\x00", "message field 4 appears twice"),
    (read_push_request, b"\x2a\x02\x1a\x00\x2a\x00", "message field 5 appears twice"),
    (read_push_request, b"\x2a\x04\x1a\x02\x0b\x00", "PushRequest.row_grads.ids: field 1 has wire type 3"),
    (read_pull_reply, b"\x22\x00\x2a\x00\x22\x00", "message field 4 appears twice"),
    (read_push_pull_request, b"\x0a\x00\x12\x00\x0a\x00", "PushPullRequest: message field 1 appears twice"),
    (read_push_pull_request, b"\x0a\x02\x0a\x05\x12\x00", "PushPullRequest.push: field 1 runs 5 bytes past"),
    (read_push_pull_request, b"\x0a\x00\x12\x04\x22\x00\x22\x00", "PushPullRequest.pull: message field 4"),
    (read_push_pull_reply, b"\x0a\x00\x12\x01\x0b", "PushPullReply.pull: field 1 has wire type 3"),
])
def test_readers_reject_malformed_bytes(read, raw, what):
    with pytest.raises(Rejected, match=what) as caught:
        read(raw)
    assert caught.value.reason == "malformed_message"


def test_checksum_is_crc32c():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283
    assert crc32c(np.frombuffer(b"123456789", np.uint8)) == crc32c(memoryview(b"123456789")) == 0xE3069283


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1 << 20])
def test_chunks_reassemble_across_part_boundaries(chunk_size):
    payload = Payload(ps_pb2.PushRequest(worker_id="w", step=1, batch_size=2))
    payload.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER, tensor_payload(np.arange(50, dtype=np.float32)))
    payload.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER,
                      table_rows_payload([0], [3], np.arange(3), np.ones((3, 4), np.float32)))
    chunks = [parse_chunk(c.SerializeToString()) for c in chunk_payload(payload, chunk_size)]
    assert all(len(c.data) <= chunk_size for c in chunks)
    assert len(chunks) == -(-payload.size // chunk_size)
    joined = assemble_payload(iter(chunks), max_bytes=1 << 20, max_chunk_bytes=chunk_size)
    assert bytes(joined) == payload.tobytes()


def test_empty_payload_is_one_chunk():
    (chunk,) = chunk_payload(ps_pb2.PullRequest(), 16)
    assert chunk.total_size == 0
    view = parse_chunk(chunk.SerializeToString())
    assert parse_message(ps_pb2.PullRequest, assemble_payload(iter([view]), max_bytes=1, max_chunk_bytes=1)) == \
        ps_pb2.PullRequest()


def test_tensor_size_checks_do_not_trust_the_shape():
    # A shape claiming far more elements than the data holds is rejected before any allocation.
    huge = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[1 << 40, 1 << 20], data=b"\0" * 8)
    with pytest.raises(Rejected, match="bad_size"):
        decode_tensor(huge, "t", kind="float")

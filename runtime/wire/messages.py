"""Each bulk message's encoder and decoder, side by side: domain objects (runtime.protocol, runtime.rows) to
bytes and back. Field numbers come from the generated code; every decoder checks what it reads against the job's
shapes and raises Rejected, so nothing malformed reaches the domain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import (
    MAX_BATCH_SIZE,
    MAX_LOCAL_STEPS,
    PullReply,
    PullRequest,
    PushReply,
    PushRequest,
    Rejected,
    check_worker_id,
)
from runtime.rows import RowSet
from runtime.wire import codec
from runtime.wire.codec import Payload
from runtime.wire.tensors import (
    FLOAT_WIRE_DTYPES,
    PRECISION_OF,
    TENSOR_FRAMING_BOUND,
    WIRE_DTYPES,
    TensorView,
    decode_tensor,
    float_itemsize,
    ids_wire_dtype,
    read_tensor,
    tensor_payload,
)

M = TypeVar("M", bound=Message)


def parse_message(message_type: type[M], raw: bytes | bytearray | memoryview) -> M:
    """A small message, parsed by protobuf. Raises Rejected."""
    try:
        return message_type.FromString(raw)
    except DecodeError as error:
        raise codec.malformed(message_type.DESCRIPTOR.name, f"cannot parse {len(raw)} bytes ({error})") from None


@dataclass(frozen=True)
class Shapes:
    """What one PS shard's messages must fit: the job's table sizes and embedding width, and how many dense
    parameters the shard holds."""

    table_sizes: Sequence[int]
    embedding_dim: int
    dense_size: int


# ----------------------------------------------------------------------------------------------------------
# TableRows <-> RowSet


def encode_table_rows(rows: RowSet, precision: str = "fp32") -> Payload:
    """A serialized TableRows: the ids of all tables concatenated, and their values if the RowSet has them."""
    payload = Payload(ps_pb2.TableRows(tables=rows.tables, counts=rows.counts.tolist()))
    payload.add_field(ps_pb2.TableRows.IDS_FIELD_NUMBER, tensor_payload(rows.ids, ids_wire_dtype(rows.ids)))
    if rows.values is not None:
        payload.add_field(ps_pb2.TableRows.VALUES_FIELD_NUMBER, tensor_payload(rows.values, WIRE_DTYPES[precision]))
    return payload


@dataclass
class TableRowsFields:
    """A TableRows as read from the wire (tensors None when absent)."""

    tables: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    ids: TensorView | None = None
    values: TensorView | None = None


_TABLE_ROWS_TENSORS = {ps_pb2.TableRows.IDS_FIELD_NUMBER: "ids", ps_pb2.TableRows.VALUES_FIELD_NUMBER: "values"}


def read_table_rows(raw: bytes | memoryview, what: str) -> TableRowsFields:
    rows, seen = TableRowsFields(), set()
    for number, wire, value in codec.fields(raw, what):
        if number == ps_pb2.TableRows.TABLES_FIELD_NUMBER and wire in (codec.VARINT, codec.LENGTH_DELIMITED):
            rows.tables += [codec.uint32(entry) for entry in codec.repeated_varints(value, wire, what)]
        elif number == ps_pb2.TableRows.COUNTS_FIELD_NUMBER and wire in (codec.VARINT, codec.LENGTH_DELIMITED):
            rows.counts += codec.repeated_varints(value, wire, what)
        elif number in _TABLE_ROWS_TENSORS and wire == codec.LENGTH_DELIMITED:
            codec.once(seen, number, what)
            name = _TABLE_ROWS_TENSORS[number]
            setattr(rows, name, read_tensor(value, f"{what}.{name}"))
    return rows


def decode_table_rows(message: TableRowsFields, field: str, table_sizes: Sequence[int], embedding_dim: int, *,
                      values: bool) -> RowSet:
    """Check and decode a TableRows: distinct tables in range, one count >= 1 per table, ids strictly increasing
    within each table and in [0, size of the table); with values, [sum(counts), embedding_dim] finite floats;
    without, no values. Raises Rejected."""
    tables = list(message.tables)
    seen: set[int] = set()
    for i, table in enumerate(tables):
        if table >= len(table_sizes):
            raise Rejected("bad_table", f"{field}.tables[{i}]: expected 0..{len(table_sizes) - 1}, found {table}")
        if table in seen:
            raise Rejected("repeated_table", f"{field}.tables[{i}]: table {table} appears twice")
        seen.add(table)
    if len(message.counts) != len(tables):
        raise Rejected("bad_counts", f"{field}.counts: expected one per table ({len(tables)}), found "
                       f"{len(message.counts)}")
    # A table's ids are distinct, so it has at most as many as its rows (which also keeps the sum small).
    counts = np.array(message.counts, dtype=np.uint64)
    sizes = np.asarray(table_sizes, dtype=np.uint64)[tables]
    bad = (counts == 0) | (counts > sizes)
    if bad.any():
        i = int(np.argmax(bad))
        raise Rejected("bad_counts", f"{field}.counts[{i}]: expected 1..{int(sizes[i])} (table {tables[i]}), "
                       f"found {int(counts[i])}")
    counts = counts.astype(np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    if message.ids is not None:
        ids = decode_tensor(message.ids, f"{field}.ids", kind="int", shape=(total,))
    elif total:
        raise Rejected("missing_tensor", f"{field}.ids: expected {total} ids, found none")
    else:
        ids = np.zeros(0, dtype=np.int64)
    if total:
        # Bounds and order of every table's run, checked in one pass over all ids.
        limit = np.repeat(sizes.astype(np.int64), counts)
        bad = (ids < 0) | (ids >= limit)
        if bad.any():
            k = int(np.argmax(bad))
            table = tables[int(np.searchsorted(ends, k, side="right"))]
            raise Rejected("bad_row_id", f"{field}.ids[{k}]: table {table} has ids in [0, {table_sizes[table]}), "
                           f"found {int(ids[k])}")
        rising = ids[1:] > ids[:-1]
        rising[ends[:-1] - 1] = True  # a new table may start lower
        if not rising.all():
            k = int(np.argmin(rising)) + 1
            table = tables[int(np.searchsorted(ends, k, side="right"))]
            raise Rejected("unsorted_ids", f"{field}.ids[{k}]: expected strictly increasing ids within table "
                           f"{table} (sorted, no repeats)")
    if not values:
        if message.values is not None:
            raise Rejected("unexpected_values", f"{field}.values: expected none (ids only)")
        return RowSet(tables, counts, ids)
    if message.values is None:
        raise Rejected("missing_tensor", f"{field}.values: expected [{total}, {embedding_dim}] values, found none")
    rows = decode_tensor(message.values, f"{field}.values", kind="float", shape=(total, embedding_dim), finite=True)
    return RowSet(tables, counts, ids, rows)


# ----------------------------------------------------------------------------------------------------------
# PullRequest


def encode_pull_request(request: PullRequest) -> Payload:
    payload = Payload(ps_pb2.PullRequest(worker_id=request.worker_id, min_version=request.min_version,
                                         dense=request.dense, wire_dtype=WIRE_DTYPES[request.precision],
                                         wait_ms=request.wait_ms))
    if len(request.rows.tables):
        payload.add_field(ps_pb2.PullRequest.ROWS_FIELD_NUMBER, encode_table_rows(request.rows))
    return payload


@dataclass
class PullRequestFields:
    worker_id: str = ""
    min_version: int = 0
    dense: bool = False
    rows: TableRowsFields = field(default_factory=TableRowsFields)
    wire_dtype: int = 0
    wait_ms: int = 0


def read_pull_request(raw: bytes | memoryview, what: str = "PullRequest") -> PullRequestFields:
    request, seen = PullRequestFields(), set()
    for number, wire, value in codec.fields(raw, what):
        if wire == codec.VARINT:
            if number == ps_pb2.PullRequest.MIN_VERSION_FIELD_NUMBER:
                request.min_version = value
            elif number == ps_pb2.PullRequest.DENSE_FIELD_NUMBER:
                request.dense = value != 0
            elif number == ps_pb2.PullRequest.WIRE_DTYPE_FIELD_NUMBER:
                request.wire_dtype = codec.int32(value)
            elif number == ps_pb2.PullRequest.WAIT_MS_FIELD_NUMBER:
                request.wait_ms = codec.uint32(value)
        elif wire == codec.LENGTH_DELIMITED and number == ps_pb2.PullRequest.WORKER_ID_FIELD_NUMBER:
            request.worker_id = codec.utf8(value, what)
        elif wire == codec.LENGTH_DELIMITED and number == ps_pb2.PullRequest.ROWS_FIELD_NUMBER:
            codec.once(seen, number, what)
            request.rows = read_table_rows(value, f"{what}.rows")
    return request


def _decode_pull_request(fields: PullRequestFields, shapes: Shapes) -> PullRequest:
    check_worker_id(fields.worker_id)
    wire = fields.wire_dtype or tensor_pb2.FLOAT32
    if wire not in FLOAT_WIRE_DTYPES:
        raise Rejected("bad_dtype", f"PullRequest.wire_dtype: expected FLOAT32, FLOAT16 or BFLOAT16, found "
                       f"{fields.wire_dtype}")
    rows = decode_table_rows(fields.rows, "PullRequest.rows", shapes.table_sizes, shapes.embedding_dim, values=False)
    return PullRequest(fields.worker_id, fields.min_version, fields.dense, rows, fields.wait_ms, PRECISION_OF[wire])


def decode_pull_request(raw: bytes | memoryview, shapes: Shapes) -> PullRequest:
    return _decode_pull_request(read_pull_request(raw, "PullRequest"), shapes)


def request_bound(shapes: Shapes) -> int:
    """The most bytes a PS request of a job with these shapes can legitimately serialize to: a PushPull whose
    push carries every dense gradient and a gradient for every row of every table (fp32, int64 ids) and whose
    pull asks for every row again."""
    rows = sum(shapes.table_sizes)
    tables = len(shapes.table_sizes)
    return (shapes.dense_size * 4 + rows * (shapes.embedding_dim * 4 + 2 * 8) + tables * 2 * 20
            + 8 * TENSOR_FRAMING_BOUND)


def pull_reply_bound(dense_values: int, rows: int, embedding_dim: int, precision: str) -> int:
    """The most bytes a PullReply can serialize to: dense_values dense parameters and that many rows, as
    `precision` floats. Client and PS use it to tell whether a reply fits in one chunk."""
    return (dense_values + rows * embedding_dim) * float_itemsize(precision) + 3 * TENSOR_FRAMING_BOUND


# ----------------------------------------------------------------------------------------------------------
# PullReply


def encode_pull_reply(reply: PullReply, dense: Payload | None, precision: str) -> Payload:
    """dense: the reply's dense tensor already serialized (a PS serializes a version's once for every pull)."""
    payload = Payload(ps_pb2.PullReply(version=reply.version, done=reply.done, ready=reply.ready,
                                       waited_seconds=reply.waited_seconds))
    if dense is not None:
        payload.add_field(ps_pb2.PullReply.DENSE_FIELD_NUMBER, dense)
    if reply.rows is not None:
        payload.add_field(ps_pb2.PullReply.ROWS_FIELD_NUMBER, tensor_payload(reply.rows, WIRE_DTYPES[precision]))
    return payload


def encode_dense(dense: np.ndarray, precision: str) -> Payload:
    return tensor_payload(dense, WIRE_DTYPES[precision])


@dataclass
class PullReplyFields:
    version: int = 0
    done: bool = False
    ready: bool = False
    dense: TensorView | None = None
    rows: TensorView | None = None
    waited_seconds: float = 0.0


_PULL_REPLY_TENSORS = {ps_pb2.PullReply.DENSE_FIELD_NUMBER: "dense", ps_pb2.PullReply.ROWS_FIELD_NUMBER: "rows"}


def read_pull_reply(raw: bytes | memoryview, what: str = "PullReply") -> PullReplyFields:
    reply, seen = PullReplyFields(), set()
    for number, wire, value in codec.fields(raw, what):
        if wire == codec.VARINT:
            if number == ps_pb2.PullReply.VERSION_FIELD_NUMBER:
                reply.version = value
            elif number == ps_pb2.PullReply.DONE_FIELD_NUMBER:
                reply.done = value != 0
            elif number == ps_pb2.PullReply.READY_FIELD_NUMBER:
                reply.ready = value != 0
        elif wire == codec.LENGTH_DELIMITED and number in _PULL_REPLY_TENSORS:
            codec.once(seen, number, what)
            name = _PULL_REPLY_TENSORS[number]
            setattr(reply, name, read_tensor(value, f"{what}.{name}"))
        elif wire == codec.FIXED64 and number == ps_pb2.PullReply.WAITED_SECONDS_FIELD_NUMBER:
            reply.waited_seconds = codec.double(value)
    return reply


def _decode_pull_reply(fields: PullReplyFields, dense_size: int | None, rows: int, embedding_dim: int,
                       what: str) -> PullReply:
    if not fields.ready:
        return PullReply(fields.version, fields.done, False, fields.waited_seconds)

    def tensor(found: TensorView | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if found is None:
            if math.prod(shape) == 0:
                return np.zeros(shape, dtype=np.float32)
            raise Rejected("missing_tensor", f"{what}.{name}: expected {list(shape)} values, found none")
        return decode_tensor(found, f"{what}.{name}", kind="float", shape=shape)

    dense = None if dense_size is None else tensor(fields.dense, "dense", (dense_size,))
    return PullReply(fields.version, fields.done, True, fields.waited_seconds, dense,
                     tensor(fields.rows, "rows", (rows, embedding_dim)))


def decode_pull_reply(raw: bytes | memoryview, *, dense_size: int | None, rows: int,
                      embedding_dim: int) -> PullReply:
    """A PullReply to a pull of dense_size dense values (None: not asked for) and `rows` rows. Raises Rejected."""
    return _decode_pull_reply(read_pull_reply(raw), dense_size, rows, embedding_dim, "PullReply")


# ----------------------------------------------------------------------------------------------------------
# PushRequest


def encode_push_request(request: PushRequest, precision: str = "fp32") -> Payload:
    # local_steps 1 is left out (read back as 1), so a gradient push is the same bytes as before FedAvg existed.
    payload = Payload(ps_pb2.PushRequest(worker_id=request.worker_id, step=request.step,
                                         batch_size=request.batch_size, loss=request.loss,
                                         local_steps=request.local_steps if request.local_steps != 1 else 0))
    payload.add_field(ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER,
                      tensor_payload(request.dense, WIRE_DTYPES[precision]))
    if len(request.rows.tables):
        payload.add_field(ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER, encode_table_rows(request.rows, precision))
    return payload


@dataclass
class PushRequestFields:
    worker_id: str = ""
    step: int = 0
    batch_size: int = 0
    dense_grads: TensorView | None = None
    row_grads: TableRowsFields = field(default_factory=TableRowsFields)
    loss: float = 0.0
    local_steps: int = 0


def read_push_request(raw: bytes | memoryview, what: str = "PushRequest") -> PushRequestFields:
    request, seen = PushRequestFields(), set()
    for number, wire, value in codec.fields(raw, what):
        if wire == codec.VARINT:
            if number == ps_pb2.PushRequest.STEP_FIELD_NUMBER:
                request.step = value
            elif number == ps_pb2.PushRequest.BATCH_SIZE_FIELD_NUMBER:
                request.batch_size = codec.uint32(value)
            elif number == ps_pb2.PushRequest.LOCAL_STEPS_FIELD_NUMBER:
                request.local_steps = codec.uint32(value)
        elif wire == codec.LENGTH_DELIMITED and number == ps_pb2.PushRequest.WORKER_ID_FIELD_NUMBER:
            request.worker_id = codec.utf8(value, what)
        elif wire == codec.LENGTH_DELIMITED and number == ps_pb2.PushRequest.DENSE_GRADS_FIELD_NUMBER:
            codec.once(seen, number, what)
            request.dense_grads = read_tensor(value, f"{what}.dense_grads")
        elif wire == codec.LENGTH_DELIMITED and number == ps_pb2.PushRequest.ROW_GRADS_FIELD_NUMBER:
            codec.once(seen, number, what)
            request.row_grads = read_table_rows(value, f"{what}.row_grads")
        elif wire == codec.FIXED64 and number == ps_pb2.PushRequest.LOSS_FIELD_NUMBER:
            request.loss = codec.double(value)
    return request


def _decode_push_request(fields: PushRequestFields, shapes: Shapes) -> PushRequest:
    check_worker_id(fields.worker_id)
    if not 1 <= fields.batch_size <= MAX_BATCH_SIZE:
        raise Rejected("bad_batch_size", f"PushRequest.batch_size: expected 1..{MAX_BATCH_SIZE}, "
                       f"found {fields.batch_size}")
    if not math.isfinite(fields.loss):
        raise Rejected("non_finite", f"PushRequest.loss: expected a finite number, found {fields.loss}")
    local_steps = fields.local_steps or 1  # absent: one batch's gradients
    if local_steps > MAX_LOCAL_STEPS:
        raise Rejected("bad_local_steps", f"PushRequest.local_steps: expected 0..{MAX_LOCAL_STEPS}, found "
                       f"{fields.local_steps}")
    size = shapes.dense_size
    if fields.dense_grads is not None:
        dense = decode_tensor(fields.dense_grads, "PushRequest.dense_grads", kind="float", shape=(size,),
                              finite=True)
    elif size:
        raise Rejected("missing_tensor", f"PushRequest.dense_grads: expected the {size} dense gradients of "
                       f"this shard, found none")
    else:
        dense = np.zeros(0, dtype=np.float32)
    rows = decode_table_rows(fields.row_grads, "PushRequest.row_grads", shapes.table_sizes, shapes.embedding_dim,
                       values=True)
    return PushRequest(fields.worker_id, fields.step, fields.batch_size, fields.loss, dense, rows, local_steps)


def decode_push_request(raw: bytes | memoryview, shapes: Shapes) -> PushRequest:
    return _decode_push_request(read_push_request(raw, "PushRequest"), shapes)


# ----------------------------------------------------------------------------------------------------------
# PushReply


def encode_push_reply(reply: PushReply) -> ps_pb2.PushReply:
    return ps_pb2.PushReply(version=reply.version, duplicate=reply.duplicate, applied=reply.applied)


def decode_push_reply(raw: bytes | memoryview) -> PushReply:
    reply = parse_message(ps_pb2.PushReply, raw)
    return PushReply(reply.version, reply.duplicate, reply.applied)


# ----------------------------------------------------------------------------------------------------------
# PushPull: a push, then a pull, in one call


def _pair(raw: bytes | memoryview, what: str, names: tuple[str, str]) -> tuple[memoryview, memoryview]:
    """The two required message fields (numbers 1 and 2) of a PushPullRequest or PushPullReply, unparsed."""
    found: dict[int, memoryview] = {}
    seen: set[int] = set()
    for number, wire, value in codec.fields(raw, what):
        if wire == codec.LENGTH_DELIMITED and number in (1, 2):
            codec.once(seen, number, what)
            found[number] = value
    for number, name in enumerate(names, start=1):
        if number not in found:
            raise Rejected("missing_field", f"{what}.{name}: expected a message, found none")
    return found[1], found[2]


def encode_push_pull_request(push: Payload, pull: Payload) -> Payload:
    payload = Payload()
    payload.add_field(ps_pb2.PushPullRequest.PUSH_FIELD_NUMBER, push)
    payload.add_field(ps_pb2.PushPullRequest.PULL_FIELD_NUMBER, pull)
    return payload


def read_push_pull_request(raw: bytes | memoryview) -> tuple[PushRequestFields, PullRequestFields]:
    push, pull = _pair(raw, "PushPullRequest", ("push", "pull"))
    return read_push_request(push, "PushPullRequest.push"), read_pull_request(pull, "PushPullRequest.pull")


def decode_push_pull_request(raw: bytes | memoryview, shapes: Shapes) -> tuple[PushRequest, PullRequest]:
    """The push and the pull; both name the same worker. The pull is checked first: a call refused for either
    part changes nothing."""
    push_fields, pull_fields = read_push_pull_request(raw)
    if pull_fields.worker_id != push_fields.worker_id:
        raise Rejected("worker_mismatch", f"PushPullRequest.pull.worker_id: expected the push's "
                       f"{push_fields.worker_id!r}, found {pull_fields.worker_id!r}")
    pull = _decode_pull_request(pull_fields, shapes)
    return _decode_push_request(push_fields, shapes), pull


def encode_push_pull_reply(push: PushReply, pull: Payload) -> Payload:
    payload = Payload(ps_pb2.PushPullReply(push=encode_push_reply(push)))
    payload.add_field(ps_pb2.PushPullReply.PULL_FIELD_NUMBER, pull)
    return payload


def read_push_pull_reply(raw: bytes | memoryview) -> tuple[ps_pb2.PushReply, PullReplyFields]:
    push, pull = _pair(raw, "PushPullReply", ("push", "pull"))
    return parse_message(ps_pb2.PushReply, push), read_pull_reply(pull, "PushPullReply.pull")


def decode_push_pull_reply(raw: bytes | memoryview, *, dense_size: int | None, rows: int,
                           embedding_dim: int) -> tuple[PushReply, PullReply]:
    push, pull = read_push_pull_reply(raw)
    return (PushReply(push.version, push.duplicate, push.applied),
            _decode_pull_reply(pull, dense_size, rows, embedding_dim, "PushPullReply.pull"))

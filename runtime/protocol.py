"""Wire format of the runtime protocol (protos/tensor.proto, protos/ps.proto), version 2.

Tensors travel as dtype + shape + raw little-endian bytes and are turned into numpy arrays without per-element
Python work. Bulk payloads (Pull and Push) are a serialized message split into Chunk messages of at most the
chunk size, each repeating the payload's size and CRC-32C. Everything a peer sends is checked here before any
state changes; a violation raises ProtocolError, which a server turns into a gRPC status whose details start
with a stable reason word.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import google_crc32c
import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from runtime.proto import ps_pb2, tensor_pb2

PROTOCOL_VERSION = 2
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# Per-chunk framing (offset, sizes, CRC, tags) is well under this; gRPC's receive limit is chunk size + this.
CHUNK_OVERHEAD = 1024
MAX_RANK = 8

DType = tensor_pb2.DType
_NUMPY_DTYPES: dict[int, np.dtype] = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.FLOAT16: np.dtype("<f2"),
    tensor_pb2.BFLOAT16: np.dtype("<u2"),  # raw upper halves of float32 values
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.INT64: np.dtype("<i8"),
}
FLOAT_WIRE_DTYPES = (tensor_pb2.FLOAT32, tensor_pb2.FLOAT16, tensor_pb2.BFLOAT16)
INT_WIRE_DTYPES = (tensor_pb2.INT32, tensor_pb2.INT64)
WIRE_DTYPE_NAMES = {"fp32": tensor_pb2.FLOAT32, "fp16": tensor_pb2.FLOAT16, "bf16": tensor_pb2.BFLOAT16}


class ProtocolError(Exception):
    """A peer's message broke the protocol; code and reason are what the peer gets back."""

    def __init__(self, code: grpc.StatusCode, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.code = code
        self.reason = reason
        self.detail = detail


def invalid(reason: str, detail: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, reason, detail)


class RemoteError(Exception):
    """A call the server rejected: the gRPC status code and the reason word from its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        head = details.split(":", 1)[0]
        self.reason = head if head and " " not in head else ""

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RemoteError:
        return cls(error.code(), error.details() or "")


def check_version(version: int, what: str) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, "bad_protocol_version",
                            f"{what}.protocol_version: expected {PROTOCOL_VERSION}, found {version}")


# ----------------------------------------------------------------------------------------------------------
# Tensors


def float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even); returns the raw uint16 halves."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bfloat16_to_float32(halves: np.ndarray) -> np.ndarray:
    return (halves.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _wire_array(array: np.ndarray, wire_dtype: int | None) -> tuple[int, np.ndarray]:
    """(wire dtype, contiguous little-endian array holding exactly the bytes to send)."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        wire = tensor_pb2.FLOAT32 if wire_dtype in (None, tensor_pb2.DTYPE_UNSPECIFIED) else wire_dtype
        if wire == tensor_pb2.BFLOAT16:
            return wire, float32_to_bfloat16(array)
        return wire, np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[wire])
    if array.dtype.kind in "iu":
        wire = tensor_pb2.INT64 if wire_dtype is None else wire_dtype
        if wire not in INT_WIRE_DTYPES:
            raise ValueError(f"integer array cannot go out as {DType.Name(wire)}")
        return wire, np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[wire])
    raise ValueError(f"cannot encode arrays of dtype {array.dtype}")


def encode_tensor(array: np.ndarray, wire_dtype: int | None = None) -> tensor_pb2.Tensor:
    """array -> Tensor. Float arrays go out as wire_dtype (FLOAT32 by default); integer arrays as INT32/INT64."""
    wire, raw = _wire_array(array, wire_dtype)
    return tensor_pb2.Tensor(dtype=wire, shape=raw.shape, data=raw.tobytes())


# A serialized tensor's framing (field keys, lengths, dtype, shape) is well under this.
TENSOR_FRAMING_BOUND = 256


def pull_reply_bound(dense_values: int, rows: int, embedding_dim: int, wire_dtype: int) -> int:
    """The most bytes a PullReply can serialize to: dense_values dense parameters and that many rows, as
    wire_dtype floats. Client and PS use it to tell whether a reply fits in one chunk."""
    itemsize = 2 if wire_dtype in (tensor_pb2.FLOAT16, tensor_pb2.BFLOAT16) else 4
    return (dense_values + rows * embedding_dim) * itemsize + 3 * TENSOR_FRAMING_BOUND


# A PushPullReply is its PullReply plus a PushReply (three varints) and two field headers: at most this more.
PUSH_PULL_REPLY_EXTRA = 64


def ids_wire_dtype(ids: np.ndarray) -> int:
    """Row ids go out as INT32 when they fit (half the bytes), else INT64."""
    return tensor_pb2.INT32 if ids.size == 0 or int(ids.max()) < 2**31 else tensor_pb2.INT64


def encode_ids(ids: np.ndarray) -> tensor_pb2.Tensor:
    return encode_tensor(ids, ids_wire_dtype(ids))


def decode_tensor(tensor: tensor_pb2.Tensor | TensorView, field: str, *, kind: str,
                  shape: tuple[int | None, ...] | None = None, finite: bool = False) -> np.ndarray:
    """Tensor -> read-only numpy array (float32 for kind "float", int64 for kind "int").

    shape: the expected shape; None entries match any size. finite: reject NaN and Inf.
    """
    allowed = FLOAT_WIRE_DTYPES if kind == "float" else INT_WIRE_DTYPES
    if tensor.dtype not in allowed:
        name = DType.Name(tensor.dtype) if tensor.dtype in DType.values() else str(tensor.dtype)
        raise invalid("bad_dtype", f"{field}.dtype: expected one of "
                      f"{', '.join(DType.Name(d) for d in allowed)}, found {name}")
    dims = tuple(int(d) for d in tensor.shape)
    if len(dims) > MAX_RANK:
        raise invalid("bad_shape", f"{field}.shape: expected rank <= {MAX_RANK}, found rank {len(dims)}")
    if shape is not None and (len(dims) != len(shape)
                              or any(want is not None and want != got for want, got in zip(shape, dims, strict=True))):
        want_text = "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"
        raise invalid("bad_shape", f"{field}.shape: expected {want_text}, found {list(dims)}")
    dtype = _NUMPY_DTYPES[tensor.dtype]
    count = 1
    for d in dims:
        count *= d
    if len(tensor.data) != count * dtype.itemsize:
        raise invalid("bad_size", f"{field}.data: expected {count} x {dtype.itemsize} = "
                      f"{count * dtype.itemsize} bytes for shape {list(dims)}, found {len(tensor.data)}")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(dims)
    if tensor.dtype == tensor_pb2.BFLOAT16:
        array = bfloat16_to_float32(array)
    elif kind == "float" and tensor.dtype != tensor_pb2.FLOAT32:
        array = array.astype(np.float32)
    elif kind == "int" and tensor.dtype != tensor_pb2.INT64:
        array = array.astype(np.int64)
    if finite and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise invalid("non_finite", f"{field}: expected finite values, found {bad} NaN/Inf")
    return array


@dataclass(frozen=True)
class TableRowArrays:
    """A decoded TableRows: table numbers, their row counts, all ids (int64) and values (float32 or None), in the
    message's order."""

    tables: list[int]
    counts: np.ndarray
    ids: np.ndarray
    values: np.ndarray | None

    def row_tables(self) -> np.ndarray:
        """The table of each id (int64, one per id)."""
        return np.repeat(np.asarray(self.tables, dtype=np.int64), self.counts)


def decode_table_rows(message: TableRowsFields, field: str, table_sizes: Sequence[int], embedding_dim: int, *,
                      values: bool) -> TableRowArrays:
    """Check and decode a TableRows: distinct tables in range, one count >= 1 per table, ids strictly increasing
    within each table and in [0, size of the table); with values, [sum(counts), embedding_dim] finite floats;
    without, no values. Raises ProtocolError."""
    tables = list(message.tables)
    seen: set[int] = set()
    for i, table in enumerate(tables):
        if table >= len(table_sizes):
            raise invalid("bad_table", f"{field}.tables[{i}]: expected 0..{len(table_sizes) - 1}, found {table}")
        if table in seen:
            raise invalid("repeated_table", f"{field}.tables[{i}]: table {table} appears twice")
        seen.add(table)
    if len(message.counts) != len(tables):
        raise invalid("bad_counts", f"{field}.counts: expected one per table ({len(tables)}), found "
                      f"{len(message.counts)}")
    # A table's ids are distinct, so it has at most as many as its rows (which also keeps the sum small).
    counts = np.array(message.counts, dtype=np.uint64)
    sizes = np.asarray(table_sizes, dtype=np.uint64)[tables]
    bad = (counts == 0) | (counts > sizes)
    if bad.any():
        i = int(np.argmax(bad))
        raise invalid("bad_counts", f"{field}.counts[{i}]: expected 1..{int(sizes[i])} (table {tables[i]}), "
                      f"found {int(counts[i])}")
    counts = counts.astype(np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    ids = decode_tensor(message.ids, f"{field}.ids", kind="int", shape=(total,)) if message.ids is not None \
        else _missing_tensor(f"{field}.ids", total)
    if total:
        # Bounds and order of every table's run, checked in one pass over all ids.
        limit = np.repeat(sizes.astype(np.int64), counts)
        bad = (ids < 0) | (ids >= limit)
        if bad.any():
            k = int(np.argmax(bad))
            table = tables[int(np.searchsorted(ends, k, side="right"))]
            raise invalid("bad_row_id", f"{field}.ids[{k}]: table {table} has ids in [0, {table_sizes[table]}), "
                          f"found {int(ids[k])}")
        rising = ids[1:] > ids[:-1]
        rising[ends[:-1] - 1] = True  # a new table may start lower
        if not rising.all():
            k = int(np.argmin(rising)) + 1
            table = tables[int(np.searchsorted(ends, k, side="right"))]
            raise invalid("unsorted_ids", f"{field}.ids[{k}]: expected strictly increasing ids within table "
                          f"{table} (sorted, no repeats)")
    if not values:
        if message.values is not None:
            raise invalid("unexpected_values", f"{field}.values: expected none (ids only)")
        return TableRowArrays(tables, counts, ids, None)
    if message.values is None:
        raise invalid("missing_tensor", f"{field}.values: expected [{total}, {embedding_dim}] values, found none")
    rows = decode_tensor(message.values, f"{field}.values", kind="float", shape=(total, embedding_dim), finite=True)
    return TableRowArrays(tables, counts, ids, rows)


def _missing_tensor(field: str, count: int) -> np.ndarray:
    if count:
        raise invalid("missing_tensor", f"{field}: expected {count} ids, found none")
    return np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Chunked payloads


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def crc32c(data: bytes | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C of data (any contiguous buffer), continuing from crc."""
    return google_crc32c.extend(crc, np.frombuffer(data, dtype=np.uint8))


class Payload:
    """A serialized protobuf message held as a list of buffers, big tensor data by reference.

    upb serializes large bytes fields at a few hundred MB/s; here a message is its small fields serialized by
    upb plus length-delimited fields appended by hand (a field key, a length, the bytes), which protobuf parsers
    read as the same message. Tensor data is copied once, when chunks are built.
    """

    def __init__(self, head: Message | bytes = b"") -> None:
        self.parts: list[bytes | np.ndarray] = []
        self.size = 0
        self.append(head if isinstance(head, bytes) else head.SerializeToString())

    def append(self, data: bytes | np.ndarray) -> None:
        if len(data):
            self.parts.append(data)
            self.size += len(data)

    def add_field(self, number: int, value: Payload | bytes | np.ndarray) -> None:
        """Append a length-delimited field (a nested message, bytes or string; an array as its raw bytes)."""
        size = value.size if isinstance(value, Payload) else len(value)
        self.append(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(size))
        if isinstance(value, Payload):
            self.parts.extend(value.parts)
            self.size += value.size
        else:
            self.append(value)

    def tobytes(self) -> bytes:
        return b"".join(self.parts)

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        """Serialized Chunk messages of at most chunk_size data bytes each (at least one)."""
        crc = 0
        for part in self.parts:
            crc = crc32c(part, crc)
        total = self.size
        index, within = 0, 0
        for offset in range(0, max(total, 1), chunk_size):
            length = min(chunk_size, total - offset)
            head = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=offset, total_size=total, crc32c=crc)
            pieces: list[bytes | np.ndarray] = [head.SerializeToString()]
            if length:
                pieces.append(_varint(tensor_pb2.Chunk.DATA_FIELD_NUMBER << 3 | _LENGTH_DELIMITED) + _varint(length))
            need = length
            while need:
                part = self.parts[index]
                take = min(need, len(part) - within)
                pieces.append(part if take == len(part) else part[within:within + take])
                need -= take
                within += take
                if within == len(part):
                    index, within = index + 1, 0
            yield b"".join(pieces)


def tensor_payload(array: np.ndarray, wire_dtype: int | None = None) -> Payload:
    """A serialized Tensor whose data is `array`'s memory (no copy until chunking: do not change array)."""
    wire, raw = _wire_array(array, wire_dtype)
    payload = Payload(tensor_pb2.Tensor(dtype=wire, shape=raw.shape))
    payload.add_field(tensor_pb2.Tensor.DATA_FIELD_NUMBER, raw.reshape(-1).view(np.uint8))
    return payload


def table_rows_payload(tables: Sequence[int], counts: Sequence[int], ids: np.ndarray,
                       values: np.ndarray | None = None, wire_dtype: int | None = None) -> Payload:
    """A serialized TableRows (ids of all tables concatenated, and their values if given)."""
    payload = Payload(ps_pb2.TableRows(tables=tables, counts=counts))
    payload.add_field(ps_pb2.TableRows.IDS_FIELD_NUMBER, tensor_payload(ids, ids_wire_dtype(ids)))
    if values is not None:
        payload.add_field(ps_pb2.TableRows.VALUES_FIELD_NUMBER, tensor_payload(values, wire_dtype))
    return payload


def chunk_payload(message: Message | Payload, chunk_size: int) -> Iterator[tensor_pb2.Chunk]:
    """message as Chunk messages of at most chunk_size data bytes (at least one)."""
    payload = message if isinstance(message, Payload) else Payload(message)
    for raw in payload.chunks(chunk_size):
        yield tensor_pb2.Chunk.FromString(raw)


# ----------------------------------------------------------------------------------------------------------
# Zero-copy readers for the bulk messages
#
# protobuf's parser copies every bytes field into its arena and again on each access; for a few MB of tensor data
# per call that is most of the receive cost. These readers walk the wire format by hand (BoringSSL CBS style:
# every read bounds-checked, lengths explicit) and hand tensor data out as views of the received buffer. They
# follow protobuf's rules: fields in any order, the last value of a scalar wins, repeated scalars packed or not,
# unknown fields and fields of an unexpected wire type skipped. A singular message field sent twice (which
# protobuf would merge) is refused as malformed: no sender of ours does that.


def _malformed(what: str, detail: str) -> ProtocolError:
    return invalid("malformed_message", f"{what}: {detail}")


def _read_varint(raw: bytes | memoryview, pos: int, what: str = "Chunk") -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise _malformed(what, f"{'truncated' if pos >= len(raw) else 'over-long'} varint at byte {pos}")


def _fields(raw: bytes | memoryview, what: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for varints, a memoryview otherwise."""
    view = memoryview(raw)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _read_varint(view, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _malformed(what, f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _read_varint(view, pos, what)
            yield number, wire, value
            continue
        if wire == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos, what)
        elif wire in (_FIXED64, _FIXED32):
            length = 8 if wire == _FIXED64 else 4
        else:
            raise _malformed(what, f"field {number} has wire type {wire} (groups are not used)")
        if length > end - pos:
            raise _malformed(what, f"field {number} runs {length} bytes past the end")
        yield number, wire, view[pos:pos + length]
        pos += length


def _varints(value: Any, wire: int, what: str) -> list[int]:
    """A repeated integer field's entries from one occurrence, packed or not."""
    if wire == _VARINT:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        entry, pos = _read_varint(value, pos, what)
        out.append(entry)
    return out


def _string(value: memoryview, what: str) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise _malformed(what, "string field is not valid UTF-8") from None


def _double(value: memoryview) -> float:
    return float(np.frombuffer(value, dtype="<f8")[0])


def _int32(value: int) -> int:
    """An int32/enum field: protobuf keeps the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _once(seen: set[int], number: int, what: str) -> None:
    if number in seen:
        raise _malformed(what, f"message field {number} appears twice")
    seen.add(number)


class TensorView(NamedTuple):
    """A Tensor as read from the wire; data is a view of the received bytes. decode_tensor takes it."""

    dtype: int
    shape: tuple[int, ...]
    data: memoryview | bytes


def read_tensor(raw: bytes | memoryview, what: str) -> TensorView:
    dtype, shape, data = 0, [], memoryview(b"")
    for number, wire, value in _fields(raw, what):
        if number == 1 and wire == _VARINT:
            dtype = _int32(value)
        elif number == 2 and wire in (_VARINT, _LENGTH_DELIMITED):
            shape += _varints(value, wire, what)
        elif number == 3 and wire == _LENGTH_DELIMITED:
            data = value
    return TensorView(dtype, tuple(shape), data)


@dataclass
class TableRowsFields:
    """A TableRows as read from the wire (tensors None when absent)."""

    tables: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    ids: TensorView | None = None
    values: TensorView | None = None


_TABLE_ROWS_TENSORS = {3: "ids", 4: "values"}  # field number -> TableRowsFields attribute
_PULL_REPLY_TENSORS = {4: "dense", 5: "rows"}


def read_table_rows(raw: bytes | memoryview, what: str) -> TableRowsFields:
    rows, seen = TableRowsFields(), set()
    for number, wire, value in _fields(raw, what):
        if number in (1, 2) and wire in (_VARINT, _LENGTH_DELIMITED):
            entries = _varints(value, wire, what)
            if number == 1:
                rows.tables += [entry & 0xFFFFFFFF for entry in entries]
            else:
                rows.counts += entries
        elif number in _TABLE_ROWS_TENSORS and wire == _LENGTH_DELIMITED:
            _once(seen, number, what)
            name = _TABLE_ROWS_TENSORS[number]
            setattr(rows, name, read_tensor(value, f"{what}.{name}"))
    return rows


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
    for number, wire, value in _fields(raw, what):
        if wire == _VARINT and number in (2, 3, 5, 6):
            if number == 2:
                request.min_version = value
            elif number == 3:
                request.dense = value != 0
            elif number == 5:
                request.wire_dtype = _int32(value)
            else:
                request.wait_ms = value & 0xFFFFFFFF
        elif wire == _LENGTH_DELIMITED and number == 1:
            request.worker_id = _string(value, what)
        elif wire == _LENGTH_DELIMITED and number == 4:
            _once(seen, number, what)
            request.rows = read_table_rows(value, f"{what}.rows")
    return request


@dataclass
class PullReplyFields:
    version: int = 0
    done: bool = False
    ready: bool = False
    dense: TensorView | None = None
    rows: TensorView | None = None
    waited_seconds: float = 0.0


def read_pull_reply(raw: bytes | memoryview, what: str = "PullReply") -> PullReplyFields:
    reply, seen = PullReplyFields(), set()
    for number, wire, value in _fields(raw, what):
        if wire == _VARINT and number in (1, 2, 3):
            if number == 1:
                reply.version = value
            elif number == 2:
                reply.done = value != 0
            else:
                reply.ready = value != 0
        elif wire == _LENGTH_DELIMITED and number in _PULL_REPLY_TENSORS:
            _once(seen, number, what)
            name = _PULL_REPLY_TENSORS[number]
            setattr(reply, name, read_tensor(value, f"{what}.{name}"))
        elif wire == _FIXED64 and number == 6:
            reply.waited_seconds = _double(value)
    return reply


@dataclass
class PushRequestFields:
    worker_id: str = ""
    step: int = 0
    batch_size: int = 0
    dense_grads: TensorView | None = None
    row_grads: TableRowsFields = field(default_factory=TableRowsFields)
    loss: float = 0.0


def read_push_request(raw: bytes | memoryview, what: str = "PushRequest") -> PushRequestFields:
    request, seen = PushRequestFields(), set()
    for number, wire, value in _fields(raw, what):
        if wire == _VARINT and number in (2, 3):
            if number == 2:
                request.step = value
            else:
                request.batch_size = value & 0xFFFFFFFF
        elif wire == _LENGTH_DELIMITED and number == 1:
            request.worker_id = _string(value, what)
        elif wire == _LENGTH_DELIMITED and number in (4, 5):
            _once(seen, number, what)
            if number == 4:
                request.dense_grads = read_tensor(value, f"{what}.dense_grads")
            else:
                request.row_grads = read_table_rows(value, f"{what}.row_grads")
        elif wire == _FIXED64 and number == 6:
            request.loss = _double(value)
    return request


def _read_pair(raw: bytes | memoryview, what: str, names: tuple[str, str]) -> tuple[memoryview, memoryview]:
    """The two required message fields (numbers 1 and 2) of a PushPullRequest or PushPullReply, unparsed."""
    found: dict[int, memoryview] = {}
    seen: set[int] = set()
    for number, wire, value in _fields(raw, what):
        if wire == _LENGTH_DELIMITED and number in (1, 2):
            _once(seen, number, what)
            found[number] = value
    for number, name in enumerate(names, start=1):
        if number not in found:
            raise invalid("missing_field", f"{what}.{name}: expected a message, found none")
    return found[1], found[2]


def read_push_pull_request(raw: bytes | memoryview) -> tuple[PushRequestFields, PullRequestFields]:
    push, pull = _read_pair(raw, "PushPullRequest", ("push", "pull"))
    return read_push_request(push, "PushPullRequest.push"), read_pull_request(pull, "PushPullRequest.pull")


def read_push_pull_reply(raw: bytes | memoryview) -> tuple[ps_pb2.PushReply, PullReplyFields]:
    push, pull = _read_pair(raw, "PushPullReply", ("push", "pull"))
    return parse_payload(ps_pb2.PushReply, push), read_pull_reply(pull, "PushPullReply.pull")


class ChunkView(NamedTuple):
    """A parsed Chunk whose data is a view into the received bytes."""

    protocol_version: int
    offset: int
    total_size: int
    crc32c: int
    data: memoryview


def parse_chunk(raw: bytes) -> ChunkView:
    """Read a serialized Chunk (see the readers above). Raises ProtocolError."""
    fields = {1: 0, 2: 0, 3: 0, 4: 0}
    data = memoryview(b"")
    for number, wire, value in _fields(raw, "Chunk"):
        if wire == _VARINT and number in fields:
            fields[number] = value & 0xFFFFFFFF if number in (1, 4) else value
        elif wire == _LENGTH_DELIMITED and number == tensor_pb2.Chunk.DATA_FIELD_NUMBER:
            data = value
    return ChunkView(fields[1], fields[2], fields[3], fields[4], data)


def assemble_payload(chunks: Iterable[ChunkView], *, max_bytes: int,
                     max_chunk_bytes: int) -> memoryview | bytearray:
    """Reassemble and verify one chunked payload (the whole stream). Raises ProtocolError."""
    buffer: bytearray | None = None
    single: memoryview | None = None
    first: ChunkView | None = None
    received = 0
    for index, chunk in enumerate(chunks):
        check_version(chunk.protocol_version, f"chunk[{index}]")
        data = chunk.data
        if len(data) > max_chunk_bytes:
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk_too_large",
                                f"chunk[{index}].data: expected at most {max_chunk_bytes} bytes, found {len(data)}")
        if first is None:
            first = chunk
            if chunk.total_size > max_bytes:
                raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large",
                                    f"chunk[0].total_size: expected at most {max_bytes} bytes, "
                                    f"found {chunk.total_size}")
            if chunk.offset == 0 and len(data) == chunk.total_size:
                single = data  # the common single-chunk case: no reassembly copy
            else:
                buffer = bytearray(chunk.total_size)
        elif chunk.total_size != first.total_size or chunk.crc32c != first.crc32c:
            raise invalid("bad_chunk", f"chunk[{index}]: total_size/crc32c {chunk.total_size}/{chunk.crc32c} "
                          f"differ from chunk[0]'s {first.total_size}/{first.crc32c}")
        elif single is not None:
            raise invalid("bad_chunk", f"chunk[{index}]: data after the complete payload")
        if chunk.offset != received:
            raise invalid("bad_chunk", f"chunk[{index}].offset: expected {received}, found {chunk.offset}")
        end = received + len(data)
        if end > first.total_size:
            raise invalid("bad_chunk", f"chunk[{index}]: data runs to byte {end}, past total_size "
                          f"{first.total_size}")
        if buffer is not None:
            buffer[received:end] = data
        received = end
    if first is None:
        raise invalid("empty_stream", "expected at least one chunk, found none")
    if received != first.total_size:
        raise invalid("truncated_payload", f"chunks: expected {first.total_size} bytes, found {received}")
    payload = single if single is not None else buffer
    assert payload is not None
    crc = crc32c(payload)
    if crc != first.crc32c:
        raise invalid("bad_checksum", f"payload crc32c: expected {first.crc32c:#010x}, found {crc:#010x}")
    return payload


M = TypeVar("M", bound=Message)


def parse_payload(message_type: type[M], payload: bytes | bytearray | memoryview) -> M:
    try:
        return message_type.FromString(payload)
    except DecodeError as error:
        raise invalid("malformed_message", f"{message_type.DESCRIPTOR.name}: cannot parse {len(payload)} "
                      f"bytes ({error})") from None

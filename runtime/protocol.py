"""Wire format of the runtime protocol (protos/tensor.proto, protos/ps.proto), version 1.

Tensors travel as dtype + shape + raw little-endian bytes and are turned into numpy arrays without per-element
Python work. Bulk payloads (Pull and Push) are a serialized message split into Chunk messages of at most the
chunk size, each repeating the payload's size and CRC-32. Everything a peer sends is checked here before any
state changes; a violation raises ProtocolError, which a server turns into a gRPC status whose details start
with a stable reason word.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from runtime.proto import tensor_pb2

PROTOCOL_VERSION = 1
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


# A serialized tensor's framing (field keys, lengths, dtype, shape, a tensor name) is well under this.
TENSOR_FRAMING_BOUND = 256


def pull_reply_bound(dense_shapes: Iterable[tuple[int, ...]], row_counts: Iterable[int], embedding_dim: int,
                     wire_dtype: int) -> int:
    """The most bytes a PullReply can serialize to: the dense tensors of these shapes and, per requested table,
    that many rows, as wire_dtype floats. Client and PS use it to tell whether a reply fits in one chunk."""
    itemsize = 2 if wire_dtype in (tensor_pb2.FLOAT16, tensor_pb2.BFLOAT16) else 4
    tensors = values = 0
    for shape in dense_shapes:
        tensors, values = tensors + 1, values + math.prod(shape)
    for count in row_counts:
        tensors, values = tensors + 1, values + count * embedding_dim
    return values * itemsize + (tensors + 1) * TENSOR_FRAMING_BOUND


def ids_wire_dtype(ids: np.ndarray) -> int:
    """Row ids go out as INT32 when they fit (half the bytes), else INT64."""
    return tensor_pb2.INT32 if ids.size == 0 or int(ids.max()) < 2**31 else tensor_pb2.INT64


def encode_ids(ids: np.ndarray) -> tensor_pb2.Tensor:
    return encode_tensor(ids, ids_wire_dtype(ids))


def decode_tensor(tensor: tensor_pb2.Tensor, field: str, *, kind: str,
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


def decode_ids(tensor: tensor_pb2.Tensor, field: str, size: int) -> np.ndarray:
    """Row ids of a table with `size` rows: 1-D, strictly increasing, in [0, size)."""
    ids = decode_tensor(tensor, field, kind="int", shape=(None,))
    if ids.size:
        if ids[0] < 0 or ids[-1] >= size:
            raise invalid("bad_row_id", f"{field}: expected ids in [0, {size}), found range "
                          f"[{int(ids.min())}, {int(ids.max())}]")
        if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
            raise invalid("unsorted_ids", f"{field}: expected strictly increasing ids (sorted, no repeats)")
    return ids


# ----------------------------------------------------------------------------------------------------------
# Chunked payloads


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_LENGTH_DELIMITED = 2


class Payload:
    """A serialized protobuf message held as a list of byte strings, big tensor data by reference.

    upb serializes large bytes fields at a few hundred MB/s; here a message is its small fields serialized by
    upb plus length-delimited fields appended by hand (a field key, a length, the bytes), which protobuf parsers
    read as the same message. Tensor data is copied once, when chunks are built.
    """

    def __init__(self, head: Message | bytes = b"") -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.append(head if isinstance(head, bytes) else head.SerializeToString())

    def append(self, data: bytes | memoryview) -> None:
        if len(data):
            self.parts.append(data)
            self.size += len(data)

    def add_field(self, number: int, value: Payload | bytes | memoryview) -> None:
        """Append a length-delimited field (a nested message, bytes or string)."""
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
            crc = zlib.crc32(part, crc)
        total = self.size
        views = [memoryview(p).cast("B") for p in self.parts]
        index, within = 0, 0
        for offset in range(0, max(total, 1), chunk_size):
            length = min(chunk_size, total - offset)
            head = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=offset, total_size=total, crc32=crc)
            pieces: list[bytes | memoryview] = [head.SerializeToString()]
            if length:
                pieces.append(_varint(tensor_pb2.Chunk.DATA_FIELD_NUMBER << 3 | _LENGTH_DELIMITED) + _varint(length))
            need = length
            while need:
                take = min(need, len(views[index]) - within)
                pieces.append(views[index][within:within + take])
                need -= take
                within += take
                if within == len(views[index]):
                    index, within = index + 1, 0
            yield b"".join(pieces)


def tensor_payload(array: np.ndarray, wire_dtype: int | None = None) -> Payload:
    """A serialized Tensor whose data is `array`'s memory (no copy until chunking: do not change array)."""
    wire, raw = _wire_array(array, wire_dtype)
    payload = Payload(tensor_pb2.Tensor(dtype=wire, shape=raw.shape))
    payload.add_field(tensor_pb2.Tensor.DATA_FIELD_NUMBER, memoryview(raw).cast("B"))
    return payload


def named_tensor_payload(name: str, array: np.ndarray, wire_dtype: int | None = None) -> Payload:
    payload = Payload(tensor_pb2.NamedTensor(name=name))
    payload.add_field(tensor_pb2.NamedTensor.TENSOR_FIELD_NUMBER, tensor_payload(array, wire_dtype))
    return payload


def table_ids_payload(table: int, ids: np.ndarray) -> Payload:
    payload = Payload(tensor_pb2.TableIds(table=table))
    payload.add_field(tensor_pb2.TableIds.IDS_FIELD_NUMBER, tensor_payload(ids, ids_wire_dtype(ids)))
    return payload


def sparse_rows_payload(table: int, ids: np.ndarray | None, values: np.ndarray,
                        wire_dtype: int | None = None) -> Payload:
    """SparseRows; ids None leaves them out (a pull reply's rows are those of the request, in its order)."""
    payload = Payload(tensor_pb2.SparseRows(table=table))
    if ids is not None:
        payload.add_field(tensor_pb2.SparseRows.IDS_FIELD_NUMBER, tensor_payload(ids, ids_wire_dtype(ids)))
    payload.add_field(tensor_pb2.SparseRows.VALUES_FIELD_NUMBER, tensor_payload(values, wire_dtype))
    return payload


def chunk_payload(message: Message | Payload, chunk_size: int) -> Iterator[tensor_pb2.Chunk]:
    """message as Chunk messages of at most chunk_size data bytes (at least one)."""
    payload = message if isinstance(message, Payload) else Payload(message)
    for raw in payload.chunks(chunk_size):
        yield tensor_pb2.Chunk.FromString(raw)


def assemble_payload(chunks: Iterable[tensor_pb2.Chunk], *, max_bytes: int,
                     max_chunk_bytes: int) -> bytes | bytearray:
    """Reassemble and verify one chunked payload (the whole stream). Raises ProtocolError."""
    buffer: bytearray | None = None
    single: bytes | None = None
    first: tensor_pb2.Chunk | None = None
    received = 0
    for index, chunk in enumerate(chunks):
        check_version(chunk.protocol_version, f"chunk[{index}]")
        data = chunk.data  # (each access to a bytes field copies it)
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
        elif chunk.total_size != first.total_size or chunk.crc32 != first.crc32:
            raise invalid("bad_chunk", f"chunk[{index}]: total_size/crc32 {chunk.total_size}/{chunk.crc32} "
                          f"differ from chunk[0]'s {first.total_size}/{first.crc32}")
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
    crc = zlib.crc32(payload)
    if crc != first.crc32:
        raise invalid("bad_checksum", f"payload crc32: expected {first.crc32:#010x}, found {crc:#010x}")
    return payload


M = TypeVar("M", bound=Message)


def parse_payload(message_type: type[M], payload: bytes | bytearray) -> M:
    try:
        return message_type.FromString(payload)
    except DecodeError as error:
        raise invalid("malformed_message", f"{message_type.DESCRIPTOR.name}: cannot parse {len(payload)} "
                      f"bytes ({error})") from None

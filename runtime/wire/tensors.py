"""Tensors on the wire (protos/tensor.proto): dtype + shape + raw little-endian bytes, turned into numpy arrays
without per-element Python work. Floats travel as fp32, fp16 or bf16 (the sender's precision); ids as int32 when
they fit, else int64."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from runtime.proto import tensor_pb2
from runtime.protocol import MAX_RANK, PRECISIONS, Rejected
from runtime.wire import codec
from runtime.wire.codec import Payload

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
# A precision name (runtime.protocol.PRECISIONS) -> its wire dtype.
WIRE_DTYPES = dict(zip(PRECISIONS, FLOAT_WIRE_DTYPES, strict=True))
PRECISION_OF = {dtype: name for name, dtype in WIRE_DTYPES.items()}
# A serialized tensor's framing (field keys, lengths, dtype, shape) is well under this.
TENSOR_FRAMING_BOUND = 256


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


def tensor_payload(array: np.ndarray, wire_dtype: int | None = None) -> Payload:
    """A serialized Tensor whose data is `array`'s memory (no copy until chunking: do not change array)."""
    wire, raw = _wire_array(array, wire_dtype)
    payload = Payload(tensor_pb2.Tensor(dtype=wire, shape=raw.shape))
    payload.add_field(tensor_pb2.Tensor.DATA_FIELD_NUMBER, raw.reshape(-1).view(np.uint8))
    return payload


def ids_wire_dtype(ids: np.ndarray) -> int:
    """Row ids go out as INT32 when they fit (half the bytes), else INT64."""
    return tensor_pb2.INT32 if ids.size == 0 or int(ids.max()) < 2**31 else tensor_pb2.INT64


def encode_ids(ids: np.ndarray) -> tensor_pb2.Tensor:
    return encode_tensor(ids, ids_wire_dtype(ids))


def float_itemsize(precision: str) -> int:
    return 4 if precision == "fp32" else 2


class TensorView(NamedTuple):
    """A Tensor as read from the wire; data is a view of the received bytes. decode_tensor takes it."""

    dtype: int
    shape: tuple[int, ...]
    data: memoryview | bytes


def read_tensor(raw: bytes | memoryview, what: str) -> TensorView:
    dtype, shape, data = 0, [], memoryview(b"")
    for number, wire, value in codec.fields(raw, what):
        if number == tensor_pb2.Tensor.DTYPE_FIELD_NUMBER and wire == codec.VARINT:
            dtype = codec.int32(value)
        elif number == tensor_pb2.Tensor.SHAPE_FIELD_NUMBER and wire in (codec.VARINT, codec.LENGTH_DELIMITED):
            shape += codec.repeated_varints(value, wire, what)
        elif number == tensor_pb2.Tensor.DATA_FIELD_NUMBER and wire == codec.LENGTH_DELIMITED:
            data = value
    return TensorView(dtype, tuple(shape), data)


def decode_tensor(tensor: tensor_pb2.Tensor | TensorView, field: str, *, kind: str,
                  shape: tuple[int | None, ...] | None = None, finite: bool = False) -> np.ndarray:
    """Tensor -> read-only numpy array (float32 for kind "float", int64 for kind "int"). Raises Rejected.

    shape: the expected shape; None entries match any size. finite: reject NaN and Inf.
    """
    allowed = FLOAT_WIRE_DTYPES if kind == "float" else INT_WIRE_DTYPES
    if tensor.dtype not in allowed:
        name = DType.Name(tensor.dtype) if tensor.dtype in DType.values() else str(tensor.dtype)
        raise Rejected("bad_dtype", f"{field}.dtype: expected one of "
                       f"{', '.join(DType.Name(d) for d in allowed)}, found {name}")
    dims = tuple(int(d) for d in tensor.shape)
    if len(dims) > MAX_RANK:
        raise Rejected("bad_shape", f"{field}.shape: expected rank <= {MAX_RANK}, found rank {len(dims)}")
    if shape is not None and (len(dims) != len(shape)
                              or any(want is not None and want != got for want, got in zip(shape, dims, strict=True))):
        want_text = "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"
        raise Rejected("bad_shape", f"{field}.shape: expected {want_text}, found {list(dims)}")
    dtype = _NUMPY_DTYPES[tensor.dtype]
    count = 1
    for d in dims:
        count *= d
    if len(tensor.data) != count * dtype.itemsize:
        raise Rejected("bad_size", f"{field}.data: expected {count} x {dtype.itemsize} = "
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
        raise Rejected("non_finite", f"{field}: expected finite values, found {bad} NaN/Inf")
    return array

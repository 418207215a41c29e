"""Protobuf's wire format, read and written by hand for the bulk messages (BoringSSL CBS/CBB style).

protobuf's parser copies every bytes field into its arena and again on each access; for a few MB of tensor data
per call that is most of the receive cost. The reader walks the wire format with every read bounds-checked and
lengths explicit, and hands length-delimited fields out as views of the received buffer. It follows protobuf's
rules: fields in any order, the last value of a scalar wins, repeated scalars packed or not, unknown fields and
fields of an unexpected wire type skipped. A singular message field sent twice (which protobuf would merge) is
refused as malformed: no sender of ours does that.

The writer (Payload) holds a message as a list of buffers: its small fields serialized by upb, plus
length-delimited fields appended by hand (a key, a length the writer computes itself, the bytes), which protobuf
parsers read as the same message. Tensor data is referenced, not copied, until chunks are built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from google.protobuf.message import Message

from runtime.protocol import Rejected

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def malformed(what: str, detail: str) -> Rejected:
    return Rejected("malformed_message", f"{what}: {detail}")


# ----------------------------------------------------------------------------------------------------------
# Writing


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(length)


class Payload:
    """A serialized protobuf message held as a list of buffers, big tensor data by reference.

    upb serializes large bytes fields at a few hundred MB/s; a message built here is copied once, when chunks
    are built.
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
        self.append(field_header(number, size))
        if isinstance(value, Payload):
            self.parts.extend(value.parts)
            self.size += value.size
        else:
            self.append(value)

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


# ----------------------------------------------------------------------------------------------------------
# Reading


def read_varint(raw: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise malformed(what, f"{'truncated' if pos >= len(raw) else 'over-long'} varint at byte {pos}")


def fields(raw: bytes | memoryview, what: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field: an int for varints, a memoryview otherwise."""
    view = memoryview(raw)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = read_varint(view, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise malformed(what, f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = read_varint(view, pos, what)
            yield number, wire, value
            continue
        if wire == LENGTH_DELIMITED:
            length, pos = read_varint(view, pos, what)
        elif wire in (FIXED64, FIXED32):
            length = 8 if wire == FIXED64 else 4
        else:
            raise malformed(what, f"field {number} has wire type {wire} (groups are not used)")
        if length > end - pos:
            raise malformed(what, f"field {number} runs {length} bytes past the end")
        yield number, wire, view[pos:pos + length]
        pos += length


def repeated_varints(value: Any, wire: int, what: str) -> list[int]:
    """A repeated integer field's entries from one occurrence, packed or not."""
    if wire == VARINT:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        entry, pos = read_varint(value, pos, what)
        out.append(entry)
    return out


def utf8(value: memoryview, what: str) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise malformed(what, "string field is not valid UTF-8") from None


def double(value: memoryview) -> float:
    return float(np.frombuffer(value, dtype="<f8")[0])


def int32(value: int) -> int:
    """An int32/enum field: protobuf keeps the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def uint32(value: int) -> int:
    """A uint32 field: protobuf keeps the low 32 bits."""
    return value & 0xFFFFFFFF


def once(seen: set[int], number: int, what: str) -> None:
    if number in seen:
        raise malformed(what, f"message field {number} appears twice")
    seen.add(number)

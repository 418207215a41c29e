"""Chunked streams: the one format in which every large payload travels (a PS request or reply, an SDT shard).

A payload of total_size bytes is sent as Chunk messages (protos/tensor.proto) of at most the sender's chunk size,
in order, each repeating the payload's size and CRC-32C (Castagnoli: one CPU instruction per 8 bytes where the
CPU has it). The receiver checks every chunk as it arrives (ChunkStream) and the checksum at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import google_crc32c
import numpy as np

from runtime.proto import tensor_pb2
from runtime.protocol import PROTOCOL_VERSION, Rejected, check_version
from runtime.wire import codec
from runtime.wire.codec import Payload


def crc32c(data: bytes | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C of data (any contiguous buffer), continuing from crc."""
    return google_crc32c.extend(crc, np.frombuffer(data, dtype=np.uint8))


def chunk_message(offset: int, total_size: int, crc: int, parts: Iterable[bytes | memoryview | np.ndarray],
                  length: int) -> bytes:
    """One serialized Chunk whose data is `parts` (length bytes in all), joined once."""
    head = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=offset, total_size=total_size, crc32c=crc)
    pieces: list[bytes | memoryview | np.ndarray] = [head.SerializeToString()]
    if length:
        pieces.append(codec.field_header(tensor_pb2.Chunk.DATA_FIELD_NUMBER, length))
        pieces.extend(parts)
    return b"".join(pieces)


def payload_chunks(payload: Payload, chunk_size: int) -> Iterator[bytes]:
    """Serialized Chunk messages of at most chunk_size data bytes each (at least one)."""
    crc = 0
    for part in payload.parts:
        crc = crc32c(part, crc)
    total = payload.size
    index, within = 0, 0
    for offset in range(0, max(total, 1), chunk_size):
        length = min(chunk_size, total - offset)
        pieces: list[bytes | np.ndarray] = []
        need = length
        while need:
            part = payload.parts[index]
            take = min(need, len(part) - within)
            pieces.append(part if take == len(part) else part[within:within + take])
            need -= take
            within += take
            if within == len(part):
                index, within = index + 1, 0
        yield chunk_message(offset, total, crc, pieces, length)


class ChunkView(NamedTuple):
    """A parsed Chunk whose data is a view into the received bytes."""

    protocol_version: int
    offset: int
    total_size: int
    crc32c: int
    data: memoryview

    @classmethod
    def of(cls, chunk: tensor_pb2.Chunk) -> ChunkView:
        """A Chunk that protobuf has already parsed (a generated stub's reply)."""
        return cls(chunk.protocol_version, chunk.offset, chunk.total_size, chunk.crc32c, memoryview(chunk.data))


_CHUNK_VARINTS = {tensor_pb2.Chunk.PROTOCOL_VERSION_FIELD_NUMBER: codec.uint32,
                  tensor_pb2.Chunk.OFFSET_FIELD_NUMBER: int, tensor_pb2.Chunk.TOTAL_SIZE_FIELD_NUMBER: int,
                  tensor_pb2.Chunk.CRC32C_FIELD_NUMBER: codec.uint32}


def parse_chunk(raw: bytes) -> ChunkView:
    """Read a serialized Chunk (runtime.wire.codec's rules). Raises Rejected."""
    values = dict.fromkeys(_CHUNK_VARINTS, 0)
    data = memoryview(b"")
    for number, wire, value in codec.fields(raw, "Chunk"):
        if wire == codec.VARINT and number in _CHUNK_VARINTS:
            values[number] = _CHUNK_VARINTS[number](value)
        elif wire == codec.LENGTH_DELIMITED and number == tensor_pb2.Chunk.DATA_FIELD_NUMBER:
            data = value
    return ChunkView(*values.values(), data)


class ChunkStream:
    """Checks one chunked payload chunk by chunk: version, chunk size, the payload's size against max_bytes (at
    the first chunk), agreement of every chunk with the first, contiguous offsets; finish() checks that every
    byte came and the CRC-32C. add() returns the chunk's data, for the caller to place. Raises Rejected."""

    def __init__(self, *, max_bytes: int, max_chunk_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.first: ChunkView | None = None
        self.received = 0
        self.chunks = 0
        self.crc = 0
        self._complete_at_first = False

    @property
    def total_size(self) -> int:
        return 0 if self.first is None else self.first.total_size

    def add(self, chunk: ChunkView) -> memoryview:
        index = self.chunks
        check_version(chunk.protocol_version, f"chunk[{index}]")
        data = chunk.data
        if len(data) > self.max_chunk_bytes:
            raise Rejected("chunk_too_large", f"chunk[{index}].data: expected at most {self.max_chunk_bytes} "
                           f"bytes, found {len(data)}")
        first = self.first
        if first is None:
            if chunk.total_size > self.max_bytes:
                raise Rejected("payload_too_large", f"chunk[0].total_size: expected at most {self.max_bytes} "
                               f"bytes, found {chunk.total_size}")
            self.first = first = chunk
            self._complete_at_first = chunk.offset == 0 and len(data) == chunk.total_size
        elif chunk.total_size != first.total_size or chunk.crc32c != first.crc32c:
            raise Rejected("bad_chunk", f"chunk[{index}]: total_size/crc32c {chunk.total_size}/{chunk.crc32c} "
                           f"differ from chunk[0]'s {first.total_size}/{first.crc32c}")
        elif self._complete_at_first:
            raise Rejected("bad_chunk", f"chunk[{index}]: data after the complete payload")
        if chunk.offset != self.received:
            raise Rejected("bad_chunk", f"chunk[{index}].offset: expected {self.received}, found {chunk.offset}")
        end = self.received + len(data)
        if end > first.total_size:
            raise Rejected("bad_chunk", f"chunk[{index}]: data runs to byte {end}, past total_size "
                           f"{first.total_size}")
        self.crc = crc32c(data, self.crc)
        self.received = end
        self.chunks += 1
        return data

    def finish(self) -> None:
        if self.first is None:
            raise Rejected("empty_stream", "expected at least one chunk, found none")
        if self.received != self.first.total_size:
            raise Rejected("truncated_payload", f"chunks: expected {self.first.total_size} bytes, found "
                           f"{self.received}")
        if self.crc != self.first.crc32c:
            raise Rejected("bad_checksum", f"payload crc32c: expected {self.first.crc32c:#010x}, found "
                           f"{self.crc:#010x}")


def assemble_payload(chunks: Iterable[ChunkView], *, max_bytes: int,
                     max_chunk_bytes: int) -> memoryview | bytearray:
    """Reassemble and verify one chunked payload (the whole stream) in memory, holding only what has arrived (a
    total_size claimed up front reserves nothing). Raises Rejected."""
    stream = ChunkStream(max_bytes=max_bytes, max_chunk_bytes=max_chunk_bytes)
    buffer: bytearray | None = None
    single: memoryview | None = None
    for chunk in chunks:
        data = stream.add(chunk)
        if stream.chunks == 1 and len(data) == stream.total_size:
            single = data  # the common single-chunk case: no reassembly copy
            continue
        if buffer is None:
            buffer = bytearray()
        buffer += data  # offsets are contiguous: the chunk goes at the end
    stream.finish()
    payload = single if single is not None else buffer
    assert payload is not None
    return payload

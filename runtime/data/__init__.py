"""Criteo click logs: the streaming reader (TSV or CSV, plain or gzip), the synthetic generator with a planted
signal, how data is cut into per-worker shards, and the stream of batches a worker trains on."""

from runtime.data.criteo import (
    FORMATS,
    LAYOUTS,
    MAX_LINE_BYTES,
    BadLine,
    CriteoReader,
    DataError,
    add_format_arguments,
    add_max_bad_fraction_argument,
    check_format,
    criteo_lines,
    hash_to_rows,
    parse_line,
    parse_lines,
    parse_raw,
    transform_dense,
)
from runtime.data.partition import ShardSource, shard_sources
from runtime.data.stream import Prefetcher, TrainingStream
from runtime.data.synthetic import synth, synthetic_partitions

__all__ = [
    "FORMATS", "LAYOUTS", "MAX_LINE_BYTES", "BadLine", "CriteoReader", "DataError", "Prefetcher", "ShardSource",
    "TrainingStream", "add_format_arguments", "add_max_bad_fraction_argument", "check_format", "criteo_lines",
    "hash_to_rows", "parse_line", "parse_lines", "parse_raw", "shard_sources", "synth", "synthetic_partitions",
    "transform_dense",
]

"""How a job's data is cut into per-worker shards: every n-th line of the files taken together (line sharding,
the same lines a worker reads with --data-shard i/n), or one file per worker (synthetic partitions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.data.criteo import check_format, criteo_lines


@dataclass
class ShardSource:
    """Where shard `index` of `count` comes from: every count-th line of `paths` (taken together) from line
    `index`, or (line_sharded False) all lines of `paths`, in `file_format`; workers always get Criteo TSV."""

    paths: list[Path]
    index: int
    count: int
    line_sharded: bool
    file_format: str = "tsv"

    def lines(self) -> Iterator[bytes]:
        """The shard's lines, streamed; a line too long for the reader is skipped here as the reader would."""
        shard = (self.index, self.count) if self.line_sharded else None
        for raw, _, _ in criteo_lines(self.paths, file_format=self.file_format, shard=shard):
            if raw is not None:
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def shard_sources(data: Sequence[Path] | None, synthetic_files: Sequence[Path] | None, workers: int,
                  file_format: str = "tsv") -> list[ShardSource]:
    if synthetic_files is not None:
        return [ShardSource([path], i, workers, line_sharded=False) for i, path in enumerate(synthetic_files)]
    assert data is not None
    check_format(data, file_format)  # now, not in each worker's shard stream
    return [ShardSource(list(data), i, workers, line_sharded=True, file_format=file_format) for i in range(workers)]

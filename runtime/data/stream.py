"""What a worker trains on: batches pass after pass with held-out batches set aside (TrainingStream), read
ahead on a background thread (Prefetcher)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from runtime.data.criteo import CriteoReader, DataError
from runtime.model.batch import Batch, Lookup


class TrainingStream:
    """Training batches forever (pass after pass over the reader), holding out the first `holdout` batches of
    every pass as evaluation data. Records the line counts of the first complete pass."""

    def __init__(self, reader: CriteoReader, holdout: int) -> None:
        self.reader = reader
        self.holdout = holdout
        self.heldout: list[Batch] = []
        self.passes = 0
        self.first_pass_lines: tuple[int, int] | None = None
        self.bad_examples: list[tuple[str, int, str]] = []

    def __iter__(self) -> Iterator[Batch]:
        while True:
            trained = batches = 0
            for index, batch in enumerate(self.reader):
                batches += 1
                if index < self.holdout:
                    if self.passes == 0:
                        self.heldout.append(batch)
                    continue
                trained += 1
                yield batch
            if self.passes == 0:
                self.first_pass_lines = (self.reader.lines, self.reader.bad_lines)
                self.bad_examples = list(self.reader.bad_examples)
            self.passes += 1
            if trained == 0:
                raise DataError(f"no training batches: the data gives {batches} batches and {self.holdout} "
                                f"are held out for evaluation")

    def line_counts(self) -> dict[str, Any]:
        lines, bad = self.first_pass_lines or (self.reader.lines, self.reader.bad_lines)
        return {"lines": lines, "bad_lines": bad, "complete_passes": self.passes,
                "bad_examples": [f"{p}:{n}: {r}" for p, n, r in self.bad_examples]}


class Prefetcher:
    """Reads batches (and their row lookups) on a background thread, `depth` ahead, so parsing overlaps with
    pulling, computing and pushing. Errors of the reader reach the consumer in order."""

    _END = object()

    def __init__(self, batches: Iterator[Batch], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), name="prefetch", daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[Batch]) -> None:
        try:
            for batch in batches:
                item = (batch, batch.lookup())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._queue.put(error)

    def __iter__(self) -> Iterator[tuple[Batch, Lookup]]:
        return self

    def __next__(self) -> tuple[Batch, Lookup]:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()

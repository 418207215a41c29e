"""A hostile worker for the poisoning test: joins like a worker, then every round pushes either finite gradients
of 3e38 or honest-sized gradients claiming 2**24 examples, and keeps going when refused.

python -m tests.hostile_worker --ps HOST:PORT --worker-id ID
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from runtime.client.ps import ShardedPS
from runtime.client.remote import RemoteError
from runtime.rows import RowSet
from runtime.transport import InsecureTransport, parse_endpoints


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ps", required=True)
    parser.add_argument("--worker-id", required=True)
    args = parser.parse_args()
    client = ShardedPS(parse_endpoints(args.ps), InsecureTransport(), args.worker_id)
    client.connect_and_join()
    config = client.config
    assert config is not None
    rows = RowSet.from_tables([np.arange(2, dtype=np.int64)] * config.num_tables)
    rng = np.random.default_rng(7)
    min_versions = [0] * client.num_shards
    refused = 0
    while True:
        # Short waits: each pull is a sign of life, and the PS drops a worker silent for --worker-timeout (3 s in
        # the test) while the honest worker may still be starting TensorFlow.
        pulled = client.pull(min_versions, rows, wait_ms=1_000)
        if pulled.done:
            break
        if not pulled.ready:
            continue
        step = pulled.versions[0]
        if step % 2 == 0:  # the gradient attack: every value 3e38, finite
            dense = np.full(config.dense_size, 3e38, np.float32)
            grads = np.full((len(rows), config.embedding_dim), 3e38, np.float32)
            batch_size = 32
        else:  # the weight attack: an ordinary-looking gradient that claims 2**24 examples
            dense = rng.normal(0, 0.1, config.dense_size).astype(np.float32)
            grads = rng.normal(0, 0.1, (len(rows), config.embedding_dim)).astype(np.float32)
            batch_size = 1 << 24
        try:
            client.push(pulled.versions, batch_size, 0.5, dense, rows, grads)
        except RemoteError as error:
            if error.reason == "training_done":
                break
            refused += 1
        min_versions = [v + 1 for v in pulled.versions]
    print(f"{args.worker_id}: hostile pushes refused: {refused}", flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

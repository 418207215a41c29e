"""Secure distributed training with a chief (runtime.chief, runtime.worker --chief, runtime.launch --mode sdt).

(a) SDT with 2 workers reaches bit-identical parameters to HFL with the same data split; (b) a worker measured
over a tree with one changed source file is refused by chief and PS and gets no shard byte; (c) the chief streams
a shard again from the beginning when a worker asks again after breaking off mid-shard, chunks bounded and
checksummed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from runtime_tools import REPO, Children, wait_for_file, wait_until
from test_hfl import final_checkpoint, launch

from runtime import chief as chief_module
from runtime import transport
from runtime.data import CriteoReader
from runtime.model import DLRMConfig
from runtime.proto import chief_pb2, chief_pb2_grpc
from runtime.protocol import PROTOCOL_VERSION
from runtime.wire.chunks import crc32c

WAIT = 120


def test_sdt_equals_hfl_bit_for_bit(tmp_path, testdata):
    sample = testdata / "criteo" / "kaggle_sample_100.txt"
    steps = 20
    common = ["--workers", "2", "--model", "small", "--steps", str(steps), "--batch-size", "8", "--threads", "2",
              "--data", str(sample)]
    hfl, _ = launch(tmp_path / "hfl", *common, "--mode", "hfl", "--security", "insecure")
    sdt, console = launch(tmp_path / "sdt", *common, "--mode", "sdt", "--security", "ratls")
    assert "chief: done" in console and "SDT: job spec" in console
    hfl_ckpt, sdt_ckpt = final_checkpoint(tmp_path / "hfl", steps), final_checkpoint(tmp_path / "sdt", steps)
    assert hfl_ckpt.arrays.keys() == sdt_ckpt.arrays.keys()
    for name, value in hfl_ckpt.arrays.items():
        assert np.array_equal(value, sdt_ckpt.arrays[name]), f"{name} differs between SDT and HFL"
    assert [w["data"]["lines"] for w in sdt["workers"]] == [w["data"]["lines"] for w in hfl["workers"]] == [50, 50]
    assert sdt["held_out"] == hfl["held_out"]
    workers = sdt["chief"]["workers"]
    assert sum(w["shard_bytes_sent"] for w in workers.values()) == sample.stat().st_size
    assert all(w["shard_starts"] == w["shard_completions"] == 1 and w["metrics"]["steps"] == steps
               for w in workers.values()), workers
    own = sdt["attestation"]["mrenclave"]
    assert all(w["mrenclave"] == own for w in workers.values())
    # The chief's final model holds exactly the PS's final parameters.
    assert sdt["chief"]["model"]["saved_model"] == str(tmp_path / "sdt" / "chief" / "model" / "saved_model")
    with np.load(tmp_path / "sdt" / "chief" / "model" / "parameters.npz") as exported:
        for name, value in sdt_ckpt.arrays.items():
            if name.startswith("dense/"):
                assert np.array_equal(exported[name], value), name
            elif name.endswith("/local_ids"):
                table = name.split("/")[1]
                assert np.array_equal(exported[f"table/{table}"][value], sdt_ckpt.arrays[f"rows/{table}/values"])
    # SDT workers keep nothing on disk: their data is only in the chief's and launcher's directories.
    assert not list((tmp_path / "sdt").glob("data*"))


def _changed_tree(root: Path) -> Path:
    """A copy of the measured packages with one source file changed by one comment line."""
    for package in ("ratls", "runtime"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(root / "runtime" / "worker.py", "a") as f:
        f.write("# changed\n")
    return root


@pytest.mark.timeout(300)
def test_worker_with_other_mrenclave_is_refused_by_chief_and_ps(tmp_path, testdata):
    import ratls
    from runtime.measure import BASE_DIR, runtime_files

    sample = testdata / "criteo" / "kaggle_sample_100.txt"
    sim_ca = tmp_path / "sim-ca"
    ratls.SimCA.init(sim_ca)
    mrenclave = ratls.measure(runtime_files(), root=BASE_DIR).hex()
    changed = _changed_tree(tmp_path / "changed")
    assert ratls.measure(runtime_files(changed), root=changed).hex() != mrenclave
    security = ["--security", "ratls", "--provider", "sim", "--sim-ca", str(sim_ca), "--mrenclave", mrenclave]
    with Children(tmp_path) as children:
        ps = children.start("ps", "runtime.ps", "--steps", "5", "--workers", "1", "--model", "small",
                            "--ready-file", str(tmp_path / "ps.json"), "--log-every", "0", *security)
        ps_address = wait_for_file(tmp_path / "ps.json", WAIT, ps)["address"]
        chief = children.start("chief", "runtime.chief", "--ps", ps_address, "--workers", "1", "--steps", "5",
                               "--model", "small", "--batch-size", "16", "--data", str(sample),
                               "--ready-file", str(tmp_path / "c.json"),
                               "--report-file", str(tmp_path / "chief.report.json"),
                               "--out", str(tmp_path / "chief"), *security)
        chief_address = wait_for_file(tmp_path / "c.json", WAIT, chief)["address"]
        for name, job in (("bad-chief", ["--chief", chief_address]),
                          ("bad-ps", ["--ps", ps_address, "--data", str(sample)])):
            # Started from the changed tree: it imports and measures that tree's files.
            _start_in(children, changed, name, "runtime.worker", "--worker-id", "worker0", *job, *security)
        for name in ("bad-chief", "bad-ps"):
            code = children.wait(name, WAIT)
            log = children.log(name)
            assert code == 2, log[-3000:]
            assert "attestation failed" in log or "UNAVAILABLE" in log, log[-3000:]
        # Control: the same worker from the unchanged tree is admitted, streams its shard once and trains.
        children.start("good", "runtime.worker", "--worker-id", "worker0", "--chief", chief_address,
                       "--threads", "1", *security)
        assert children.wait("good", WAIT) == 0, children.log("good")[-3000:]
        assert children.wait("chief", WAIT) == 0, children.log("chief")[-3000:]
        report = wait_for_file(tmp_path / "chief.report.json", 5)
    worker = report["workers"]["worker0"]
    # One join, one stream, exactly one shard's bytes: the refused processes got none.
    assert worker["joins"] == worker["shard_starts"] == worker["shard_completions"] == 1, worker
    assert worker["shard_bytes_sent"] == sample.stat().st_size and worker["mrenclave"] == mrenclave
    assert worker["metrics"]["steps"] == 5
    assert (tmp_path / "chief" / "model" / "saved_model" / "saved_model.pb").exists()


def _start_in(children: Children, cwd: Path, name: str, *args: str) -> None:
    log = children.directory / f"{name}.log"
    log.write_bytes(b"")
    children.logs[name] = log
    with open(log, "ab") as out:
        children.processes[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=out,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                                    env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(cwd)))


def test_shard_is_streamed_again_after_a_broken_stream(tmp_path, testdata):
    sample = testdata / "criteo" / "kaggle_sample_100.txt"
    sources = chief_module.shard_sources([sample], None, 2)
    spec = chief_pb2.JobSpec(ps_addresses="127.0.0.1:1", batch_size=8)
    chief = chief_module.Chief(spec, sources, ["worker0", "worker1"], transport.InsecureTransport(), chunk_bytes=1024)
    server, endpoint = chief_module.start_server(chief, "127.0.0.1", 0)
    channel = grpc.insecure_channel(endpoint.target)
    try:
        stub = chief_pb2_grpc.ChiefStub(channel)
        request = chief_pb2.ShardRequest(protocol_version=PROTOCOL_VERSION, worker_id="worker1")
        with pytest.raises(grpc.RpcError) as error:
            next(iter(stub.StreamShard(request, timeout=10)))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # not joined: nothing sent
        assert chief.workers["worker1"].shard_bytes_sent == 0
        stub.Join(chief_pb2.ChiefJoinRequest(protocol_version=PROTOCOL_VERSION, worker_id="worker1"), timeout=10)
        with pytest.raises(grpc.RpcError) as error:
            stub.Join(chief_pb2.ChiefJoinRequest(protocol_version=PROTOCOL_VERSION, worker_id="intruder"), timeout=10)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        broken = stub.StreamShard(request, timeout=10)
        first = next(broken)
        broken.cancel()  # the worker dies mid-shard
        chunks = list(stub.StreamShard(request, timeout=10))
    finally:
        channel.close()
        server.stop(0).wait(5)
    shard = b"".join(c.data for c in chunks)
    assert chunks[0] == first and first.offset == 0 and len(first.data) < len(shard)
    assert all(0 < len(c.data) <= 1024 for c in chunks)
    assert [c.offset for c in chunks] == list(np.cumsum([0] + [len(c.data) for c in chunks[:-1]]))
    # Every chunk carries the whole shard's size and CRC-32C, as every chunked payload does.
    assert all((c.total_size, c.crc32c) == (len(shard), crc32c(shard)) for c in chunks)
    lines = sample.read_bytes().splitlines(keepends=True)
    assert shard == b"".join(lines[1::2]) and shard.count(b"\n") == 50
    state = chief.workers["worker1"]
    # The broken stream may still have been handed to gRPC whole (a small shard fits in the flow-control window)
    # before the cancel arrived; the second one must be complete.
    assert state.shard_starts == 2 and 1 <= state.shard_completions <= 2
    assert len(shard) + len(first.data) <= state.shard_bytes_sent <= 2 * len(shard)
    # The streamed shard parses into exactly the batches the HFL worker reads with --data-shard 1/2.
    config = DLRMConfig.small()
    (tmp_path / "shard.tsv").write_bytes(shard)
    ours = list(CriteoReader(tmp_path / "shard.tsv", config, 8))
    theirs = list(CriteoReader(sample, config, 8, shard=(1, 2)))
    assert len(ours) == len(theirs) == 7
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a.dense, b.dense) and np.array_equal(a.cat, b.cat)


def test_saved_model_predicts_as_the_training_model(tmp_path, testdata):
    import tensorflow as tf

    from runtime.model import DLRM, init_dense_params, init_embedding_table

    config = DLRMConfig.small()
    rng = np.random.default_rng(3)
    # Trained-looking parameters: the initial ones moved by noise, so a wrong table/offset shows.
    dense = {n: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in init_dense_params(config).items()}
    tables = [init_embedding_table(config, t) + rng.normal(0, 0.05, (size, config.embedding_dim)).astype(np.float32)
              for t, size in enumerate(config.table_sizes)]
    saved = chief_module.export_model(config, dense, tables, tmp_path / "model")
    (batch,) = list(CriteoReader(testdata / "criteo" / "kaggle_sample_100.txt", config, 100))
    want = DLRM(config).predict(dense, [tables[t][ids] for t, (ids, _) in enumerate(batch.unique_ids())], batch)
    loaded = tf.saved_model.load(str(saved))
    got = loaded.serve(tf.constant(batch.dense), tf.constant(batch.cat.astype(np.int64))).numpy()
    signature = loaded.signatures["serving_default"]
    by_signature = next(iter(signature(dense=tf.constant(batch.dense),
                                       cat=tf.constant(batch.cat.astype(np.int64))).values())).numpy()
    assert got.shape == (100,) and 0.0 < got.min() and got.max() < 1.0 and got.std() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_signature, got)
    with np.load(tmp_path / "model" / "parameters.npz") as raw:
        assert all(np.array_equal(raw[f"table/{t}"], tables[t]) for t in range(config.num_tables))
        assert all(np.array_equal(raw[f"dense/{n}"], v) for n, v in dense.items())


def _memfd_size(pid: int) -> int | None:
    """Size of the process's in-memory shard file (memfd), or None while it has none."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:shard-"):
                    return os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except OSError:
                continue
    except OSError:
        return None
    return None


@pytest.mark.timeout(300)
def test_worker_killed_mid_shard_gets_its_shard_again(tmp_path):
    security = ["--security", "insecure"]
    with Children(tmp_path) as children:
        ps = children.start("ps", "runtime.ps", "--steps", "3", "--workers", "1", "--model", "small",
                            "--ready-file", str(tmp_path / "ps.json"), "--log-every", "0", *security)
        ps_address = wait_for_file(tmp_path / "ps.json", WAIT, ps)["address"]
        chief = children.start("chief", "runtime.chief", "--ps", ps_address, "--workers", "1", "--steps", "3",
                               "--model", "small", "--batch-size", "64", "--synthetic", "40000", "--eval-rows", "512",
                               "--chunk-bytes", "1024", "--ready-file", str(tmp_path / "c.json"),
                               "--report-file", str(tmp_path / "chief.report.json"), "--out",
                               str(tmp_path / "chief"), *security)
        chief_address = wait_for_file(tmp_path / "c.json", WAIT, chief)["address"]
        first = children.start("first", "runtime.worker", "--worker-id", "worker0", "--chief", chief_address,
                               *security)
        received: list[int] = []

        def partly_received() -> bool:
            size = _memfd_size(first.pid)
            if size:
                received.append(size)
            return bool(size) or first.poll() is not None

        wait_until(partly_received, WAIT, "the first worker's shard to start arriving", interval=0.005)
        first.kill()  # mid-shard
        first.wait(10)
        assert received, "the worker exited before receiving any shard byte:\n" + children.log("first")[-2000:]
        children.start("second", "runtime.worker", "--worker-id", "worker0", "--chief", chief_address,
                                "--threads", "1", *security)
        assert children.wait("second", WAIT) == 0, children.log("second")[-3000:]
        assert children.wait("chief", WAIT) == 0, children.log("chief")[-3000:]
        report = wait_for_file(tmp_path / "chief.report.json", 5)
    shard_size = (tmp_path / "chief" / "data" / "synthetic.tsv.0").stat().st_size
    assert received[-1] < shard_size, "the first worker was killed after its whole shard had arrived"
    worker = report["workers"]["worker0"]
    assert worker["joins"] == worker["shard_starts"] == 2 and worker["shard_completions"] == 1, worker
    assert shard_size < worker["shard_bytes_sent"] < 2 * shard_size
    assert f"SDT: job spec and {shard_size} shard bytes" in children.log("second")
    assert worker["metrics"]["steps"] == 3
    # The chief's final evaluation of the saved model, on its own held-out rows.
    assert report["final_eval"]["examples"] == 512 and 0 < report["final_eval"]["log_loss"] < 5

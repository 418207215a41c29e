"""Attacks on the runtime's servers by peers that hold attested keys (issue: hostile peers)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from runtime_tools import Children, wait_for_file

import ratls
from ratls._certs import certificate_pem
from runtime.data import synthetic_partitions
from runtime.model import DLRMConfig
from runtime.proto import ps_pb2, tensor_pb2
from runtime.protocol import PROTOCOL_VERSION, SERVICE
from runtime.server.service import start_server
from runtime.server.state import ParameterServer, PSOptions
from runtime.transport import InsecureTransport, RatlsTransport

CALL_TIMEOUT = 20.0


def signed_by(issuer: ratls.Identity) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a new key whose certificate the attested identity's key signed: it never saw
    an enclave and was never attested."""
    issuer_key = serialization.load_pem_private_key(issuer.private_key_pem, None)
    # The trust set serves the attested clients' channel certificates as roots: chain to one of those.
    issuer_name = x509.load_der_x509_certificate(issuer.channel_certificate_der).subject
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "child-of-an-attested-key")]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA384()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.timeout(120)
def test_a_certificate_an_attested_key_signed_gets_no_answer_from_the_ps(sim_ca):
    server_net = RatlsTransport(provider="sim", sim_ca=sim_ca.path, mrenclave=None)
    ps = ParameterServer(PSOptions(config=DLRMConfig.small(), total_steps=10, workers=1, log_every=0))
    running = start_server(ps, server_net, "127.0.0.1", 0)
    client_net = RatlsTransport(provider="sim", sim_ca=sim_ca.path, mrenclave=None)
    endpoint = running.endpoint
    try:
        # The client attests honestly, so its certificate is in the PS's trust set...
        attested = client_net.credentials.attest(f"127.0.0.1:{endpoint.attestation_port}")
        # ...then presents the chain [child, attested] with the child's key.
        key_pem, child_pem = signed_by(client_net.identity)
        server_cn = x509.load_der_x509_certificate(attested.certificate_der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)[0].value
        creds = grpc.ssl_channel_credentials(root_certificates=certificate_pem(attested.certificate_der),
                                             private_key=key_pem,
                                             certificate_chain=child_pem + client_net.identity.channel_certificate_pem)
        request = ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id="intruder").SerializeToString()
        with grpc.secure_channel(endpoint.target, creds, options=[("grpc.ssl_target_name_override", server_cn),
                                                                  ("grpc.use_local_subchannel_pool", 1)]) as channel:
            join = channel.unary_unary(f"/{SERVICE}/Join")
            with pytest.raises(grpc.RpcError) as caught:
                join(request, timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
        assert caught.value.details().startswith("not_attested: ")
        assert not ps.members and ps.rejections["not_attested"] == 1
        # The attested certificate itself is answered.
        with client_net.channel(endpoint, []) as channel:
            reply = ps_pb2.JoinReply.FromString(channel.unary_unary(f"/{SERVICE}/Join")(
                ps_pb2.JoinRequest(protocol_version=PROTOCOL_VERSION, worker_id="honest").SerializeToString(),
                timeout=CALL_TIMEOUT))
        assert reply.version == 0 and set(ps.members) == {"honest"}
    finally:
        running.server.stop(0).wait(5)
        server_net.credentials.close()
        client_net.credentials.close()


def test_ratls_servers_end_connections_when_trust_would_end(sim_ca):
    """The PS's and the chief's gRPC servers get a connection age cap of the trust TTL, so no connection outlives
    the trust it was opened under (finding 8); insecure and tls servers get none."""
    net = RatlsTransport(provider="sim", sim_ca=sim_ca.path, mrenclave=None)
    try:
        options = dict(net.server_options())
        assert options["grpc.max_connection_age_ms"] == int(net.credentials.trust_ttl * 1000) == 3_600_000
        assert options["grpc.max_connection_age_grace_ms"] >= 60_000  # a pull may wait 60 s
    finally:
        net.credentials.close()
    assert "grpc.max_connection_age_ms" not in dict(InsecureTransport().server_options())


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.timeout(180)
def test_idle_streams_hold_no_memory_and_status_still_answers(tmp_path):
    # Before: 3 Push streams each sending one 1-byte chunk that claims total_size = 1 GiB took the PS from 79 MB to
    # 2,147 MB (allocated up front), and 16 such streams took every handler thread so Status timed out.
    ready = tmp_path / "ps.ready.json"
    with Children(tmp_path) as children:
        process = children.start("ps", "runtime.ps", "--steps", "10", "--workers", "2", "--model", "small",
                                 "--security", "insecure", "--ready-file", str(ready), "--log-every", "0",
                                 "--stream-timeout", "6")
        target = wait_for_file(ready, 60, process)["address"]
        with grpc.insecure_channel(target) as channel:
            status = channel.unary_unary(f"/{SERVICE}/Status")
            request = ps_pb2.StatusRequest(protocol_version=PROTOCOL_VERSION).SerializeToString()
            status(request, timeout=CALL_TIMEOUT)
            idle = rss_bytes(process.pid)
            release = threading.Event()
            push = channel.stream_stream(f"/{SERVICE}/Push")

            def hostile_streams(claim: int) -> list:
                chunk = tensor_pb2.Chunk(protocol_version=PROTOCOL_VERSION, offset=0, total_size=claim, crc32c=0,
                                         data=b"x").SerializeToString()

                def one_chunk_then_silence():
                    yield chunk
                    release.wait(60)

                return [push(one_chunk_then_silence(), timeout=60) for _ in range(16)]

            def outcomes(calls: list) -> list[str]:
                out = []
                for call in calls:
                    with pytest.raises(grpc.RpcError) as caught:
                        next(call)
                    out.append(caught.value.code().name + " " + caught.value.details().split(":")[0])
                return sorted(out)

            # A claim beyond anything this job's requests can need is refused at the first chunk (streams beyond
            # the caller's four open at that moment are refused before it).
            refused = outcomes(hostile_streams(1 << 30))
            assert "RESOURCE_EXHAUSTED payload_too_large" in refused
            assert set(refused) <= {"RESOURCE_EXHAUSTED payload_too_large", "RESOURCE_EXHAUSTED too_many_streams"}
            # Claims the job could need: four streams per caller get in and hold nothing but what arrived.
            calls = hostile_streams(1 << 20)
            time.sleep(2)  # the chunks are in; the admitted streams idle
            during = rss_bytes(process.pid)
            reply = ps_pb2.StatusReply.FromString(status(request, timeout=1.0))  # answers within 1 s
            assert reply.version == 0
            held = outcomes(calls)  # the admitted four end at the 6 s stream timeout
            release.set()
            after = rss_bytes(process.pid)
            final = ps_pb2.StatusReply.FromString(status(request, timeout=CALL_TIMEOUT))
    assert during < 2 * idle and after < 2 * idle, (idle, during, after)
    assert held == ["CANCELLED CANCELLED"] * 4 + ["RESOURCE_EXHAUSTED too_many_streams"] * 12, held
    assert final.rejected_calls == 16 + 16


def run_job(directory: Path, hostile: bool, steps: int = 300, batch: int = 32) -> tuple[dict, dict]:
    """A PS, an honest worker0 and a worker1 that is honest or hostile (tests/hostile_worker.py), on synthetic
    data; returns worker0's report (its held-out evaluation) and the PS's report."""
    directory.mkdir()
    config = DLRMConfig.small()
    train, held_out = synthetic_partitions(directory / "data", 2, steps * batch, 4096, 1, config)
    ready, ps_report = directory / "ps.ready.json", directory / "ps.report.json"
    reports = [directory / f"worker{i}.json" for i in range(2)]
    with Children(directory) as children:
        ps = children.start("ps", "runtime.ps", "--steps", str(steps), "--workers", "2", "--model", "small",
                            "--security", "insecure", "--batch-size", str(batch), "--worker-timeout", "3",
                            "--linger", "0", "--log-every", "0", "--ready-file", str(ready),
                            "--report-file", str(ps_report))
        address = wait_for_file(ready, 60, ps)["address"]
        honest = ["--ps", address, "--batch-size", str(batch), "--threads", "1", "--security", "insecure"]
        children.start("worker0", "runtime.worker", *honest, "--worker-id", "worker0", "--data", str(train[0]),
                       "--eval-data", str(held_out[0]), "--report-file", str(reports[0]))
        if hostile:
            children.start("worker1", "tests.hostile_worker", "--ps", address, "--worker-id", "worker1")
        else:
            children.start("worker1", "runtime.worker", *honest, "--worker-id", "worker1", "--data",
                           str(train[1]), "--eval-data", str(held_out[1]), "--report-file", str(reports[1]))
        for name in ("worker0", "worker1", "ps"):
            assert children.wait(name, 240) == 0, children.log(name)[-3000:]
        if hostile:
            assert "hostile pushes refused: " in children.log("worker1")
    return json.loads(reports[0].read_text()), json.loads(ps_report.read_text())


@pytest.mark.timeout(600)
def test_a_job_with_a_hostile_worker_finishes_and_learns_as_a_clean_one(tmp_path):
    # Before: one push of 3e38 gradients took the largest dense parameter to 1.5e37 and the honest worker died on
    # a non-finite loss; a push claiming 2**24 examples got weight 0.999992 in the average.
    clean, clean_ps = run_job(tmp_path / "clean", hostile=False)
    attacked, attacked_ps = run_job(tmp_path / "attacked", hostile=True)
    assert attacked_ps["version"] == clean_ps["version"] == 300
    refused = attacked_ps["refused_pushes"]["worker1"]
    assert refused["gradient_too_large"] >= 140 and refused["batch_too_large"] >= 140, refused
    assert set(refused) == {"gradient_too_large", "batch_too_large"} and "worker0" not in attacked_ps[
        "refused_pushes"]
    assert clean_ps["refused_pushes"] == {}
    assert attacked_ps["limits"] == {"batch_size": 32, "max_grad_norm": 100.0}
    auc_clean, auc_attacked = clean["eval"]["auc"], attacked["eval"]["auc"]
    assert abs(auc_attacked - auc_clean) <= 0.01, (auc_clean, auc_attacked)
    assert auc_attacked > 0.6  # and it learned: the planted signal, on the same held-out rows

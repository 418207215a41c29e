"""Encryption is really on: an RPC carrying a known 1 MiB random payload (both ways) leaves no 64-byte run of
it on the wire, captured on the loopback interface with tcpdump and, independently, by a relay that records
every byte. Each capture is checked against a plaintext control, so the detector is shown to work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpctools import MESSAGE_OPTIONS, Relay, echo, make_app, serve, serve_insecure, sim_policy

import ratls
from ratls.credentials import credentials

PAYLOAD_SIZE = 1 << 20
RUN = 64
CHUNK = RUN // 2  # any 64-byte run of the payload contains a whole 32-byte chunk at a multiple of 32


def payload_chunks_found(payload: bytes, capture: bytes) -> int:
    """How many of the payload's aligned 32-byte chunks occur in the capture. Zero means the capture holds
    no 64-byte run of the payload anywhere."""
    chunks = {payload[i:i + CHUNK] for i in range(0, len(payload) - CHUNK + 1, CHUNK)}
    if len(capture) < CHUNK:
        return 0
    # Candidates first: offsets whose next 8 bytes start some chunk (vectorized), then exact comparison.
    prefixes = np.array([int.from_bytes(c[:8], "little") for c in chunks], dtype=np.uint64)
    data = np.frombuffer(capture, dtype=np.uint8)
    n = len(capture) - CHUNK + 1
    words = np.zeros(n, dtype=np.uint64)
    for k in range(8):
        words |= data[k:k + n].astype(np.uint64) << np.uint64(8 * k)
    found = {capture[i:i + CHUNK] for i in np.nonzero(np.isin(words, prefixes))[0].tolist()}
    return len(found & chunks)


@pytest.fixture(scope="module")
def pair(sim_ca, tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    server_app, client_app = make_app(root, "server"), make_app(root, "client")
    server_id = ratls.Identity.create("sim", sim_ca=sim_ca.path, measured_files=[server_app],
                                      measure_root=server_app)
    client_id = ratls.Identity.create("sim", sim_ca=sim_ca.path, measured_files=[client_app],
                                      measure_root=client_app)
    return (lambda: credentials(sim_policy(sim_ca, client_id.mrenclave), server_id),
            lambda: credentials(sim_policy(sim_ca, server_id.mrenclave), client_id))


class Tcpdump:
    """tcpdump on the loopback interface for the given TCP ports, written to a pcap file."""

    def __init__(self, ports: list[int]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ratls-capture-")) / "lo.pcap"
        expr = " or ".join(f"tcp port {p}" for p in ports)
        command = ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0", "-B", "32768",
                   "-w", str(self.path), expr]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on lo" once the capture is armed.
        deadline = time.monotonic() + 10
        line = b""
        while b"listening on" not in line:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"tcpdump did not start capturing: {line.decode(errors='replace')}")
            line = self.proc.stderr.readline()

    def stop(self) -> bytes:
        """Ends the capture and returns the pcap file; fails if the kernel dropped packets. (On lo, "received
        by filter" counts each packet twice, outgoing and incoming; libpcap keeps one copy.)"""
        time.sleep(0.2)  # let the last segments reach the capture buffer
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        report = err.decode(errors="replace")
        if not re.search(r"^0 packets dropped by kernel", report, re.MULTILINE):
            pytest.fail(f"tcpdump lost packets, the capture is incomplete: {report}")
        data = self.path.read_bytes() if self.path.exists() else b""
        shutil.rmtree(self.path.parent, ignore_errors=True)
        return data


def test_tcpdump_capture_has_no_plaintext(pair):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (Debian: apt-get install -y tcpdump); the relay capture test "
                    "below still checks the bytes on the wire")
    server_creds, client_creds = pair
    payload = os.urandom(PAYLOAD_SIZE)

    with serve(server_creds()) as srv:
        capture = Tcpdump([srv.grpc_port, srv.attestation_port])
        try:
            with client_creds().secure_channel(srv.target, attestation_target=srv.attestation_target,
                                               options=MESSAGE_OPTIONS) as channel:
                assert echo(channel, payload) == payload
        finally:
            encrypted = capture.stop()

    with serve_insecure() as (_, port):  # the control: the same RPC in plaintext
        capture = Tcpdump([port])
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=MESSAGE_OPTIONS) as channel:
                assert echo(channel, payload) == payload
        finally:
            plaintext = capture.stop()

    assert len(encrypted) > 2 * PAYLOAD_SIZE  # the capture really holds both transfers
    n_chunks = PAYLOAD_SIZE // CHUNK
    assert payload_chunks_found(payload, plaintext) > n_chunks // 2
    assert payload_chunks_found(payload, encrypted) == 0


def test_relay_capture_has_no_plaintext(pair):
    server_creds, client_creds = pair
    payload = os.urandom(PAYLOAD_SIZE)
    with serve(server_creds()) as srv, Relay(srv.grpc_port) as relay:
        with client_creds().secure_channel(f"127.0.0.1:{relay.port}", attestation_target=srv.attestation_target,
                                           options=MESSAGE_OPTIONS) as channel:
            assert echo(channel, payload) == payload
        wire = bytes(relay.to_upstream), bytes(relay.to_client)
    with serve_insecure() as (_, port), Relay(port) as relay:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=MESSAGE_OPTIONS) as channel:
            assert echo(channel, payload) == payload
        control = bytes(relay.to_upstream), bytes(relay.to_client)

    for direction in (0, 1):
        assert len(wire[direction]) > PAYLOAD_SIZE
        assert payload_chunks_found(payload, control[direction]) > PAYLOAD_SIZE // CHUNK * 9 // 10
        assert payload_chunks_found(payload, wire[direction]) == 0

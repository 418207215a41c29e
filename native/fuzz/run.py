"""Builds the libFuzzer targets (clang, ASan + UBSan), seeds their corpora and runs them.

    python native/fuzz/run.py                          # every target for 60 s
    python native/fuzz/run.py --seconds 1800 fuzz_cert # one target, a long campaign

Targets: fuzz_quote (SGX and TDX quote parser and verification), fuzz_cert (RA-TLS certificate parser and verification),
fuzz_attest (the attestation handshake over loopback: raw client bytes, attesting clients, a malicious server's
acknowledgement, a genuine client's channel certificate message). Seeds come from ../shared/testdata plus sim
identities made with a sim CA kept in the work directory (so a growing corpus stays valid across runs). Before
fuzzing, every saved crash input in native/fuzz/regressions/<target>/ is replayed and must pass. Prints one JSON
line per target: executions, coverage (libFuzzer's `cov` edges and `ft` features), corpus size, CPU seconds used,
and crash files (the exit status is non-zero if there are any). One fuzzer runs at a time, single-threaded, under
`nice`; --seconds is wall time, so on a busy machine repeat runs (the corpus is kept in --work-dir) until the CPU
time adds up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import ssl
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO.parent / "shared" / "testdata"
DICE_DATA = REPO / "tests" / "data" / "dice"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
TARGETS = ("fuzz_quote", "fuzz_cert", "fuzz_attest")
MAX_LEN = {"fuzz_quote": 8300, "fuzz_cert": 12288, "fuzz_attest": 12288}
ACK_TTL = 3600


def build(build_dir: Path) -> None:
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("clang is not installed (Debian: apt-get install clang; it ships libFuzzer)")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DRATLS_FUZZ=ON", "-DRATLS_SANITIZE=ON",
                    "-DRATLS_BUILD_PYTHON=OFF", f"-DCMAKE_C_COMPILER={clang}", f"-DRATLS_TESTDATA={TESTDATA}"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", "2", "--target", *TARGETS, "ratls_sim"], check=True,
                   stdout=subprocess.DEVNULL)


def _client_hello() -> bytes:
    """The first flight of a real TLS 1.3 client (Python's OpenSSL), as the server would read it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _legacy_only(cert_der: bytes, key_der: bytes) -> bytes:
    """The same certificate without the DICE extension (Gramine <= v1.7 layout), re-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert = x509.load_der_x509_certificate(cert_der)
    key = serialization.load_der_private_key(key_der, None)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc).public_key(cert.public_key()))
    for ext in cert.extensions:
        if ext.oid.dotted_string != "2.23.133.5.4.9":
            builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _ops_write(data: bytes) -> bytes:
    """fuzz_attest mode-2 ops writing `data` in one record (ops carry up to 64 bytes)."""
    assert 0 < len(data) <= 64
    return bytes([(len(data) - 1) << 2]) + data


def _channel_message(der: bytes) -> bytes:
    """What a client sends after the attestation handshake: "RATC" + u16 big-endian length + its channel
    certificate."""
    return b"RATC" + struct.pack(">H", len(der)) + der


def make_seeds(work: Path) -> dict[str, Path]:
    """Seed corpora for every target (rewritten each run); the sim CA is made once per work directory."""
    import ratls
    from ratls._certs import certificate_der
    from ratls.identity import sim_tdx_quote

    ca_dir = work / "sim-ca"
    ca = ratls.SimCA(ca_dir) if (ca_dir / "root.crt.pem").exists() else ratls.SimCA.init(ca_dir)
    app = work / "app.py"
    app.write_text("print('fuzzed enclave')\n")
    sim = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=work)
    debug = ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[app], measure_root=work, debug=True,
                                  isv_prod_id=3, isv_svn=9)
    sim_info = ratls.inspect_certificate(sim.certificate_der)
    sim_dice_only = ratls.Identity.create_dice(lambda rd: sim_info.quote, "sim", private_key_der=sim.private_key_der,
                                               sim_root=ca.path)
    gramine_der = (TESTDATA / "sgx" / "gramine" / "gramine-cert.der").read_bytes()
    ack = b"RAT1" + struct.pack(">I", ACK_TTL)
    seeds = {
        "fuzz_quote": {
            "dcap-qvl-sgx-quote": (TESTDATA / "sgx" / "dcap-qvl" / "sgx_quote").read_bytes(),
            "gramine-dice-quote": (TESTDATA / "sgx" / "gramine" / "gramine-cert.dice_evidence_quote.bin").read_bytes(),
            "gramine-legacy-quote": (TESTDATA / "sgx" / "gramine" / "gramine-cert.legacy_oid_quote.bin").read_bytes(),
            "intel-qvl-sample-quote": (TESTDATA / "sgx" / "intel-qvl-sample" / "quote.dat").read_bytes(),
            "sim-dice-quote": sim_info.quote,
            "sim-legacy-quote": sim_info.legacy_quote,
            # TDX (tests/data/tdx): go-tdx-guest's v4 quote without its trailer, its v5 quote; sim TD quotes.
            "tdx-v4-quote": (REPO / "tests" / "data" / "tdx" / "tdx_prod_quote_SPR_E4.dat").read_bytes()[:4935],
            "tdx-v5-quote": (REPO / "tests" / "data" / "tdx" / "quote_v5_sample.dat").read_bytes(),
            "sim-tdx-v4-quote": sim_tdx_quote(bytes(64), sim_ca=ca.path, mrtd=bytes(range(48))),
            "sim-tdx-v5-debug-quote": sim_tdx_quote(bytes(range(64)), sim_ca=ca.path, mrtd=bytes(48), tdx_version=5,
                                                    debug=True),
        },
        "fuzz_cert": {
            "gramine-cert": gramine_der,
            "sim-cert": sim.certificate_der,
            "sim-debug-cert": debug.certificate_der,
            "sim-tdx-cert": ratls.Identity.create("sim-tdx", sim_ca=ca.path, measured_files=[app],
                                                  measure_root=work).certificate_der,
            "sim-legacy-only-cert": _legacy_only(sim.certificate_der, sim.private_key_der),
            "sim-dice-only-cert": sim_dice_only.certificate_der,
            # Real DICE-only certificates (tests/data/dice): rats-tls's carries custom claims beside pubkey-hash.
            "rats-tls-cert": certificate_der((DICE_DATA / "rats-tls-cert.pem").read_bytes()),
            "intel-sgxsdk-cert": certificate_der((DICE_DATA / "intel-sgxsdk-cert.pem").read_bytes()),
        },
        "fuzz_attest": {
            "raw-client-hello": b"\x00" + _client_hello(),
            "raw-http": b"\x00GET / HTTP/1.0\r\n\r\n",
            "client-sim-identity": b"\x01" + struct.pack("<H", len(sim.private_key_der)) + sim.private_key_der
                                   + sim.certificate_der,
            "client-gramine-cert-rekeyed": b"\x01" + struct.pack("<H", len(sim.private_key_der))
                                           + sim.private_key_der + gramine_der,
            # The first byte / 4 % 10 is the server evaluator's answer: 5 = OutOfDate, 8 = a collateral error.
            "client-sim-identity-out-of-date": bytes([1 + 4 * 5]) + struct.pack("<H", len(sim.private_key_der))
                                               + sim.private_key_der + sim.certificate_der,
            "client-sim-identity-collateral-error": bytes([1 + 4 * 8]) + struct.pack("<H", len(sim.private_key_der))
                                                    + sim.private_key_der + sim.certificate_der,
            "ack": b"\x02" + _ops_write(ack),
            "ack-split-keyupdate": b"\x02" + _ops_write(ack[:3]) + b"\x05" + _ops_write(ack[3:]) + b"\x02",
            "ack-short-close-notify": b"\x02" + _ops_write(ack[:6]) + b"\x02",
            "ack-wrong-magic-abrupt": b"\x02" + _ops_write(b"RAT2" + ack[4:]) + b"\x03",
            "refusal": b"\x02" + _ops_write(b"RATN" + struct.pack(">I", 44)) + b"\x02",
            "refusal-unknown-code-abrupt": b"\x02" + _ops_write(b"RATN" + struct.pack(">I", 0xFFFF)) + b"\x03",
            # Mode 3: after a genuine handshake, the channel certificate message: the target's own (kind 1, edits
            # (u16le position from the end, xor)), or bytes as they are (kind 0).
            "channel-genuine": b"\x03\x01",
            "channel-bad-signature": b"\x03\x01" + struct.pack("<HB", 0, 0x01),
            "channel-edited": b"\x03\x01" + struct.pack("<HB", 0xFFFF, 0x80),
            "channel-other-key": b"\x03\x00" + _channel_message(sim.channel_certificate_der),
            "channel-oversized-length": b"\x03\x00RATC\xff\xff" + bytes(64),
            "channel-wrong-magic": b"\x03\x00RATX\x00\x04abcd",
            "channel-garbage": b"\x03\x00RATC\x00\x05hello",
            "channel-missing": b"\x03\x00",
        },
    }
    dirs = {}
    for target, files in seeds.items():
        d = work / target / "seeds"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        dirs[target] = d
    return dirs


def _env(build_dir: Path, work: Path) -> dict[str, str]:
    return dict(os.environ, RATLS_SIM_LIB=str(build_dir / "libratls_sim.so"), RATLS_SIM_CA_DIR=str(work / "sim-ca"),
                ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")


def replay_regressions(binary: Path, env: dict[str, str]) -> int:
    """Replays the saved crash inputs of a target; returns how many there are (raises if any fails)."""
    inputs = sorted((REGRESSIONS / binary.name).glob("*")) if (REGRESSIONS / binary.name).is_dir() else []
    if inputs:
        out = subprocess.run([str(binary), *map(str, inputs)], env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"{binary.name}: a saved regression input fails again:\n{out.stderr[-6000:]}")
    return len(inputs)


def run_target(binary: Path, seeds: Path, work: Path, seconds: int, env: dict[str, str]) -> dict:
    corpus = work / binary.name / "corpus"
    crashes = work / binary.name / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    cmd = ["nice", "-n", "10", str(binary), str(corpus), str(seeds), f"-max_total_time={seconds}", "-timeout=30",
           "-rss_limit_mb=4096", f"-max_len={MAX_LEN[binary.name]}", "-print_final_stats=1",
           f"-artifact_prefix={crashes}/"]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 600)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    (work / binary.name / "last-run.log").write_text(out.stderr)
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", out.stderr)
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", out.stderr))
    runs, cov, ft, corp = (int(x) for x in done[-1]) if done else (int(stats.get("number_of_executed_units", 0)),
                                                                  0, 0, 0)
    return {"target": binary.name, "seconds": seconds, "cpu_seconds": round(cpu), "exit": out.returncode,
            "runs": runs, "cov": cov, "ft": ft,
            "corpus": corp, "execs_per_sec": int(stats.get("average_exec_per_sec", 0)),
            "new_units": int(stats.get("new_units_added", 0)), "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
            "crashes": sorted(str(p) for p in set(crashes.iterdir()) - before)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
    ap.add_argument("--build-dir", type=Path, default=REPO / "build" / "fuzz")
    ap.add_argument("--work-dir", type=Path, default=REPO / "build" / "fuzz-work",
                    help="corpora, crashes and the sim CA (kept between runs)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in --build-dir")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown targets {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    args.targets = args.targets or list(TARGETS)
    if not args.no_build:
        build(args.build_dir)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds(args.work_dir)
    env = _env(args.build_dir, args.work_dir)
    failed = False
    for target in args.targets:
        binary = args.build_dir / target
        replayed = replay_regressions(binary, env)
        result = run_target(binary, seeds[target], args.work_dir, args.seconds, env)
        result["regressions_replayed"] = replayed
        print(json.dumps(result), flush=True)
        failed |= result["exit"] != 0 or bool(result["crashes"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

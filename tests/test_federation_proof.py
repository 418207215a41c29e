"""Join proofs (statements, participant keys, signatures), the PS's single-use challenges and the audit log."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from runtime.federation import (
    AuditLog,
    ChallengeBook,
    JoinStatement,
    Participant,
    ParticipantKey,
    ProofError,
    audit,
    read_audit,
    verify,
)
from runtime.federation.proof import JOIN_DOMAIN, MAX_SIGNATURE_BYTES

PRIVATE_KEYS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
}


def participant(name: str, key: ParticipantKey) -> Participant:
    return Participant(name, ("worker",), key.public_key, key.spki_sha256)


def statement(**changes) -> JoinStatement:
    fields = dict(participant="alpha", role="worker", federation="acme-ads", plan_digest=b"\x01" * 32,
                  cert_fingerprint=b"\x02" * 32, challenge=b"\x03" * 32)
    fields.update(changes)
    return JoinStatement(**fields)


@pytest.fixture(params=sorted(PRIVATE_KEYS))
def key(request) -> ParticipantKey:
    return ParticipantKey(PRIVATE_KEYS[request.param]())


# ---- statements ----


def test_the_encoding_is_the_documented_one():
    encoded = statement().encode()
    expected = (b"runtime-federation-join-v1\0" + b"\x00\x05alpha" + b"\x00\x06worker" + b"\x00\x08acme-ads"
                + b"\x00\x20" + b"\x01" * 32 + b"\x00\x20" + b"\x02" * 32 + b"\x00\x20" + b"\x03" * 32)
    assert encoded.startswith(JOIN_DOMAIN)
    assert encoded == expected


def test_the_encoding_is_unambiguous():
    """The same concatenated text split differently between fields encodes differently."""
    splits = [statement(participant="ab", role="c"), statement(participant="a", role="bc"),
              statement(role="worker", federation="x"), statement(role="work", federation="erx")]
    assert len({s.encode() for s in splits}) == len(splits)


@pytest.mark.parametrize("changes, message", [
    ({"plan_digest": b"\x01" * 31}, "plan_digest: expected 32 bytes, found 31 bytes"),
    ({"cert_fingerprint": b"\x02" * 33}, "cert_fingerprint: expected 32 bytes, found 33 bytes"),
    ({"challenge": "03" * 32}, "challenge: expected 32 bytes, found str"),
    ({"participant": ""}, "participant: expected 1..65535 bytes of UTF-8, found 0"),
    ({"federation": "x" * 65536}, "federation: expected 1..65535 bytes of UTF-8, found 65536"),
    ({"role": b"worker"}, "role: expected a string, found bytes"),
    ({"role": "\ud800"}, "role: not encodable as UTF-8"),
])
def test_malformed_statements(changes, message):
    with pytest.raises(ProofError) as error:
        statement(**changes)
    assert error.value.reason == "malformed"
    assert error.value.detail == message


# ---- signatures ----


def test_sign_and_verify(key):
    signed = statement()
    verify(participant("alpha", key), signed, key.sign(signed))


def test_a_key_written_and_loaded_signs_alike(key, tmp_path):
    path = tmp_path / "alpha.key.pem"
    key.write(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = ParticipantKey.load(path)
    assert loaded.spki_sha256 == key.spki_sha256
    signed = statement()
    verify(participant("alpha", key), signed, loaded.sign(signed))


def test_spki_sha256_is_the_hash_of_the_subject_public_key_info(key):
    spki = key.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.spki_sha256 == hashlib.sha256(spki).digest()


@pytest.mark.parametrize("field, value", [
    ("role", "chief"),
    ("federation", "other-fed"),
    ("plan_digest", b"\x11" * 32),
    ("cert_fingerprint", b"\x12" * 32),
    ("challenge", b"\x13" * 32),
])
def test_a_signature_does_not_carry_over_to_another_statement(key, field, value):
    signature = key.sign(statement())
    with pytest.raises(ProofError) as error:
        verify(participant("alpha", key), statement(**{field: value}), signature)
    assert error.value.reason == "bad_signature"


def test_a_signature_for_another_participant_name_does_not_verify(key):
    """The participant field: bob's statement signed by alpha's key does not verify as bob's."""
    bob = ParticipantKey.generate()
    signature = key.sign(statement(participant="bob"))
    with pytest.raises(ProofError) as error:
        verify(participant("bob", bob), statement(participant="bob"), signature)
    assert error.value.reason == "bad_signature"


def test_a_statement_naming_someone_else_is_malformed(key):
    signed = statement(participant="bob")
    with pytest.raises(ProofError) as error:
        verify(participant("alpha", key), signed, key.sign(signed))
    assert error.value.reason == "malformed"
    assert "names participant 'bob'" in error.value.detail


def test_another_participants_key_does_not_verify(key):
    same_kind = (ed25519.Ed25519PrivateKey.generate() if isinstance(key.public_key, ed25519.Ed25519PublicKey)
                 else ec.generate_private_key(key.public_key.curve))
    other = ParticipantKey(same_kind)
    signed = statement()
    with pytest.raises(ProofError) as error:
        verify(participant("alpha", key), signed, other.sign(signed))
    assert error.value.reason == "bad_signature"


@pytest.mark.parametrize("damage", [lambda s: s[:-1], lambda s: s[:8], lambda s: b"", lambda s: s + b"\x00",
                                    lambda s: bytes([s[0] ^ 1]) + s[1:]],
                         ids=["truncated", "short", "empty", "extended", "flipped"])
def test_damaged_signatures_are_bad(key, damage):
    signed = statement()
    with pytest.raises(ProofError) as error:
        verify(participant("alpha", key), signed, damage(key.sign(signed)))
    assert error.value.reason == "bad_signature"


def test_an_oversized_signature_is_malformed(key):
    signed = statement()
    with pytest.raises(ProofError) as error:
        verify(participant("alpha", key), signed, key.sign(signed) + b"\x00" * MAX_SIGNATURE_BYTES)
    assert error.value.reason == "malformed"


@pytest.mark.parametrize("make", [lambda: rsa.generate_private_key(65537, 2048),
                                  lambda: ec.generate_private_key(ec.SECP521R1())], ids=["rsa", "p521"])
def test_unsupported_keys(make, tmp_path):
    private_key = make()
    with pytest.raises(ProofError) as error:
        ParticipantKey(private_key)
    assert error.value.reason == "wrong_key_type"
    path = tmp_path / "key.pem"
    path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with pytest.raises(ProofError) as error:
        ParticipantKey.load(path)
    assert error.value.reason == "wrong_key_type"
    assert str(path) in error.value.detail
    alpha = ParticipantKey.generate()
    stranger = dataclasses.replace(participant("alpha", alpha), public_key=private_key.public_key())
    with pytest.raises(ProofError) as error:
        verify(stranger, statement(), alpha.sign(statement()))
    assert error.value.reason == "wrong_key_type"


@pytest.mark.parametrize("content, reason, message", [
    (None, "unreadable", "cannot read: No such file or directory"),
    (b"not a key\n", "malformed", "not a PEM private key"),
    (b"x" * (64 * 1024 + 1), "unreadable", "larger than 65536 bytes"),
    ("encrypted", "malformed", "encrypted; give an unencrypted PKCS8 PEM key"),
])
def test_key_files_that_cannot_be_loaded(tmp_path, content, reason, message):
    path = tmp_path / "alpha.key.pem"
    if content == "encrypted":
        content = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ProofError) as error:
        ParticipantKey.load(path)
    assert error.value.reason == reason
    assert error.value.detail.startswith(f"participant key {path}: {message}")


# ---- challenges ----


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


FP_A, FP_B = b"\xaa" * 32, b"\xbb" * 32


def test_a_challenge_is_taken_once():
    book = ChallengeBook()
    challenge = book.issue(FP_A)
    assert len(challenge) == 32
    assert book.take(FP_A, challenge) is True
    assert book.take(FP_A, challenge) is False  # a replayed proof


def test_a_challenge_is_only_for_its_fingerprint():
    book = ChallengeBook()
    challenge = book.issue(FP_A)
    assert book.take(FP_B, challenge) is False
    assert book.take(FP_A, challenge) is True


def test_a_wrong_challenge_uses_up_the_attempt():
    book = ChallengeBook()
    challenge = book.issue(FP_A)
    assert book.take(FP_A, bytes(32)) is False
    assert book.take(FP_A, challenge) is False


def test_challenges_expire():
    clock = Clock()
    book = ChallengeBook(ttl=30.0, clock=clock)
    fresh = book.issue(FP_A)
    clock.now += 29.0
    assert book.take(FP_A, fresh) is True
    stale = book.issue(FP_A)
    clock.now += 30.0  # exactly the ttl: too old
    assert book.take(FP_A, stale) is False


def test_issuing_again_replaces_the_challenge():
    book = ChallengeBook()
    first = book.issue(FP_A)
    second = book.issue(FP_A)
    assert first != second
    assert len(book) == 1
    assert book.take(FP_A, first) is False
    book_again = ChallengeBook()
    book_again.issue(FP_A)
    latest = book_again.issue(FP_A)
    assert book_again.take(FP_A, latest) is True


def test_outstanding_challenges_are_bounded_oldest_dropped():
    book = ChallengeBook(max_outstanding=3)
    fingerprints = [bytes([i]) * 32 for i in range(5)]
    challenges = [book.issue(fp) for fp in fingerprints]
    assert len(book) == 3
    assert book.take(fingerprints[0], challenges[0]) is False
    assert book.take(fingerprints[1], challenges[1]) is False
    assert all(book.take(fp, c) for fp, c in zip(fingerprints[2:], challenges[2:], strict=True))


def test_expired_challenges_are_dropped_when_issuing():
    clock = Clock()
    book = ChallengeBook(ttl=10.0, clock=clock)
    book.issue(FP_A)
    clock.now += 10.0
    book.issue(FP_B)
    assert len(book) == 1


def test_a_fingerprint_must_be_a_sha256():
    with pytest.raises(ValueError, match="cert_fingerprint: expected 32 bytes"):
        ChallengeBook().issue(b"\xaa" * 20)


# ---- the audit log ----

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_records_are_json_lines_with_time_and_hex_bytes(tmp_path):
    path = tmp_path / "logs" / "fed" / "audit.jsonl"
    with AuditLog(path) as log:
        written = log.record("join", participant="alpha", cert=b"\x01\xff", nested={"ids": [b"\x02", 3]})
        log.record("leave", participant="alpha")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == written
    assert RFC3339_MS_UTC.fullmatch(first["time"])
    assert first == {"time": first["time"], "event": "join", "participant": "alpha", "cert": "01ff",
                     "nested": {"ids": ["02", 3]}}
    assert read_audit(path) == [first, json.loads(lines[1])]


def test_each_record_is_on_disk_before_record_returns(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    lines_at_fsync = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        real_fsync(fd)
        lines_at_fsync.append(path.read_bytes().count(b"\n"))

    monkeypatch.setattr(audit.os, "fsync", counting_fsync)
    with AuditLog(path) as log:
        for i in range(3):
            log.record("step", i=i)
            assert lines_at_fsync == list(range(1, i + 2))


@pytest.mark.parametrize("fields", [{"key": object()}, {"ratio": float("nan")}, {"time": "now"},
                                    {"nested": [1, {2, 3}]}])
def test_a_field_that_is_not_json_writes_nothing(tmp_path, fields):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record("start")
        size = path.stat().st_size
        with pytest.raises(TypeError):
            log.record("bad", **fields)
    assert path.stat().st_size == size


def test_a_closed_log_refuses_records(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="is closed"):
        log.record("late")


def test_the_log_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record("first")
    with AuditLog(path) as log:
        log.record("second")
    assert [r["event"] for r in read_audit(path)] == ["first", "second"]


def test_concurrent_writers_write_whole_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    threads_count, per_thread = 8, 25
    padding = "x" * 2000  # long lines, so that interleaved writes would show

    with AuditLog(path) as log:
        def write(thread: int) -> None:
            for i in range(per_thread):
                log.record("step", thread=thread, i=i, padding=padding)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = read_audit(path, tolerate_torn_tail=False)
    assert len(records) == threads_count * per_thread
    assert sorted((r["thread"], r["i"]) for r in records) == [(t, i) for t in range(threads_count)
                                                               for i in range(per_thread)]


def test_a_torn_last_line_is_skipped_or_reported(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record("a")
        log.record("b")
    with open(path, "ab") as f:
        f.write(b'{"time": "2025-01-01T00:00:00.000Z", "ev')  # a crash mid-write
    assert [r["event"] for r in read_audit(path)] == ["a", "b"]
    with pytest.raises(ValueError, match="line 3 is torn"):
        read_audit(path, tolerate_torn_tail=False)


@pytest.mark.parametrize("damage", [b'{"event": "c\n{"event": "d"}\n', b'{"event": "c\n', b"[1, 2]\n", b"\n"],
                         ids=["torn-middle", "torn-with-newline", "not-an-object", "empty-line"])
def test_a_damaged_line_is_an_error_naming_it(tmp_path, damage):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record("a")
        log.record("b")
    with open(path, "ab") as f:
        f.write(damage)
    with pytest.raises(ValueError, match=f"audit log {re.escape(str(path))}: line 3 is not a JSON object"):
        read_audit(path)

"""The join proof: a participant's key signs a statement that binds it to one attested connection.

The statement names the participant, the role it joins in, the federation and the plan's digest, the SHA-256 of
the RA-TLS certificate of the connection the joiner speaks on, and a fresh challenge from the PS. Its encoding
(JoinStatement.encode) is a domain-separation tag followed by each field with a 16-bit length prefix, so no two
different statements encode alike and no signature made for another purpose verifies as a join proof.

Keys are Ed25519 (the default) or ECDSA on P-256 (signed with SHA-256) or P-384 (SHA-384); signatures are raw
for Ed25519 and DER for ECDSA, as `cryptography` produces them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

if TYPE_CHECKING:
    from runtime.federation.plan import Participant

JOIN_DOMAIN = b"runtime-federation-join-v1\0"
SUPPORTED_KEY_TYPES = "Ed25519, EC P-256 or EC P-384"
MAX_SIGNATURE_BYTES = 512  # well above any supported signature (a P-384 DER signature is at most 104 bytes)
MAX_KEY_FILE_BYTES = 64 * 1024
_ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
_BYTES32_FIELDS = ("plan_digest", "cert_fingerprint", "challenge")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class ProofError(ValueError):
    """A join proof (or a participant key) that cannot be used. `reason` is a stable word: "bad_signature" (not
    the participant's signature over this statement), "wrong_key_type" (not Ed25519, EC P-256 or EC P-384),
    "malformed" (a field or signature of the wrong shape), "unreadable" (a key file that cannot be read)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _describe_key(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    key_size = getattr(key, "key_size", None)
    return type(key).__name__ if key_size is None else f"{type(key).__name__} ({key_size} bits)"


def signature_algorithm(key: object) -> ec.ECDSA | None:
    """How `key` (public or private) signs: the ECDSA algorithm for an EC P-256/P-384 key, None for Ed25519.
    Any other key is a ProofError("wrong_key_type") naming what it is."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and key.curve.name in _ECDSA_HASHES:
        return ec.ECDSA(_ECDSA_HASHES[key.curve.name]())
    raise ProofError("wrong_key_type", f"expected an {SUPPORTED_KEY_TYPES} key, found {_describe_key(key)}")


def spki_der(public_key: PublicKey) -> bytes:
    """The key's SubjectPublicKeyInfo (DER): one form per key, whatever file or PEM layout it came in."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class JoinStatement:
    """What a joiner signs. Encoded (see encode) in field order: participant, role, federation, plan_digest,
    cert_fingerprint, challenge. The text fields are 1..65535 bytes of UTF-8; the other three 32 bytes each."""

    participant: str
    role: str
    federation: str
    plan_digest: bytes
    cert_fingerprint: bytes
    challenge: bytes

    def __post_init__(self) -> None:
        for name in ("participant", "role", "federation"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ProofError("malformed", f"{name}: expected a string, found {type(value).__name__}")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise ProofError("malformed", f"{name}: not encodable as UTF-8") from None
            if not 0 < size <= 0xFFFF:
                raise ProofError("malformed", f"{name}: expected 1..65535 bytes of UTF-8, found {size}")
        for name in _BYTES32_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                found = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
                raise ProofError("malformed", f"{name}: expected 32 bytes, found {found}")

    def encode(self) -> bytes:
        """JOIN_DOMAIN, then for each field in order a u16 big-endian length and the field's bytes."""
        fields = (self.participant.encode("utf-8"), self.role.encode("utf-8"), self.federation.encode("utf-8"),
                  self.plan_digest, self.cert_fingerprint, self.challenge)
        return JOIN_DOMAIN + b"".join(len(field).to_bytes(2, "big") + field for field in fields)


class ParticipantKey:
    """A participant's private key: Ed25519 (what generate makes) or EC P-256/P-384."""

    def __init__(self, private_key: PrivateKey) -> None:
        self._algorithm = signature_algorithm(private_key)
        self._private_key = private_key
        self.public_key: PublicKey = private_key.public_key()
        self.spki_sha256 = hashlib.sha256(spki_der(self.public_key)).digest()

    def __repr__(self) -> str:
        return f"ParticipantKey({_describe_key(self.public_key)}, spki_sha256={self.spki_sha256.hex()[:16]}…)"

    @classmethod
    def generate(cls) -> ParticipantKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ParticipantKey:
        """An unencrypted PKCS8 PEM private key file. ProofError: "unreadable" (missing, no permission, too
        large), "malformed" (not such a key), "wrong_key_type" (a key of an unsupported kind)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as e:
            raise ProofError("unreadable", f"participant key {path}: cannot read: {e.strerror}") from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ProofError("unreadable", f"participant key {path}: larger than {MAX_KEY_FILE_BYTES} bytes, "
                                           "not a key file")
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except TypeError:  # what cryptography raises for an encrypted key without a password
            raise ProofError("malformed", f"participant key {path}: encrypted; give an unencrypted PKCS8 PEM "
                                          "key") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ProofError("malformed", f"participant key {path}: not a PEM private key") from None
        try:
            return cls(private_key)
        except ProofError as e:
            raise ProofError(e.reason, f"participant key {path}: {e.detail}") from None

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, statement: JoinStatement) -> bytes:
        data = statement.encode()
        if self._algorithm is None:
            return self._private_key.sign(data)  # Ed25519: the hash is part of the scheme
        return self._private_key.sign(data, self._algorithm)

    def write(self, path: str | os.PathLike) -> None:
        """Write the key as unencrypted PKCS8 PEM, mode 0600, atomically (a temporary file renamed over path)."""
        path = Path(path)
        pem = self._private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # exactly 0600, whatever the umask
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def verify(participant: Participant, statement: JoinStatement, signature: bytes) -> None:
    """Return if `signature` is `participant`'s signature over statement.encode(); raise ProofError otherwise:
    "malformed" (a signature that is not bytes or over MAX_SIGNATURE_BYTES, or a statement naming someone else),
    "wrong_key_type", "bad_signature"."""
    if not isinstance(signature, bytes) or len(signature) > MAX_SIGNATURE_BYTES:
        found = f"{len(signature)} bytes" if isinstance(signature, bytes) else type(signature).__name__
        raise ProofError("malformed", f"signature: expected at most {MAX_SIGNATURE_BYTES} bytes, found {found}")
    if statement.participant != participant.name:
        # Otherwise a caller that looked up the wrong participant would bind the connection to a name the key's
        # owner never claimed.
        raise ProofError("malformed", f"the statement names participant {statement.participant!r}, the key "
                                      f"belongs to {participant.name!r}")
    algorithm = signature_algorithm(participant.public_key)
    try:
        if algorithm is None:
            participant.public_key.verify(signature, statement.encode())
        else:
            participant.public_key.verify(signature, statement.encode(), algorithm)
    except InvalidSignature:
        raise ProofError("bad_signature", f"not the signature of participant {participant.name!r} over this "
                                          "join statement") from None

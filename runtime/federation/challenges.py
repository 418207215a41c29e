"""Fresh challenges for join proofs: one outstanding per connection certificate, single use, short-lived.

A challenge makes a join proof fresh: a proof signed for an earlier challenge (a replay, or a proof copied from
another connection) names a challenge that is no longer outstanding for this certificate, so it fails.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

CHALLENGE_BYTES = 32
FINGERPRINT_BYTES = 32


class ChallengeBook:
    """Outstanding challenges by certificate fingerprint (the SHA-256 of a connection's RA-TLS certificate).

    issue() gives a fingerprint a new challenge, replacing any it had. take() answers whether a presented
    challenge is the one outstanding for that fingerprint and not older than `ttl` seconds, and removes the
    outstanding challenge whatever the answer: each challenge allows one attempt. At most `max_outstanding`
    challenges are kept; issuing beyond that drops the oldest, so a flood of certificates costs bounded memory.
    Thread-safe.
    """

    def __init__(self, ttl: float = 30.0, max_outstanding: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl: expected a positive number of seconds, found {ttl!r}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding: expected at least 1, found {max_outstanding!r}")
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is issue order (a reissue moves to the end), so the oldest and the expired are first.
        self._outstanding: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def issue(self, cert_fingerprint: bytes) -> bytes:
        if not isinstance(cert_fingerprint, bytes) or len(cert_fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"cert_fingerprint: expected {FINGERPRINT_BYTES} bytes, found {cert_fingerprint!r}")
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        with self._lock:
            now = self._clock()
            self._outstanding.pop(cert_fingerprint, None)
            self._outstanding[cert_fingerprint] = (challenge, now)
            while self._outstanding:
                _, (_, issued_at) = next(iter(self._outstanding.items()))
                if len(self._outstanding) <= self.max_outstanding and now - issued_at < self.ttl:
                    break
                self._outstanding.popitem(last=False)
        return challenge

    def take(self, cert_fingerprint: bytes, challenge: bytes) -> bool:
        with self._lock:
            entry = self._outstanding.pop(cert_fingerprint, None)
            now = self._clock()
        if entry is None:
            return False
        expected, issued_at = entry
        return now - issued_at < self.ttl and hmac.compare_digest(expected, challenge)

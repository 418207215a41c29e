"""Collateral sources: where the TCB status of a quote comes from (ARCHITECTURE.md §3, "Collateral in every
attestation").

Intel's collateral for a platform (TCB Info, QE Identity, the PCK and root CA CRLs, and their issuer chains)
depends only on the TEE (SGX or TDX: each has its own TCB Info and QE Identity), the platform's FMSPC and which PCK
CA issued its certificate, so every source keys it by (TEE, FMSPC, CA) and evaluates a quote against it with
dcap-qvl (Intel's QVL rules, with our root: Intel's, or the simulation root for sim quotes, which therefore go
through the very same evaluation).

- `FileCollateral(path)`: dcap-qvl QuoteCollateralV3 JSON files, for offline use.
- `PCCS(url, cache_dir=...)`: a PCCS (or anything serving the PCS v4 API), with a cache.

Every source keeps collateral until its nextUpdate (the earliest of the TCB Info's, the QE Identity's and the
CRLs'), fetches one key at a time however many handshakes wait for it, and serves collateral past its
nextUpdate only within `stale_grace` seconds (default 0) and only while fetching fails. Collateral enters the
cache only after it evaluated a quote, so malformed, truncated or wrongly signed collateral never does.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import functools
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ratls._native import ffi, lib
from ratls.errors import CollateralValidityError, Reason, VerificationError, check_call
from ratls.evidence import inspect_certificate, parse_quote
from ratls.policy import TCB_STATUSES, Policy

log = logging.getLogger("ratls.collateral")

PCCS_API = "/sgx/certification/v4"
"""Where the PCK CRL and the root CA CRL are, for either TEE, and SGX's TCB Info and QE Identity."""
PCCS_TDX_API = "/tdx/certification/v4"
"""Where TDX's TCB Info and (TD) QE Identity are."""
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
"""Intel's largest collateral item (a TCB Info) is about 10 KB and its CRLs under 1 KB; 1 MiB leaves room."""
_REVOKED = "TCB status is invalid: Revoked"
_MAX_PLATFORMS = 4096


@dataclasses.dataclass(frozen=True)
class TcbEvaluation:
    """The TCB status of one quote under one collateral."""

    status: str
    advisory_ids: tuple[str, ...]
    next_update: float
    """When the collateral it came from expires (Unix time)."""


@dataclasses.dataclass(frozen=True)
class CollateralKey:
    """What a platform's collateral depends on: its FMSPC, the CA ("processor" or "platform") of its PCK, and the
    TEE ("sgx" or "tdx") whose TCB Info and QE Identity it needs."""

    fmspc: str
    ca: str
    tee: str = "sgx"

    @classmethod
    def of_quote(cls, quote: bytes) -> CollateralKey:
        try:
            fmspc = dcap_qvl.parse_quote(quote).fmspc().upper()
            parsed = parse_quote(quote)
            chain = parsed.pck_chain_pem
            issuer = x509.load_pem_x509_certificate(chain[0]).issuer.rfc4514_string() if chain else ""
        except (ValueError, TypeError, VerificationError) as e:
            raise VerificationError(Reason.COLLATERAL, f"cannot tell which collateral the quote needs (its PCK "
                                    f"certificate's FMSPC and CA): {e}") from None
        return cls(fmspc=fmspc, ca=_ca_of(issuer), tee=parsed.tee)

    def __str__(self) -> str:
        return f"FMSPC {self.fmspc} ({self.ca} CA)" + (", TDX" if self.tee == "tdx" else "")


def _ca_of(issuer: str) -> str:
    """Which PCK CA issued a PCK certificate (or a PCK CRL), by its name, as Intel's PCS names them."""
    return "platform" if "PCK Platform CA" in issuer else "processor"


@functools.cache
def _intel_root_der() -> bytes:
    pem = ffi.string(lib.ratls_intel_root_ca_pem())
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def chain_root(quote: bytes) -> bytes:
    """The DER of the last certificate of the quote's PCK chain (the native verification checked the chain)."""
    chain = parse_quote(quote).pck_chain_pem
    if not chain:
        raise VerificationError(Reason.COLLATERAL, "the quote carries no PCK certificate chain (certification "
                                "data type 5), which collateral evaluation needs")
    return x509.load_pem_x509_certificate(chain[-1]).public_bytes(Encoding.DER)


def _policy_root(chain_root_der: bytes, policy: Policy) -> bytes:
    """The policy's root that a PCK chain ends in (the native verification chose it), else PCK_CHAIN_UNTRUSTED."""
    if chain_root_der not in (policy.trusted_root_der or _intel_root_der(), policy.sim_root_der):
        raise VerificationError(Reason.PCK_CHAIN_UNTRUSTED, "the quote's PCK chain does not end in a root of the "
                                "policy")
    return chain_root_der


def _iso_time(text: str, what: str) -> float:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        raise VerificationError(Reason.COLLATERAL, f"{what} is not an ISO 8601 time: {text!r}") from None


@dataclasses.dataclass(frozen=True)
class _Entry:
    collateral: Any  # dcap_qvl.QuoteCollateralV3
    text: str  # its JSON, as cached on disk
    next_update: float
    fetched_at: float = 0.0

    @classmethod
    def from_json(cls, text: str, origin: str) -> _Entry:
        try:
            coll = dcap_qvl.QuoteCollateralV3.from_json(text)
            tcb_info = json.loads(coll.tcb_info)
            qe_identity = json.loads(coll.qe_identity)
            crls = [x509.load_der_x509_crl(bytes(c)) for c in (coll.pck_crl, coll.root_ca_crl)]
        except (ValueError, TypeError, AttributeError) as e:
            raise VerificationError(Reason.COLLATERAL, f"{origin}: not a QuoteCollateralV3: {e}") from None
        if not isinstance(tcb_info, dict) or not isinstance(qe_identity, dict):
            raise VerificationError(Reason.COLLATERAL, f"{origin}: TCB Info and QE Identity must be JSON objects")
        updates = [_iso_time(tcb_info.get("nextUpdate"), f"{origin}: TCB Info nextUpdate"),
                   _iso_time(qe_identity.get("nextUpdate"), f"{origin}: QE Identity nextUpdate")]
        updates += [c.next_update_utc.timestamp() for c in crls if c.next_update_utc is not None]
        return cls(coll, text, min(updates))

    def key(self, origin: str) -> CollateralKey:
        tcb_info = json.loads(self.collateral.tcb_info)
        ca = _ca_of(x509.load_der_x509_crl(bytes(self.collateral.pck_crl)).issuer.rfc4514_string())
        fmspc = tcb_info.get("fmspc")
        if not isinstance(fmspc, str):
            raise VerificationError(Reason.COLLATERAL, f"{origin}: its TCB Info names no FMSPC")
        # Intel's TCB Info v3 names its TEE ("SGX" or "TDX"); v2 (SGX only) has no id.
        return CollateralKey(fmspc=fmspc.upper(), ca=ca, tee="tdx" if tcb_info.get("id") == "TDX" else "sgx")

    def valid_from(self) -> float | None:
        """The latest issue date of the TCB Info, the QE Identity and the CRLs (None if one has none): dcap-qvl
        refuses collateral before it, as after next_update."""
        try:
            issued = [_iso_time(json.loads(doc).get("issueDate"), "issueDate")
                      for doc in (self.collateral.tcb_info, self.collateral.qe_identity)]
        except VerificationError:
            return None
        crls = [x509.load_der_x509_crl(bytes(c)) for c in (self.collateral.pck_crl, self.collateral.root_ca_crl)]
        return max(issued + [c.last_update_utc.timestamp() for c in crls])


def _evaluate(quote: bytes, entry: _Entry, root_der: bytes, now: int) -> TcbEvaluation:
    try:
        report = dcap_qvl.verify_with_root_ca(quote, entry.collateral, root_der, now)
    except ValueError as e:
        if _REVOKED in str(e):  # dcap-qvl reports Revoked as an error; for a policy it is a status
            return TcbEvaluation("Revoked", (), entry.next_update)
        refused = f"dcap-qvl refused the collateral or the quote: {e}"
        # Its own words for expiry vary by item (a CRL, the TCB Info...); the validity window says it for all, and
        # lets a caller name a time at which this collateral was valid.
        valid_from = entry.valid_from()
        if valid_from is not None and not valid_from <= now <= entry.next_update:
            when = (f"expired at {_utc(entry.next_update)}, before the verification time {_utc(now)} (it was "
                    f"issued at {_utc(valid_from)})" if now > entry.next_update else
                    f"was issued at {_utc(valid_from)}, after the verification time {_utc(now)} (it expires at "
                    f"{_utc(entry.next_update)})")
            raise CollateralValidityError(f"the collateral {when}; {refused}", at=now, valid_from=valid_from,
                                          valid_until=entry.next_update) from None
        raise VerificationError(Reason.COLLATERAL, refused) from None
    if report.status not in TCB_STATUSES:
        raise VerificationError(Reason.COLLATERAL, f"collateral evaluation gave an unknown TCB status "
                                f"{report.status!r}")
    return TcbEvaluation(report.status, tuple(report.advisory_ids), entry.next_update)


def evaluate(quote: bytes, policy: Policy, collateral: Any, now: int) -> TcbEvaluation:
    """The TCB status of a quote (its signature chain already verified under `policy`) from `collateral`: a
    CollateralSource, a PCCS URL, or one dcap-qvl QuoteCollateralV3 (the object, its JSON text, or a path to
    it)."""
    if isinstance(collateral, CollateralSource):
        return collateral.evaluate_quote(quote, policy, now=now)
    if isinstance(collateral, str) and collateral.startswith(("http://", "https://")):
        return PCCS(collateral).evaluate_quote(quote, policy, now=now)
    if isinstance(collateral, str | os.PathLike) and not str(collateral).lstrip().startswith("{"):
        try:
            with open(collateral, "rb") as f:
                collateral = f.read(DEFAULT_MAX_RESPONSE_BYTES * 4).decode("utf-8", "replace")
        except OSError as e:
            raise VerificationError(Reason.COLLATERAL, f"cannot read collateral file {collateral}: {e.strerror}") \
                from None
    if isinstance(collateral, bytes):
        collateral = collateral.decode("utf-8", "replace")
    if isinstance(collateral, dcap_qvl.QuoteCollateralV3):
        collateral = collateral.to_json()
    if not isinstance(collateral, str):
        raise TypeError(f"collateral: expected a CollateralSource, a PCCS URL or QuoteCollateralV3 JSON, got "
                        f"{type(collateral).__name__}")
    quote = bytes(quote)
    return _evaluate(quote, _Entry.from_json(collateral, "collateral"), _policy_root(chain_root(quote), policy), now)


class CollateralSource(abc.ABC):
    """Gives the TCB status of quotes. Thread-safe: handshakes call it concurrently.

    stale_grace: seconds past nextUpdate that cached collateral is still used while fetching fails (default 0:
    refuse). max_age: seconds after which cached collateral is fetched again even though it is still valid, so a
    revocation reaches running processes before nextUpdate (a failed refresh keeps the valid entry); default None
    (at nextUpdate). clock: the time source (tests)."""

    def __init__(self, *, stale_grace: float = 0.0, max_age: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if stale_grace < 0:
            raise ValueError("stale_grace must be >= 0 seconds")
        if max_age is not None and max_age <= 0:
            raise ValueError("max_age must be > 0 seconds (or None: until nextUpdate)")
        self.stale_grace = float(stale_grace)
        self.max_age = None if max_age is None else float(max_age)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[CollateralKey, _Entry] = {}
        self._key_locks: dict[CollateralKey, threading.Lock] = {}
        self._platforms: dict[bytes, tuple[CollateralKey, bytes]] = {}
        self._results: dict[tuple[bytes, bytes], tuple[_Entry, TcbEvaluation]] = {}
        self.fetches = 0
        """Fetches started (successful or not), for monitoring."""

    def evaluate_quote(self, quote: bytes, policy: Policy, *, now: int | None = None) -> TcbEvaluation:
        """The TCB status of a quote whose signature chain already verified under `policy`. Raises
        VerificationError(COLLATERAL) when no usable collateral can be had."""
        quote = bytes(quote)
        t = int(self._clock()) if now is None else int(now)
        platform, key, root = self._platform(quote, policy)
        entry = self._usable(key, t)
        if entry is not None:
            return self._evaluate_once(platform, quote, entry, root, t)
        with self._key_lock(key):  # one fetch per key: the others wait here and then find it cached
            entry = self._usable(key, t)
            if entry is not None:
                return self._evaluate_once(platform, quote, entry, root, t)
            stale = self._cached(key)
            try:
                fresh = self._fetch(key)
                if now is None:  # the fetch took time, and what it got may have been issued meanwhile
                    t = max(t, int(self._clock()))
                result = _evaluate(quote, fresh, root, t)
            except VerificationError as e:
                if stale is not None and t <= stale.next_update + self.stale_grace:
                    expired = t - stale.next_update
                    log.warning("%s: %s; using the cached collateral (%s)", key, e.message,
                                f"expired {expired:.0f} s ago, within the grace of {self.stale_grace:g} s"
                                if expired > 0 else f"valid until {_utc(stale.next_update)}")
                    return _evaluate(quote, stale, root, t)
                if stale is not None:
                    raise VerificationError(e.reason, f"{e.message}; the cached collateral for {key} expired at "
                                            f"{_utc(stale.next_update)}" + (f", beyond the grace of "
                                            f"{self.stale_grace:g} s" if self.stale_grace else "")) from None
                raise
            self._store(key, dataclasses.replace(fresh, fetched_at=t))
            return result

    def _platform(self, quote: bytes, policy: Policy) -> tuple[bytes, CollateralKey, bytes]:
        """(platform id, collateral key, root) of a quote. Everything from the QE report on (QE report, its
        signature, QE auth data, PCK chain) is the same for every quote of one platform and quoting enclave, so
        its hash identifies what the TCB status depends on besides the collateral, and parsing is done once."""
        parsed = ffi.new("ratls_quote *")
        check_call(lib.ratls_quote_parse, quote, len(quote), parsed)
        platform = hashlib.sha256(quote[parsed.qe_report_raw.off:]).digest()
        with self._lock:
            known = self._platforms.get(platform)
        if known is None:
            known = (CollateralKey.of_quote(quote), chain_root(quote))
            with self._lock:
                if len(self._platforms) >= _MAX_PLATFORMS:
                    self._platforms.clear()
                    self._results.clear()
                self._platforms[platform] = known
        key, root = known
        return platform, key, _policy_root(root, policy)

    def _evaluate_once(self, platform: bytes, quote: bytes, entry: _Entry, root: bytes, t: int) -> TcbEvaluation:
        """dcap-qvl's evaluation, once per platform, root and collateral entry: the status cannot change while
        they stay the same and the entry is valid (the caller checked), and the rest of what dcap-qvl checks (the
        quote's signatures, the PCK chain) the native verification has checked for every quote."""
        with self._lock:
            memo = self._results.get((platform, root))
        if memo is not None and memo[0] is entry:
            return memo[1]
        result = _evaluate(quote, entry, root, t)
        with self._lock:
            self._results[(platform, root)] = (entry, result)
        return result

    def _usable(self, key: CollateralKey, t: int) -> _Entry | None:
        """The cached entry if it is valid at t and not due for a refresh."""
        entry = self._cached(key)
        if entry is None or t > entry.next_update:
            return None
        if self.max_age is not None and t - entry.fetched_at > self.max_age:
            return None
        return entry

    def clear(self) -> None:
        """Forgets the collateral cached in memory (not on disk): the next evaluation of each platform fetches."""
        with self._lock:
            self._entries.clear()
            self._results.clear()

    def evaluate_certificate(self, cert_der: bytes, policy: Policy, *, now: int | None = None) -> TcbEvaluation:
        return self.evaluate_quote(inspect_certificate(cert_der).quote, policy, now=now)

    def _key_lock(self, key: CollateralKey) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _cached(self, key: CollateralKey) -> _Entry | None:
        with self._lock:
            return self._entries.get(key)

    def _store(self, key: CollateralKey, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry

    @abc.abstractmethod
    def _fetch(self, key: CollateralKey) -> _Entry:
        """The current collateral for `key`, or VerificationError(COLLATERAL) saying why there is none."""


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


class FileCollateral(CollateralSource):
    """Collateral from dcap-qvl QuoteCollateralV3 JSON: one file, or a directory of *.json files (one per
    platform). Files are read when first needed and again when what was read has expired, so a directory kept
    up to date by another process (e.g. a PCCS mirror job) is followed."""

    def __init__(self, path: str | os.PathLike, *, stale_grace: float = 0.0, max_age: float | None = None,
                 max_file_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, clock: Callable[[], float] = time.time) -> None:
        super().__init__(stale_grace=stale_grace, max_age=max_age, clock=clock)
        self.path = Path(path)
        self.max_file_bytes = max_file_bytes
        if not self.path.exists():
            raise FileNotFoundError(f"collateral path {self.path} does not exist")

    def _files(self) -> list[Path]:
        return sorted(self.path.glob("*.json")) if self.path.is_dir() else [self.path]

    def _fetch(self, key: CollateralKey) -> _Entry:
        self.fetches += 1
        problems = []
        for f in self._files():
            try:
                with open(f, "rb") as fh:
                    data = fh.read(self.max_file_bytes + 1)
                if len(data) > self.max_file_bytes:
                    raise VerificationError(Reason.COLLATERAL, f"{f}: larger than {self.max_file_bytes} bytes")
                entry = _Entry.from_json(data.decode("utf-8", "replace"), str(f))
                if entry.key(str(f)) == key:
                    return entry
            except OSError as e:
                problems.append(f"{f}: {e.strerror}")
            except VerificationError as e:
                problems.append(e.message)
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise VerificationError(Reason.COLLATERAL, f"no collateral for {key} in {self.path}{detail}")


class PCCS(CollateralSource):
    """Collateral from a PCCS, or any server of Intel's PCS v4 API (`url` is its base, e.g.
    "https://pccs.example:8081"), with a cache kept in memory and, given `cache_dir`, on disk (one JSON file per
    platform, read back at start so a restarted process works while the PCCS is down).

    Our own client rather than dcap-qvl's fetcher: a handshake needs a bounded time (`timeout`, for the whole
    fetch of all four items), a bounded response size (`max_response_bytes`), and an error that says which item
    failed and how; dcap-qvl's fetcher has a fixed 180 s timeout and no size limit. TLS to the PCCS is verified
    against the system's CAs, or `cafile` (a PCCS usually has its own certificate)."""

    def __init__(self, url: str, *, cache_dir: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, stale_grace: float = 0.0,
                 max_age: float | None = None, cafile: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(stale_grace=stale_grace, max_age=max_age, clock=clock)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"PCCS url must be http(s)://host[:port][/path], not {url!r}")
        self.url = url.rstrip("/").removesuffix(PCCS_API)
        if timeout <= 0 or max_response_bytes <= 0:
            raise ValueError("timeout and max_response_bytes must be positive")
        self.timeout = float(timeout)
        self.max_response_bytes = int(max_response_bytes)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._context = None
        if parsed.scheme == "https":
            import ssl
            self._context = ssl.create_default_context(cafile=os.fspath(cafile) if cafile else None)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._load_disk_cache()

    def __repr__(self) -> str:
        return f"PCCS({self.url!r}, cache_dir={str(self.cache_dir) if self.cache_dir else None!r})"

    # -- disk cache: signed data, so a file is only a hint; it is evaluated like fresh collateral before use.
    def _cache_file(self, key: CollateralKey) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{key.fmspc}-{key.ca}{'-tdx' if key.tee == 'tdx' else ''}.json"

    def _load_disk_cache(self) -> None:
        assert self.cache_dir is not None
        for f in sorted(self.cache_dir.glob("*.json")):
            try:
                with open(f, "rb") as fh:
                    text = fh.read(self.max_response_bytes * 4).decode("utf-8")
                entry = _Entry.from_json(text, str(f))
                self._entries[entry.key(str(f))] = dataclasses.replace(entry, fetched_at=f.stat().st_mtime)
            except (OSError, UnicodeDecodeError, VerificationError) as e:
                log.warning("ignoring unusable cached collateral %s: %s", f, e)

    def _store(self, key: CollateralKey, entry: _Entry) -> None:
        super()._store(key, entry)
        if self.cache_dir is None:
            return
        path = self._cache_file(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(entry.text)
            os.replace(tmp, path)
        except OSError as e:  # the cache in memory still holds it; a lost disk copy only costs a fetch later
            log.warning("cannot write collateral cache %s: %s", path, e)
            tmp.unlink(missing_ok=True)

    # -- fetching
    def _get(self, what: str, path: str, deadline: float, api: str = PCCS_API) -> tuple[bytes, http.client.HTTPMessage]:
        url = f"{self.url}{api}/{path}"
        left = deadline - time.monotonic()
        if left <= 0:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: timed out after {self.timeout:g} s "
                                    f"before fetching the {what}")
        try:
            with urllib.request.urlopen(url, timeout=left, context=self._context) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_response_bytes:
                    raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what} is {length} bytes, "
                                            f"more than the limit of {self.max_response_bytes}")
                body = bytearray()
                while len(body) <= self.max_response_bytes:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    body += chunk
                if len(body) > self.max_response_bytes:
                    raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what} is larger than the "
                                            f"limit of {self.max_response_bytes} bytes")
                if length is not None and length.isdigit() and len(body) != int(length):
                    raise http.client.IncompleteRead(bytes(body), int(length) - len(body))
                return bytes(body), resp.headers
        except urllib.error.HTTPError as e:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: HTTP {e.code} for the {what} "
                                    f"({url})") from None
        except http.client.IncompleteRead as e:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what} is truncated ({len(e.partial)} "
                                    f"bytes received, {e.expected} more announced)") from None
        except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: timed out after {self.timeout:g} s "
                                        f"fetching the {what}") from None
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url} is unreachable (fetching the {what}): "
                                    f"{reason}") from None

    @staticmethod
    def _header(headers: http.client.HTTPMessage, names: tuple[str, ...], what: str, url: str) -> str:
        for name in names:
            value = headers.get(name)
            if value:
                return urllib.parse.unquote(value)
        raise VerificationError(Reason.COLLATERAL, f"PCCS {url}: the {what} came without its {names[0]} header")

    def _signed_json(self, body: bytes, field: str, what: str) -> tuple[str, bytes]:
        """The exact text of `field`'s value (what Intel signs) and the signature, from a PCS JSON body."""
        try:
            text = body.decode("utf-8")
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError) as e:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what} is not JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get(field), dict) or not isinstance(doc.get("signature"),
                                                                                              str):
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what} lacks {field!r} or "
                                    "'signature'")
        try:
            signature = bytes.fromhex(doc["signature"])
        except ValueError:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: the {what}'s signature is not hex") \
                from None
        return _raw_member(text, field), signature

    def _fetch(self, key: CollateralKey) -> _Entry:
        self.fetches += 1
        deadline = time.monotonic() + self.timeout
        crl, crl_headers = self._get("PCK CRL", f"pckcrl?ca={key.ca}&encoding=der", deadline)
        api = PCCS_TDX_API if key.tee == "tdx" else PCCS_API
        tcb, tcb_headers = self._get("TCB Info", f"tcb?fmspc={key.fmspc}", deadline, api)
        qe, qe_headers = self._get("QE Identity", "qe/identity?update=standard", deadline, api)
        root_crl, _ = self._get("root CA CRL", "rootcacrl", deadline)
        tcb_info, tcb_sig = self._signed_json(tcb, "tcbInfo", "TCB Info")
        qe_identity, qe_sig = self._signed_json(qe, "enclaveIdentity", "QE Identity")
        try:  # a PCCS serves the root CA CRL as hex text; Intel's CRL distribution point serves DER
            root_crl = bytes.fromhex(root_crl.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
        doc = {
            "pck_crl_issuer_chain": self._header(crl_headers, ("SGX-PCK-CRL-Issuer-Chain",), "PCK CRL", self.url),
            "root_ca_crl": root_crl.hex(),
            "pck_crl": crl.hex(),
            "tcb_info_issuer_chain": self._header(tcb_headers, ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
                                                  "TCB Info", self.url),
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_sig.hex(),
            "qe_identity_issuer_chain": self._header(qe_headers, ("SGX-Enclave-Identity-Issuer-Chain",),
                                                     "QE Identity", self.url),
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_sig.hex(),
        }
        entry = _Entry.from_json(json.dumps(doc), f"PCCS {self.url}")
        if entry.key(f"PCCS {self.url}") != key:
            raise VerificationError(Reason.COLLATERAL, f"PCCS {self.url}: asked for {key}, got collateral for "
                                    f"{entry.key(self.url)}")
        return entry


def _raw_member(text: str, field: str) -> str:
    """The exact source text of a top-level member's value in a JSON object (signatures cover these bytes, so
    re-serialising would break them)."""
    decoder = json.JSONDecoder()
    i = text.index("{") + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        name, i = decoder.raw_decode(text, i)
        while text[i] in " \t\r\n":
            i += 1
        i += 1  # the colon
        while text[i] in " \t\r\n":
            i += 1
        _, end = decoder.raw_decode(text, i)
        if name == field:
            return text[i:end]
        i = end
    raise ValueError(f"no member {field!r}")  # cannot happen: the caller checked json.loads(text)[field]


# ---------------------------------------------------------------------------------------------------- handshake


class TcbSource(Protocol):
    """What the handshake needs of a source: the TCB status of a certificate that passed every other check."""

    def evaluate_certificate(self, cert_der: bytes, policy: Policy) -> TcbEvaluation: ...


class GramineDcap:
    """TCB status from Gramine's libra_tls_verify_dcap.so (libra_tls_verify_dcap_gramine.so in an enclave):
    Intel's DCAP quote verification library, which takes collateral through Intel's quote provider library and
    the PCCS of /etc/sgx_default_qcnl.conf. The default inside an enclave; chosen explicitly, never as a
    fallback (a missing library is a ProviderError when this is made). Gramine's ABI gives no advisory ids and
    no collateral expiry, so its results are not cached."""

    def __init__(self, library_path: str | os.PathLike | None = None) -> None:
        from ratls.gramine import GramineVerifier

        self.verifier = GramineVerifier(library_path)

    def __repr__(self) -> str:
        return f"GramineDcap({self.verifier.library_path!r})"

    def evaluate_certificate(self, cert_der: bytes, policy: Policy) -> TcbEvaluation:
        return TcbEvaluation(self.verifier.tcb_status(cert_der, policy), (), float("inf"))


class HandshakeEvaluator:
    """A source and the policy whose roots it evaluates under, as the C attestation handshake calls it: from its
    certificate-verify callback, once the peer's certificate passed every other check and before the peer is
    queued for the trust set (server) or pinned (client). `native` is the ratls_tcb_evaluator to pass; keep this
    object alive while any handshake may use it."""

    def __init__(self, source: TcbSource, policy: Policy) -> None:
        if not callable(getattr(source, "evaluate_certificate", None)):
            raise TypeError("collateral must be a ratls.collateral source (PCCS, FileCollateral, GramineDcap)")
        self.source = source
        self.policy = policy
        self._handle = ffi.new_handle(self)
        self.native = ffi.new("ratls_tcb_evaluator *")
        self.native.evaluate = lib.ratls_py_tcb_evaluate
        self.native.ctx = self._handle


def _write_c_string(buf: Any, size: int, text: str) -> None:
    if size <= 0:
        return
    data = text.encode("utf-8", "replace")[: size - 1]
    ffi.memmove(buf, data + b"\0", len(data) + 1)


@ffi.def_extern(error=int(Reason.COLLATERAL))
def ratls_py_tcb_evaluate(ctx, cert_der, cert_len, _now, tcb_status, advisories, advisories_len, msg, msg_len):
    """The C handshake's TCB evaluator (ratls_tcb_evaluate_fn). Runs on a handshake thread; never raises."""
    try:
        hook: HandshakeEvaluator = ffi.from_handle(ctx)
        # The source's clock, not the handshake's: both are the wall clock outside tests.
        result = hook.source.evaluate_certificate(bytes(ffi.buffer(cert_der, cert_len)), hook.policy)
        tcb_status[0] = TCB_STATUSES.index(result.status)
        _write_c_string(advisories, advisories_len, ",".join(result.advisory_ids))
        return 0
    except VerificationError as e:
        _write_c_string(msg, msg_len, e.message)
        return int(e.reason)
    except Exception as e:  # a bug here must refuse the peer, never crash a handshake thread
        log.exception("collateral evaluation failed")
        _write_c_string(msg, msg_len, f"collateral evaluation raised {type(e).__name__}: {e}")
        return int(Reason.COLLATERAL)


def from_spec(spec: str, *, cache_dir: str | os.PathLike | None = None,
              timeout: float = DEFAULT_TIMEOUT_S) -> TcbSource:
    """A source from its command-line form: "gramine" (GramineDcap), a PCCS URL (http:// or https://, with
    `cache_dir` and `timeout`), or a path to QuoteCollateralV3 JSON (a file, or a directory of them)."""
    if spec == "gramine":
        return GramineDcap()
    if spec.startswith(("http://", "https://")):
        return PCCS(spec, cache_dir=cache_dir, timeout=timeout)
    if "://" in spec:
        raise ValueError(f"collateral source {spec!r}: expected an http(s):// PCCS URL or a path")
    return FileCollateral(spec)

"""The federation plan: who takes part, in which roles, with which keys; which enclaves each role must run; where
the parameter servers are. A plan is measured configuration: every party loads the same file, and a join proof
names its digest.

The file is TOML (.toml) or the same structure as JSON (.json), at most 1 MiB:

    [federation]
    name = "acme-ads"              # required; 1-64 characters [A-Za-z0-9._-]
    ca = "ca.crt.pem"              # optional: the federation CA certificate (PEM), for participants' certificates

    [[participants]]               # one or more
    name = "alpha"                 # runtime.protocol's worker-id rule; unique
    roles = ["worker"]             # non-empty, from ROLES, no duplicates
    public_key = "alpha.pub.pem"   # a PEM public key ...
    # certificate = "alpha.crt.pem"  ... or (exactly one of the two) a PEM certificate issued by `ca`, valid now

    [roles.worker]                 # one table per role that some participant takes
    mrenclave = "any"              # required: 64 hex digits, a list of them, or "any"
    mrsigner = ["<64 hex digits>"] # required, likewise
    min_isv_svn = 0                # optional, default 0
    allow_debug = false            # optional, default false (for SGX enclaves and TDX TDs alike)
    # mrtd = "any"                 # optional: the role also admits Intel TDX TDs with this MRTD (96 hex digits,
                                   # a list of them, or "any"); without it the role admits SGX enclaves only

    [ps]
    endpoints = ["ps0:7000", "ps1:7000/7100"]  # host:port or host:port/attestation_port, in shard order; []
                                               # when they are chosen at start (the launcher's local jobs)

Paths are relative to the plan's directory; a value containing "-----BEGIN" is the PEM text itself. Keys are
Ed25519, EC P-256 or EC P-384, and no two participants may share one (two names with one key would double a
weight). Unknown keys anywhere are errors.

The digest, reproducible by any implementation: SHA-256 over the ASCII bytes of
json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True), where to_dict() is

    {"version": 1,
     "federation": <name>,
     "participants": [{"name": <name>, "roles": [<roles, in ROLES order>],
                       "public_key": <lowercase hex of the key's SubjectPublicKeyInfo DER>}, ... sorted by name],
     "roles": {<role>: {"mrenclave": [<lowercase hex>, ... sorted] or "any", "mrsigner": likewise,
                        "min_isv_svn": <int>, "allow_debug": <bool>[, "mrtd": likewise, only when given]},
               ...},
     "ps_endpoints": [<each endpoint as runtime.transport.Endpoint prints it: host:port or
                       host:port/attestation_port, an IPv6 host in brackets>, ... in file order]}

File paths, PEM layout and whether a key came as a key or inside a certificate do not change the digest; the CA
does not appear in it (it only vets certificates when the plan is loaded; what is trusted afterwards is the keys).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runtime.federation.proof import ParticipantKey, ProofError, signature_algorithm, spki_der
from runtime.protocol import ROLES, Rejected, check_worker_id
from runtime.transport import Endpoint

PLAN_FORMAT_VERSION = 1
MAX_PLAN_BYTES = 1 << 20  # the plan and each file it names
MEASUREMENT_BYTES = 32
MRTD_BYTES = 48
MAX_ISV_SVN = 0xFFFF  # the SGX report field is 16 bits
FEDERATION_NAME_RULE = "1-64 characters [A-Za-z0-9._-]"
_FEDERATION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX_MEASUREMENT = {32: re.compile(r"[0-9a-fA-F]{64}"), 48: re.compile(r"[0-9a-fA-F]{96}")}
_TOP_KEYS = ("federation", "participants", "roles", "ps")
_ROLE_KEYS = ("mrenclave", "mrsigner", "min_isv_svn", "allow_debug", "mrtd")


class PlanError(ValueError):
    """A plan that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Participant:
    name: str
    roles: tuple[str, ...]
    public_key: Ed25519PublicKey | EllipticCurvePublicKey
    spki_sha256: bytes  # SHA-256 of the key's SubjectPublicKeyInfo DER


def _measurement_set(value: Iterable[bytes] | None, field_name: str, size: int = MEASUREMENT_BYTES
                     ) -> frozenset[bytes] | None:
    if value is None:
        return None
    measurements = frozenset(value)
    if not measurements:
        raise ValueError(f"{field_name}: an empty set would accept nothing; use None (\"any\") to accept any")
    for m in measurements:
        if not isinstance(m, bytes) or len(m) != size:
            found = f"{len(m)} bytes" if isinstance(m, bytes) else type(m).__name__
            raise ValueError(f"{field_name}: expected {size}-byte measurements, found {found}")
    return measurements


def _one_of(measurements: frozenset[bytes]) -> str:
    hexes = sorted(m.hex() for m in measurements)
    return hexes[0] if len(hexes) == 1 else "one of " + ", ".join(hexes)


@dataclass(frozen=True)
class RolePolicy:
    """The enclaves (and, with admits_tdx, TDX TDs) a role's connections must come from. None for a measurement
    set means any."""

    mrenclave: frozenset[bytes] | None
    mrsigner: frozenset[bytes] | None
    min_isv_svn: int = 0
    allow_debug: bool = False
    admits_tdx: bool = False
    mrtd: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mrenclave", _measurement_set(self.mrenclave, "mrenclave"))
        object.__setattr__(self, "mrsigner", _measurement_set(self.mrsigner, "mrsigner"))
        object.__setattr__(self, "mrtd", _measurement_set(self.mrtd, "mrtd", MRTD_BYTES))
        if self.mrtd is not None and not self.admits_tdx:
            raise ValueError("mrtd: set for a role that does not admit TDX TDs")
        if (isinstance(self.min_isv_svn, bool) or not isinstance(self.min_isv_svn, int)
                or not 0 <= self.min_isv_svn <= MAX_ISV_SVN):
            raise ValueError(f"min_isv_svn: expected an integer 0..{MAX_ISV_SVN}, found {self.min_isv_svn!r}")
        if not isinstance(self.allow_debug, bool):  # a string such as "false" is truthy
            raise ValueError(f"allow_debug: expected true or false, found {self.allow_debug!r}")

    def refusal(self, evidence: Any) -> str | None:
        """None if `evidence` (a ratls.Evidence: tee, mrenclave, mrsigner, isv_svn, mrtd, debug) meets this
        policy, else a sentence naming the first field that does not, with what was expected and what was found."""
        if evidence.tee == "tdx":
            if not self.admits_tdx:
                return "tee: expected an SGX enclave (the role's policy names no mrtd), found a TDX TD"
            if self.mrtd is not None and evidence.mrtd not in self.mrtd:
                return f"mrtd: expected {_one_of(self.mrtd)}, found {evidence.mrtd.hex()}"
            if evidence.debug and not self.allow_debug:
                return "debug: expected a production TD, found a debug TD"
            return None
        if self.mrenclave is not None and evidence.mrenclave not in self.mrenclave:
            return f"mrenclave: expected {_one_of(self.mrenclave)}, found {evidence.mrenclave.hex()}"
        if self.mrsigner is not None and evidence.mrsigner not in self.mrsigner:
            return f"mrsigner: expected {_one_of(self.mrsigner)}, found {evidence.mrsigner.hex()}"
        if evidence.isv_svn < self.min_isv_svn:
            return f"isv_svn: expected at least {self.min_isv_svn}, found {evidence.isv_svn}"
        if evidence.debug and not self.allow_debug:
            return "debug: expected a production enclave, found a debug enclave"
        return None

    def to_dict(self) -> dict[str, Any]:
        def hexes(measurements: frozenset[bytes] | None) -> list[str] | str:
            return "any" if measurements is None else sorted(m.hex() for m in measurements)

        tdx = {"mrtd": hexes(self.mrtd)} if self.admits_tdx else {}  # absent: digests of SGX-only plans unchanged
        return {"mrenclave": hexes(self.mrenclave), "mrsigner": hexes(self.mrsigner),
                "min_isv_svn": self.min_isv_svn, "allow_debug": self.allow_debug, **tdx}


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class Plan:
    """A loaded plan (see load_plan). `digest` is computed from the other fields (see the module docstring)."""

    path: str
    federation: str
    participants: dict[str, Participant]
    roles: dict[str, RolePolicy]
    ps_endpoints: tuple[str, ...]
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(canonical_json(self.to_dict())).digest())

    def participant(self, name: str) -> Participant | None:
        return self.participants.get(name)

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    def to_dict(self) -> dict[str, Any]:
        """The normalized plan the digest is computed over."""
        return {
            "version": PLAN_FORMAT_VERSION,
            "federation": self.federation,
            "participants": [{"name": p.name, "roles": [r for r in ROLES if r in p.roles],
                              "public_key": spki_der(p.public_key).hex()}
                             for p in sorted(self.participants.values(), key=lambda p: p.name)],
            "roles": {role: policy.to_dict() for role, policy in self.roles.items()},
            "ps_endpoints": list(self.ps_endpoints),
        }


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _read_bounded(path: Path) -> bytes:
    """At most MAX_PLAN_BYTES of `path`; OSError if unreadable, ValueError if larger."""
    with open(path, "rb") as f:
        data = f.read(MAX_PLAN_BYTES + 1)
    if len(data) > MAX_PLAN_BYTES:
        raise ValueError(f"larger than {MAX_PLAN_BYTES} bytes")
    return data


def _json_object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys; in a plan that would hide one of two conflicting values.
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"key {key!r} appears twice in one object")
    return dict(pairs)


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _PlanReader:
    """Checks one plan file's structure; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = dt.datetime.now(dt.UTC)

    def error(self, where: str, message: str) -> PlanError:
        return PlanError(f"plan {self.path}: {where}: {message}" if where else f"plan {self.path}: {message}")

    def parse(self) -> Any:
        suffix = self.path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise self.error("", f"expected a .toml or .json file, found {suffix or 'no suffix'}")
        try:
            text = _read_bounded(self.path).decode("utf-8")
        except OSError as e:
            raise self.error("", f"cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise self.error("", "not UTF-8 text") from None
        except ValueError as e:
            raise self.error("", str(e)) from None
        try:
            if suffix == ".toml":
                return tomllib.loads(text)
            return json.loads(text, object_pairs_hook=_json_object_without_duplicates, parse_constant=_json_constant)
        except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            raise self.error("", f"not valid {suffix[1:].upper()}: {e}") from None

    def table(self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"expected a table, found {_shown(value)}")
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in required + optional:
                raise self.error(f"{prefix}{key}", f"unknown key (known: {', '.join(required + optional)})")
        for key in required:
            if key not in value:
                raise self.error(f"{prefix}{key}", "required")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, found {_shown(value)}")
        return value

    def pem(self, value: Any, where: str) -> bytes:
        """A PEM given inline or as a path relative to the plan's directory."""
        text = self.string(value, where)
        if "-----BEGIN" in text:
            return text.encode("utf-8")
        file = self.path.parent / text
        try:
            return _read_bounded(file)
        except OSError as e:
            raise self.error(where, f"cannot read {file}: {e.strerror}") from None
        except ValueError as e:
            raise self.error(where, f"{file}: {e}") from None

    def certificate(self, value: Any, where: str) -> x509.Certificate:
        try:
            certificate = x509.load_pem_x509_certificate(self.pem(value, where))
        except ValueError:
            raise self.error(where, "not a PEM certificate") from None
        if not certificate.not_valid_before_utc <= self.now <= certificate.not_valid_after_utc:
            raise self.error(where, f"not valid now ({self.now:%Y-%m-%d %H:%M:%S} UTC): valid from "
                                    f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
                                    f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        return certificate

    def public_key(self, value: Any, where: str) -> Ed25519PublicKey | EllipticCurvePublicKey:
        data = self.pem(value, where)
        if b"PRIVATE KEY-----" in data:
            raise self.error(where, "this is a private key; a plan holds public keys only")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise self.error(where, "not a PEM public key") from None
        return self.key_type(key, where)

    def key_type(self, key: Any, where: str) -> Ed25519PublicKey | EllipticCurvePublicKey:
        try:
            signature_algorithm(key)
        except ProofError as e:
            raise self.error(where, e.detail) from None
        return key

    def measurements(self, value: Any, where: str, size: int = MEASUREMENT_BYTES) -> frozenset[bytes] | None:
        if value == "any":
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(
                isinstance(item, str) and _HEX_MEASUREMENT[size].fullmatch(item) for item in items):
            raise self.error(where, f'expected {2 * size} hex digits, a non-empty list of them, or "any", found '
                                    f"{_shown(value)}")
        return frozenset(bytes.fromhex(item) for item in items)

    def role_policy(self, value: Any, where: str) -> RolePolicy:
        table = self.table(value, where, _ROLE_KEYS[:2], _ROLE_KEYS[2:])
        mrenclave = self.measurements(table["mrenclave"], f"{where}.mrenclave")
        mrsigner = self.measurements(table["mrsigner"], f"{where}.mrsigner")
        admits_tdx = "mrtd" in table
        mrtd = self.measurements(table["mrtd"], f"{where}.mrtd", MRTD_BYTES) if admits_tdx else None
        try:
            return RolePolicy(mrenclave, mrsigner, table.get("min_isv_svn", 0), table.get("allow_debug", False),
                              admits_tdx, mrtd)
        except ValueError as e:  # RolePolicy checks the rest; its message starts with the field's name
            raise self.error("", f"{where}.{e}") from None

    def participant(self, value: Any, where: str, ca: x509.Certificate | None) -> Participant:
        table = self.table(value, where, ("name", "roles"), ("public_key", "certificate"))
        name = self.string(table["name"], f"{where}.name")
        try:
            check_worker_id(name, f"{where}.name")
        except Rejected as e:
            raise self.error("", e.detail) from None
        roles = table["roles"]
        if not isinstance(roles, list) or not roles or not all(role in ROLES for role in roles):
            raise self.error(f"{where}.roles", f"expected a list of {'/'.join(map(repr, ROLES))}, found "
                                               f"{_shown(roles)}")
        if len(set(roles)) != len(roles):
            raise self.error(f"{where}.roles", f"a role is listed twice in {roles!r}")
        if ("public_key" in table) == ("certificate" in table):
            raise self.error(where, "expected exactly one of public_key and certificate")
        if "public_key" in table:
            key = self.public_key(table["public_key"], f"{where}.public_key")
        else:
            if ca is None:
                raise self.error(f"{where}.certificate", "needs federation.ca, the CA that issues participants' "
                                                         "certificates")
            certificate = self.certificate(table["certificate"], f"{where}.certificate")
            try:
                certificate.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                raise self.error(f"{where}.certificate", f"not issued by the federation CA "
                                                         f"({ca.subject.rfc4514_string()})") from None
            key = self.key_type(certificate.public_key(), f"{where}.certificate")
        return Participant(name, tuple(r for r in ROLES if r in roles), key,
                           hashlib.sha256(spki_der(key)).digest())

    def endpoints(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(where, f"expected a list of host:port[/attestation_port], found {_shown(value)}")
        endpoints: dict[tuple[str, int], str] = {}
        for i, text in enumerate(value):
            try:
                endpoint = Endpoint.parse(self.string(text, f"{where}[{i}]"))
            except ValueError as e:
                raise self.error(f"{where}[{i}]", str(e)) from None
            if (endpoint.host, endpoint.port) in endpoints:
                raise self.error(f"{where}[{i}]", f"{text!r} is listed twice")
            endpoints[endpoint.host, endpoint.port] = str(endpoint)
        return tuple(endpoints.values())

    def plan(self) -> Plan:
        top = self.table(self.parse(), "", _TOP_KEYS)
        federation_table = self.table(top["federation"], "federation", ("name",), ("ca",))
        federation = self.string(federation_table["name"], "federation.name")
        if not _FEDERATION_NAME.fullmatch(federation):
            raise self.error("federation.name", f"expected {FEDERATION_NAME_RULE}, found {_shown(federation)}")
        ca = self.certificate(federation_table["ca"], "federation.ca") if "ca" in federation_table else None

        if not isinstance(top["participants"], list) or not top["participants"]:
            raise self.error("participants", f"expected a non-empty array of tables, found "
                                             f"{_shown(top['participants'])}")
        participants: dict[str, Participant] = {}
        where_by_key: dict[bytes, str] = {}
        for i, value in enumerate(top["participants"]):
            participant = self.participant(value, f"participants[{i}]", ca)
            if participant.name in participants:
                raise self.error(f"participants[{i}].name", f"{participant.name!r} is listed twice")
            if participant.spki_sha256 in where_by_key:
                raise self.error(f"participants[{i}]", f"the same key as participant "
                                                       f"{where_by_key[participant.spki_sha256]!r}: one company, one "
                                                       "key (two names with one key would double a weight)")
            participants[participant.name] = participant
            where_by_key[participant.spki_sha256] = participant.name

        roles_table = self.table(top["roles"], "roles", (), ROLES)
        roles = {role: self.role_policy(roles_table[role], f"roles.{role}") for role in ROLES if role in roles_table}
        for participant in participants.values():
            for role in participant.roles:
                if role not in roles:
                    raise self.error(f"roles.{role}", f"required: participant {participant.name!r} takes this role")

        ps_table = self.table(top["ps"], "ps", ("endpoints",))
        return Plan(str(self.path), federation, participants, roles, self.endpoints(ps_table["endpoints"],
                                                                                    "ps.endpoints"))


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and check a plan file (see the module docstring); PlanError names the file and the key at fault."""
    return _PlanReader(Path(path)).plan()


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for char in text:
        if char in short:
            out.append(short[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: str | bool | int | list[str]) -> str:
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_string(item) for item in value) + "]"
    return _toml_string(value)


def write_local_plan(directory: str | os.PathLike, federation: str, participants: Mapping[str, tuple[str, ...]],
                     roles: Mapping[str, RolePolicy], ps_endpoints: Iterable[str | Endpoint],
                     ) -> tuple[Path, dict[str, Path]]:
    """For a launcher's local jobs: a fresh Ed25519 key per participant, written to <name>.key.pem (PKCS8, mode
    0600), and plan.toml with the public keys inline, all in `directory`. The plan is loaded back before the keys
    are written, so a bad argument is a PlanError and leaves no plan or key behind. Returns the plan's path and
    each participant's key path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = {name: ParticipantKey.generate() for name in participants}
    lines = ["# Written by runtime.federation.write_local_plan for a local job.", "", "[federation]",
             f"name = {_toml_string(federation)}"]
    for name, participant_roles in participants.items():
        lines += ["", "[[participants]]", f"name = {_toml_string(name)}",
                  f"roles = {_toml_value(list(participant_roles))}",
                  f"public_key = {_toml_string(keys[name].public_pem().decode('ascii'))}"]
    for role, policy in roles.items():
        lines += ["", f"[roles.{_toml_string(role)}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in policy.to_dict().items()]
    lines += ["", "[ps]", f"endpoints = {_toml_value([str(e) for e in ps_endpoints])}", ""]

    plan_path = directory / "plan.toml"
    tmp = directory / f".plan.toml.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, plan_path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        load_plan(plan_path)
    except PlanError:
        plan_path.unlink()
        raise
    key_paths = {}
    for name, key in keys.items():
        key_paths[name] = directory / f"{name}.key.pem"
        key.write(key_paths[name])
    return plan_path, key_paths

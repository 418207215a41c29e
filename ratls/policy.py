"""What a verifier accepts: TEEs (SGX, TDX), measurements, product, SVN, debug, TCB statuses, simulated evidence
and roots."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ratls._certs import certificate_der
from ratls._native import ffi, lib
from ratls.errors import PolicyError, check_call

TCB_STATUSES: tuple[str, ...] = tuple(ffi.string(lib.ratls_tcb_status_name(i)).decode() for i in range(8))
"""Intel's TCB status names (index = the C code), "Unknown" first: the status when no collateral was given."""
ALLOWABLE_TCB_STATUSES: tuple[str, ...] = tuple(s for s in TCB_STATUSES if s != "Revoked")
"""What a policy may allow: every status but Revoked, which no policy admits."""

Measurement = str | bytes
MeasurementSet = Measurement | Iterable[Measurement] | None

TEES: dict[str, int] = {"sgx": lib.RATLS_TEE_SGX, "tdx": lib.RATLS_TEE_TDX}
"""The TEEs a quote can come from and a policy can accept, by name, with the C core's RATLS_TEE_* value."""
TEE_NAMES: tuple[str, ...] = tuple(TEES)


def _measurements(value: MeasurementSet, field: str, size: int = 32) -> tuple[bytes, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str | bytes) else list(value)
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise PolicyError(f"{field}: {item!r} is not hex") from None
        elif isinstance(item, bytes):
            raw = item
        else:
            raise PolicyError(f"{field}: expected hex str or bytes, got {type(item).__name__}")
        if len(raw) != size:
            raise PolicyError(f"{field}: expected {size} bytes ({2 * size} hex digits), got {len(raw)} bytes")
        out.append(raw)
    if not out:
        raise PolicyError(f"{field}: an empty set would accept nothing; use None for any")
    return tuple(out)


def _u16(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise PolicyError(f"{field}: expected an integer 0..65535 or None, got {value!r}")
    return value


def _flag(value: bool, field: str) -> bool:
    # A string such as "false" is truthy: only a real boolean may switch a check off.
    if not isinstance(value, bool):
        raise PolicyError(f"{field}: expected true or false, got {value!r}")
    return value


def _tees(value: str | Iterable[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if item not in TEE_NAMES:
            raise PolicyError(f"tees: unknown TEE {item!r} (known: {', '.join(TEE_NAMES)})")
    if not items:
        raise PolicyError("tees: an empty set would accept nothing")
    return tuple(t for t in TEE_NAMES if t in items)


def _tcb_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    if isinstance(statuses, str):
        statuses = [statuses]
    by_lower = {s.lower(): s for s in TCB_STATUSES}
    out = []
    for s in statuses:
        if not isinstance(s, str) or s.lower() not in by_lower:
            raise PolicyError(f"allowed_tcb_statuses: unknown status {s!r} (known: {', '.join(TCB_STATUSES)})")
        if s.lower() == "revoked":
            raise PolicyError("allowed_tcb_statuses: Revoked can never be allowed (the platform's attestation keys "
                              "are revoked; Gramine never admits it either)")
        out.append(by_lower[s.lower()])
    return tuple(dict.fromkeys(out))


def _root_der(value: bytes | str | os.PathLike | None, field: str, *, sim_dir_ok: bool) -> bytes | None:
    """A CA certificate given as DER/PEM bytes, PEM text, a file path, or (sim_root) a sim-ca directory."""
    if value is None:
        return None
    if isinstance(value, str) and "-----BEGIN" in value:
        value = value.encode()
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if sim_dir_ok and path.is_dir():
            path = path / "root.crt.pem"
        try:
            value = path.read_bytes()
        except OSError as e:
            raise PolicyError(f"{field}: cannot read {path}: {e.strerror}") from None
    try:
        return certificate_der(value)
    except PolicyError as e:
        raise PolicyError(f"{field}: {e}") from None


class Policy:
    """An immutable verification policy. None means "any" for measurements, product id and SVN.

    `tees` names the TEEs whose evidence is accepted: "sgx" (the default), "tdx", or both. An SGX policy never
    accepts TDX evidence nor a TDX policy SGX evidence (reason TEE_TYPE) unless it names both. mrenclave, mrsigner,
    isv_prod_id and min_isv_svn apply to SGX evidence; mrtd, rtmr0..rtmr3 and mrseam (48-byte values: the TD and the
    TDX module) and min_tee_tcb_svn (16 bytes, each component a minimum) to TDX evidence; allow_debug to both (an
    SGX debug enclave, a TD with TDATTRIBUTES.DEBUG).

    Sim evidence is accepted only when `allow_simulated` is true and `sim_root` names the simulation root (a
    sim-ca directory or its root certificate). Without collateral the TCB status is "Unknown", which passes only
    if listed in `allowed_tcb_statuses`.
    """

    __slots__ = ("tees", "mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn", "mrtd", "rtmr0", "rtmr1", "rtmr2",
                 "rtmr3", "mrseam", "min_tee_tcb_svn", "allow_debug", "allowed_tcb_statuses", "allow_simulated",
                 "sim_root_der", "trusted_root_der", "_ptr")

    def __init__(
        self,
        *,
        tees: str | Iterable[str] = "sgx",
        mrenclave: MeasurementSet = None,
        mrsigner: MeasurementSet = None,
        isv_prod_id: int | None = None,
        min_isv_svn: int | None = None,
        mrtd: MeasurementSet = None,
        rtmr0: MeasurementSet = None,
        rtmr1: MeasurementSet = None,
        rtmr2: MeasurementSet = None,
        rtmr3: MeasurementSet = None,
        mrseam: MeasurementSet = None,
        min_tee_tcb_svn: Measurement | None = None,
        allow_debug: bool = False,
        allowed_tcb_statuses: Iterable[str] = ("UpToDate",),
        allow_simulated: bool = False,
        sim_root: bytes | str | os.PathLike | None = None,
        trusted_root: bytes | str | os.PathLike | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "tees", _tees(tees))
        set_(self, "mrenclave", _measurements(mrenclave, "mrenclave"))
        set_(self, "mrsigner", _measurements(mrsigner, "mrsigner"))
        set_(self, "isv_prod_id", _u16(isv_prod_id, "isv_prod_id"))
        set_(self, "min_isv_svn", _u16(min_isv_svn, "min_isv_svn"))
        for name, value in (("mrtd", mrtd), ("rtmr0", rtmr0), ("rtmr1", rtmr1), ("rtmr2", rtmr2), ("rtmr3", rtmr3),
                            ("mrseam", mrseam)):
            set_(self, name, _measurements(value, name, 48))
        if min_tee_tcb_svn is not None and not isinstance(min_tee_tcb_svn, str | bytes):
            raise PolicyError(f"min_tee_tcb_svn: expected one 16-byte value (hex str or bytes), got "
                              f"{type(min_tee_tcb_svn).__name__}")
        set_(self, "min_tee_tcb_svn", None if min_tee_tcb_svn is None else
             _measurements(min_tee_tcb_svn, "min_tee_tcb_svn", 16)[0])
        if "tdx" not in self.tees and (self.mrtd or self.rtmrs != ((),) * 4 or self.mrseam
                                       or self.min_tee_tcb_svn is not None):
            raise PolicyError("mrtd, rtmr0..rtmr3, mrseam and min_tee_tcb_svn apply to TDX evidence, which this "
                              'policy does not accept: add "tdx" to tees')
        set_(self, "allow_debug", _flag(allow_debug, "allow_debug"))
        set_(self, "allowed_tcb_statuses", _tcb_statuses(allowed_tcb_statuses))
        set_(self, "allow_simulated", _flag(allow_simulated, "allow_simulated"))
        set_(self, "sim_root_der", _root_der(sim_root, "sim_root", sim_dir_ok=True))
        set_(self, "trusted_root_der", _root_der(trusted_root, "trusted_root", sim_dir_ok=False))
        if self.allow_simulated and self.sim_root_der is None:
            raise PolicyError("allow_simulated=True needs sim_root (the sim-ca directory or its root certificate)")
        set_(self, "_ptr", self._build())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Policy is immutable; build a new one")

    def _build(self):
        ptr = ffi.gc(lib.ratls_policy_new(), lib.ratls_policy_free)
        if ptr == ffi.NULL:
            raise MemoryError("ratls_policy_new")
        for m in self.mrenclave:
            lib.ratls_policy_add_mrenclave(ptr, m)
        for m in self.mrsigner:
            lib.ratls_policy_add_mrsigner(ptr, m)
        lib.ratls_policy_set_allowed_tees(ptr, sum(TEES[t] for t in self.tees))
        for m in self.mrtd:
            lib.ratls_policy_add_mrtd(ptr, m)
        for index, values in enumerate(self.rtmrs):
            for m in values:
                lib.ratls_policy_add_rtmr(ptr, index, m)
        for m in self.mrseam:
            lib.ratls_policy_add_mrseam(ptr, m)
        lib.ratls_policy_set_min_tee_tcb_svn(ptr, ffi.NULL if self.min_tee_tcb_svn is None else self.min_tee_tcb_svn)
        lib.ratls_policy_set_isv_prod_id(ptr, -1 if self.isv_prod_id is None else self.isv_prod_id)
        lib.ratls_policy_set_min_isv_svn(ptr, -1 if self.min_isv_svn is None else self.min_isv_svn)
        lib.ratls_policy_set_allow_debug(ptr, int(self.allow_debug))
        lib.ratls_policy_set_allow_simulated(ptr, int(self.allow_simulated))
        mask = 0
        for s in self.allowed_tcb_statuses:
            mask |= 1 << TCB_STATUSES.index(s)
        lib.ratls_policy_set_allowed_tcb_mask(ptr, mask)
        for der, setter, field in ((self.trusted_root_der, lib.ratls_policy_set_trusted_root, "trusted_root"),
                                   (self.sim_root_der, lib.ratls_policy_set_sim_root, "sim_root")):
            if der is not None:
                check_call(setter, ptr, der, len(der), error=PolicyError, context=field)
        return ptr

    @property
    def rtmrs(self) -> tuple[tuple[bytes, ...], ...]:
        """The allowed values of RTMR0..3 (an empty tuple: any)."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def _native(self):
        """The C `ratls_policy *`; valid while this Policy is alive."""
        return self._ptr

    def replace(self, **changes: Any) -> Policy:
        """A copy with some fields changed (same keywords as the constructor)."""
        fields = {
            "tees": self.tees,
            "mrenclave": self.mrenclave or None,
            "mrsigner": self.mrsigner or None,
            "isv_prod_id": self.isv_prod_id,
            "min_isv_svn": self.min_isv_svn,
            "mrtd": self.mrtd or None,
            "rtmr0": self.rtmr0 or None,
            "rtmr1": self.rtmr1 or None,
            "rtmr2": self.rtmr2 or None,
            "rtmr3": self.rtmr3 or None,
            "mrseam": self.mrseam or None,
            "min_tee_tcb_svn": self.min_tee_tcb_svn,
            "allow_debug": self.allow_debug,
            "allowed_tcb_statuses": self.allowed_tcb_statuses,
            "allow_simulated": self.allow_simulated,
            "sim_root": self.sim_root_der,
            "trusted_root": self.trusted_root_der,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        fields.update(changes)
        return Policy(**fields)

    def __repr__(self) -> str:
        def hexes(ms: tuple[bytes, ...]) -> str:
            return "any" if not ms else "[" + ", ".join(m.hex()[:16] + "…" for m in ms) + "]"

        tdx = (f"mrtd={hexes(self.mrtd)}, " + "".join(f"rtmr{i}={hexes(r)}, " for i, r in enumerate(self.rtmrs))
               if "tdx" in self.tees else "")
        return (f"Policy(tees={self.tees}, mrenclave={hexes(self.mrenclave)}, mrsigner={hexes(self.mrsigner)}, "
                f"isv_prod_id={self.isv_prod_id}, min_isv_svn={self.min_isv_svn}, {tdx}allow_debug={self.allow_debug}, "
                f"allowed_tcb_statuses={self.allowed_tcb_statuses}, allow_simulated={self.allow_simulated})")

    @classmethod
    def from_env(cls, **overrides: Any) -> Policy:
        """Gramine's RA_TLS_* variables with Gramine v1.8+ semantics: RA_TLS_MRENCLAVE, RA_TLS_MRSIGNER,
        RA_TLS_ISV_PROD_ID and RA_TLS_ISV_SVN are all required (each may be `any`); the RA_TLS_ALLOW_* flags are
        on only when exactly "1". In an enclave, these must come from the manifest, never from the host.
        Keyword overrides (e.g. sim_root, allow_simulated) are applied on top."""
        env = ffi.new("ratls_env_policy *")
        check_call(lib.ratls_env_policy_read, env, error=PolicyError)
        mask = lib.ratls_env_policy_tcb_mask(env)
        fields: dict[str, Any] = {
            "mrenclave": None if env.mrenclave_any else bytes(env.mrenclave),
            "mrsigner": None if env.mrsigner_any else bytes(env.mrsigner),
            "isv_prod_id": None if env.isv_prod_id_any else env.isv_prod_id,
            "min_isv_svn": None if env.isv_svn_any else env.isv_svn,
            "allow_debug": bool(env.allow_debug_enclave),
            "allowed_tcb_statuses": tuple(s for i, s in enumerate(TCB_STATUSES) if mask & (1 << i)),
        }
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Policy:
        """A TOML policy file. Keys are the constructor's. mrenclave and mrsigner are required when the policy accepts
        SGX (tees, default "sgx"), mrtd when it accepts TDX, as in from_env:
        hex strings, lists of them, or "any"; isv_prod_id and min_isv_svn are integers or "any"; allow_debug and
        allow_simulated TOML booleans; sim_root and trusted_root paths relative to the file's directory. Anything
        else is a PolicyError naming the key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise PolicyError(f"cannot read policy file {path}: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(f"policy file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(_FILE_KEYS))
        if unknown:
            raise PolicyError(f"policy file {path}: unknown keys {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_FILE_KEYS))})")
        tees = data.get("tees", "sgx")
        tees = [tees] if isinstance(tees, str) else tees
        required = (("mrenclave", "mrsigner") if "sgx" in tees else ()) + (("mrtd",) if "tdx" in tees else ())
        missing = [key for key in required if key not in data]
        if missing:
            raise PolicyError(f"policy file {path}: {' and '.join(missing)} missing: give the measurements to "
                              'accept, or "any" to accept every one')
        fields: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(value, _FILE_KEYS[key]) or (isinstance(value, list) and not all(
                    isinstance(item, str) for item in value)):
                raise PolicyError(f"policy file {path}: {key}: expected {_FILE_TYPES[key]}, got {value!r}")
            if value == "any" and key in ("mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn", "mrtd", "rtmr0",
                                          "rtmr1", "rtmr2", "rtmr3", "mrseam", "min_tee_tcb_svn"):
                value = None
            elif key in ("sim_root", "trusted_root"):
                value = path.parent / value
            fields[key] = value
        try:
            return cls(**fields)
        except PolicyError as e:
            raise PolicyError(f"policy file {path}: {e}") from None


# Policy file keys: the TOML types each may have, and how to say so.
_FILE_KEYS: dict[str, tuple[type, ...]] = {
    "tees": (str, list), "mrtd": (str, list), "rtmr0": (str, list), "rtmr1": (str, list), "rtmr2": (str, list),
    "rtmr3": (str, list), "mrseam": (str, list), "min_tee_tcb_svn": (str,),
    "mrenclave": (str, list), "mrsigner": (str, list), "isv_prod_id": (int, str), "min_isv_svn": (int, str),
    "allow_debug": (bool,), "allowed_tcb_statuses": (str, list), "allow_simulated": (bool,),
    "sim_root": (str,), "trusted_root": (str,),
}
_FILE_TYPES = {
    "tees": '"sgx", "tdx" or a list of them', **{k: 'hex digits, a list of them, or "any"' for k in
                                                ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")},
    "min_tee_tcb_svn": '32 hex digits or "any"',
    "mrenclave": 'hex digits, a list of them, or "any"', "mrsigner": 'hex digits, a list of them, or "any"',
    "isv_prod_id": 'an integer or "any"', "min_isv_svn": 'an integer or "any"', "allow_debug": "true or false",
    "allowed_tcb_statuses": "a status or a list of them", "allow_simulated": "true or false",
    "sim_root": "a path", "trusted_root": "a path",
}

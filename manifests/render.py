#!/usr/bin/env python3
"""Renders the Gramine manifests of ps, worker and chief, and lists the files they measure.

    python3 manifests/render.py files                                 measured application files, sim MRENCLAVE
    python3 manifests/render.py render ROLE [options] [-- ARGS...]    the manifest, rendered here
    python3 manifests/render.py defines ROLE [options] [-- ARGS...]   the -D arguments for gramine-manifest

ARGS are the process's own arguments (e.g. `--listen 0.0.0.0:7000 --steps 1000 --workers 2`); they are fixed in
the manifest. The application's trusted files are runtime.measure.runtime_files(), the very list the sim provider
measures into MRENCLAVE, so a simulated run and the manifest measure the same files.

`render` needs no Gramine: it gives the template stand-ins for gramine-manifest's helpers (gramine.libos,
gramine.runtimedir(), python.*, env, ldd) with Gramine's semantics, for tests and inspection. On an SGX machine,
manifests/build.sh passes `defines` to the real gramine-manifest, signs and prints how to run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2

MANIFEST_DIR = Path(__file__).resolve().parent
REPO = MANIFEST_DIR.parent
# The measured file list must come from this tree's runtime.measure, not from another installed copy.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMMON_TEMPLATE = MANIFEST_DIR / "common.manifest.jinja"
ROLES = ("ps", "worker", "chief")
BUILD_MODES = ("release", "debug")
LOG_LEVELS = ("none", "error", "warning", "debug", "trace", "all")
# The Debian/Ubuntu packages' pkglibdir; only the stand-in helpers use it.
DEFAULT_GRAMINE_PKGLIBDIR = "/usr/lib/x86_64-linux-gnu/gramine"
DEFAULT_STATE_ROOT = "build/sgx"
# Fixed by the manifest (RA-TLS with Gramine's provider; the policy comes from RA_TLS_*), never from the caller.
TRANSPORT_OPTIONS = ("--security", "--provider", "--sim-ca", "--mrenclave", "--tls-ca", "--collateral",
                     "--collateral-cache")

# Values inserted verbatim into TOML strings: no quotes, backslashes, whitespace or control characters.
_VERBATIM = re.compile(r"[A-Za-z0-9._+@%,:=/~-]+")
_INSTANCE = re.compile(r"[A-Za-z0-9._-]+")
_SIZE = re.compile(r"([1-9][0-9]*)([KMG])")
_HEX32 = re.compile(r"[0-9a-fA-F]{64}")


class ManifestError(Exception):
    """Bad render parameters; the message names the parameter and what was expected."""


@dataclass(frozen=True)
class Options:
    """What a manifest is rendered from (the command-line options of `render` and `defines`)."""

    build_mode: str = "release"
    runtime_args: tuple[str, ...] = ()
    signing_key: Path | None = None
    peer_mrsigner: str | None = None
    peer_mrenclave: str | None = None
    isv_prod_id: int = 1
    isv_svn: int = 1
    min_peer_svn: int | None = None
    allow_outdated_tcb: bool = False
    allow_hw_config_needed: bool = False
    allow_sw_hardening_needed: bool = False
    pccs_url: str | None = None
    enclave_size: str = "8G"
    max_threads: int = 256
    cpu_threads: int = 8
    log_level: str | None = None
    instance: str | None = None
    state_root: str = DEFAULT_STATE_ROOT
    checkpoint_dir: str | None = None
    data_dir: str | None = None
    output_dir: str | None = None
    input_dir: str | None = None
    python: str | None = None
    base_dir: Path | None = None


# ----------------------------------------------------------------------------------------------------------
# what is measured


def application_files(base_dir: Path | None = None) -> list[str]:
    """runtime.measure.runtime_files() as paths relative to the tree that holds the packages: the trusted
    application files of every manifest (relative, so gramine-sgx-sign and gramine-sgx run from that tree)."""
    from runtime.measure import BASE_DIR, runtime_files

    base = BASE_DIR if base_dir is None else Path(base_dir).resolve()
    names = [path.relative_to(base).as_posix() for path in runtime_files(base)]
    if not names:
        raise ManifestError(f"no application files under {base}: build the project first (pip install -e .)")
    for name in names:
        _verbatim(name, "application file")
    return names


def sim_mrenclave(base_dir: Path | None = None) -> str:
    """The MRENCLAVE the sim provider gives the runtime: ratls.measure over the same application files."""
    import ratls
    from runtime.measure import BASE_DIR

    base = BASE_DIR if base_dir is None else Path(base_dir).resolve()
    return ratls.measure([base / name for name in application_files(base)], root=base).hex()


def mrsigner_of_key(path: str | os.PathLike) -> str:
    """SGX MRSIGNER of an enclave signing key (PEM, private or public): SHA-256 of the RSA-3072 modulus in
    little-endian byte order, as SIGSTRUCT stores it (Gramine: sigstruct.py get_mrsigner_for_modulus_le)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ManifestError(f"--signing-key: cannot read {path}: {e.strerror}") from None
    try:
        if b"PRIVATE KEY-----" in data:
            # Only the modulus is read: skipping the (slow) private-key consistency check loses nothing.
            key: Any = serialization.load_pem_private_key(data, password=None,
                                                          unsafe_skip_rsa_key_validation=True).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ManifestError(f"--signing-key: {path} is not an unencrypted PEM RSA key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ManifestError(f"--signing-key: {path} holds a {type(key).__name__}, expected an RSA key")
    numbers = key.public_numbers()
    if key.key_size != 3072 or numbers.e != 3:
        raise ManifestError(f"--signing-key: SGX signs with RSA-3072 and public exponent 3 "
                            f"(gramine-sgx-gen-private-key), found RSA-{key.key_size} with exponent {numbers.e}")
    return hashlib.sha256(numbers.n.to_bytes(384, "little")).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# template variables


def _verbatim(value: str, what: str) -> str:
    if not _VERBATIM.fullmatch(value):
        raise ManifestError(f"{what}: {value!r} must be a non-empty path of letters, digits and ._+@%,:=/~- "
                            "(it is written into the manifest as is)")
    return value


def _u16(value: int, what: str) -> str:
    if not 0 <= value <= 0xFFFF:
        raise ManifestError(f"{what}: expected 0..65535, got {value}")
    return str(value)


def _measurement(value: str | None, what: str) -> str | None:
    if value is None or value == "any":
        return None
    if not _HEX32.fullmatch(value):
        raise ManifestError(f"{what}: expected 64 hex digits or 'any', got {value!r}")
    return value.lower()


def _enclave_size(value: str) -> str:
    match = _SIZE.fullmatch(value)
    if not match:
        raise ManifestError(f"--enclave-size: expected a number with a K, M or G suffix (e.g. 8G), got {value!r}")
    number = int(match.group(1))
    if number & (number - 1):
        raise ManifestError(f"--enclave-size: SGX enclave sizes are powers of two, got {value}")
    return value


# Where the federation's files must be inside the enclave (README "Federation plans"): the plan is measured
# configuration, so a trusted file (the --input-dir mount, hashed into the measurement); the participant's key is a
# secret, so in the encrypted mount sealed to MRSIGNER (--data-dir), never a plaintext host file.
FEDERATION_FILES = {"--plan": "/input", "--participant-key": "/data"}


def _check_federation_files(args: Sequence[str]) -> None:
    for i, arg in enumerate(args):
        name, sep, value = arg.partition("=")
        for option, mount in FEDERATION_FILES.items():
            if not (name.startswith("--") and len(name) > 2 and option.startswith(name)):
                continue
            if name != option:
                raise ManifestError(f"runtime argument {arg!r}: spell out {option}, whose file the manifest checks")
            path = value if sep else (args[i + 1] if i + 1 < len(args) else "")
            normalized = pathlib.PurePosixPath(os.path.normpath(path)) if path else None
            if normalized is None or pathlib.PurePosixPath(mount) not in normalized.parents:
                raise ManifestError(f"runtime argument {option} {path!r}: expected a file under {mount} (the "
                                    f"{'trusted --input-dir' if mount == '/input' else 'encrypted --data-dir'} "
                                    "mount), so that the host can neither choose nor read it")


def runtime_args_toml(args: Sequence[str]) -> str:
    """The process's arguments as TOML strings, each followed by ", ", for the template's loader.argv.

    Refuses the transport options, whose values the manifest fixes (argparse also accepts unambiguous
    abbreviations such as --secu, so prefixes are refused too)."""
    _check_federation_files(args)
    out = []
    for arg in args:
        name = arg.split("=", 1)[0]
        for option in TRANSPORT_OPTIONS:
            if name.startswith("--") and len(name) > 2 and option.startswith(name):
                raise ManifestError(f"runtime argument {arg!r}: {option} is fixed by the manifest (RA-TLS with the "
                                    "gramine provider, peers' policy from RA_TLS_*)")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ManifestError(f"runtime argument {arg!r} is not valid Unicode") from None
        # A JSON string with ASCII escapes is a valid TOML basic string.
        out.append(json.dumps(arg) + ", ")
    return "".join(out)


def arch_libdir() -> str:
    """The system library directory, as Gramine's Makefiles pass it (/lib/$(cc -dumpmachine))."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return f"/lib/{multiarch}"


def manifest_variables(role: str, options: Options) -> dict[str, str]:
    """Every template variable, as the strings `gramine-manifest -Dname=value` passes."""
    if role not in ROLES:
        raise ManifestError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    if options.build_mode not in BUILD_MODES:
        raise ManifestError(f"build mode: expected release or debug, got {options.build_mode!r}")
    debug = options.build_mode == "debug"
    if options.log_level is not None and not debug:
        raise ManifestError("--log-level: release builds log errors only (other levels may leak secrets)")
    log_level = options.log_level or "warning"
    if log_level not in LOG_LEVELS:
        raise ManifestError(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    mrenclave = _measurement(options.peer_mrenclave, "--peer-mrenclave")
    mrsigner = _measurement(options.peer_mrsigner, "--peer-mrsigner")
    if mrsigner is None and options.signing_key is not None:
        mrsigner = mrsigner_of_key(options.signing_key)
    if mrenclave is None and mrsigner is None and not debug:
        raise ManifestError("release manifests must pin their peers: give --signing-key (peers must be signed by "
                            "it) or --peer-mrsigner, or --peer-mrenclave")

    # Where peers' TCB status comes from, in every attestation: Gramine's DCAP verifier (Intel's libraries and
    # the PCCS of /etc/sgx_default_qcnl.conf, trusted below), or our client of the PCCS given here.
    collateral = "gramine"
    if options.pccs_url is not None:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", options.pccs_url):
            raise ManifestError(f"--pccs-url: expected http(s)://host[:port][/path], got {options.pccs_url!r}")
        collateral = options.pccs_url
    collateral_args = f', "--collateral", "{collateral}"'

    if options.cpu_threads < 1:
        raise ManifestError(f"--cpu-threads: expected at least 1, got {options.cpu_threads}")
    # TensorFlow's pools plus gRPC, attestation and Python threads and Gramine's own helpers.
    if options.max_threads < options.cpu_threads + 32:
        raise ManifestError(f"--max-threads: expected at least --cpu-threads + 32 = {options.cpu_threads + 32}, "
                            f"got {options.max_threads}")

    instance = options.instance or role
    if not _INSTANCE.fullmatch(instance):
        raise ManifestError(f"--instance: expected letters, digits and ._- only, got {instance!r}")
    state = f"{options.state_root.rstrip('/')}/{instance}"
    input_dir = ""
    if options.input_dir is not None:
        input_dir = _verbatim(options.input_dir.rstrip("/"), "--input-dir")
        if not Path(input_dir).is_dir():
            raise ManifestError(f"--input-dir: {input_dir} is not a directory (its files are hashed at signing)")
    # The interpreter as invoked: a virtual environment's python reports the environment's site-packages, while
    # the binary it links to (the entrypoint) would find no pyvenv.cfg in the enclave, so those go on PYTHONPATH.
    interpreter = os.path.abspath(options.python or sys.executable)
    entrypoint = os.path.realpath(interpreter)
    base_paths = set(python_get_sys_path(entrypoint))
    environment_paths = [str(p) for p in python_get_sys_path(interpreter) if p not in base_paths]

    variables = {
        "build_mode": options.build_mode,
        "entrypoint": _verbatim(entrypoint, "python interpreter"),
        "invoked_python": _verbatim(interpreter, "python interpreter"),
        "python_path": ":".join(["/app", *(_verbatim(path, "site-packages directory") for path in environment_paths)]),
        "arch_libdir": _verbatim(arch_libdir(), "arch_libdir"),
        "app_files": " ".join(application_files(options.base_dir)),
        "runtime_args": runtime_args_toml(options.runtime_args),
        "collateral_args": collateral_args,
        "ra_tls_mrenclave": mrenclave or "any",
        "ra_tls_mrsigner": mrsigner or "any",
        "ra_tls_isv_prod_id": _u16(options.isv_prod_id, "--isv-prod-id"),
        "ra_tls_isv_svn": (_u16(options.isv_svn, "--isv-svn") if options.min_peer_svn is None
                           else _u16(options.min_peer_svn, "--min-peer-svn")),
        "allow_outdated_tcb": "1" if options.allow_outdated_tcb else "0",
        "allow_hw_config_needed": "1" if options.allow_hw_config_needed else "0",
        "allow_sw_hardening_needed": "1" if options.allow_sw_hardening_needed else "0",
        "isv_prod_id": _u16(options.isv_prod_id, "--isv-prod-id"),
        "isv_svn": _u16(options.isv_svn, "--isv-svn"),
        "enclave_size": _enclave_size(options.enclave_size),
        "max_threads": str(options.max_threads),
        "cpu_threads": str(options.cpu_threads),
        "log_level": log_level if debug else "error",
        "checkpoint_dir": _verbatim(options.checkpoint_dir or f"{state}/checkpoints", "--checkpoint-dir"),
        "data_dir": _verbatim(options.data_dir or f"{state}/data", "--data-dir"),
        "output_dir": _verbatim(options.output_dir or f"{state}/output", "--output-dir"),
        "input_dir": input_dir,
    }
    host_dirs = [variables[name] for name in ("checkpoint_dir", "data_dir", "output_dir", "input_dir")
                 if variables[name]]
    for i, first in enumerate(host_dirs):
        for second in host_dirs[i + 1:]:
            a, b = pathlib.PurePosixPath(os.path.normpath(first)), pathlib.PurePosixPath(os.path.normpath(second))
            if a == b or a in b.parents or b in a.parents:
                raise ManifestError(f"host directories {first} and {second} overlap: the checkpoint, data, output "
                                    "and input directories must be separate (encrypted mounts must not overlap)")
    return variables


# ----------------------------------------------------------------------------------------------------------
# rendering with stand-ins for gramine-manifest's helpers (graminelibos/gen_jinja_env.py)


class _Runtimedir:
    """gramine.runtimedir(): Gramine's patched libc, by libc flavour."""

    def __init__(self, pkglibdir: Path) -> None:
        self._pkglibdir = pkglibdir

    def __call__(self, libc: str = "glibc") -> Path:
        return self._pkglibdir / "runtime" / libc

    def __str__(self) -> str:
        return str(self())

    def __truediv__(self, other: str) -> Path:
        return self() / other


def python_get_sys_path(interpreter: str, include_nonexisting: bool = False) -> Iterator[pathlib.Path]:
    """python.get_sys_path(): the interpreter's sys.path entries (existing ones unless told otherwise)."""
    for path in _sys_path(interpreter):
        if include_nonexisting or path.exists():
            yield path


@functools.cache
def _sys_path(interpreter: str) -> tuple[pathlib.Path, ...]:
    # Asked once per interpreter: a template calls get_sys_path() twice and starting Python is slow. Without
    # PYTHONPATH, as build.sh runs gramine-manifest: the enclave's sys.path is the interpreter's own.
    script = "import sys; print('\\0'.join(p for p in sys.path if p), end='')"
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    output = subprocess.check_output([interpreter, "-c", script], env=env)
    return tuple(pathlib.Path(os.fsdecode(raw)) for raw in output.split(b"\0"))


def ldd(*binaries: str | os.PathLike) -> list[str]:
    """ldd(): the shared libraries the binaries load, as absolute paths (the vDSO skipped)."""
    found = set()
    for line in subprocess.check_output(["ldd", *map(os.fspath, binaries)]).decode().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "=>" and parts[2].startswith("/"):
            found.add(parts[2])
        elif len(parts) > 1 and parts[0].startswith("/"):
            found.add(parts[0])
    return sorted(found)


def gramine_environment(pkglibdir: str = DEFAULT_GRAMINE_PKGLIBDIR) -> jinja2.Environment:
    """A Jinja environment set up as gramine-manifest's (strict undefined, no template loader) with stand-ins
    for its globals."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    pkg = Path(pkglibdir)
    paths = sysconfig.get_paths()
    env.globals["gramine"] = {"libos": pkg / "libsysdb.so", "pkglibdir": pkg, "runtimedir": _Runtimedir(pkg)}
    env.globals["python"] = {
        "stdlib": Path(paths["stdlib"]),
        "platstdlib": Path(paths["platstdlib"]),
        "purelib": Path(paths["purelib"]),
        "distlib": Path(sysconfig.get_path("stdlib", vars={"py_version_short": sys.version_info[0]}))
        / "dist-packages",
        "get_config_var": sysconfig.get_config_var,
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "get_path": sysconfig.get_path,
        "get_paths": sysconfig.get_paths,
        "implementation": sys.implementation,
        "get_sys_path": python_get_sys_path,
    }
    env.globals["env"] = os.environ
    env.globals["ldd"] = ldd
    return env


def template_text(role: str) -> str:
    """What gramine-manifest reads: the shared macros followed by the role's template."""
    if role not in ROLES:
        raise ManifestError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    return COMMON_TEMPLATE.read_text() + (MANIFEST_DIR / f"{role}.manifest.template").read_text()


def render(role: str, variables: dict[str, str], pkglibdir: str = DEFAULT_GRAMINE_PKGLIBDIR) -> str:
    """The manifest text for role, checked to be valid TOML."""
    text = gramine_environment(pkglibdir).from_string(template_text(role)).render(**variables)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"the {role} manifest rendered to invalid TOML: {e}") from None
    return text


# ----------------------------------------------------------------------------------------------------------
# command line


def _add_render_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--debug", dest="build_mode", action="store_const", const="debug", default="release",
                        help="debug enclave (sgx.debug = true; peers must be debug builds too; NOT for real data)")
    pin = parser.add_argument_group("peers' policy (RA_TLS_* in the manifest)")
    pin.add_argument("--signing-key", type=Path,
                     help="the enclave signing key (PEM); peers must carry its MRSIGNER unless --peer-mrsigner")
    pin.add_argument("--peer-mrsigner", help="64 hex digits or 'any' (default: the --signing-key's MRSIGNER)")
    pin.add_argument("--peer-mrenclave", help="64 hex digits or 'any' (default any; see README: one value only)")
    pin.add_argument("--min-peer-svn", type=int, help="lowest ISVSVN accepted from peers (default: --isv-svn)")
    pin.add_argument("--pccs-url", help="peers' TCB status from this PCCS (http(s)://host:port) through ratls's "
                                        "own client, in every attestation (default: Gramine's DCAP verifier and "
                                        "the PCCS of /etc/sgx_default_qcnl.conf)")
    pin.add_argument("--allow-outdated-tcb", action="store_true", help="accept OutOfDate platforms (insecure)")
    pin.add_argument("--allow-hw-config-needed", action="store_true", help="accept ConfigurationNeeded platforms")
    pin.add_argument("--allow-sw-hardening-needed", action="store_true", help="accept SWHardeningNeeded platforms")
    enclave = parser.add_argument_group("enclave")
    enclave.add_argument("--isv-prod-id", type=int, default=1, help="product id of all roles (default 1)")
    enclave.add_argument("--isv-svn", type=int, default=1, help="security version (default 1)")
    enclave.add_argument("--enclave-size", default="8G", help="power of two with K/M/G (default 8G)")
    enclave.add_argument("--max-threads", type=int, default=256, help="thread slots (default 256)")
    enclave.add_argument("--cpu-threads", type=int, default=8, help="TensorFlow/OpenMP threads (default 8)")
    enclave.add_argument("--log-level", choices=LOG_LEVELS, help="Gramine log level, debug builds only")
    enclave.add_argument("--python", help="the interpreter to run (default: this one)")
    dirs = parser.add_argument_group("host directories (relative to the repository, or absolute)")
    dirs.add_argument("--instance", help="instance name, for default directories (default: the role)")
    dirs.add_argument("--state-root", default=DEFAULT_STATE_ROOT,
                      help=f"default directories go under STATE_ROOT/INSTANCE (default {DEFAULT_STATE_ROOT})")
    dirs.add_argument("--checkpoint-dir", help="encrypted, in the enclave /checkpoints (ps)")
    dirs.add_argument("--data-dir", help="encrypted, in the enclave /data (worker, chief)")
    dirs.add_argument("--output-dir", help="plaintext reports and logs, in the enclave /output")
    dirs.add_argument("--input-dir", help="input files, trusted (hashed into the measurement), in the enclave /input")


def _options(args: argparse.Namespace, runtime_args: list[str]) -> Options:
    known = {f.name for f in fields(Options)}
    return Options(runtime_args=tuple(runtime_args), **{k: v for k, v in vars(args).items() if k in known})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runtime_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, runtime_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="render.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    files = sub.add_parser("files", help="list the measured application files and their sim MRENCLAVE")
    files.add_argument("--base-dir", type=Path, help="the tree holding ratls/ and runtime/ (default: this one)")
    rendered = sub.add_parser("render", help="render a manifest here, with stand-ins for gramine-manifest's helpers")
    _add_render_options(rendered)
    rendered.add_argument("--gramine-pkglibdir", default=DEFAULT_GRAMINE_PKGLIBDIR,
                          help=f"Gramine's pkglibdir for the stand-ins (default {DEFAULT_GRAMINE_PKGLIBDIR})")
    rendered.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    defines = sub.add_parser("defines", help="print the -Dname=value arguments for gramine-manifest, one a line")
    _add_render_options(defines)
    args = parser.parse_args(argv)
    if runtime_args and args.command == "files":
        parser.error("files takes no runtime arguments")
    try:
        if args.command == "files":
            names = application_files(args.base_dir)
            print("\n".join(names))
            print(f"# {len(names)} files; sim MRENCLAVE {sim_mrenclave(args.base_dir)}", file=sys.stderr)
            return 0
        variables = manifest_variables(args.role, _options(args, runtime_args))
        if args.command == "defines":
            for name, value in variables.items():
                print(f"-D{name}={value}")
            return 0
        text = render(args.role, variables, args.gramine_pkglibdir)
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
        return 0
    except ManifestError as e:
        print(f"render.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

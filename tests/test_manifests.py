"""Gramine manifests (manifests/): templates render with Jinja2 as gramine-manifest does (strict undefined, no
template loader, the shared macros prepended) into TOML that has the keys a Python + TensorFlow + RA-TLS enclave
needs and none of the insecure ones, whose application trusted files are exactly what the sim provider measures,
and whose RA_TLS_* policy is what ratls.Policy.from_env() reads."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import pytest
from jinja2 import nodes

import ratls
from runtime.measure import BASE_DIR, runtime_files

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
_spec = importlib.util.spec_from_file_location("manifest_render", MANIFESTS / "render.py")
render = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = render  # dataclasses look their module up there
_spec.loader.exec_module(render)

ROLES = ("ps", "worker", "chief")
MODES = ("release", "debug")
RA_TLS_VARIABLES = ("RA_TLS_MRENCLAVE", "RA_TLS_MRSIGNER", "RA_TLS_ISV_PROD_ID", "RA_TLS_ISV_SVN",
                    "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE", "RA_TLS_ALLOW_HW_CONFIG_NEEDED",
                    "RA_TLS_ALLOW_SW_HARDENING_NEEDED", "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE")
PCCS_URL = "https://pccs.example:8081"
TRANSPORT_TAIL = ["--security", "ratls", "--provider", "gramine", "--collateral", PCCS_URL]
RUNTIME_ARGS = {
    "ps": ("--listen", "0.0.0.0:7000", "--steps", "100", "--workers", "2", "--checkpoint-dir", "/checkpoints"),
    "worker": ("--ps", "10.0.0.1:7000", "--worker-id", "0", "--synthetic", "1000", "--report-file",
               "/output/worker-0.json"),
    "chief": ("--workers", "2"),
}
# Keys Gramine 1.8+ knows (graminelibos/manifest_check.py), per section: anything else is a typo or old syntax.
KNOWN_KEYS = {
    "libos": {"entrypoint", "check_invalid_pointers"},
    "loader": {"entrypoint", "argv", "argv_src_file", "env", "env_src_file", "gid", "insecure__use_cmdline_argv",
               "insecure__use_host_env", "insecure__disable_aslr", "log_file", "log_level", "uid"},
    "fs": {"mounts", "root", "start_dir", "insecure__keys"},
    "sys": {"allowed_ioctls", "brk", "disallow_subprocesses", "enable_extra_runtime_domain_names_conf",
            "enable_sigterm_injection", "experimental__enable_flock", "insecure__allow_eventfd", "ioctl_structs",
            "debug__mock_syscalls", "stack", "fds"},
    "sgx": {"allowed_files", "cpu_features", "debug", "edmm_enable", "enable_stats", "enclave_size",
            "file_check_policy", "insecure__allow_memfaults_without_exinfo", "insecure__rpc_thread_num",
            "isvprodid", "isvsvn", "max_threads", "preheat_enclave", "profile", "remote_attestation", "seal_key",
            "trusted_files", "use_exinfo", "vtune_profile", "trusted_files_cache_size"},
}


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> Path:
    """An enclave signing key as gramine-sgx-gen-private-key makes it: RSA-3072, public exponent 3."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    path = tmp_path_factory.mktemp("key") / "enclave-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


def options(signing_key: Path | None, mode: str = "release", role: str = "ps", **changes) -> render.Options:
    base = {"build_mode": mode, "signing_key": signing_key, "runtime_args": RUNTIME_ARGS[role], "pccs_url": PCCS_URL}
    base.update(changes)
    return render.Options(**base)


def rendered(role: str, opts: render.Options) -> tuple[dict[str, str], dict]:
    variables = render.manifest_variables(role, opts)
    return variables, tomllib.loads(render.render(role, variables))


@pytest.fixture(scope="module")
def manifests(signing_key) -> dict[tuple[str, str], tuple[dict[str, str], dict]]:
    return {(role, mode): rendered(role, options(signing_key, mode, role)) for role in ROLES for mode in MODES}


def size_bytes(text: str) -> int:
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]]


def walk(node, prefix=""):
    """(dotted key, value) for every key of a parsed TOML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}", value
            yield from walk(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{prefix}{i}.")


def trusted_uris(manifest: dict) -> list[str]:
    return [entry if isinstance(entry, str) else entry["uri"] for entry in manifest["sgx"]["trusted_files"]]


def is_trusted(path: str, manifest: dict) -> bool:
    """A trusted-files entry names the file, or a directory ("file:.../") holding it."""
    for uri in trusted_uris(manifest):
        name = uri.removeprefix("file:")
        if name == path or (name.endswith("/") and path.startswith(name)):
            return True
    return False


def is_mounted(path: str, manifest: dict) -> bool:
    return any(path == m["path"] or path.startswith(m["path"].rstrip("/") + "/") for m in manifest["fs"]["mounts"])


# ----------------------------------------------------------------------------------------------------------
# schema: required keys


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
def test_manifest_has_the_required_keys(manifests, signing_key, role, mode):
    _, manifest = manifests[role, mode]
    assert set(manifest) <= set(KNOWN_KEYS), f"unknown sections {set(manifest) - set(KNOWN_KEYS)}"
    for section, keys in manifest.items():
        assert set(keys) <= KNOWN_KEYS[section], f"unknown keys in {section}: {set(keys) - KNOWN_KEYS[section]}"

    python = os.path.realpath(sys.executable)
    assert manifest["libos"]["entrypoint"] == python
    assert manifest["loader"]["entrypoint"]["uri"] == f"file:{render.DEFAULT_GRAMINE_PKGLIBDIR}/libsysdb.so"
    assert manifest["loader"]["argv"] == [python, "-m", f"runtime.{role}", *RUNTIME_ARGS[role], *TRANSPORT_TAIL]
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is (mode == "debug")
    assert size_bytes(sgx["enclave_size"]) >= 4 << 30
    assert sgx["max_threads"] >= 64
    assert sgx["file_check_policy"] == "strict"
    assert sgx["isvprodid"] == 1 and sgx["isvsvn"] == 1
    env = manifest["loader"]["env"]
    for name in RA_TLS_VARIABLES:
        assert isinstance(env[name], str), f"{name} must be a fixed string, found {env[name]!r}"
    assert env["RA_TLS_MRSIGNER"] == render.mrsigner_of_key(signing_key)
    assert env["RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE"] == ("1" if mode == "debug" else "0")
    # /app, then (when the suite runs in a virtual environment) the environment's own site-packages.
    environment = [p for p in sys.path if sys.prefix != sys.base_prefix and p.startswith(sys.prefix + "/")
                   and p.endswith("site-packages")]
    assert env["PYTHONPATH"].split(":") == ["/app", *environment] and env["PYTHONSAFEPATH"] == "1"
    assert int(env["TF_NUM_INTRAOP_THREADS"]) + int(env["TF_NUM_INTEROP_THREADS"]) < sgx["max_threads"]


# ----------------------------------------------------------------------------------------------------------
# schema: forbidden keys and values


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
def test_manifest_has_no_insecure_keys(manifests, role, mode):
    _, manifest = manifests[role, mode]
    keys = dict(walk(manifest))
    insecure = [key for key in keys if "insecure__" in key]
    assert not insecure, f"insecure options in the {mode} {role} manifest: {insecure}"
    assert "loader.insecure__use_host_env" not in keys and "loader.insecure__use_cmdline_argv" not in keys
    assert "fs.insecure__keys" not in keys
    assert manifest["sgx"].get("file_check_policy", "strict") != "allow_all_but_log"
    for name, value in manifest["loader"]["env"].items():
        # Fixed values only: nothing comes from the host, RA_TLS_* least of all.
        assert isinstance(value, str) or set(value) == {"value"}, f"loader.env.{name} = {value!r}"
    if mode == "release":
        assert manifest["sgx"]["debug"] is False
        assert manifest["loader"]["log_level"] == "error"
        assert manifest["loader"]["env"]["RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE"] == "0"


@pytest.mark.parametrize(("role", "path"), [("ps", "/checkpoints"), ("worker", "/data"), ("chief", "/data")])
def test_data_at_rest_is_sealed(manifests, role, path):
    _, manifest = manifests[role, "release"]
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    assert mounts[path]["type"] == "encrypted"
    assert mounts[path]["key_name"] == "_sgx_mrsigner"
    encrypted = [m for m in manifest["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert encrypted == [mounts[path]], "one sealed mount per role"
    # The host directory is neither trusted nor allowed: only the encrypted mount reaches it.
    host_dir = mounts[path]["uri"].removeprefix("file:")
    assert not any(uri.removeprefix("file:").startswith(host_dir)
                   for uri in trusted_uris(manifest) + manifest["sgx"]["allowed_files"])
    assert mounts["/tmp"]["type"] == "tmpfs"


# ----------------------------------------------------------------------------------------------------------
# what is measured


@pytest.mark.parametrize("role", ROLES)
def test_python_tensorflow_grpc_and_native_libraries_are_trusted_and_mounted(manifests, role):
    _, manifest = manifests[role, "release"]
    python = os.path.realpath(sys.executable)
    # Located without importing them (TensorFlow takes seconds to import).
    packages = {name: Path(importlib.util.find_spec(name).origin).parent
                for name in ("tensorflow", "grpc", "google.protobuf", "numpy", "cffi", "cryptography")}
    needed = [python, os.__file__, *(str(p / "__init__.py") for p in packages.values()),
              *map(str, (packages["grpc"] / "_cython").glob("cygrpc*.so")),
              *map(str, (packages["tensorflow"]).glob("libtensorflow_framework.so*"))]
    assert len(needed) == 10, needed
    for path in needed:
        assert is_trusted(path, manifest), f"{path} is not a trusted file"
        assert is_mounted(path, manifest), f"{path} is not visible in the enclave"
    # Gramine's RA-TLS attester and in-enclave DCAP verifier, and the DCAP libraries, where the packages put them.
    for name in ("libra_tls_attest.so", "libra_tls_verify_dcap_gramine.so", "libsgx_dcap_quoteverify.so.1",
                 "libdcap_quoteprov.so.1", "libsgx_default_qcnl_wrapper.so.1"):
        assert is_trusted(f"/usr/lib/x86_64-linux-gnu/{name}", manifest)
        assert is_mounted(f"/usr/lib/x86_64-linux-gnu/{name}", manifest)
    assert is_trusted(f"{render.DEFAULT_GRAMINE_PKGLIBDIR}/runtime/glibc/libc.so.6", manifest)
    assert "file:/etc/sgx_default_qcnl.conf" in manifest["sgx"]["allowed_files"]
    # Our extension and sim library, OpenSSL linked in, are measured application files.
    native = sorted(uri for uri in trusted_uris(manifest) if uri.endswith(".so") and uri.startswith("file:ratls/"))
    assert "file:ratls/libratls_sim.so" in native
    assert f"file:ratls/_native{__import__('sysconfig').get_config_var('EXT_SUFFIX')}" in native
    # The packages are mounted where PYTHONPATH points, each from its measured directory.
    mounts = {m["path"]: m.get("uri") for m in manifest["fs"]["mounts"]}
    assert mounts["/app/ratls"] == "file:ratls" and mounts["/app/runtime"] == "file:runtime"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
def test_application_files_are_what_the_sim_provider_measures(manifests, role, mode):
    _, manifest = manifests[role, mode]
    application = [uri.removeprefix("file:") for uri in trusted_uris(manifest) if not uri.startswith("file:/")]
    measured = [path.relative_to(BASE_DIR).as_posix() for path in runtime_files()]
    assert application == measured
    # The same MRENCLAVE as the runtime's sim identity (runtime/transport.py measures runtime_files()).
    from_manifest = ratls.measure([BASE_DIR / name for name in application], root=BASE_DIR)
    assert from_manifest == ratls.measure(runtime_files(), root=BASE_DIR)
    assert from_manifest.hex() == render.sim_mrenclave()


def test_manifest_follows_runtime_files_of_the_tree(tmp_path, signing_key):
    for name in ("ratls/__init__.py", "ratls/_native.so", "runtime/__init__.py", "runtime/proto/ps_pb2.py",
                 "runtime/__pycache__/ps.cpython-311.pyc", "runtime/notes.txt", "runtime/.hidden.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    _, manifest = rendered("worker", options(signing_key, role="worker", base_dir=tmp_path))
    application = [uri.removeprefix("file:") for uri in trusted_uris(manifest) if not uri.startswith("file:/")]
    assert application == ["ratls/__init__.py", "ratls/_native.so", "runtime/__init__.py", "runtime/proto/ps_pb2.py"]
    assert application == [p.relative_to(tmp_path).as_posix() for p in runtime_files(tmp_path)]


def test_input_directory_is_trusted_and_mounted(tmp_path, signing_key):
    (tmp_path / "train.tsv").write_text("1\t2\n")
    _, manifest = rendered("worker", options(signing_key, role="worker", input_dir=str(tmp_path)))
    assert f"file:{tmp_path}/" in trusted_uris(manifest)
    assert {"path": "/input", "uri": f"file:{tmp_path}"} in manifest["fs"]["mounts"]
    _, without = rendered("worker", options(signing_key, role="worker"))
    assert all(m["path"] != "/input" for m in without["fs"]["mounts"])


# ----------------------------------------------------------------------------------------------------------
# the peers' policy


@pytest.mark.parametrize("mode", MODES)
def test_ratls_reads_the_manifest_policy(manifests, signing_key, monkeypatch, mode):
    _, manifest = manifests["worker", mode]
    for name in RA_TLS_VARIABLES:
        monkeypatch.setenv(name, manifest["loader"]["env"][name])
    policy = ratls.Policy.from_env()
    assert policy.mrsigner == (bytes.fromhex(render.mrsigner_of_key(signing_key)),)
    assert policy.mrenclave == ()  # any: every instance has its own MRENCLAVE (see manifests/README.md)
    assert policy.isv_prod_id == 1 and policy.min_isv_svn == 1
    assert policy.allow_debug is (mode == "debug")
    assert policy.allowed_tcb_statuses == ("UpToDate",)
    assert policy.allow_simulated is False


def test_policy_options_reach_the_manifest(signing_key, monkeypatch):
    mrenclave = "AB" * 32
    _, manifest = rendered("ps", options(signing_key, isv_prod_id=7, isv_svn=3, min_peer_svn=2,
                                         peer_mrenclave=mrenclave, peer_mrsigner="cd" * 32, allow_outdated_tcb=True,
                                         allow_hw_config_needed=True))
    env = manifest["loader"]["env"]
    assert (env["RA_TLS_MRENCLAVE"], env["RA_TLS_MRSIGNER"]) == ("ab" * 32, "cd" * 32)
    assert (manifest["sgx"]["isvprodid"], manifest["sgx"]["isvsvn"]) == (7, 3)
    for name in RA_TLS_VARIABLES:
        monkeypatch.setenv(name, env[name])
    policy = ratls.Policy.from_env()
    assert (policy.isv_prod_id, policy.min_isv_svn) == (7, 2)
    assert {"UpToDate", "OutOfDate", "ConfigurationNeeded", "OutOfDateConfigurationNeeded"} == set(
        policy.allowed_tcb_statuses)


def test_mrsigner_is_the_hash_of_the_little_endian_modulus(signing_key, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_pem_private_key(signing_key.read_bytes(), None)
    modulus = key.public_key().public_numbers().n
    assert render.mrsigner_of_key(signing_key) == hashlib.sha256(modulus.to_bytes(384, "little")).hexdigest()
    assert render.mrsigner_of_key(signing_key) != hashlib.sha256(modulus.to_bytes(384, "big")).hexdigest()
    public = tmp_path / "public.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    assert render.mrsigner_of_key(public) == render.mrsigner_of_key(signing_key)
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(render.ManifestError, match="RSA-3072 and public exponent 3.*RSA-2048 with exponent 65537"):
        render.mrsigner_of_key(wrong)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(render.ManifestError, match="not an unencrypted PEM RSA key"):
        render.mrsigner_of_key(garbage)
    with pytest.raises(render.ManifestError, match="cannot read"):
        render.mrsigner_of_key(tmp_path / "missing.pem")


def test_release_manifests_must_pin_their_peers():
    with pytest.raises(render.ManifestError, match="release manifests must pin their peers"):
        render.manifest_variables("ps", options(None))
    with pytest.raises(render.ManifestError, match="must pin their peers"):
        render.manifest_variables("ps", options(None, peer_mrsigner="any", peer_mrenclave="any"))
    variables = render.manifest_variables("ps", options(None, mode="debug"))
    assert (variables["ra_tls_mrenclave"], variables["ra_tls_mrsigner"]) == ("any", "any")


def test_the_manifest_fixes_where_tcb_status_comes_from(signing_key):
    _, manifest = rendered("ps", options(signing_key, pccs_url=None))
    assert manifest["loader"]["argv"][-2:] == ["--collateral", "gramine"]  # explicit, never a silent default
    with pytest.raises(render.ManifestError, match="--pccs-url: expected http"):
        render.manifest_variables("ps", options(signing_key, pccs_url='https://x", "--sim-ca", "/tmp'))
    with pytest.raises(render.ManifestError, match="--collateral is fixed by the manifest"):
        render.manifest_variables("ps", options(signing_key, runtime_args=("--collateral", "http://evil")))


# ----------------------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("args", [["--security", "insecure"], ["--secu=insecure"], ["--provider", "sim"],
                                  ["--sim-ca", "/tmp/ca"], ["--mrenclave", "00" * 32], ["--tls-ca", "/tmp/ca"],
                                  ["--steps", "5", "--prov", "sim"]])
def test_transport_options_are_fixed(signing_key, args):
    with pytest.raises(render.ManifestError, match="is fixed by the manifest"):
        render.manifest_variables("ps", options(signing_key, runtime_args=tuple(args)))


@pytest.mark.parametrize(("args", "message"), [
    (["--plan", "/tmp/plan.toml"], "expected a file under /input"),
    (["--plan=/input/../tmp/plan.toml"], "expected a file under /input"),
    (["--plan"], "expected a file under /input"),
    (["--participant-key", "/input/key.pem"], "expected a file under /data"),
    (["--participant-key=/output/key.pem"], "expected a file under /data"),
    (["--pla", "/input/plan.toml"], "spell out --plan"),
])
def test_federation_files_must_be_measured_or_sealed(signing_key, args, message):
    """The plan is measured configuration (a trusted file), the participant's key a sealed secret: a manifest whose
    arguments point anywhere the host controls is refused."""
    with pytest.raises(render.ManifestError, match=message):
        render.manifest_variables("worker", options(signing_key, runtime_args=tuple(args)))


def test_federation_files_in_their_mounts_are_accepted(signing_key):
    args = ("--plan", "/input/plan.toml", "--participant-key=/data/alice.key.pem")
    _, manifest = rendered("worker", options(signing_key, runtime_args=args))
    assert manifest["loader"]["argv"][3:5] == ["--plan", "/input/plan.toml"]


def test_runtime_arguments_are_quoted_not_interpreted(signing_key):
    args = ('--listen', '0.0.0.0:7000"', '", "--security", "insecure', "back\\slash", "new\nline", "naïve ✓", "")
    _, manifest = rendered("ps", options(signing_key, runtime_args=args))
    assert manifest["loader"]["argv"][3:] == [*args, *TRANSPORT_TAIL]
    with pytest.raises(render.ManifestError, match="not valid Unicode"):
        render.manifest_variables("ps", options(signing_key, runtime_args=("bad\udcff",)))


@pytest.mark.parametrize("role", ["ps", "worker"])
def test_argv_parses_with_the_runtime_parser(manifests, role):
    import argparse
    import importlib

    module = importlib.import_module(f"runtime.{role}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    _, manifest = manifests[role, "release"]
    argv = manifest["loader"]["argv"]
    assert argv[1:3] == ["-m", f"runtime.{role}"]
    args = parser.parse_args(argv[3:])
    assert (args.security, args.provider, args.sim_ca, args.mrenclave) == ("ratls", "gramine", None, None)
    assert args.collateral == PCCS_URL


@pytest.mark.parametrize(("changes", "message"), [
    ({"enclave_size": "6G"}, "powers of two"),
    ({"enclave_size": "8g"}, "K, M or G suffix"),
    ({"isv_svn": 70000}, "--isv-svn: expected 0..65535"),
    ({"isv_prod_id": -1}, "--isv-prod-id: expected 0..65535"),
    ({"peer_mrsigner": "ab" * 31}, "--peer-mrsigner: expected 64 hex digits"),
    ({"peer_mrenclave": "zz" * 32}, "--peer-mrenclave: expected 64 hex digits"),
    ({"instance": "../ps"}, "--instance"),
    ({"checkpoint_dir": 'ckpt"x'}, "--checkpoint-dir"),
    ({"output_dir": "out dir"}, "--output-dir"),
    ({"data_dir": "state/x", "output_dir": "state/x/out"}, "overlap"),
    ({"checkpoint_dir": "same", "data_dir": "same"}, "overlap"),
    ({"input_dir": "/nonexistent/input"}, "--input-dir: /nonexistent/input is not a directory"),
    ({"log_level": "debug"}, "release builds log errors only"),
    ({"max_threads": 16}, "--max-threads: expected at least"),
    ({"cpu_threads": 0}, "--cpu-threads"),
    ({"build_mode": "profile"}, "build mode"),
])
def test_bad_parameters_are_refused(signing_key, changes, message):
    with pytest.raises(render.ManifestError, match=message):
        render.manifest_variables("ps", options(signing_key, **changes))


def test_unknown_role_is_refused(signing_key):
    with pytest.raises(render.ManifestError, match="role: expected one of ps, worker, chief"):
        render.manifest_variables("driver", options(signing_key))


# ----------------------------------------------------------------------------------------------------------
# rendering as gramine-manifest does


def test_templates_render_without_a_loader_and_with_strict_undefined(manifests):
    env = render.gramine_environment()
    assert env.loader is None and env.undefined is jinja2.StrictUndefined
    variables, _ = manifests["ps", "release"]
    for role in ROLES:
        text = render.template_text(role)
        assert not list(env.parse(text).find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)))
        with pytest.raises(jinja2.UndefinedError, match="cpu_threads"):
            env.from_string(text).render(**{k: v for k, v in variables.items() if k != "cpu_threads"})
        with pytest.raises(jinja2.UndefinedError, match="build_mode_must_be_release_or_debug"):
            env.from_string(text).render(**dict(variables, build_mode="relase"))


def run_render(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(MANIFESTS / "render.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


def test_defines_carry_exactly_the_template_variables(signing_key, tmp_path):
    args = ["--signing-key", str(signing_key), "--instance", "worker-3", "--pccs-url", PCCS_URL, "--",
            *RUNTIME_ARGS["worker"]]
    result = run_render("defines", "worker", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("-D") and "=" in line for line in lines)
    defines = dict(line[2:].split("=", 1) for line in lines)
    variables = render.manifest_variables("worker", options(signing_key, role="worker", instance="worker-3"))
    assert defines == variables
    assert defines["data_dir"] == "build/sgx/worker-3/data"
    # The CLI's own rendering equals rendering those defines.
    out = tmp_path / "worker.manifest"
    result = run_render("render", "worker", "-o", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == render.render("worker", defines)


def test_cli_lists_the_measured_files_and_reports_errors():
    result = run_render("files")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [p.relative_to(BASE_DIR).as_posix() for p in runtime_files()]
    assert f"sim MRENCLAVE {ratls.measure(runtime_files(), root=BASE_DIR).hex()}" in result.stderr
    result = run_render("defines", "ps", "--peer-mrsigner", "ab" * 32, "--pccs-url", PCCS_URL, "--", "--security",
                        "insecure")
    assert result.returncode == 2
    assert "--security is fixed by the manifest" in result.stderr


def test_build_script_stops_without_gramine(tmp_path):
    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(MANIFESTS / "build.sh")], timeout=30).returncode == 0
    # A PATH with no Gramine tools on it, even on a machine that has them.
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))
    env = dict(os.environ, PATH=str(tmp_path))
    result = subprocess.run([bash, str(MANIFESTS / "build.sh"), "ps", "ps"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1
    assert "gramine-manifest not found" in result.stderr
    assert not (REPO / "build" / "sgx" / "ps.manifest").exists()

"""The federation plan: parsing TOML and JSON alike, a digest that depends on what is trusted and on nothing else,
one clear message per schema error, participants' certificates under the federation CA, role policies, and the
launcher's local plans."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from runtime.federation.plan import (
    MAX_PLAN_BYTES,
    PlanError,
    RolePolicy,
    _toml_string,
    load_plan,
    write_local_plan,
)
from runtime.federation.proof import ParticipantKey

MRENCLAVE = "ab" * 32
MRSIGNER = "cd" * 32
OTHER = "ef" * 32
ALPHA_KEY = ed25519.Ed25519PrivateKey.generate()
BETA_KEY = ec.generate_private_key(ec.SECP256R1())
GAMMA_KEY = ec.generate_private_key(ec.SECP384R1())

PLAN_TOML = f"""\
[federation]
name = "acme-ads"

[[participants]]
name = "alpha"
roles = ["worker"]
public_key = "alpha.pub.pem"

[[participants]]
name = "beta"
roles = ["chief", "worker"]
public_key = "beta.pub.pem"

[roles.worker]
mrenclave = "any"
mrsigner = "{MRSIGNER}"

[roles.chief]
mrenclave = ["{OTHER}", "{MRENCLAVE}"]
mrsigner = "any"
min_isv_svn = 3
allow_debug = true

[ps]
endpoints = ["ps0:7000", " ps1:7000/7100 ", "[::1]:7002"]
"""


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def base_plan() -> dict:
    """PLAN_TOML as a Python structure (what tomllib makes of it)."""
    return tomllib.loads(PLAN_TOML)


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / "alpha.pub.pem").write_text(public_pem(ALPHA_KEY))
    (tmp_path / "beta.pub.pem").write_text(public_pem(BETA_KEY))
    return tmp_path


def write_json(directory: Path, plan: dict, name: str = "plan.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(plan, indent=2))
    return path


def make_ca(name: str = "Acme federation CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, subject_key, *, days_valid=(-1, 30)) -> str:
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "participant")]))
            .issuer_name(ca_cert.subject).public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now + dt.timedelta(days=days_valid[0]))
            .not_valid_after(now + dt.timedelta(days=days_valid[1])).sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# ---- valid plans and the digest ----


def test_a_toml_plan_loads(plan_dir):
    (plan_dir / "plan.toml").write_text(PLAN_TOML)
    plan = load_plan(plan_dir / "plan.toml")
    assert plan.path == str(plan_dir / "plan.toml")
    assert plan.federation == "acme-ads"
    assert list(plan.participants) == ["alpha", "beta"]
    beta = plan.participant("beta")
    assert beta.roles == ("worker", "chief")  # normalized to ROLES order
    assert beta.public_key == BETA_KEY.public_key()
    spki = BETA_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert beta.spki_sha256 == hashlib.sha256(spki).digest()
    assert plan.participant("nobody") is None
    assert plan.roles["worker"] == RolePolicy(None, frozenset({bytes.fromhex(MRSIGNER)}), 0, False)
    assert plan.roles["chief"] == RolePolicy(frozenset({bytes.fromhex(MRENCLAVE), bytes.fromhex(OTHER)}), None, 3,
                                             True)
    # Endpoints keep their order (the shard index) and are written as runtime.transport prints them.
    assert plan.ps_endpoints == ("ps0:7000", "ps1:7000/7100", "[::1]:7002")
    assert len(plan.digest) == 32 and plan.digest_hex == plan.digest.hex()


def test_the_digest_follows_the_documented_rule(plan_dir):
    """Recomputed here from the inputs, as another implementation would, not from to_dict()."""
    (plan_dir / "plan.toml").write_text(PLAN_TOML)
    plan = load_plan(plan_dir / "plan.toml")

    def spki_hex(key) -> str:
        return key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).hex()

    expected = {
        "version": 1,
        "federation": "acme-ads",
        "participants": [{"name": "alpha", "roles": ["worker"], "public_key": spki_hex(ALPHA_KEY)},
                         {"name": "beta", "roles": ["worker", "chief"], "public_key": spki_hex(BETA_KEY)}],
        "roles": {"worker": {"mrenclave": "any", "mrsigner": [MRSIGNER], "min_isv_svn": 0, "allow_debug": False},
                  "chief": {"mrenclave": sorted([MRENCLAVE, OTHER]), "mrsigner": "any", "min_isv_svn": 3,
                            "allow_debug": True}},
        "ps_endpoints": ["ps0:7000", "ps1:7000/7100", "[::1]:7002"],
    }
    assert plan.to_dict() == expected
    canonical = json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert plan.digest == hashlib.sha256(canonical).digest()


def test_toml_and_json_give_the_same_digest(plan_dir):
    (plan_dir / "plan.toml").write_text(PLAN_TOML)
    from_toml = load_plan(plan_dir / "plan.toml")
    from_json = load_plan(write_json(plan_dir, base_plan()))
    assert from_json.digest == from_toml.digest
    assert from_json.to_dict() == from_toml.to_dict()


def test_the_digest_does_not_depend_on_paths_pem_layout_or_order(plan_dir):
    reference = load_plan(write_json(plan_dir, base_plan())).digest

    inline = base_plan()
    inline["participants"][0]["public_key"] = public_pem(ALPHA_KEY)
    (plan_dir / "keys").mkdir()
    (plan_dir / "keys" / "b.pem").write_text("\n\n" + public_pem(BETA_KEY) + "\n")
    inline["participants"][1]["public_key"] = "keys/b.pem"
    assert load_plan(write_json(plan_dir, inline, "inline.json")).digest == reference

    reordered = base_plan()
    reordered["participants"].reverse()
    reordered["participants"][0]["roles"].reverse()
    reordered["roles"]["chief"]["mrenclave"].reverse()
    assert load_plan(write_json(plan_dir, reordered, "reordered.json")).digest == reference

    ca = make_ca()
    (plan_dir / "ca.pem").write_text(pem(ca[1]))
    certified = base_plan()
    certified["federation"]["ca"] = "ca.pem"
    del certified["participants"][0]["public_key"]
    certified["participants"][0]["certificate"] = issue(ca, ALPHA_KEY)
    assert load_plan(write_json(plan_dir, certified, "certified.json")).digest == reference


@pytest.mark.parametrize("change", [
    lambda p: p["federation"].update(name="other-fed"),
    lambda p: p["participants"][0].update(name="alpha2"),
    lambda p: p["participants"][0].update(roles=["worker", "chief"]),
    lambda p: p["roles"]["chief"].update(min_isv_svn=4),
    lambda p: p["roles"]["chief"].update(allow_debug=False),
    lambda p: p["roles"]["worker"].update(mrenclave=MRENCLAVE),
    lambda p: p["ps"]["endpoints"].reverse(),
], ids=["federation", "name", "roles", "min_isv_svn", "allow_debug", "mrenclave", "endpoint-order"])
def test_the_digest_changes_with_what_is_trusted(plan_dir, change):
    reference = load_plan(write_json(plan_dir, base_plan())).digest
    changed = base_plan()
    change(changed)
    assert load_plan(write_json(plan_dir, changed, "changed.json")).digest != reference


# ---- schema errors: one clear message each ----


def _set(path: str, value):
    def change(plan: dict) -> None:
        *parents, last = path.split(".")
        node = plan
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


DELETE = object()
RSA_KEY = rsa.generate_private_key(65537, 2048)
P521_KEY = ec.generate_private_key(ec.SECP521R1())


def _add_participant(**fields):
    return lambda plan: plan["participants"].append({"name": "gamma", "roles": ["worker"], **fields})


BAD_PLANS = {
    "unknown-top-key": (_set("extra", 1), "extra: unknown key (known: federation, participants, roles, ps)"),
    "missing-ps": (_set("ps", DELETE), "ps: required"),
    "federation-name": (_set("federation.name", "acme ads!"),
                        "federation.name: expected 1-64 characters [A-Za-z0-9._-], found 'acme ads!'"),
    "federation-unknown-key": (_set("federation.owner", "x"), "federation.owner: unknown key (known: name, ca)"),
    "no-participants": (_set("participants", []), "participants: expected a non-empty array of tables, found []"),
    "participant-name": (_set("participants.0.name", "-alpha"),
                         "participants[0].name: expected 1-128 characters [A-Za-z0-9_.-] not starting with a "
                         "punctuation mark, found '-alpha'"),
    "unknown-role": (_set("participants.1.roles", ["admin"]),
                     "participants[1].roles: expected a list of 'worker'/'chief', found ['admin']"),
    "no-roles": (_set("participants.0.roles", []), "participants[0].roles: expected a list of 'worker'/'chief', "
                                                   "found []"),
    "duplicate-role": (_set("participants.0.roles", ["worker", "worker"]),
                       "participants[0].roles: a role is listed twice in ['worker', 'worker']"),
    "participant-unknown-key": (_set("participants.0.weight", 2),
                                "participants[0].weight: unknown key (known: name, roles, public_key, certificate)"),
    "key-and-certificate": (_set("participants.0.certificate", "a.crt.pem"),
                            "participants[0]: expected exactly one of public_key and certificate"),
    "neither-key-nor-certificate": (_set("participants.0.public_key", DELETE),
                                    "participants[0]: expected exactly one of public_key and certificate"),
    "missing-key-file": (_set("participants.0.public_key", "nowhere.pem"),
                         "participants[0].public_key: cannot read "),
    "not-a-key": (_set("participants.0.public_key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                  "participants[0].public_key: not a PEM public key"),
    "private-key": (_set("participants.0.public_key", ALPHA_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()),
                    "participants[0].public_key: this is a private key; a plan holds public keys only"),
    "rsa-key": (_set("participants.0.public_key", public_pem(RSA_KEY)),
                "participants[0].public_key: expected an Ed25519, EC P-256 or EC P-384 key, found RSAPublicKey"),
    "p521-key": (_set("participants.0.public_key", public_pem(P521_KEY)),
                 "participants[0].public_key: expected an Ed25519, EC P-256 or EC P-384 key, found EC secp521r1"),
    "duplicate-name": (_set("participants.1.name", "alpha"), "participants[1].name: 'alpha' is listed twice"),
    "duplicate-key": (_add_participant(public_key=public_pem(ALPHA_KEY)),
                      "participants[2]: the same key as participant 'alpha': one company, one key"),
    "certificate-without-ca": (_add_participant(certificate="gamma.crt.pem"),
                               "participants[2].certificate: needs federation.ca"),
    "role-without-policy": (_set("roles.chief", DELETE),
                            "roles.chief: required: participant 'beta' takes this role"),
    "unknown-role-policy": (_set("roles.admin", {"mrenclave": "any", "mrsigner": "any"}),
                            "roles.admin: unknown key (known: worker, chief)"),
    "missing-mrsigner": (_set("roles.worker.mrsigner", DELETE), "roles.worker.mrsigner: required"),
    "bad-mrenclave": (_set("roles.worker.mrenclave", "abc"),
                      'roles.worker.mrenclave: expected 64 hex digits, a non-empty list of them, or "any", '
                      "found 'abc'"),
    "empty-mrsigner": (_set("roles.chief.mrsigner", []), 'roles.chief.mrsigner: expected 64 hex digits, a '
                                                         'non-empty list of them, or "any", found []'),
    "negative-svn": (_set("roles.chief.min_isv_svn", -1),
                     "roles.chief.min_isv_svn: expected an integer 0..65535, found -1"),
    "string-debug-flag": (_set("roles.worker.allow_debug", "false"),
                          "roles.worker.allow_debug: expected true or false, found 'false'"),
    "role-policy-unknown-key": (_set("roles.worker.isv_prod_id", 1),
                                "roles.worker.isv_prod_id: unknown key (known: mrenclave, mrsigner, min_isv_svn, "
                                "allow_debug, mrtd)"),
    "endpoints-not-a-list": (_set("ps.endpoints", "ps0:7000"), "ps.endpoints: expected a list of "
                                                               "host:port[/attestation_port], found 'ps0:7000'"),
    "bad-endpoint": (_set("ps.endpoints", ["ps0"]), "ps.endpoints[0]: address 'ps0': expected host:port"),
    "duplicate-endpoint": (_set("ps.endpoints", ["ps0:7000", "ps0:7000/7005"]),
                           "ps.endpoints[1]: 'ps0:7000/7005' is listed twice"),
}


@pytest.mark.parametrize("name", BAD_PLANS)
def test_each_schema_error_has_its_own_message(plan_dir, name):
    change, message = BAD_PLANS[name]
    plan = base_plan()
    change(plan)
    path = write_json(plan_dir, plan)
    with pytest.raises(PlanError) as error:
        load_plan(path)
    assert str(error.value).startswith(f"plan {path}: {message}")


@pytest.mark.parametrize("name, text, message", [
    ("plan.yaml", PLAN_TOML, "expected a .toml or .json file, found .yaml"),
    ("plan.toml", "[federation\n", "not valid TOML: "),
    ("plan.toml", 'name = "a"\nname = "b"\n', "not valid TOML: "),
    ("plan.json", '{"federation": {"name": "a", "name": "b"}}', "not valid JSON: key 'name' appears twice"),
    ("plan.json", '{"roles": NaN}', "not valid JSON: NaN is not a JSON number"),
    ("plan.json", "[1, 2]", "expected a table, found [1, 2]"),
    ("plan.toml", "x" * (MAX_PLAN_BYTES + 1), f"larger than {MAX_PLAN_BYTES} bytes"),
    ("missing.toml", None, "cannot read: No such file or directory"),
])
def test_unreadable_plan_files(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(PlanError) as error:
        load_plan(path)
    assert str(error.value).startswith(f"plan {path}: {message}")


# ---- participants' certificates ----


def certified_plan(plan_dir: Path, ca_cert: x509.Certificate, certificate: str) -> Path:
    (plan_dir / "ca.pem").write_text(pem(ca_cert))
    (plan_dir / "gamma.crt.pem").write_text(certificate)
    plan = base_plan()
    plan["federation"]["ca"] = "ca.pem"
    plan["participants"].append({"name": "gamma", "roles": ["worker"], "certificate": "gamma.crt.pem"})
    return write_json(plan_dir, plan)


def test_a_certificate_under_the_federation_ca_is_accepted(plan_dir):
    ca = make_ca()
    plan = load_plan(certified_plan(plan_dir, ca[1], issue(ca, GAMMA_KEY)))
    assert plan.participant("gamma").public_key == GAMMA_KEY.public_key()


def test_a_certificate_under_another_ca_is_refused(plan_dir):
    federation_ca, other_ca = make_ca(), make_ca()  # the same name, another key: only the signature differs
    path = certified_plan(plan_dir, federation_ca[1], issue(other_ca, GAMMA_KEY))
    with pytest.raises(PlanError, match=r"participants\[2\]\.certificate: not issued by the federation CA "
                                        r"\(CN=Acme federation CA\)"):
        load_plan(path)


def test_an_expired_certificate_is_refused(plan_dir):
    ca = make_ca()
    path = certified_plan(plan_dir, ca[1], issue(ca, GAMMA_KEY, days_valid=(-30, -1)))
    with pytest.raises(PlanError, match=r"participants\[2\]\.certificate: not valid now \(.*\): valid from "):
        load_plan(path)


def test_a_certificate_with_an_unsupported_key_is_refused(plan_dir):
    ca = make_ca()
    path = certified_plan(plan_dir, ca[1], issue(ca, RSA_KEY))
    with pytest.raises(PlanError, match=r"participants\[2\]\.certificate: expected an Ed25519, EC P-256 or EC "
                                        r"P-384 key, found RSAPublicKey"):
        load_plan(path)


# ---- role policies ----


def evidence(mrenclave=MRENCLAVE, mrsigner=MRSIGNER, isv_svn=5, debug=False):
    return SimpleNamespace(tee="sgx", mrenclave=bytes.fromhex(mrenclave), mrsigner=bytes.fromhex(mrsigner),
                           isv_svn=isv_svn, debug=debug)


STRICT = RolePolicy(frozenset({bytes.fromhex(MRENCLAVE)}), frozenset({bytes.fromhex(MRSIGNER)}), 5, False)


@pytest.mark.parametrize("policy, presented, refusal", [
    (STRICT, evidence(), None),
    (RolePolicy(None, None), evidence(mrenclave=OTHER, mrsigner=OTHER, isv_svn=0), None),
    (STRICT, evidence(mrenclave=OTHER), f"mrenclave: expected {MRENCLAVE}, found {OTHER}"),
    (RolePolicy(frozenset({bytes.fromhex(MRENCLAVE), bytes.fromhex(MRSIGNER)}), None), evidence(mrenclave=OTHER),
     f"mrenclave: expected one of {MRENCLAVE}, {MRSIGNER}, found {OTHER}"),
    (STRICT, evidence(mrsigner=OTHER), f"mrsigner: expected {MRSIGNER}, found {OTHER}"),
    (STRICT, evidence(isv_svn=4), "isv_svn: expected at least 5, found 4"),
    (STRICT, evidence(debug=True), "debug: expected a production enclave, found a debug enclave"),
    (RolePolicy(None, None, allow_debug=True), evidence(debug=True), None),
], ids=["meets", "any", "mrenclave", "mrenclave-one-of", "mrsigner", "isv_svn", "debug", "debug-allowed"])
def test_role_policy_refusal(policy, presented, refusal):
    assert policy.refusal(presented) == refusal


@pytest.mark.parametrize("fields, message", [
    ({"mrenclave": frozenset()}, "mrenclave: an empty set would accept nothing"),
    ({"mrsigner": frozenset({b"\x01" * 31})}, "mrsigner: expected 32-byte measurements, found 31 bytes"),
    ({"min_isv_svn": True}, "min_isv_svn: expected an integer 0..65535, found True"),
    ({"min_isv_svn": 65536}, "min_isv_svn: expected an integer 0..65535, found 65536"),
    ({"allow_debug": 1}, "allow_debug: expected true or false, found 1"),
])
def test_role_policy_checks_its_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        RolePolicy(**{"mrenclave": None, "mrsigner": None, **fields})


def test_role_policy_takes_any_iterable_of_measurements():
    policy = RolePolicy([bytes.fromhex(MRENCLAVE)], None)
    assert policy.mrenclave == frozenset({bytes.fromhex(MRENCLAVE)})


# ---- the launcher's local plans ----


def test_write_local_plan_round_trips(tmp_path):
    roles = {"worker": RolePolicy(frozenset({bytes.fromhex(MRENCLAVE)}), None),
             "chief": RolePolicy(None, frozenset({bytes.fromhex(MRSIGNER), bytes.fromhex(OTHER)}), 2, True)}
    participants = {"worker-0": ("worker",), "worker-1": ("worker",), "chief": ("chief", "worker")}
    plan_path, key_paths = write_local_plan(tmp_path / "fed", "local-job", participants, roles,
                                            ["127.0.0.1:7000/7001", "[::1]:7002"])
    assert plan_path == tmp_path / "fed" / "plan.toml"
    assert key_paths == {name: tmp_path / "fed" / f"{name}.key.pem" for name in participants}

    plan = load_plan(plan_path)
    assert plan.federation == "local-job"
    assert plan.roles == roles
    assert plan.ps_endpoints == ("127.0.0.1:7000/7001", "[::1]:7002")
    assert {name: p.roles for name, p in plan.participants.items()} == {
        "worker-0": ("worker",), "worker-1": ("worker",), "chief": ("worker", "chief")}
    for name, key_path in key_paths.items():
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        assert ParticipantKey.load(key_path).public_key == plan.participant(name).public_key
    assert b"PRIVATE" not in plan_path.read_bytes()


def test_write_local_plan_refuses_a_bad_plan_and_leaves_nothing(tmp_path):
    directory = tmp_path / "fed"
    with pytest.raises(PlanError, match=r"participants\[0\]\.name: expected 1-128 characters"):
        write_local_plan(directory, "local", {"../escape": ("worker",)}, {"worker": RolePolicy(None, None)},
                         ["127.0.0.1:7000"])
    assert list(directory.iterdir()) == []
    assert not (tmp_path / "escape.key.pem").exists()


@pytest.mark.parametrize("text", ['a "quoted" \\ back\\slash', "tab\there\nnewline\r\x00\x1f\x7f", "é ü ✓ 😀",
                                  "'''", '"""', ""])
def test_toml_strings_are_escaped(text):
    assert tomllib.loads(f"value = {_toml_string(text)}\n")["value"] == text

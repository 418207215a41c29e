"""Shared fixtures: paths to ../shared/testdata, a throwaway simulation CA, identities and matching policies."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.fail(f"{TESTDATA} is missing: tests need ../shared beside the repository")
    return TESTDATA


@pytest.fixture(scope="session")
def sim_ca(tmp_path_factory):
    import ratls

    return ratls.SimCA.init(tmp_path_factory.mktemp("sim-ca"))


@pytest.fixture(scope="session")
def measured_tree(tmp_path_factory) -> Path:
    """A small 'application' whose files are the enclave measurement."""
    root = tmp_path_factory.mktemp("app")
    (root / "main.py").write_text("print('hello from the enclave')\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("X = 1\n")
    return root


@pytest.fixture(scope="session")
def make_identity(sim_ca, measured_tree):
    import ratls

    def make(**kw):
        kw.setdefault("measured_files", [measured_tree])
        kw.setdefault("measure_root", measured_tree)
        return ratls.Identity.create("sim", sim_ca=sim_ca.path, **kw)

    return make


@pytest.fixture(scope="session")
def identity(make_identity):
    return make_identity()


@pytest.fixture(scope="session")
def sim_policy(sim_ca, identity):
    """Accepts exactly `identity`'s enclave from this sim CA."""
    import ratls

    return ratls.Policy(mrenclave=identity.mrenclave, mrsigner=sim_ca.mrsigner, allow_simulated=True,
                        sim_root=sim_ca.path, allowed_tcb_statuses=("UpToDate", "Unknown"))


# The gRPC credential tests' identities: one module's server and client enclaves (each its own little app, so its
# own MRENCLAVE), and credentials in which each side trusts only the other's enclave.


@pytest.fixture(scope="module")
def ids(sim_ca, tmp_path_factory):
    """A factory of sim identities by application name (tests/grpctools.make_app, made on first use): a new key
    each call, the same MRENCLAVE for the same name."""
    from grpctools import make_app

    import ratls

    root = tmp_path_factory.mktemp("apps")

    def make(app: str, **kw) -> ratls.Identity:
        path = make_app(root, app)
        return ratls.Identity.create("sim", sim_ca=sim_ca.path, measured_files=[path], measure_root=path, **kw)

    return make


@pytest.fixture(scope="module")
def server_id(ids):
    return ids("server")


@pytest.fixture(scope="module")
def client_id(ids):
    return ids("client")


@pytest.fixture(scope="module")
def server_creds(sim_ca, server_id, client_id):
    """A factory: the server trusts the client's enclave (only)."""
    from grpctools import sim_policy

    from ratls.credentials import credentials

    return lambda **kw: credentials(sim_policy(sim_ca, client_id.mrenclave), server_id, **kw)


@pytest.fixture(scope="module")
def client_creds(sim_ca, server_id, client_id):
    from grpctools import sim_policy

    from ratls.credentials import credentials

    return credentials(sim_policy(sim_ca, server_id.mrenclave), client_id)

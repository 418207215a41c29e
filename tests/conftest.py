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

"""The configfs-tsm quote provider (ratls.tsm) against a fake kernel: a temp directory tree in which the test plays
the kernel's side of Linux's configfs-tsm report ABI (attributes made on mkdir, generation bumped on every write,
outblob made from inblob when read, attributes gone on rmdir)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import ratls
from ratls.tsm import TDX_PROVIDER, ConfigfsTsm, in_tdx_guest

REPORT_DATA = bytes(range(64))


class FakeKernel(ConfigfsTsm):
    """configfs-tsm as the kernel serves it, over real files under `root`. `answer(inblob)` makes the outblob (or
    raises OSError as the driver would); `provider` None leaves the attribute out (no TSM provider registered);
    `interfere(attempt)` says how many foreign writes land during that attempt."""

    def __init__(self, root: Path, answer: Callable[[bytes], bytes], *, provider: str | None = TDX_PROVIDER,
                 interfere: Callable[[int], int] = lambda attempt: 0, **kw) -> None:
        super().__init__(root, **kw)
        self.answer = answer
        self.kernel_provider = provider
        self.interfere = interfere
        self.inblobs: list[bytes] = []
        self.generation_reads = 0
        self.created: list[Path] = []
        self.removed: list[Path] = []

    def _mkdir(self, path: Path) -> None:
        super()._mkdir(path)
        self.created.append(path)
        if self.kernel_provider is not None:
            (path / "provider").write_text(self.kernel_provider + "\n")
        (path / "generation").write_text("0\n")
        for name in ("inblob", "outblob", "auxblob"):
            (path / name).write_bytes(b"")

    def _bump(self, path: Path, by: int) -> None:
        gen = path / "generation"
        gen.write_text(f"{int(gen.read_text()) + by}\n")

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)  # the attribute exists: the provider never creates one
        if path.name == "inblob":
            self.inblobs.append(data)
            self._bump(path.parent, 1 + self.interfere(len(self.inblobs)))

    def _read(self, path: Path) -> bytes:
        if path.name == "outblob":
            path.write_bytes(self.answer((path.parent / "inblob").read_bytes()))
        if path.name == "generation":
            self.generation_reads += 1
        return super()._read(path)

    def _rmdir(self, path: Path) -> None:
        for child in path.iterdir():  # configfs drops the attributes with the directory
            child.unlink()
        super()._rmdir(path)
        self.removed.append(path)


def echo_quote(inblob: bytes) -> bytes:
    return b"QUOTE:" + inblob


def test_quote_round_trip(tmp_path):
    """One report instance per quote: named for this process, the report data written to inblob, generation read
    before and after, the outblob returned, the instance removed."""
    kernel = FakeKernel(tmp_path, echo_quote)
    assert kernel.quote(REPORT_DATA) == b"QUOTE:" + REPORT_DATA
    assert kernel.inblobs == [REPORT_DATA]
    assert kernel.generation_reads == 2
    assert len(kernel.created) == 1 and kernel.created[0].name.startswith(f"ratls-{os.getpid()}-")
    assert kernel.removed == kernel.created and list(tmp_path.iterdir()) == []
    assert kernel.quote(REPORT_DATA[::-1]) == b"QUOTE:" + REPORT_DATA[::-1]
    assert kernel.created[0] != kernel.created[1]  # a fresh instance each time


def test_concurrent_writer_is_detected_and_retried(tmp_path):
    """A foreign write during the first attempt moves generation by 2: that outblob may be over another inblob,
    so it is discarded and the quote read again."""
    kernel = FakeKernel(tmp_path, echo_quote, interfere=lambda attempt: 1 if attempt == 1 else 0)
    assert kernel.quote(REPORT_DATA) == b"QUOTE:" + REPORT_DATA
    assert kernel.inblobs == [REPORT_DATA, REPORT_DATA]
    assert list(tmp_path.iterdir()) == []


def test_persistent_concurrent_writer_is_refused(tmp_path):
    kernel = FakeKernel(tmp_path, echo_quote, interfere=lambda attempt: 1, attempts=3)
    with pytest.raises(ratls.ProviderError, match="another writer changed .* during each of 3 attempts"):
        kernel.quote(REPORT_DATA)
    assert len(kernel.inblobs) == 3
    assert list(tmp_path.iterdir()) == []  # removed after the error too


def test_missing_provider_attribute(tmp_path):
    kernel = FakeKernel(tmp_path, echo_quote, provider=None)
    with pytest.raises(ratls.ProviderError, match="has no provider attribute: no TSM provider is registered"):
        kernel.quote(REPORT_DATA)
    assert kernel.inblobs == [] and list(tmp_path.iterdir()) == []


def test_wrong_provider(tmp_path):
    kernel = FakeKernel(tmp_path, echo_quote, provider="sev_guest")
    with pytest.raises(ratls.ProviderError, match="the provider is 'sev_guest', not 'tdx_guest': this is not a TDX "
                                                  "guest"):
        kernel.quote(REPORT_DATA)
    assert kernel.inblobs == [] and list(tmp_path.iterdir()) == []


def test_no_configfs_tsm(tmp_path):
    with pytest.raises(ratls.ProviderError, match="configfs-tsm is not available: .*missing does not exist"):
        ConfigfsTsm(tmp_path / "missing").quote(REPORT_DATA)


def test_permission_denied(tmp_path):
    class Unprivileged(FakeKernel):
        def _mkdir(self, path: Path) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    with pytest.raises(ratls.ProviderError, match="permission denied creating a report in"):
        Unprivileged(tmp_path, echo_quote).quote(REPORT_DATA)


def test_quote_service_failure_is_named(tmp_path):
    """The driver fails the outblob read (EIO) when the host's quote generation service does not answer."""
    def no_qgs(inblob: bytes) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    kernel = FakeKernel(tmp_path, no_qgs)
    with pytest.raises(ratls.ProviderError, match="could not make a quote .*quote generation service"):
        kernel.quote(REPORT_DATA)
    assert list(tmp_path.iterdir()) == []


def test_empty_outblob_and_bad_report_data(tmp_path):
    with pytest.raises(ratls.ProviderError, match="outblob is empty"):
        FakeKernel(tmp_path, lambda inblob: b"").quote(REPORT_DATA)
    with pytest.raises(ratls.ProviderError, match="report data must be 64 bytes, got 63"):
        FakeKernel(tmp_path, echo_quote).quote(REPORT_DATA[:63])
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        ConfigfsTsm(tmp_path, attempts=0)


def test_identity_over_configfs_tsm_with_a_real_sim_quote(tmp_path, identity, sim_ca, sim_policy):
    """The whole TD path with the fake kernel answering as a quoting service would: it returns a real sim quote
    when the inblob is the report data that binds this key (and fails otherwise, as no real service could make a
    quote for a key it was not asked about). The certificate is DICE-only and verifies end to end."""
    sim_quote = ratls.inspect_certificate(identity.certificate_der).quote
    bound = ratls.parse_quote(sim_quote).body.report_data

    def quoting_service(inblob: bytes) -> bytes:
        if inblob != bound:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return sim_quote

    kernel = FakeKernel(tmp_path, quoting_service)
    td = ratls.Identity.create_dice(kernel.quote, "tdx", private_key_der=identity.private_key_der,
                                    sim_root=sim_ca.path)
    assert kernel.inblobs == [bound] and list(tmp_path.iterdir()) == []
    info = ratls.inspect_certificate(td.certificate_der)
    assert info.format == "dice" and info.legacy_quote is None
    ev = ratls.verify_certificate(td.certificate_der, sim_policy)
    assert ev.mrenclave == identity.mrenclave and td.provider == "tdx"


def test_tdx_provider_resolves_to_configfs_tsm(tmp_path):
    """provider="tdx" reads its quote through configfs-tsm at tsm_root; outside a TD it says why it cannot."""
    with pytest.raises(ratls.ProviderError, match="configfs-tsm is not available"):
        ratls.Identity.create("tdx", tsm_root=tmp_path / "no-tsm")
    (tmp_path / "tsm").mkdir()  # configfs mounted but no TSM: mkdir gives a bare directory, no provider attribute
    with pytest.raises(ratls.ProviderError, match="no provider attribute"):
        ratls.Identity.create("tdx", tsm_root=tmp_path / "tsm")
    assert list((tmp_path / "tsm").iterdir()) == []
    with pytest.raises(ratls.ProviderError, match="expected 'auto', 'sim', 'sim-tdx', 'gramine' or 'tdx'"):
        ratls.Identity.create("sev")


def test_in_tdx_guest_reads_the_cpu_flag(tmp_path):
    """The 'tdx_guest' flag of /proc/cpuinfo's flags lines, and nothing that merely contains the word."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme tdx_guest sse\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert in_tdx_guest(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nmodel name\t: tdx_guest lookalike\nflags\t\t: fpu vme tdx_guest_x\n")
    assert not in_tdx_guest(cpuinfo)
    assert not in_tdx_guest(tmp_path / "absent")


def test_auto_provider_picks_tdx_in_a_td(tmp_path, monkeypatch):
    """provider="auto" in a TDX guest (and no SGX enclave) takes the tdx provider, even with a sim CA at hand: real
    hardware before simulation, as with Gramine."""
    import ratls.identity

    monkeypatch.setattr(ratls.identity, "in_sgx_enclave", lambda: False)
    monkeypatch.setattr(ratls.identity, "in_tdx_guest", lambda: True)
    with pytest.raises(ratls.ProviderError, match="configfs-tsm is not available"):
        ratls.Identity.create("auto", sim_ca=tmp_path, tsm_root=tmp_path / "no-tsm")
    monkeypatch.setattr(ratls.identity, "in_tdx_guest", lambda: False)
    with pytest.raises(ratls.ProviderError, match="no TDX guest"):
        ratls.Identity.create("auto")

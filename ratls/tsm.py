"""TD quotes for a process inside an Intel TDX confidential VM, through Linux's configfs-tsm report interface.

The ABI (Linux Documentation/ABI/testing/configfs-tsm, since v6.7): `mkdir /sys/kernel/config/tsm/report/<name>`
makes a report instance whose attributes the kernel creates: `provider` (RO, "tdx_guest" in a TD), `generation`
(RO, incremented by every write to `inblob` or another option), `inblob` (WO, up to 64 bytes: the TD report's
REPORTDATA), `outblob` (RO, the quote, generated when read), `auxblob`; `rmdir` removes it. A concurrent writer to
the same instance is detected by `generation`: read it before writing inblob, and after reading outblob it must be
exactly one more.

Why configfs-tsm and not /dev/tdx_guest: upstream Linux's tdx-guest driver has one ioctl, TDX_CMD_GET_REPORT0
(include/uapi/linux/tdx-guest.h), which returns a TD report MACed for this machine only; no remote verifier can
check it. Getting a *quote* through an ioctl (TDX_CMD_GET_QUOTE) only ever existed in Intel's and distributions'
out-of-tree kernels; upstream takes quotes through configfs-tsm (TSM_REPORTS, v6.7), and Intel's DCAP
libtdx_attest tries configfs-tsm first. ratls/PROTOCOL.md section 9 and manifests/README.md ("Running in a TDX
VM") have the sources and the deployment side.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from ratls.errors import ProviderError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
CPUINFO = Path("/proc/cpuinfo")
TDX_PROVIDER = "tdx_guest"
REPORT_DATA_SIZE = 64
DEFAULT_ATTEMPTS = 3


def in_tdx_guest(cpuinfo: str | os.PathLike = CPUINFO) -> bool:
    """Whether this is an Intel TDX guest: Linux then lists the CPU flag "tdx_guest" (X86_FEATURE_TDX_GUEST,
    arch/x86/include/asm/cpufeatures.h) in /proc/cpuinfo. Reads nothing else and creates no report instance."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(line.split(":", 1)[0].strip() == "flags" and "tdx_guest" in line.split(":", 1)[1].split()
               for line in text.splitlines() if ":" in line)


class ConfigfsTsm:
    """Quotes from configfs-tsm under `root` (a test points it at a directory where it plays the kernel).

    Each quote() makes its own report instance (so other processes' instances never interfere), checks that the
    provider is `provider`, writes the report data, reads the quote, checks `generation` and removes the instance.
    A generation that moved by more than this process's one write means another writer shared the instance: the
    read is retried, at most `attempts` times in all, then refused."""

    def __init__(self, root: str | os.PathLike = TSM_REPORT_ROOT, *, provider: str = TDX_PROVIDER,
                 attempts: int = DEFAULT_ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.root = Path(root)
        self.provider = provider
        self.attempts = attempts

    # The kernel's side of the ABI: file operations on the instance. A test's fake kernel overrides these.
    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)  # configfs attributes exist; never create one
        try:
            if os.write(fd, data) != len(data):
                raise ProviderError(f"configfs-tsm: short write to {path}")
        finally:
            os.close(fd)

    def _rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def quote(self, report_data: bytes) -> bytes:
        """The quote over `report_data` (exactly 64 bytes), as the provider returns it (for tdx_guest: an Intel
        TDX quote v4 or v5). ProviderError names the cause: no configfs-tsm, not a TDX guest, permission, a
        concurrent writer, or the quote service's failure."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise ProviderError(f"configfs-tsm: report data must be {REPORT_DATA_SIZE} bytes, got "
                                f"{len(report_data)}")
        entry = self.root / f"ratls-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self._make_entry(entry)
        try:
            self._check_provider(entry)
            out = self._read_quote(entry, report_data)
        except BaseException:
            self._remove_entry(entry, after_error=True)
            raise
        self._remove_entry(entry)
        return out

    def _make_entry(self, entry: Path) -> None:
        try:
            self._mkdir(entry)
        except FileNotFoundError:
            raise ProviderError(
                f"configfs-tsm is not available: {self.root} does not exist (configfs not mounted at "
                "/sys/kernel/config, or a kernel without TSM reports, before Linux 6.7 or built without "
                "CONFIG_TSM_REPORTS)") from None
        except PermissionError:
            raise ProviderError(f"configfs-tsm: permission denied creating a report in {self.root} (needs root, "
                                "or write access to that directory)") from None
        except OSError as e:
            raise ProviderError(f"configfs-tsm: cannot create {entry}: {e.strerror or e}") from None

    def _check_provider(self, entry: Path) -> None:
        try:
            found = self._read(entry / "provider").decode(errors="replace").strip()
        except FileNotFoundError:
            raise ProviderError(f"configfs-tsm: {entry} has no provider attribute: no TSM provider is registered "
                                f"(not a confidential VM guest, or its driver, e.g. {TDX_PROVIDER}, is not "
                                "loaded)") from None
        except OSError as e:
            raise ProviderError(f"configfs-tsm: cannot read {entry / 'provider'}: {e.strerror or e}") from None
        if found != self.provider:
            raise ProviderError(f"configfs-tsm: the provider is {found!r}, not {self.provider!r}: this is not a "
                                f"{'TDX guest' if self.provider == TDX_PROVIDER else self.provider + ' guest'}")

    def _generation(self, entry: Path) -> int:
        raw = self._read(entry / "generation").decode(errors="replace").strip()
        try:
            return int(raw)
        except ValueError:
            raise ProviderError(f"configfs-tsm: generation of {entry} is {raw!r}, not a number") from None

    def _read_quote(self, entry: Path, report_data: bytes) -> bytes:
        for _ in range(self.attempts):
            try:
                before = self._generation(entry)
                self._write(entry / "inblob", report_data)
                out = self._read(entry / "outblob")
                after = self._generation(entry)
            except PermissionError:
                raise ProviderError(f"configfs-tsm: permission denied using {entry}") from None
            except OSError as e:
                if e.errno == errno.ENOENT:
                    raise ProviderError(f"configfs-tsm: {entry} lacks an attribute ({e.filename}): not the "
                                        "configfs-tsm report ABI") from None
                raise ProviderError(f"configfs-tsm: the {self.provider} provider could not make a quote "
                                    f"({e.strerror or e}); in a TD the host's quote generation service (QGS) must "
                                    "be reachable") from None
            if after == before + 1:
                if not out:
                    raise ProviderError(f"configfs-tsm: {entry / 'outblob'} is empty")
                return out
        raise ProviderError(f"configfs-tsm: another writer changed {entry} during each of {self.attempts} "
                            "attempts (generation moved by more than our one write); refusing a quote that may "
                            "not be over our report data")

    def _remove_entry(self, entry: Path, *, after_error: bool = False) -> None:
        """Removes the instance; a failure is reported unless an error is already on its way (which it must not
        hide)."""
        try:
            self._rmdir(entry)
        except FileNotFoundError:
            pass  # already gone: nothing of ours is left
        except OSError as e:
            if not after_error:
                raise ProviderError(f"configfs-tsm: cannot remove {entry}: {e.strerror or e}") from None

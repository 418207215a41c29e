"""The RA-TLS tests again in a process that imported TensorFlow first. TensorFlow exports BoringSSL's symbols
globally; a dynamically linked libcrypto would silently resolve to them there (ARCHITECTURE.md §3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_ratls_suite_passes_after_importing_tensorflow():
    script = (
        "import sys, tensorflow, ctypes\n"
        "import pytest\n"
        "assert 'tensorflow' in sys.modules\n"
        "rc = pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'not tensorflow',\n"
        f"  {str(HERE / 'test_ratls_core.py')!r}, {str(HERE / 'test_ratls_rejections.py')!r}])\n"
        "assert 'tensorflow' in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=HERE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_native_libraries_do_not_link_openssl_dynamically():
    import ratls._native

    from ratls.identity import SIM_LIBRARY

    for lib in (Path(ratls._native.__file__), SIM_LIBRARY):
        dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        needed = [line for line in dynamic.splitlines() if "NEEDED" in line]
        assert needed and not any("libssl" in n or "libcrypto" in n for n in needed), needed
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                                 check=True).stdout
        assert "EVP_DigestVerify" not in symbols and "SSL_CTX_new" not in symbols  # OpenSSL stays internal

"""Generate the C source of the Python extension ratls._native with cffi (API mode).

cffi over pybind11: the core is plain C, so cffi binds it straight from the C header (one declaration, no
C++ wrapper layer to keep in sync), and in API mode every call releases the GIL, which the attestation
handshake and verification paths need. CMake compiles the generated C and links it against the static core.

Usage: python ffi_build.py OUTPUT.c
"""

import pathlib
import sys

import cffi

HEADER = pathlib.Path(__file__).resolve().parents[1] / "include" / "ratls_core.h"


def cdef_source() -> str:
    text = HEADER.read_text()
    start = text.index("/* cffi-begin */") + len("/* cffi-begin */")
    end = text.index("/* cffi-end */")
    return text[start:end]


def main() -> None:
    ffi = cffi.FFI()
    ffi.cdef(cdef_source())
    ffi.set_source("ratls._native", '#include "ratls_core.h"')
    ffi.emit_c_code(sys.argv[1])


if __name__ == "__main__":
    main()

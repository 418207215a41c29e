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


# A Python callback with the ratls_tcb_evaluate_fn signature: Python passes lib.ratls_py_tcb_evaluate as a
# ratls_tcb_evaluator's function pointer (and a handle as its ctx) and implements it with @ffi.def_extern
# (ratls/collateral.py). Until it is defined, calling it prints a warning and returns 0 without setting the TCB
# status, which the handshake reports as a collateral failure.
PYTHON_CALLBACKS = ('extern "Python" int ratls_py_tcb_evaluate(void *, const uint8_t *, size_t, int64_t, int *, '
                    'char *, size_t, char *, size_t);')


def main() -> None:
    ffi = cffi.FFI()
    ffi.cdef(cdef_source())
    ffi.cdef(PYTHON_CALLBACKS)
    ffi.set_source("ratls._native", '#include "ratls_core.h"')
    ffi.emit_c_code(sys.argv[1])


if __name__ == "__main__":
    main()

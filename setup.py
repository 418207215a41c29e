"""Builds the native core through CMake into the ratls._native extension and the simulated provider library,
and generates the runtime's protobuf/gRPC code from protos/. Both land in the source tree as well, so that an
editable install and a plain checkout import the same files."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_protos() -> None:
    """protos/*.proto -> runtime/proto/*_pb2.py (+ _pb2_grpc.py), imported as runtime.proto.<name>_pb2."""
    protos = sorted(glob.glob(str(ROOT / "protos" / "*.proto")))
    if not protos:
        return
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    out = ROOT / "runtime" / "proto"
    out.mkdir(exist_ok=True)
    (out / "__init__.py").touch()
    args = ["protoc", f"-I{include}", f"-Iruntime/proto={ROOT / 'protos'}", f"--python_out={ROOT}",
            f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}"]
    args += ["runtime/proto/" + os.path.basename(p) for p in protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build_dir = ROOT / "build" / "native"
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                               f"-DPython3_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "_native", "ratls_sim",
                               "-j", str(os.cpu_count() or 2)])
        module = next(build_dir.glob("_native*.so"))
        sim = build_dir / "libratls_sim.so"
        targets = {Path(self.get_ext_fullpath(ext.name)).parent, ROOT / "ratls"}
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, target / Path(self.get_ext_filename(ext.name)).name)
            shutil.copy2(sim, target / sim.name)


setup(
    ext_modules=[Extension("ratls._native", sources=[])],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)

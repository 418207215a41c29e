"""Every module the project imports is the standard library, the project itself, or a distribution that
pyproject.toml declares, so a fresh machine that installs only what the project declares can import all of it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("ratls", "runtime", "bench", "manifests", "tests", "native")
GENERATED = ("runtime/proto",)  # protoc's output: it imports only protobuf and grpc, which are declared anyway


def distribution_key(name: str) -> str:
    """PEP 503 normalisation: `Jinja2`, `jinja2` and `google_crc32c` compare equal to their registry names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path) -> set[str]:
    """Runtime dependencies, every extra and the build requirements, by normalised distribution name."""
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    specs += data.get("build-system", {}).get("requires", [])
    return {distribution_key(re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0]) for spec in specs}


def python_files(root: Path) -> list[Path]:
    files = sorted(root.glob("*.py"))
    for folder in FOLDERS:
        files += [p for p in sorted((root / folder).rglob("*.py"))
                  if not any(p.relative_to(root).as_posix().startswith(g + "/") for g in GENERATED)]
    return files


def top_level_imports(path: Path) -> set[str]:
    """Absolute imports only: a relative import is the project's own by construction."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def undeclared_imports(root: Path) -> list[str]:
    """One line per module that nothing declared provides, naming the first file (in path order) that imports it."""
    files = python_files(root)
    own = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in files}
    wanted = declared_distributions(root / "pyproject.toml")
    providers = packages_distributions()
    problems: dict[str, str] = {}
    for path in files:
        for module in sorted(top_level_imports(path)):
            if module in problems or module in own or module in sys.stdlib_module_names or module == "__future__":
                continue
            owners = {distribution_key(d) for d in providers.get(module, [])}
            where = path.relative_to(root).as_posix()
            if not owners:
                problems[module] = f"{module} (imported in {where}) is installed by no distribution here"
            elif not owners & wanted:
                problems[module] = (f"{module} (imported in {where}) comes from {', '.join(sorted(owners))}, "
                                    "which pyproject.toml does not declare")
    return sorted(problems.values())


def test_every_import_is_declared() -> None:
    problems = undeclared_imports(REPO)
    assert not problems, "imports a fresh install would not have:\n  " + "\n  ".join(problems)


def test_an_undeclared_import_is_named_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["cffi==2.0.0"]\n')
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "a.py").write_text("import json\nimport cffi\nfrom runtime import b\n")
    (tmp_path / "runtime" / "b.py").write_text("from numpy import ones\nfrom . import a\n")
    problems = undeclared_imports(tmp_path)
    assert problems == ["numpy (imported in runtime/b.py) comes from numpy, which pyproject.toml does not declare"]


def test_a_module_no_distribution_provides_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import no_such_module_anywhere\n")
    assert undeclared_imports(tmp_path) == [
        "no_such_module_anywhere (imported in tests/test_x.py) is installed by no distribution here"]

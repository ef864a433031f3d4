"""The fresh-machine contract: what the package imports is declared, and CI runs the README.

A dependency that is only present because the machine happened to have it installed
makes `pip install .` on a new machine fail later with ModuleNotFoundError; these tests
catch that from the source, and .ci/run catches it again in a brand-new venv.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "locdistill"


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extras() -> set[str]:
    """Packages of the optional extras a user installs for one feature (not the test extra)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {_normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0])
            for name, deps in extras.items() if name != "test" for d in deps}


def _module_level_imports(tree: ast.AST) -> set[ast.AST]:
    """The import statements of ``tree`` that run when the module is imported (not inside a function)."""
    out: set[ast.AST] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.add(child)
            visit(child)

    visit(tree)
    return out


def _imported_modules(module_level_only: bool = False) -> dict[str, set[str]]:
    """Top-level third-party modules the package imports → files importing them."""
    found: dict[str, set[str]] = {}
    for f in PACKAGE.rglob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        eager = _module_level_imports(tree)
        for node in ast.walk(tree):
            if module_level_only and node not in eager:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name == "torch.utils.tensorboard" or name.startswith("torch.utils.tensorboard."):
                    found.setdefault("tensorboard", set()).add(f.name)  # torch's writer needs the package
                top = name.split(".")[0]
                if top != "locdistill" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(f.name)
    return found


def test_every_imported_third_party_module_is_a_declared_dependency():
    """Module-level imports need a core dependency; an import inside a function (an optional feature,
    e.g. `locdistill export`) may come from an extra such as `locdistill[export]`."""
    declared, extras = _declared(), _extras()
    dists = md.packages_distributions()
    eager = _imported_modules(module_level_only=True)
    undeclared = {}
    for module, files in _imported_modules().items():
        owners = {_normalise(d) for d in dists.get(module, [module])}
        if owners & declared or (module not in eager and owners & extras):
            continue
        undeclared[module] = sorted(files)
    assert not undeclared, ("imported but neither in pyproject.toml [project].dependencies nor, for imports "
                            f"inside functions, in an optional extra: {undeclared}")
    assert "onnxruntime" not in eager  # the export's packages stay optional


def test_the_documented_features_dependencies_are_core():
    # `plot`, `visualize-distribution` (matplotlib) and the default TensorBoard events
    # must work after the README's `pip install .`, not only with an extra
    assert {"matplotlib", "tensorboard", "rich", "faster-coco-eval"} <= _declared()


def test_every_declared_dependency_is_installed_here():
    missing = []
    for name in _declared():
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    assert not missing, f"declared but not installed (reinstall with the README's command): {missing}"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_readme_commands_exactly_in_a_fresh_venv():
    commands = _readme_commands()
    assert len(commands) == 2 and commands[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines()]
    for cmd in commands:
        assert cmd in ci_lines, f".ci/run does not run the README's command {cmd!r} as written"
    venv = ci.index("-m venv")
    assert venv < ci.index(commands[0]) and "--system-site-packages" not in ci
    assert "mktemp" in ci  # a new folder every run, never a reused venv

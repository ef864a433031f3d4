"""The package's import graph follows DESIGN §10: each layer imports only from the layers below it,
there are no cycles, and locdistill modules are imported at module level (function-level imports of
locdistill modules only in cli.py). Read from the source with `ast`, nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "locdistill"

# (layer, module name or package prefix), lowest first; a module belongs to the longest matching prefix
LAYERS = [
    (0, "locdistill"), (0, "locdistill.errors"), (0, "locdistill.boxes"), (0, "locdistill.losses"),
    (0, "locdistill.nms"),
    (1, "locdistill.config"), (1, "locdistill.config_aliases"), (1, "locdistill.configs"),
    (2, "locdistill.checkpoint"), (2, "locdistill.mmdet_format"), (2, "locdistill.ultralytics_format"),
    (3, "locdistill.models"), (3, "locdistill.data"),
    (4, "locdistill.evaluation"),
    (5, "locdistill.distill"),
    (6, "locdistill.inference"),
    (7, "locdistill.engine"),
    (8, "locdistill.tools"),
    (9, "locdistill.cli"), (9, "locdistill.__main__"),
]
# packages of the same layer that must not import each other
SIDEWAYS = {"locdistill.models", "locdistill.data"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def owner(module: str) -> tuple[int, str]:
    """(layer, prefix) of a module: the longest prefix of LAYERS that it equals or lies under."""
    best = None
    for layer, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[1]):
                best = (layer, prefix)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py: add it to LAYERS"
    return best


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The locdistill modules an `import`/`from ... import` statement names."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("locdistill"):
        return []
    known = all_modules()
    out = [target]
    for alias in node.names:  # `from .models import dense` imports the submodule locdistill.models.dense
        sub = f"{target}.{alias.name}"
        if sub in known:
            out.append(sub)
    return out


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported locdistill module, line, at function level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            guarded = in_type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.ImportFrom) and not in_type_checking:
                found.extend((t, child.lineno, in_function) for t in resolve(module, is_package, child))
            elif isinstance(child, ast.Import) and not in_type_checking:
                found.extend((a.name, child.lineno, in_function) for a in child.names
                             if a.name.startswith("locdistill"))
            visit(child, nested, guarded)

    visit(tree, False, False)
    return found


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {m: imports(m, p) for m, p in all_modules().items()}


def test_every_module_has_a_layer():
    for m in all_modules():
        owner(m)


def test_no_upward_or_sideways_import():
    bad = []
    for module, targets in graph().items():
        layer, prefix = owner(module)
        for target, line, _ in targets:
            if target == "locdistill":  # the package itself: only __version__
                continue
            t_layer, t_prefix = owner(target)
            if t_layer > layer or (t_layer == layer and t_prefix != prefix and
                                   {prefix, t_prefix} <= SIDEWAYS):
                bad.append(f"{module}:{line} (layer {layer}) imports {target} (layer {t_layer})")
    assert not bad, "imports against DESIGN §10's layers:\n" + "\n".join(bad)


def test_no_function_level_imports_outside_cli():
    bad = [f"{module}:{line} imports {target} inside a function"
           for module, targets in graph().items() if owner(module)[1] not in ("locdistill.cli",)
           for target, line, in_function in targets if in_function]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = {m: {t for t, _, _ in ts if t != m and t in g_keys} for g_keys in [set(all_modules())]
         for m, ts in graph().items()}
    # a package's __init__ importing its own submodules is how re-exports work; a submodule
    # importing its package's __init__ back would be the cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                cycle = dfs(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cycle = dfs(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_catches_what_it_should(tmp_path):
    """The AST walk sees function-level and relative imports (a checker that finds nothing passes
    everything)."""
    src = ("from .. import errors\nfrom ..models import dense\nimport torch\n"
           "def f():\n    from ..engine.train import fit\n"
           "if TYPE_CHECKING:\n    from ..tools import demo\n")
    p = tmp_path / "x.py"
    p.write_text(src)
    found = imports("locdistill.distill.x", p)
    assert ("locdistill.errors", 1, False) in found or ("locdistill", 1, False) in found
    assert ("locdistill.models.dense", 2, False) in found
    assert ("locdistill.engine.train", 5, True) in found
    assert not any(t.startswith("locdistill.tools") for t, _, _ in found)
    assert owner("locdistill.models.gfl_head") == (3, "locdistill.models")
    with pytest.raises(AssertionError, match="in no layer"):
        owner("locdistill_other")

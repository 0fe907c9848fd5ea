"""The code's shape, as docs/architecture.md describes it: small modules and functions, stages that
never import each other in a circle (function-level imports counted), and only this project's own
code in the repository."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "mlx_dm"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The mlx_dm modules `path` imports anywhere in it (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_cycles() -> list[list[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, stack + [other])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle_among_mlx_dm_modules():
    assert import_cycles() == []


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_the_repository_holds_no_third_party_source_tree():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    if not tracked:  # not a git checkout (an sdist): nothing to check
        return
    vendored = [p for p in tracked if p.endswith(("convert_hf_to_gguf.py", "gguf_writer.py")) or "/gguf-py/" in p
                or p.startswith(("vendor/", "third_party/"))]
    # converters/ holds entry points into mlx-dm's own export, never a converter's source.
    vendored += [p for p in tracked if p.startswith("converters/") and "from mlx_dm" not in (ROOT / p).read_text()]
    assert vendored == [], "take third-party code from its package (mlx_dm/llama/source.py), do not copy it in"


def test_the_import_check_sees_function_level_imports(tmp_path):
    # A function-level import is an import: the check above would miss cycles otherwise.
    module = PACKAGE / "registry.py"
    assert "mlx_dm.app_config" in _imports(module, {_module_name(p) for p in PACKAGE.rglob("*.py")})
    assert "mlx_dm.model.gguf_import" in _imports(PACKAGE / "model" / "hub.py", {_module_name(p) for p in PACKAGE.rglob("*.py")})


def test_every_file_the_package_reads_is_installed_with_it():
    """A non-editable install (a game's .venv, from the npm package) carries only package-data."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlx_dm"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    missing = [path for path in data if not any(fnmatch.fnmatch(path, glob) for glob in globs)]
    assert not missing, f"add them to [tool.setuptools.package-data] in pyproject.toml: {missing}"

"""The code's shape, held where a reviewer would otherwise have to count: short functions in the two
library packages, and no package reaching into another package's private modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = {"export": "unet_export", "runtime": "unet_runtime"}
PACKAGES = {**LIBRARIES, "benchmarks": "unet_bench"}
#: Longer functions read as several steps in one; an argparse builder is a flat list of options.
MAX_LINES = 80
ARGPARSE_BUILDERS = {"build_parser"}


def _functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("folder", sorted(LIBRARIES))
def test_no_long_functions(folder):
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, node in _functions(folder)
        if node.name not in ARGPARSE_BUILDERS and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_the_length_rule_sees_a_long_function(tmp_path, monkeypatch):
    """The walk above finds a function of MAX_LINES + 1 lines (so an empty result means something)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def f():\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    [(_, node)] = list(_functions("pkg"))
    assert node.end_lineno - node.lineno + 1 == MAX_LINES + 1


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_no_private_imports_across_packages(folder):
    own = PACKAGES[folder]
    reaches = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in PACKAGES.values()
        and name.split(".")[0] != own
        and any(part.startswith("_") and part != "__version__" for part in name.split(".")[1:])
    ]
    assert not reaches, reaches

"""The registry reads built-in metadata from the source with `ast.literal_eval`, never by importing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sidecar.plugins.builtin as builtin
from sidecar import schema
from sidecar.plugins.metadata import FIELDS, read_metadata

BUILTIN_DIR = Path(builtin.__file__).parent
TYPES = FIELDS
EXPECTED = {"disk_usage", "echo", "http_probe", "nagios", "process_check", "sleep", "tcp_probe"}
FILES = sorted(p for p in BUILTIN_DIR.glob("*.py") if p.name != "__init__.py")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _metadata(tree: ast.Module) -> dict[str, object]:
    values: dict[str, object] = {}
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets, value = [node.target.id], node.value
        else:
            continue
        for target in targets:
            if target in TYPES:
                assert value is not None, f"{target} is declared without a value"
                assert target not in values, f"{target} assigned twice"
                values[target] = ast.literal_eval(value)  # raises ValueError if not a plain literal
    return values


def test_the_expected_builtins_exist() -> None:
    assert {p.stem for p in FILES} == EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_metadata_are_plain_literals(path: Path) -> None:
    assert schema.is_name(path.stem)
    tree = _tree(path)
    values = _metadata(tree)
    description = values.get("description")
    assert isinstance(description, str) and description.strip()
    meta = read_metadata(path.read_text(encoding="utf-8"), str(path))
    assert meta.problem is None and meta.invalid is None, (meta.problem, meta.invalid)
    for key, value in values.items():
        assert getattr(meta, key) == value, key
    assert "interval_seconds" not in values, "built-ins are not scheduled by themselves"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_module_shape(path: Path) -> None:
    tree = _tree(path)
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) > 10, "the docstring says why it is useful"
    first = tree.body[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__"
    assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)


def test_echo_imports_nothing_but_future() -> None:
    tree = _tree(BUILTIN_DIR / "echo.py")
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_package_init_is_only_a_docstring() -> None:
    tree = _tree(BUILTIN_DIR / "__init__.py")
    assert len(tree.body) == 1 and ast.get_docstring(tree)

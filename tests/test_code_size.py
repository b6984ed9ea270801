"""Modules small enough to read in one sitting, functions that fit a screen (../shared/STYLE.md, "Habits").

A module of the library over MAX_MODULE_LINES, or a function over MAX_FUNCTION_LINES, fails this test unless it is
listed in ALLOWED with the reason it must be longer. A module counts every line; a function counts its body from the
first statement after its docstring (a signature that `ruff format` lays out one argument per line, and the
docstring, are not what makes a function hard to read on one screen).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# "path" or "path::function" -> why it is longer
ALLOWED: dict[str, str] = {}


def library_files() -> list[Path]:
    return sorted(p for package in ("rlft", "envs") for p in (ROOT / package).rglob("*.py"))


def oversized(
    path: Path, max_module: int = MAX_MODULE_LINES, max_function: int = MAX_FUNCTION_LINES
) -> list[str]:
    """`path` (its line count) when over `max_module`, and `path::name` for each function over `max_function`."""
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    found = [f"{where} ({len(text.splitlines())} lines)"] if len(text.splitlines()) > max_module else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            length = node.end_lineno - body[0].lineno + 1
            if length > max_function:
                found.append(f"{where}::{node.name} ({length} lines)")
    return found


def test_modules_and_functions_fit_a_screen():
    over = [
        item for path in library_files() for item in oversized(path) if item.split(" (")[0] not in ALLOWED
    ]
    assert not over, "too long (split it, or list it in ALLOWED with the reason):\n" + "\n".join(over)


def test_allowed_entries_still_exist():
    present = {item.split(" (")[0] for path in library_files() for item in oversized(path)}
    stale = sorted(set(ALLOWED) - present)
    assert not stale, f"ALLOWED entries that are no longer over the limit (remove them): {stale}"


def test_oversized_reports_long_modules_and_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(5))
    source = tmp_path / "m.py"
    # short: a 3-line signature and a docstring around a 1-line body; long: a docstring and a 5-line body
    source.write_text(
        f'def short(\n    a,\n):\n    """Doc."""\n    return a\n\n\ndef long():\n    """Doc."""\n{body}\n'
    )
    assert oversized(source, max_module=100, max_function=4) == ["m.py::long (5 lines)"]
    assert oversized(source, max_module=100, max_function=5) == []
    assert oversized(source, max_module=13, max_function=100) == ["m.py (14 lines)"]

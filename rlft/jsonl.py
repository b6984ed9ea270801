"""Strict JSONL reading: every row a JSON object, every problem a `DataError` naming `file:line`.

A blank line is an error (in a file of one object per line it is a row lost in an edit, and skipping it would
shift every later row's number from what the author counts); so is a UTF-8 BOM, which is not silently eaten.
The newline that ends the last row is not a blank line. Lines are split on "\\n" only, not `splitlines()`:
JSON strings may hold U+2028 / U+2029 unescaped, which `splitlines()` would cut a row at, and line numbers then
match an editor's (a CRLF row keeps its "\\r", which JSON reads as whitespace).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlft.errors import DataError


def row_error(path: Path, line: int, problem: str) -> DataError:
    return DataError(f"{path}:{line}: {problem}")


def json_objects(path: str | Path, expected: str = "a JSON object") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) for every row of a JSONL file; raise `DataError` at the first bad one.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write('{"a": 1}\\n{"a": 2}\\n')
    >>> list(json_objects(f.name)); os.unlink(f.name)
    [(1, {'a': 1}), (2, {'a': 2})]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DataError(f"{path}:1: file starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    if not lines:
        raise DataError(f"{path}: no rows (the file is empty); expected one JSON object per line")
    for number, line_text in enumerate(lines, start=1):
        if not line_text.strip():
            raise row_error(
                path,
                number,
                f"line {number} is blank; expected one JSON object per line (remove blank lines)",
            )
        try:
            row = json.loads(line_text)
        except json.JSONDecodeError as exc:
            raise row_error(
                path,
                number,
                f"invalid JSON ({exc.msg} at column {exc.colno}); each line must be one complete JSON object",
            ) from None
        if not isinstance(row, dict):
            raise row_error(path, number, f"expected {expected}, got {type(row).__name__}")
        yield number, row

"""Checkpoint integrity: every file's size and sha256, recorded before `COMPLETE` and checked before a resume.

`COMPLETE` says a checkpoint was written to the end; it cannot say the bytes are still the ones written. A
power loss after the rename can leave a file short (its pages never reached the disk), a copy can truncate it,
and a flipped bit changes a weight without changing a size. So a checkpoint also holds

    MANIFEST.json   {"version": 1, "files": {"<relative path>": {"bytes": n, "sha256": "<hex>"}, ...}}

written after every file has been fsynced, and before `COMPLETE` (rlft.algorithms.checkpointing). `verify`
checks sizes first (a truncation is found without reading a byte), then checksums.

A folder without a manifest (a `save_pretrained` policy, a checkpoint of an older rlft) is checked for what its
safetensors files say of themselves: the header parses, and the file is as long as the header's tensors need.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

MANIFEST = "MANIFEST.json"
_CHUNK = 8 * 1024 * 1024
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB itself

# folder -> (a stat of every file it lists, the verdict): `--resume` resolves the checkpoint before the model
# loads and the trainer resolves it again; the second check hashes nothing unless a file changed in between.
_verdicts: dict[str, tuple[tuple, str | None]] = {}


def write_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """Fsync every file under `folder`, then write (and fsync) MANIFEST.json with their sizes and sha256.

    Returns:
        The manifest's `files` mapping (relative path -> {"bytes", "sha256"}).
    """
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        files[path.relative_to(folder).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": _sha256(path, sync=True),
        }
    for directory in {folder, *(p.parent for p in _files(folder))}:
        fsync_dir(directory)  # the entries themselves, not only the bytes they point at
    text = json.dumps({"version": 1, "files": files}, indent=1)
    with open(folder / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return files


def verify(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted (the first file that differs and how), or None.

    With a manifest: every listed file exists with its recorded size and sha256. Without one: every
    safetensors file is whole (`safetensors_problem`).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return safetensors_problems(folder)
    try:
        records = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        expected = {name: (int(r["bytes"]), str(r["sha256"])) for name, r in records.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__}: {exc})"
    key = str(folder.resolve())
    stats = _stats(folder, expected)
    cached = _verdicts.get(key)
    if cached is not None and cached[0] == stats:
        return cached[1]
    verdict = _compare(folder, expected)
    _verdicts[key] = (stats, verdict)
    return verdict


def safetensors_problems(folder: str | os.PathLike) -> str | None:
    """The first safetensors file under `folder` that is not whole, and why (its path relative to `folder`)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            parent = path.parent.relative_to(folder).as_posix()
            return problem if parent == "." else f"{parent}/{problem}"
    return None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a safetensors file is not whole (header unreadable, shorter or longer than its tensors), or None.

    The format is an 8-byte little-endian header length, a JSON header whose tensors give `data_offsets`
    into the data that follows, and the data; a truncated file is shorter than header + largest end offset.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > min(_HEADER_LIMIT, size - 8):
                raise ValueError(f"header length {header_len} does not fit in {size} bytes")
            header = json.loads(handle.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{path.name}: not a readable safetensors file ({exc}); it is {size} bytes (truncated?)"
    expected = 8 + header_len + end
    if size != expected:
        how = "truncated" if size < expected else "longer than its tensors"
        return f"{path.name}: {size} bytes, its header needs {expected} ({how})"
    return None


def _compare(folder: Path, expected: dict[str, tuple[int, str]]) -> str | None:
    for name, (size, _) in expected.items():  # sizes first: a truncation is found without reading a byte
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (listed in {MANIFEST})"
        actual = path.stat().st_size
        if actual != size:
            how = "truncated" if actual < size else "grown"
            return f"{name} is {actual} bytes, {MANIFEST} records {size} ({how})"
    for name, (_, digest) in expected.items():
        if _sha256(folder / name) != digest:
            return (
                f"{name}: sha256 differs from {MANIFEST} (its bytes changed after the checkpoint was written)"
            )
    return None


def _stats(folder: Path, expected: dict[str, tuple[int, str]]) -> tuple:
    stats = []
    for name in sorted(expected):
        try:
            stat = (folder / name).stat()
            stats.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            stats.append((name, None))
    return tuple(stats)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        if sync:  # the bytes reach the disk before the manifest (and then COMPLETE) vouches for them
            os.fsync(handle.fileno())
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the files themselves are synced
        pass
    finally:
        os.close(fd)

"""Storage faults as clear errors: an output folder that can be created and written, free space before a save.

Before a run starts, a folder that cannot be created or written is a bad input (exit 2, raised by the stages with
the config key). During a run, a disk that fills up or a folder that turns read-only is a `StorageError` (exit
7): one line naming the path, the free space left and the last good checkpoint, instead of the writer's own
error (torch's is `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...`, which never
says "No space left on device").

Every check here leaves nothing behind: a writability probe creates a temporary entry, removes it at once and
gives the folder back its modification time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from rlft.errors import RlftError

MB = 1024 * 1024
# The messages with which torch's zip writer (inline_container.cc) and safetensors' Rust writer report a failed
# write: both wrap the OSError (ENOSPC, EROFS, EIO) in their own exception type.
_WRITER_FAULTS = ("inline_container", "PytorchStreamWriter", "file write failed", "IoError")


class StorageError(RlftError):
    """Writing to disk failed during a run (disk full, folder not writable); exit code 7.

    The message names the path, the free space left and the last good checkpoint to resume from.
    """

    exit_code = 7


def existing_ancestor(path: Path) -> Path:
    """`path` itself when it exists, else the nearest ancestor that does (what a `mkdir -p` would start from)."""
    probe = Path(path).expanduser().absolute()
    while not _exists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def output_folder_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be (or become) a writable folder; None when it can. Leaves nothing behind.

    A folder that exists must accept a new file; one that does not must be creatable in its nearest existing
    ancestor. Permission bits alone are not asked (`os.access` says yes to root on /proc, and CI runs as root):
    the probe really creates a temporary entry and removes it.
    """
    path = Path(path).expanduser().absolute()
    probe = existing_ancestor(path)
    if not probe.is_dir():
        where = "it" if probe == path else str(probe)
        return f"{where} is a file, not a folder" if probe.is_file() else f"{where} is not a folder"
    before = probe.stat()
    try:
        if probe == path:
            handle, name = tempfile.mkstemp(dir=probe, prefix=".rlft-write-check-")
            os.close(handle)
            os.unlink(name)
        else:
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".rlft-write-check-"))
    except OSError as exc:
        action = "write into" if probe == path else "create a folder in"
        return f"cannot {action} {probe} ({exc.strerror or exc})"
    # The folder looks untouched afterwards: a check must not mark an earlier run's folder as modified.
    with contextlib.suppress(OSError):
        os.utime(probe, ns=(before.st_atime_ns, before.st_mtime_ns))
    return None


def folder_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def free_bytes(path: str | os.PathLike) -> int:
    """Free space on the disk that holds `path` (or would hold it, for a folder not created yet)."""
    return shutil.disk_usage(existing_ancestor(Path(path))).free


def free_space_problem(folder: str | os.PathLike, needed: int, what: str) -> str | None:
    """Why `what` (`needed` bytes) will not fit on the disk of `folder`; None when it fits."""
    free = free_bytes(folder)
    if free >= needed:
        return None
    return f"not enough free space in {folder} for {what}: {human_size(free)} free, about {human_size(needed)} needed"


def human_size(count: int) -> str:
    """A byte count as people read it.

    >>> human_size(1536), human_size(5 * 1024**2), human_size(3 * 1024**3)
    ('1.5 KB', '5.0 MB', '3.00 GB')
    """
    if count >= 1024**3:
        return f"{count / 1024**3:.2f} GB"
    if count >= MB:
        return f"{count / MB:.1f} MB"
    return f"{count / 1024:.1f} KB"


def is_storage_fault(exc: BaseException) -> bool:
    """Whether `exc` is a failed write: an OSError, or a writer's wrapper around one (torch, safetensors)."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, Exception) and any(marker in str(exc) for marker in _WRITER_FAULTS)


def storage_error(
    exc: BaseException, path: str | os.PathLike, last_good: str | os.PathLike | None
) -> StorageError:
    """The one-line `StorageError` for a write to `path` that failed with `exc`.

    A full disk is named as such even when the writer's own message hides it.
    """
    try:
        free = free_bytes(path)
    except OSError:
        free = None
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (free is not None and free < MB):
        reason = "no space left on device"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    space = f"; {human_size(free)} free there" if free is not None else ""
    then = (
        f"last good checkpoint: {last_good}. Free space (or fix the folder) and continue with --resume"
        if last_good
        else "no checkpoint was written yet. Free space (or fix the folder) and start again"
    )
    return StorageError(f"cannot write {path}: {reason}{space}; {then}")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (
        OSError
    ):  # a parent that cannot be searched: treated as absent, the probe then fails on its ancestor
        return False

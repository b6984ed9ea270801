"""One live process per run folder: `runs/<name>/.lock`, an OS-level lock held while a run writes there.

Two `rlft train` (or `pipeline`, or a sweep trial) on one run folder would interleave their metrics, overwrite
each other's config.yaml and checkpoints, and each print the other's result as its own. The lock is
`fcntl.flock` on `runs/<name>/.lock`: the kernel releases it when the holder's file is closed, which happens
on any exit, `kill -9` included, so a lock file left behind by a dead process never blocks (it is stale by
construction). The file holds the holder's host, pid and start time as JSON, read only to name the holder in
the refusal. The file is never deleted: a process could otherwise lock an unlinked file while another locks
its replacement, and both would hold "the" lock.

Under `accelerate launch` the ranks of one run are one holder: only the main process locks (the others write
nothing to the run folder). Within a process the lock is re-entrant, so `rlft pipeline` (which holds it)
can call the rl stage (which takes it too, for library and sweep callers).

flock is advisory and local to one host's kernel on some network filesystems (NFS without lock support): it
protects against a second process on the same machine in every case, across machines where the filesystem
supports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from rlft.errors import RlftError

LOCK_FILE = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # run folder -> (file descriptor, nesting depth), this process


class RunLockedError(RlftError):
    """Another live process holds this run folder's lock (exit code 2)."""


def holder_of(run_dir: str | Path) -> dict | None:
    """The holder recorded in `run_dir/.lock` (host, pid, started), or None when there is none readable.

    The record says who took the lock last; whether it is still held is the kernel's answer (`run_lock`).
    """
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (its record is unreadable)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, main_process: bool = True) -> Iterator[None]:
    """Hold `run_dir`'s lock for the body; refuse at once when another live process holds it.

    Args:
        run_dir: the run folder (created if missing).
        main_process: False where this process takes no lock: the non-main ranks of an accelerate job (one
            holder per run), a command that does not train.

    Raises:
        RunLockedError: naming the holder (pid, host, start time) and what to do instead.
        RlftError: the run folder cannot be created or the lock file cannot be opened (naming the path).
    """
    if not main_process:
        yield
        return
    key = Path(run_dir).resolve()
    if key in _held:  # this process holds it already (pipeline -> rl stage)
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    fd = _acquire(key)
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(run_dir: Path) -> int:
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default): a program this process execs does not inherit the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RlftError(f"cannot lock the run folder {run_dir}: {exc.strerror or exc} ({path})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"the run folder {run_dir} is in use by {describe(holder_of(run_dir))}: one process per run "
            "folder. Wait for it to finish (or stop it), or start this run under another `name`"
        ) from None
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd

"""Files rlft leaves in a run folder: written whole or not at all (`write_text_atomic`), the mode the user's umask
gives (0644 under umask 022) for every file, weights included, and nothing left behind in a staging folder once a
save is renamed into place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, sync: bool = True) -> Path:
    """Write `text` to `path` through a temporary file renamed over it: a reader, or a kill at any instant, sees the
    old file or the new one, never half of one. With `sync` the data is fsynced before the rename (a power loss
    cannot leave the new name on an empty file). The temporary name carries the pid: several processes (sweep
    workers) may rewrite the same file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def match_umask(folder: Path) -> None:
    """Give the `.safetensors` files under `folder` the mode every other file gets (0644 under umask 022).

    safetensors writes through a temporary file created 0600, so without this the weights were the only files
    of a checkpoint that another user of a shared machine could not read.
    """
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*.safetensors"):
        os.chmod(path, mode)


def _umask() -> int:
    try:  # Linux: read it without setting it (os.umask can only be read by changing it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def empty_staging(staging_root: Path, run_dir: Path) -> None:
    """After a staged save is renamed into `run_dir`, nothing stays in `staging_root`: TRL's model card
    (README.md, which it writes into the output dir it is given) goes where it would be without staging, and the
    empty folder is removed."""
    card = staging_root / "README.md"
    if card.is_file():
        os.replace(card, run_dir / "README.md")
    # Left in place while another checkpoint's leftover (a stopped save) is in it: the next save removes that.
    with contextlib.suppress(OSError):
        staging_root.rmdir()

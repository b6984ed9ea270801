"""Finding an RL run's checkpoints on disk: which are complete, which to resume from, which rotation drops.

The layout these read is described in rlft.algorithms.checkpointing (which writes it): `checkpoint-<step>/` folders
under the trainer's output dir, each complete once its `COMPLETE` marker exists, staged under `.staging/` first.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from rlft.algorithms.checkpoint_manifest import verify
from rlft.errors import CheckpointError

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
STAGING = ".staging"
PREFIX = "checkpoint-"


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every `checkpoint-<step>` folder under `output_dir`, oldest first (complete or not)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_complete(output_dir: str | Path) -> Path | None:
    complete = [p for p in list_checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def latest_verified(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whose files match its manifest, and a line per newer one skipped (why)."""
    skipped = []
    for path in reversed([p for p in list_checkpoints(output_dir) if is_complete(p)]):
        problem = verify(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    return None, skipped


def resolve_resume(output_dir: str | Path, resume: str | bool) -> Path:
    """The checkpoint to resume from: the newest complete one (`resume=True`) or a given complete folder."""
    output_dir = Path(output_dir)
    if resume is True:
        found, skipped = latest_verified(output_dir)
        for line in skipped:
            logger.warning("--resume: skipping %s", line)
        if found is not None and skipped:
            logger.warning("--resume: resuming from %s, the newest checkpoint that verifies", found.name)
        if found is None:
            incomplete = [p.name for p in list_checkpoints(output_dir) if not is_complete(p)]
            detail = f"; incomplete (never resumed from): {', '.join(incomplete)}" if incomplete else ""
            detail += f"; damaged: {'; '.join(skipped)}" if skipped else ""
            raise CheckpointError(
                f"--resume: no complete checkpoint under {output_dir}{detail}. "
                "Start without --resume, or pass --resume <checkpoint folder>"
            )
        return found
    path = Path(resume)
    if not path.is_dir():
        choices = [str(p) for p in list_checkpoints(output_dir) if is_complete(p)]
        hint = f" (complete checkpoints: {', '.join(choices)})" if choices else ""
        raise CheckpointError(f"--resume {path}: no such folder{hint}")
    if not is_complete(path):
        raise CheckpointError(
            f"--resume {path}: the checkpoint is incomplete (no {COMPLETE} marker; it was being "
            "written when the run stopped). Resume from an older one or pass --resume alone"
        )
    problem = verify(path)
    if problem is not None:
        raise CheckpointError(
            f"--resume {path}: the checkpoint is damaged ({problem}). Resume from an older one or pass "
            "--resume alone (the newest checkpoint that verifies)"
        )
    return path


def refuse_to_overwrite(output_dir: Path) -> None:
    """A fresh RL run must not start over an earlier run's checkpoints (rotation would delete the new ones)."""
    found = list_checkpoints(output_dir)
    if found:
        names = ", ".join(p.name for p in found[-3:])
        raise CheckpointError(
            f"{output_dir} already holds checkpoints of an earlier RL run ({names}). Continue "
            "it with `rlft train --resume`, or start a new run under another `name` "
            "(or move that folder away)"
        )


def rotate(output_dir: Path, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints; drop incomplete ones older than the newest complete one."""
    checkpoints = list_checkpoints(output_dir)
    complete = [p for p in checkpoints if is_complete(p)]
    if not complete:
        return
    newest = checkpoint_step(complete[-1])
    doomed = [p for p in checkpoints if not is_complete(p) and checkpoint_step(p) < newest]
    if keep is not None and keep > 0:
        doomed += complete[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)

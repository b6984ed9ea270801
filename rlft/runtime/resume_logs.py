"""Logs that never lie after a resume: the rows a stopped run logged after its checkpoint are dropped.

A resumed run replays the steps after its checkpoint and logs them again; without this, metrics.jsonl and
transcripts.jsonl would hold those steps twice and skew every sum or mean taken over them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlft.runtime.run_files import write_text_atomic

logger = logging.getLogger(__name__)

# transformers logs these once, when `train()` ends: the summary of one call, not of a training step.
TRAIN_SUMMARY_KEYS = ("train_runtime", "train_loss")


def truncate_log(path: Path, stage: str, step: int) -> int:
    """Drop the rows `stage` logged after the checkpoint at `step` from a JSONL log; returns how many.

    A resumed run replays the steps after its checkpoint and logs them again; the earlier rows of those steps
    (and the end-of-training summary the stopped call logged at or after the checkpoint's step) would then be
    in the log twice. Rows of other stages, and rows without a step, are kept. The file is rewritten atomically
    (a temporary file renamed over it), so a kill during the rewrite leaves the old log, never half of it.
    """
    if not path.is_file():
        return 0
    # Split on "\n" only (as rlft.jsonl does): a JSON string may hold U+2028, which splitlines() cuts at.
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line]
    kept = [line for line in lines if not _logged_after(line, stage, step)]
    if len(kept) == len(lines):
        return 0
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    logger.info(
        "%s: dropped %d rows logged after step %d (replayed on resume)", path, len(lines) - len(kept), step
    )
    return len(lines) - len(kept)


def _logged_after(line: str, stage: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False  # a line this function cannot read is not its to drop
    if not isinstance(row, dict) or row.get("stage") != stage or not isinstance(row.get("step"), int):
        return False
    summary = any(key in row for key in TRAIN_SUMMARY_KEYS)
    return row["step"] > step or (summary and row["step"] >= step)

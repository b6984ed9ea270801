"""`rlft pipeline`: sft -> rm (when configured) -> rl -> eval, in one run directory."""

from __future__ import annotations

from typing import Any

from rlft.config.schema import Config
from rlft.stages.eval import run_eval
from rlft.stages.rl import run_rl
from rlft.stages.rm import run_rm
from rlft.stages.sft import run_sft


def run_pipeline(config: Config) -> dict[str, Any]:
    """sft -> rm (when the config has an `rm` section) -> rl -> eval of untrained, sft, rl and the expert on the
    same held-out seeds."""
    run_sft(config)
    if "rm" in config.model_fields_set:
        run_rm(config)
    run_rl(config)
    return run_eval(config)

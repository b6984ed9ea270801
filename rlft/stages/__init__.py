"""Stages: the config wired to the layers below, one module per stage (sft, rm, rl, eval) and the pipeline."""

from rlft.stages.eval import format_table, run_eval
from rlft.stages.pipeline import run_pipeline
from rlft.stages.rl import run_rl
from rlft.stages.rm import run_rm
from rlft.stages.sft import run_sft

__all__ = ["format_table", "run_eval", "run_pipeline", "run_rl", "run_rm", "run_sft"]

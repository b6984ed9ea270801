"""Learning: SFT then GRPO raise held-out success on random FrozenLake maps (known optimum: the expert's 100%).

Held-out maps are disjoint from every map in the training seed range. Success is that of the policy as
sampled at the rollout temperature (what RL optimises). Marked slow (a few minutes on two CPU cores);
the default test run includes it, `-m "not slow"` skips it.
"""

from __future__ import annotations

import pytest

from rlft.config import load_config
from rlft.stages import run_pipeline


@pytest.mark.slow
def test_sft_then_grpo_raise_held_out_success(tmp_path):
    config = load_config("configs/quickstart.yaml", [
        f"output_dir={tmp_path}", "name=learning",
        "rl.trainer.max_steps=40", "rl.trainer.learning_rate=5e-4",
        "eval.episodes=150", "eval.greedy=false", "tracking.wandb.enabled=false",
    ])
    results = run_pipeline(config)["policies"]
    untrained, sft, rl = (results[k]["sampled"]["success"] for k in ("untrained", "sft", "rl"))
    expert = results["expert"]["success"]
    assert expert == 1.0  # the optimum on these maps
    assert sft >= untrained + 0.2, results
    assert rl >= sft + 0.08, results

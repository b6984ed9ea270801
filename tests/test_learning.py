"""Learning: SFT then RL raise held-out success on random FrozenLake maps (known optimum: the expert's 100%).

Held-out maps are disjoint from every map in the training seed range. Success is that of the policy as
sampled at the rollout temperature (what RL optimises). Marked slow (a few minutes each on two CPU cores):
deselected by default, run with `pytest -m slow`.
"""

from __future__ import annotations

import pytest

from rlft.config.schema import load_config
from rlft.stages import run_eval, run_pipeline, run_rl


@pytest.mark.slow
def test_sft_then_grpo_raise_held_out_success(tmp_path):
    config = load_config(
        "configs/quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            "name=learning",
            "rl.trainer.max_steps=40",
            "rl.trainer.learning_rate=5e-4",
            "eval.episodes=150",
            "eval.greedy=false",
            "tracking.wandb.enabled=false",
        ],
    )
    results = run_pipeline(config)["policies"]
    untrained, sft, rl = (results[k]["sampled"]["success"] for k in ("untrained", "sft", "rl"))
    expert = results["expert"]["success"]
    assert expert == 1.0  # the optimum on these maps
    assert sft >= untrained + 0.2, results
    assert rl >= sft + 0.08, results


@pytest.mark.slow
def test_ppo_raises_held_out_success_from_sft(tmp_path):
    """PPO (separate critic, token-level GAE) from the quickstart's SFT: 8 rollout batches of 64 episodes."""
    from rlft.stages import run_sft

    config = load_config(
        "configs/quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            "name=learning_ppo",
            "rl.algorithm=ppo",
            "rl.trainer={learning_rate: 5.0e-4, critic_learning_rate: 1.0e-3, per_device_train_batch_size: 32, "
            "steps_per_generation: 2, num_iterations: 2, max_steps: 32}",
            "eval.episodes=150",
            "eval.greedy=false",
            "tracking.wandb.enabled=false",
        ],
    )
    run_sft(config)
    rl_path = run_rl(config)
    assert (rl_path / "critic" / "critic.json").is_file()
    results = run_eval(config)["policies"]
    sft, rl = results["sft"]["sampled"]["success"], results["rl"]["sampled"]["success"]
    assert results["expert"]["success"] == 1.0
    assert rl >= sft + 0.1, results

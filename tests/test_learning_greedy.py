"""Issue 16's learning bar: RL raises held-out GREEDY success over SFT on the quickstart task, for each algorithm.

Every algorithm of the registry trains from one SFT checkpoint (the quickstart's SFT, shared by the module) with
the overrides the learning table uses for it on every env (benchmarks/learning_table.yaml: one set per method, no
per-env tuning) and the quickstart's episode budget, validating every 10 steps with `eval.keep_best`. Then
`rlft eval` plays the 200 held-out test maps, greedy and sampled.

Two bars per algorithm:
- Model selection keeps RL from silently making the policy worse: the checkpoint chosen on validation maps
  (step 0, the SFT start, included) is not more than 0.05 below SFT's greedy test success (the half-width of
  the test's 95% CI on 200 maps is about 0.06).
- The issue's target, +0.10 greedy over SFT. NOT MET on this task today (see
  benchmarks/investigations/greedy_success_2026-12-07.md: the tiny policy's greedy failures are dead ends that
  need planning on unseen maps, and RL sharpens sampling towards SFT's mode), so it is a strict xfail: the day an
  algorithm meets it, the test fails and says to turn it into a plain assertion.

Marked slow (8 to 35 minutes per algorithm on one CPU core, PPO the longest, plus 4 for the shared SFT): `pytest -m slow
tests/test_learning_greedy.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlft.algorithms.registry import ALGORITHMS
from rlft.config.schema import load_config
from rlft.stages import run_eval, run_rl, run_sft

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the learning table's spec and helpers
import learning_table_results as ltr  # noqa: E402

TABLE = ltr.load_spec()
METHOD_OF = {"grpo": "grpo", "gigpo": "gigpo", "ppo": "ppo_turn"}  # the learning table's method per algorithm
BUDGET = TABLE["envs"]["random_4x4"]["budget_episodes"]


def _overrides(method: str) -> list[str]:
    """The learning table's overrides for `method` on random 4x4 maps, with max_steps for the env's budget."""
    spec = TABLE["methods"][method]
    return [
        *ltr.as_overrides(spec["overrides"]),
        f"rl.trainer.max_steps={ltr.max_steps_for(BUDGET, ltr.trainer_of(spec))}",
    ]


def _config(tmp_path: Path, name: str, extra: list[str] = ()):
    return load_config(
        ROOT / "configs" / "quickstart.yaml",
        [f"output_dir={tmp_path}", f"name={name}", "tracking.wandb.enabled=false", *extra],
    )


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory) -> Path:
    return run_sft(_config(tmp_path_factory.mktemp("sft"), "greedy_sft"))


def _greedy(results: dict, policy: str) -> float:
    return results["policies"][policy]["greedy"]["success"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sft_checkpoint):
    """algorithm -> `rlft eval`'s results for an RL run of it from the shared SFT checkpoint (run once each)."""
    done: dict[str, dict] = {}

    def train(algorithm: str) -> dict:
        if algorithm not in done:
            config = _config(
                tmp_path_factory.mktemp(algorithm),
                f"greedy_{algorithm}",
                [
                    f"rl.init_from={sft_checkpoint}",
                    *_overrides(METHOD_OF[algorithm]),
                    "eval.every_steps=10",
                    "eval.keep_best=true",
                ],
            )
            run_rl(config)
            done[algorithm] = run_eval(config, policies={"sft": sft_checkpoint, **_rl_policies(config)})
        return done[algorithm]

    return train


def _rl_policies(config) -> dict[str, Path]:
    checkpoints = Path(config.output_dir) / config.name / "checkpoints"
    return {label: checkpoints / label for label in ("rl", "rl_best") if (checkpoints / label).is_dir()}


def test_every_registered_algorithm_trains_with_its_learning_table_overrides():
    assert set(METHOD_OF) == set(ALGORITHMS)
    config = _config(Path("/tmp/unused"), "x", _overrides("ppo_turn"))
    assert config.rl.algorithm == "ppo"
    assert config.rl.trainer["max_steps"] == 5120 // (
        32 // 2
    )  # batch 32 used over 2 iterations: 16 episodes/step
    assert config.rl.trainer["advantage_level"] == "turn"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_checkpoint_selected_on_validation_is_not_worse_than_sft(algorithm, trained):
    results = trained(algorithm)
    assert _greedy(results, "rl_best") >= _greedy(results, "sft") - 0.05, results["policies"]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 16's +0.10 greedy target is not met on the quickstart task (benchmarks/investigations/"
    "greedy_success_2026-12-07.md); if this passes, make it a plain assertion",
)
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_rl_raises_held_out_greedy_success_over_sft_by_a_tenth(algorithm, trained):
    results = trained(algorithm)
    assert _greedy(results, "rl") >= _greedy(results, "sft") + 0.10, results["policies"]

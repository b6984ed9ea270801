"""Generalisation measured during RL (issue 14, item 4): at each evaluation, training tasks against validation
tasks, greedy and sampled; the gap; the overfitting alarm."""

from __future__ import annotations

import logging

import pytest

from rlft import stages
from rlft.algorithms import grpo
from rlft.runtime.tracking import read_metrics
from rlft.stages import rl as stage_rl
from rlft.stages.generalisation import GeneralisationEvaluation, train_task_seeds
from tests.conftest import tiny_config


def summary(success: float, ret: float | None = None) -> dict[str, float]:
    keys = ("success", "success_ci_low", "success_ci_high", "return_ci_low", "return_ci_high")
    return {**dict.fromkeys(keys, success), "return": success if ret is None else ret, "episodes": 4.0}


def test_training_tasks_are_the_first_of_the_runs_own_order_and_fixed():
    config = tiny_config(env={"train_seeds": {"start": 100, "count": 50}})
    seeds = train_task_seeds(config, 10)
    assert seeds == train_task_seeds(config, 10)  # fixed for the run
    assert len(set(seeds)) == 10 and all(100 <= s < 150 for s in seeds)
    assert seeds != list(range(100, 110))  # shuffled as TRL's sampler shuffles
    assert train_task_seeds(config, 10, shuffle=False) == list(range(100, 110))
    few = tiny_config(env={"train_seeds": {"start": 0, "count": 3}})
    assert sorted(train_task_seeds(few, 6)) == [0, 0, 1, 1, 2, 2]  # fewer tasks than episodes: each again


def scripted_evaluation(config, tokenizer, results, steps):
    """A GeneralisationEvaluation whose `evaluate_policy` answers from `results[(split, decoding)]`."""
    validation, training = [20_000_000, 20_000_001], [5, 6]

    def evaluate(engine, seeds, batch_size, seed=0):
        split = "val" if list(seeds) == validation else "train"
        decoding = "greedy" if engine.settings.greedy else "sampled"
        return summary(*results[(split, decoding)]()), []

    return GeneralisationEvaluation(config, tokenizer, validation, training, evaluate, lambda: next(steps))


def test_logs_train_and_validation_success_per_decoding_and_the_gap(frozen_lake_policy):
    config, _, tokenizer = frozen_lake_policy
    results = {
        ("val", "greedy"): lambda: (0.5, 0.25),
        ("val", "sampled"): lambda: (0.4,),
        ("train", "greedy"): lambda: (0.9, 0.75),
        ("train", "sampled"): lambda: (0.7,),
    }
    logs = scripted_evaluation(config, tokenizer, results, iter([0]))(policy=None)
    # eval.greedy (the default): the headline is greedy; eval/success etc. stay the validation numbers
    assert logs["success"] == 0.5 and logs["return"] == 0.25 and logs["val_success"] == 0.5
    assert (logs["val_success_greedy"], logs["val_success_sampled"]) == (0.5, 0.4)
    assert (logs["train_success_greedy"], logs["train_success_sampled"]) == (0.9, 0.7)
    assert logs["train_success"] == 0.9 and logs["train_return"] == 0.75
    assert logs["generalisation/gap"] == pytest.approx(0.4)
    assert logs["generalisation/gap_greedy"] == pytest.approx(0.4)
    assert logs["generalisation/gap_sampled"] == pytest.approx(0.3)
    assert "generalisation/overfit_alarm" not in logs  # window (4) not full after one evaluation

    sampled_only = config.model_copy(
        update={"eval": config.eval.model_copy(update={"greedy": False, "both_decodings": False})}
    )
    logs = scripted_evaluation(sampled_only, tokenizer, results, iter([0]))(policy=None)
    assert logs["success"] == 0.4 and logs["generalisation/gap"] == pytest.approx(0.3)
    assert not any(key.endswith("_greedy") for key in logs)


def test_greedy_validation_logs_the_share_of_the_experts_moves(frozen_lake_policy):
    """Two validation episodes: the expert's own (every turn agrees) and two unparsed actions (both disagree)."""
    from envs.experts import expert_for, play_expert_episode
    from rlft.core.episode import Episode
    from rlft.stages.common import env_factory

    config, _, tokenizer = frozen_lake_policy
    env = env_factory(config)()
    game = play_expert_episode(env, expert_for(env), seed=20_000_000, max_turns=8)
    expert_episode = Episode(seed=20_000_000, prompt_ids=[], first_observation=game["observations"][0])
    expert_episode.actions, expert_episode.observations = game["actions"], game["observations"][1:-1]
    first, _ = env.reset(seed=20_000_001)
    lost = Episode(seed=20_000_001, prompt_ids=[], first_observation=first)
    lost.actions, lost.observations = (
        ["fly", "fly"],
        [first],
    )  # an invalid action leaves the agent where it is
    validation = [20_000_000, 20_000_001]

    def evaluate(engine, seeds, batch_size, seed=0):
        episodes = [expert_episode, lost] if engine.settings.greedy else []
        return summary(0.5), episodes if list(seeds) == validation else []

    evaluation = GeneralisationEvaluation(config, tokenizer, validation, [5, 6], evaluate, lambda: 0)
    logs = evaluation(policy=None)
    turns = len(game["actions"])
    assert logs["val_expert_agreement_greedy"] == pytest.approx(turns / (turns + 2))
    off = config.model_copy(update={"eval": config.eval.model_copy(update={"expert_agreement": False})})
    logs = GeneralisationEvaluation(off, tokenizer, validation, [5, 6], evaluate, lambda: 0)(policy=None)
    assert "val_expert_agreement_greedy" not in logs


def test_the_overfitting_alarm_fires_on_the_evaluations_and_names_the_step(frozen_lake_policy, caplog):
    config, _, tokenizer = frozen_lake_policy  # overfit_alarm: window 4, margin 0.1
    train, val = iter([0.5, 0.6, 0.7, 0.8]), iter([0.6, 0.55, 0.5, 0.45])
    results = {
        ("val", "greedy"): lambda: (next(val),),
        ("val", "sampled"): lambda: (0.0,),
        ("train", "greedy"): lambda: (next(train),),
        ("train", "sampled"): lambda: (0.0,),
    }
    evaluation = scripted_evaluation(config, tokenizer, results, iter([0, 10, 20, 30]))
    with caplog.at_level(logging.WARNING, logger="rlft.algorithms.overfit_alarm"):
        logs = [evaluation(policy=None) for _ in range(4)]
    # train rises 0.1 per evaluation (0.3 across the window), validation falls 0.05 (0.15): both past 0.1
    assert logs[-1]["generalisation/overfit_alarm"] == 1.0
    assert logs[-1]["generalisation/train_rise"] == pytest.approx(0.3)
    assert logs[-1]["generalisation/validation_fall"] == pytest.approx(0.15)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "overfitting alarm at step 30" in warning and "now 0.800" in warning and "now 0.450" in warning


def test_rl_logs_generalisation_on_the_tasks_it_trains_on(tmp_path, monkeypatch):
    """A real (tiny) GRPO run: every evaluation logs train/validation success per decoding and the gap under
    their own names, and the training tasks evaluated include the ones the first step trained on."""
    config = tiny_config(
        output_dir=str(tmp_path),
        rl={
            "init_from": "base",
            "trainer": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 4},
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
        eval={"episodes": 4, "batch_size": 4, "during_episodes": 4, "every_steps": 1},
    )
    played, real_play = [], grpo.EpisodeRollout.play

    def play(self, prompts, trainer):
        played.append(grpo.seeds_of(prompts))
        return real_play(self, prompts, trainer)

    monkeypatch.setattr(grpo.EpisodeRollout, "play", play)
    stages.run_rl(config)
    rows = [r for r in read_metrics(config.run_dir) if "eval/train_success" in r]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["eval/val_success"] == row["eval/success"] == row["eval/val_success_greedy"]
        assert row["generalisation/gap"] == pytest.approx(row["eval/train_success"] - row["eval/val_success"])
        assert "eval/train_success_sampled" in row and "eval/val_success_sampled" in row
    training = train_task_seeds(config, 4)
    assert set(played[0]) <= set(training)  # the first rollout's tasks are among those evaluated
    assert not set(training) & set(stage_rl.validation_seeds(config))

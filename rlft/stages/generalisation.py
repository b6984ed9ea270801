"""Generalisation measured during RL: success on training tasks against held-out (validation) tasks.

At every evaluation of `eval.every_steps` the policy plays the validation seeds and, with `eval.train_tasks`, as
many training tasks; with `eval.both_decodings` each greedy and sampled (at rollout.temperature). Logged:

    eval/success, eval/return, ...          validation, the decoding eval.greedy names (as before)
    eval/val_success, eval/train_success    the same decoding, on validation and on training tasks
    eval/{val,train}_success_{greedy,sampled}
    generalisation/gap                      eval/train_success - eval/val_success (and gap_greedy, gap_sampled)
    generalisation/overfit_alarm            rlft.algorithms.overfit_alarm, once its window is full
    eval/val_expert_agreement_greedy        with eval.expert_agreement and an env with an expert: the share of
                                            the greedy validation turns that play the expert's move (a curve of
                                            decisions, where success alone cannot say whether any changed)

The training tasks are the first `eval.during_episodes` seeds of the run's own sampling order: the shuffled
env.train_seeds that TRL's sampler draws epoch 0 from (rlft.algorithms.trl_bridge.EpochSeededRepeatSampler, seeded
by the run's seed). Fixed for the run, so the curve is comparable from one evaluation to the next, they are the
tasks the run trains on first: all of them have been trained on after during_episodes / (prompts per step) steps,
and with a large train range a uniform draw from it would be tasks the run never saw, as held out as validation.
With fewer training tasks than during_episodes, each is played more than once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlft.algorithms.overfit_alarm import OverfitAlarm
from rlft.algorithms.trl_bridge import EpochSeededRepeatSampler
from rlft.config.schema import Config
from rlft.rollout.evaluation import held_out_seeds, missing_expert
from rlft.rollout.expert_agreement import expert_agreement
from rlft.stages.common import env_factory, rollout_engine

DECODINGS = ("greedy", "sampled")


def validation_seeds(config: Config) -> list[int]:
    """The `eval.during_episodes` validation seeds from `eval.validation_seed_start`: what RL (and SFT with
    sft.eval_every_steps) evaluates and selects on. The test seeds (`eval.seed_start`) are played only by
    `rlft eval`."""
    validation = config.eval.model_copy(
        update={"seed_start": config.eval.validation_seed_start, "episodes": config.eval.during_episodes}
    )
    return held_out_seeds(env_factory(config), config.env, validation)


def train_task_seeds(config: Config, count: int, shuffle: bool = True) -> list[int]:
    """The first `count` seeds of env.train_seeds in the order the run's sampler draws them in epoch 0.

    `shuffle`: the trainer's `shuffle_dataset` (TRL's default True); False draws them in order.
    """
    train = config.env.train_seeds
    sampler = EpochSeededRepeatSampler(
        range(train.count), mini_repeat_count=1, shuffle=shuffle, seed=config.seed
    )
    sampler.set_epoch(0)
    order = list(sampler)  # batch_size 1, no repeat: one permutation of the indices
    return [train.start + order[i % len(order)] for i in range(count)]


class GeneralisationEvaluation:
    """`evaluate(policy) -> logs` for rlft.runtime.tracking.HeldOutEvalCallback: validation and training tasks,
    each decoding, the gap and the overfitting alarm.

    Args:
        config: the run's config (eval.*, the rollout's sampling settings).
        tokenizer: the policy's.
        validation: the validation seeds.
        training: the training-task seeds (`train_task_seeds`); empty: training tasks are not played.
        evaluate_policy: rlft.rollout.evaluation.evaluate_policy (the stage's, so a test can script it).
        current_step: the trainer's global step now (the alarm names it).
    """

    def __init__(
        self,
        config: Config,
        tokenizer,
        validation: list[int],
        training: list[int],
        evaluate_policy: Callable[..., tuple[dict[str, Any], list]],
        current_step: Callable[[], int],
    ):
        self.config, self.validation, self.training = config, validation, training
        self.evaluate_policy, self.current_step = evaluate_policy, current_step
        self.headline = "greedy" if config.eval.greedy else "sampled"
        decodings = DECODINGS if config.eval.both_decodings else (self.headline,)
        # the headline first: its validation summary is eval/success (and model selection's), as before
        self.decodings = sorted(decodings, key=lambda d: d != self.headline)
        self.engines = {d: rollout_engine(config, tokenizer, greedy=d == "greedy") for d in self.decodings}
        alarm = config.eval.overfit_alarm
        self.alarm = OverfitAlarm(alarm.window, alarm.margin) if alarm.enabled and training else None
        self.audit = (
            config.eval.expert_agreement
            and "greedy" in self.decodings
            and missing_expert(env_factory(config)) is None
        )

    def play(self, decoding: str, policy, seeds: list[int]) -> tuple[dict[str, Any], list]:
        engine = self.engines[decoding]
        engine.model = policy
        return self.evaluate_policy(engine, seeds, self.config.eval.batch_size, seed=self.config.seed)

    def __call__(self, policy) -> dict[str, float]:
        logs: dict[str, float] = {}
        for decoding in self.decodings:
            validation, episodes = self.play(decoding, policy, self.validation)
            if decoding == "greedy" and self.audit:
                agreement = expert_agreement(env_factory(self.config), episodes)["agreement"]
                if agreement is not None:
                    logs["val_expert_agreement_greedy"] = agreement
            if decoding == self.headline:
                logs.update(validation)  # eval/success, eval/return, ...: the validation numbers as before
            logs[f"val_success_{decoding}"] = validation["success"]
            if self.training:
                training, _ = self.play(decoding, policy, self.training)
                logs[f"train_success_{decoding}"] = training["success"]
                logs[f"train_return_{decoding}"] = training["return"]
                logs[f"generalisation/gap_{decoding}"] = training["success"] - validation["success"]
        logs["val_success"] = logs[f"val_success_{self.headline}"]
        if self.training:
            logs["train_success"] = logs[f"train_success_{self.headline}"]
            logs["train_return"] = logs[f"train_return_{self.headline}"]
            logs["generalisation/gap"] = logs["train_success"] - logs["val_success"]
        if self.alarm is not None:
            self.alarm.observe(self.current_step(), logs["train_success"], logs["val_success"])
            logs.update(self.alarm.last)
        return logs

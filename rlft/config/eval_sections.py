"""The `eval` section of the experiment configuration: held-out and validation seeds, evaluation during RL,
model selection and the overfitting alarm (rlft.stages.eval, rlft.stages.rl, rlft.stages.generalisation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlft.config.sections import Section
from rlft.errors import did_you_mean


class OverfitAlarmConfig(Section):
    """The overfitting alarm during RL (rlft.algorithms.overfit_alarm): training success rising while held-out
    success falls. Needs eval.every_steps and eval.train_tasks."""

    enabled: bool = Field(True, description="watch every evaluation of eval.every_steps (on by default)")
    window: int = Field(4, ge=2, description="evaluations the rise and the fall are measured over")
    margin: float = Field(
        0.1,
        gt=0.0,
        description="fires when, over the window, training success rose by more than this and validation "
        "success fell by more than this (changes of the least-squares line through the window)",
    )


class EvalConfig(Section):
    episodes: int = Field(200, gt=0)
    seed_start: int = Field(10_000_000, ge=0, description="held-out seeds start here, far from train seeds")
    disjoint_tasks: bool = Field(
        True, description="skip held-out seeds whose task (map) appeared in training"
    )
    greedy: bool = Field(
        True, description="headline numbers from greedy decoding; sampled ones are reported too"
    )
    batch_size: int = Field(128, gt=0)
    every_steps: int | None = Field(
        None,
        gt=0,
        description="during RL, evaluate on held-out seeds every N steps "
        "(learning curves against env steps); off by default",
    )
    during_episodes: int = Field(100, gt=0, description="validation episodes per evaluation during RL")
    validation_seed_start: int = Field(
        20_000_000,
        ge=0,
        description="validation seeds (eval.every_steps, eval.keep_best) start here, apart from the test seeds "
        "of eval.seed_start that only `rlft eval` plays",
    )
    keep_best: bool = Field(
        False,
        description="during RL, keep the checkpoint with the best validation success as checkpoints/rl_best "
        "(needs eval.every_steps); `rlft eval` reports it as the policy rl_best",
    )
    regression_margin: float = Field(
        0.05,
        ge=0.0,
        description="warn when validation success falls more than this below the run's first validation success",
    )
    train_tasks: bool = Field(
        True,
        description="with eval.every_steps: also play as many training tasks as validation ones (the first "
        "tasks of the run's own sampling order, fixed for the run) and log eval/train_success and "
        "generalisation/gap = train - validation success",
    )
    both_decodings: bool = Field(
        True,
        description="with eval.every_steps: play the validation (and training) tasks greedy and sampled, "
        "logging *_greedy and *_sampled; false: only the decoding eval.greedy names",
    )
    overfit_alarm: OverfitAlarmConfig = Field(default_factory=OverfitAlarmConfig)
    expert_agreement: bool = Field(
        True,
        description="when the env has an expert: replay each policy's greedy test episodes, asking the expert at "
        "every state, and report the share of turns where the policy did what the expert would, with the most "
        "frequent disagreeing observations (eval.json `decisions`)",
    )
    expert: Literal["auto"] | bool = Field(
        "auto",
        description="evaluate the env's expert beside the policies: auto = when the env has one (skipped "
        "with a note otherwise), true = required (no expert fails before any model loads), false = never",
    )

    @model_validator(mode="after")
    def _validation_apart_from_test(self) -> EvalConfig:
        # The seeds each range may use: held_out_seeds scans up to 200 seeds per episode to find unseen tasks.
        span = 200 if self.disjoint_tasks else 1
        test = (self.seed_start, self.seed_start + span * self.episodes)
        validation = (self.validation_seed_start, self.validation_seed_start + span * self.during_episodes)
        if test[0] < validation[1] and validation[0] < test[1]:
            raise ValueError(
                f"eval.validation_seed_start = {self.validation_seed_start} (seeds up to {validation[1] - 1}) "
                f"overlaps eval.seed_start = {self.seed_start} (test seeds up to {test[1] - 1}): model selection "
                "would peek at the test tasks; move one range clear of the other"
            )
        if self.keep_best and self.every_steps is None:
            raise ValueError("eval.keep_best needs eval.every_steps (how often validation runs)")
        return self

    @field_validator("expert", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        # One message naming the three choices, instead of pydantic's one error per member of the union.
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"expected auto, true or false{did_you_mean(str(value), ('auto', 'true', 'false'))}")

"""The `reward` section of the experiment configuration: a reward design's components, gold signal and alarm
(rlft.rewards.design builds the design from it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from rlft.config.sections import Section


class _RewardComponentBase(Section):
    """What every reward component has (rlft/rewards): composed value = weight x clip(normalise(raw))."""

    weight: float = Field(1.0, description="multiplies the component after normalisation and clipping")
    normalize: bool = Field(
        False,
        description="running mean / std normalisation of the values the component "
        "emits (each turn's for turn-level components, the episode's for episode-level ones)",
    )
    clip: tuple[float, float] | None = Field(None, description="[lo, hi] applied after normalisation")

    @field_validator("weight", mode="before")
    @classmethod
    def _weight_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return value

    @field_validator("clip")
    @classmethod
    def _clip_is_a_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"expected [lo, hi] with lo < hi, got {list(value)}")
        return value


class EnvRewardComponent(_RewardComponentBase):
    """The env's own per-turn reward."""

    kind: Literal["env"]


class RmRewardComponent(_RewardComponentBase):
    """A learned reward model's score of the transcript (rlft.rewards.models.scoring.load_reward_model)."""

    kind: Literal["rm"]
    path: str | list[str] | None = Field(
        None,
        description="a reward-model folder, or several (an ensemble); null: "
        "this run's checkpoints/rm, trained by `rlft rm` (which `rlft pipeline` "
        "runs before RL when the config has an `rm` section)",
    )
    level: Literal["episode", "turn"] = Field(
        "episode",
        description="episode: the whole transcript's score on the "
        "last turn; turn: each turn the change in score its action made",
    )
    aggregate: Literal["mean", "min", "mean_minus_std"] | None = Field(
        None, description="how an ensemble's scores combine; null: its ensemble.json's, else mean"
    )
    k: float | None = Field(
        None, ge=0.0, description="mean_minus_std: mean - k * std; null: ensemble.json's, else 1"
    )


class RuleRewardComponent(_RewardComponentBase):
    """A rule function: a built-in name (valid_action, length_penalty, potential_shaping) or 'module:function'."""

    kind: Literal["rule"]
    function: str = Field(
        ..., description="a built-in rule name or 'module:function' (rlft/rewards/rules.py)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the function on every call")


RewardComponent = Annotated[
    EnvRewardComponent | RmRewardComponent | RuleRewardComponent, Field(discriminator="kind")
]


class RewardAlarmConfig(Section):
    """The over-optimisation alarm (rlft/rewards/alarm.py): proxy trending up while gold trends down."""

    enabled: bool | None = Field(None, description="null: on whenever the design has a gold signal")
    window: int = Field(20, ge=4, description="the last N logged steps that both trends are fitted over")
    min_t: float = Field(3.0, gt=0.0, description="|t-statistic| each least-squares slope must exceed")
    stop: bool = Field(False, description="stop training (a checkpoint is saved) when the alarm fires")
    proxy: str = Field("proxy/return", description="the logged metric that is optimised")
    gold: str = Field("gold/return", description="the logged metric that should rise with it")


class RewardConfig(Section):
    """The reward design (rlft/rewards). The default, the env reward alone with weight 1, is rlft without one."""

    name: str | None = Field(
        None,
        description="a label for the design (wandb tag reward:<name>); unset: the "
        "component names joined by '+'",
    )
    components: dict[str, RewardComponent] = Field(
        default_factory=lambda: {"env": EnvRewardComponent(kind="env")},
        description="name -> component; the episode reward is their sum",
    )
    gold: str = Field(
        "env",
        description="'env' (the env's own return and success), 'none', or 'module:function' "
        "(a rule function; its values summed per episode)",
    )
    alarm: RewardAlarmConfig = Field(default_factory=RewardAlarmConfig)

    @field_validator("gold")
    @classmethod
    def _gold_source(cls, value: str) -> str:
        if value not in ("env", "none") and ":" not in value:
            raise ValueError("expected 'env', 'none' or 'module:function'")
        return value

    @model_validator(mode="after")
    def _has_components(self) -> RewardConfig:
        if not self.components:
            raise ValueError("no reward components; expected at least one (e.g. env: {kind: env})")
        if self.alarm.enabled and self.gold == "none":
            raise ValueError(
                "alarm.enabled is true but gold is 'none': the alarm compares the proxy with a gold signal"
            )
        return self

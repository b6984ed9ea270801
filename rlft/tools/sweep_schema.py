"""What a sweep file may say: its keys (`SweepFile`) and the search space, one param model per Optuna suggest.

The keys are documented with an example in rlft/tools/sweep_file.py, which reads a file and checks it against
the base config (`load_sweep`); a param's range and choices are checked here, its path against the config there.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGES = ("sft", "rl", "eval")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Section):
    """`trial.suggest_float(path, low, high, log=log, step=step)`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _a_range(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low = {self.low}, high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low = {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be used together")
        return self


class IntParam(_Section):
    """`trial.suggest_int(path, low, high, step=step, log=log)`."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _a_range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low = {self.low}, high = {self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self


class CategoricalParam(_Section):
    """`trial.suggest_categorical(path, choices)`; choices are scalars (Optuna stores them as such)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(..., min_length=1)

    @field_validator("choices")
    @classmethod
    def _scalars(cls, choices: list[Any]) -> list[Any]:
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(
                    f"choice {choice!r} is a {type(choice).__name__}; expected null, a boolean, a "
                    "number or a string"
                )
        if len({json.dumps(c) for c in choices}) < len(choices):
            raise ValueError(f"a choice is listed twice in {choices!r}")
        return choices


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class HeartbeatSettings(_Section):
    """How a trial left RUNNING by a killed process is found: no heartbeat for `grace_period_s`."""

    interval_s: int | None = Field(
        60,
        gt=0,
        description="a running trial's heartbeat period; null: none, and a "
        "killed process's trial stays RUNNING",
    )
    grace_period_s: int = Field(
        300, gt=0, description="a RUNNING trial with no heartbeat for this long is FAIL"
    )
    max_retry: int = Field(
        1, ge=0, description="such a trial is queued again with the same params this many times"
    )


class SweepFile(_Section):
    """The sweep YAML; every key is documented in the module docstring and the README's Sweeps section."""

    base: str
    study: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = "eval/success"
    n_trials: int = Field(20, gt=0)
    timeout: float | None = Field(None, gt=0, description="seconds; this process starts no trial after it")
    stages: Literal["pipeline"] | list[Literal["sft", "rl", "eval"]] = "pipeline"
    sampler: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {"tpe": {}})
    pruner: dict[str, dict[str, Any] | None] | None = Field(default_factory=lambda: {"median": {}})
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted key -> value, for every trial"
    )
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="params of trials to run first")
    params: dict[str, Param] = Field(..., min_length=1)


def sample_values(param: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    """The values each param's path is checked with: both ends of a range, every choice."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def check_in_space(value: Any, param: FloatParam | IntParam | CategoricalParam) -> str | None:
    """Why `value` is not in `param`'s space (a choice, or a number in [low, high]); None when it is."""
    if isinstance(param, CategoricalParam):
        return None if value in param.choices else f"{value!r} is not one of {param.choices!r}"
    number_types = (int,) if isinstance(param, IntParam) else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types):
        return f"{value!r} is not {'an integer' if isinstance(param, IntParam) else 'a number'}"
    return None if param.low <= value <= param.high else f"{value!r} is outside [{param.low}, {param.high}]"

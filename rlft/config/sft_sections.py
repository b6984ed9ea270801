"""The `sft` section of the experiment configuration: the demonstrations, TRL's SFTConfig keys, validation during
SFT and model selection on it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlft.config.sections import Section


class ExpertDemos(Section):
    source: Literal["expert"] = "expert"
    episodes: int = Field(300, gt=0)
    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class JsonlDemos(Section):
    source: Literal["jsonl"] = "jsonl"
    path: str


class SftConfig(Section):
    init_from: str = Field(
        "base",
        description="'base' (this run's base model: model.tiny or model.name_or_path) or a checkpoint folder "
        "of another run to adapt (e.g. runs/a/checkpoints/rl); its tokenizer comes with it",
    )
    demos: ExpertDemos | JsonlDemos = Field(default_factory=ExpertDemos, discriminator="source")
    trainer: dict[str, Any] = Field(default_factory=dict, description="passed to trl.SFTConfig")
    eval_every_steps: int | None = Field(
        None,
        gt=0,
        description="every this many SFT steps (and at the last), play the validation tasks (eval.during_episodes "
        "from eval.validation_seed_start, eval.greedy's decoding) and score the expert's clean demos on them "
        "(eval_loss); needs an env with an expert",
    )
    keep_best: bool = Field(
        False,
        description="save as checkpoints/sft the SFT step with the best validation success, not the last "
        "(transformers' load_best_model_at_end; selection.json names its step); needs sft.eval_every_steps",
    )

    @model_validator(mode="after")
    def _keep_best_needs_validation(self) -> SftConfig:
        if self.keep_best and self.eval_every_steps is None:
            raise ValueError("sft.keep_best needs sft.eval_every_steps (how often validation runs), e.g. 50")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_demo_source(cls, data: Any) -> Any:
        # The discriminator needs `source` in the input; without this, `sft.demos.episodes=100` (or a YAML
        # `demos: {episodes: 100}`) fails with "unable to extract tag" although `expert` is the default.
        demos = data.get("demos") if isinstance(data, dict) else None
        if isinstance(demos, dict) and "source" not in demos:
            data = {**data, "demos": {"source": "jsonl" if "path" in demos else "expert", **demos}}
        return data

"""The experiment configuration: one YAML file, `key.sub=value` overrides, validated before anything heavy loads.

Trainer hyperparameters are not re-declared here: `sft.trainer` passes through to TRL's `SFTConfig` and
`rl.trainer` to `GRPOConfig` (or rlft's PPO config), and their keys and types are checked against those
dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from rlft.errors import ConfigError, did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Section):
    """A small randomly initialised transformers model with a tokenizer made locally from env text."""

    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(256, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    corpus_episodes: int = Field(200, gt=0, description="random + expert episodes whose text builds the vocabulary")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class LoraSettings(_Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(_Section):
    """Which policy to start from: `name_or_path` (local folder or hub id) or the embedded `tiny` model."""

    name_or_path: str | None = None
    tiny: TinyModelConfig | None = None
    chat_template: Literal["auto", "on", "off"] = "auto"
    trust_remote_code: bool = False
    revision: str | None = Field(None, description="hub revision of name_or_path; a commit hash pins the weights and "
                                 "code to the ones you checked (unset: the hub's main branch); a local folder has none")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.name_or_path (a folder or hub id) or model.tiny")
        return self


class AdapterConfig(_Section):
    """How a Gymnasium env with a Discrete action space becomes a text env."""

    action_names: list[str] | None = None
    renderer: str | None = Field(None, description="'module:function' (env, obs) -> str")
    parser: str | None = Field(None, description="'module:function' (text) -> int | None")
    instructions: str = ""
    invalid_action: Literal["penalty", "terminate"] = "penalty"
    invalid_penalty: float = 0.0


class SeedRange(_Section):
    start: int = Field(0, ge=0)
    count: int = Field(100_000, gt=0)


class EnvConfig(_Section):
    id: str = Field(..., description="a registered gymnasium id (e.g. rlft/FrozenLake-v0) or 'module:Class'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    adapter: AdapterConfig | None = None
    max_turns: int = Field(16, gt=0)
    train_seeds: SeedRange = Field(default_factory=SeedRange)


class RolloutConfig(_Section):
    num_envs: int = Field(64, gt=0, description="concurrent episodes in one batched rollout")
    max_action_tokens: int = Field(4, gt=0)
    max_episode_tokens: int = Field(1024, gt=0, description="prompt + completion cap; episodes past it truncate")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_on_newline: bool = True
    env_step_timeout_s: float | None = Field(30.0, gt=0.0, description="an env.step or env.reset slower than this "
                                             "fails its episode (left out of the batch); null waits forever")
    max_env_failure_rate: float = Field(0.1, ge=0.0, le=1.0, description="abort when more than this fraction of "
                                        "a rollout batch's episodes fail (env raised, hung, malformed observation)")


class ExpertDemos(_Section):
    source: Literal["expert"] = "expert"
    episodes: int = Field(300, gt=0)
    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class JsonlDemos(_Section):
    source: Literal["jsonl"] = "jsonl"
    path: str


class SftConfig(_Section):
    demos: ExpertDemos | JsonlDemos = Field(default_factory=ExpertDemos, discriminator="source")
    trainer: dict[str, Any] = Field(default_factory=dict, description="passed to trl.SFTConfig")

    @model_validator(mode="before")
    @classmethod
    def _default_demo_source(cls, data: Any) -> Any:
        # The discriminator needs `source` in the input; without this, `sft.demos.episodes=100` (or a YAML
        # `demos: {episodes: 100}`) fails with "unable to extract tag" although `expert` is the default.
        demos = data.get("demos") if isinstance(data, dict) else None
        if isinstance(demos, dict) and "source" not in demos:
            data = {**data, "demos": {"source": "jsonl" if "path" in demos else "expert", **demos}}
        return data


class RlConfig(_Section):
    algorithm: Literal["grpo", "ppo"] = "grpo"
    init_from: str = Field("sft", description="'sft' (this run's SFT checkpoint), 'base', or a checkpoint path")
    trainer: dict[str, Any] = Field(default_factory=dict,
                                    description="passed to trl.GRPOConfig (grpo) or rlft.algorithms.ppo.PPOConfig (ppo)")
    max_nonfinite_steps: int = Field(3, gt=0, description="abort after this many optimizer steps in a row skipped "
                                     "for a non-finite loss, reward, value or gradient")


class JsonlPreferences(_Section):
    """Preference pairs from a JSONL file of {prompt, chosen, rejected} rows (text or chat messages)."""

    source: Literal["jsonl"] = "jsonl"
    path: str
    eval_path: str | None = Field(None, description="held-out pairs; unset: eval_fraction of the file's pairs are "
                                  "held out, whole prompts at a time")
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)


class EnvPreferences(_Section):
    """Preference pairs built from env episodes ranked by a gold signal, with Bradley-Terry label noise."""

    source: Literal["env"] = "env"
    episodes: int = Field(400, ge=2, description="training episodes, episodes_per_task from each train seed")
    episodes_per_task: int = Field(4, ge=2, description="episodes from one reset seed; pairs compare these")
    eval_episodes: int = Field(200, ge=0, description="held-out episodes, on seeds from eval.seed_start")
    budget: int = Field(1000, gt=0, description="at most this many training pairs")
    eval_budget: int = Field(500, gt=0, description="at most this many held-out pairs")
    noise: float = Field(0.0, ge=0.0, description="Bradley-Terry temperature in gold units: P(a preferred to b) = "
                         "sigmoid((gold_a - gold_b) / noise); 0 always prefers the higher gold")
    gold: str = Field("return", description="'return' (the episode's summed env reward) or 'module:function' "
                      "called with the played-episode record (envs.experts.play_expert_episode) -> float")
    policy: Literal["expert", "random"] = Field("expert", description="who plays: the env's expert with epsilon "
                                                "random actions, or uniformly random actions")
    epsilon: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, description="seeds the players, the pair sample and the labels")


class RmEnsembleConfig(_Section):
    size: int = Field(1, ge=1, description="members; member i trains with seed + i into checkpoints/rm_<i>")
    data: Literal["same", "bootstrap", "disjoint"] = Field("same", description="each member's training pairs: all "
                                                           "of them, a bootstrap resample, or a 1/size shard")
    aggregate: Literal["mean", "min", "mean_minus_std"] = "mean"
    k: float = Field(1.0, ge=0.0, description="mean_minus_std: mean - k * std over members")
    normalize: bool = Field(True, description="standardise each member by its training-score mean and std first")


class RmConfig(_Section):
    """`rlft rm`: a Bradley-Terry reward model (rlft/rewards/models/) trained with TRL's RewardTrainer."""

    data: EnvPreferences | JsonlPreferences = Field(default_factory=EnvPreferences, discriminator="source")
    model: ModelConfig | None = Field(None, description="unset: the policy's model section (tiny or name_or_path) "
                                      "with a one-label score head")
    trainer: dict[str, Any] = Field(default_factory=dict, description="passed to trl.RewardConfig")
    ensemble: RmEnsembleConfig = Field(default_factory=RmEnsembleConfig)
    batch_size: int = Field(32, gt=0, description="texts per forward pass when scoring held-out pairs")

    @model_validator(mode="before")
    @classmethod
    def _default_data_source(cls, data: Any) -> Any:
        # As for sft.demos: `rm.data.budget=100` without `source` means the default (env) source.
        pairs = data.get("data") if isinstance(data, dict) else None
        if isinstance(pairs, dict) and "source" not in pairs:
            data = {**data, "data": {"source": "jsonl" if "path" in pairs else "env", **pairs}}
        return data


class EvalConfig(_Section):
    episodes: int = Field(200, gt=0)
    seed_start: int = Field(10_000_000, ge=0, description="held-out seeds start here, far from train seeds")
    disjoint_tasks: bool = Field(True, description="skip held-out seeds whose task (map) appeared in training")
    greedy: bool = Field(True, description="headline numbers from greedy decoding; sampled ones are reported too")
    batch_size: int = Field(128, gt=0)
    every_steps: int | None = Field(None, gt=0, description="during RL, evaluate on held-out seeds every N steps "
                                    "(learning curves against env steps); off by default")
    during_episodes: int = Field(100, gt=0, description="held-out episodes per evaluation during RL")


class WandbConfig(_Section):
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "rlft"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrackingConfig(_Section):
    experiment: str | None = Field(None, description="the experiment this run belongs to (wandb group unless "
                                   "wandb.group is set; `rlft launch` sets it); unset: the run name")
    transcripts_every: int | None = Field(None, gt=0, description="during RL, log a sample of episode transcripts "
                                          "every N steps (wandb table + transcripts.jsonl); unset: logging_steps")
    transcript_samples: int = Field(4, ge=0, description="episodes per transcript sample; 0 turns them off")
    wandb: WandbConfig = Field(default_factory=WandbConfig)


class _RewardComponentBase(_Section):
    """What every reward component has (rlft/rewards): composed value = weight x clip(normalise(raw))."""

    weight: float = Field(1.0, description="multiplies the component after normalisation and clipping")
    normalize: bool = Field(False, description="running mean / std normalisation of the values the component "
                            "emits (each turn's for turn-level components, the episode's for episode-level ones)")
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
    path: str | list[str] | None = Field(None, description="a reward-model folder, or several (an ensemble); null: "
                                         "this run's checkpoints/rm, trained by `rlft rm` (which `rlft pipeline` "
                                         "runs before RL when the config has an `rm` section)")
    level: Literal["episode", "turn"] = Field("episode", description="episode: the whole transcript's score on the "
                                              "last turn; turn: each turn the change in score its action made")
    aggregate: Literal["mean", "min", "mean_minus_std"] | None = Field(
        None, description="how an ensemble's scores combine; null: its ensemble.json's, else mean")
    k: float | None = Field(None, ge=0.0, description="mean_minus_std: mean - k * std; null: ensemble.json's, else 1")


class RuleRewardComponent(_RewardComponentBase):
    """A rule function: a built-in name (valid_action, length_penalty, potential_shaping) or 'module:function'."""

    kind: Literal["rule"]
    function: str = Field(..., description="a built-in rule name or 'module:function' (rlft/rewards/rules.py)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the function on every call")


RewardComponent = Annotated[EnvRewardComponent | RmRewardComponent | RuleRewardComponent,
                            Field(discriminator="kind")]


class RewardAlarmConfig(_Section):
    """The over-optimisation alarm (rlft/rewards/alarm.py): proxy trending up while gold trends down."""

    enabled: bool | None = Field(None, description="null: on whenever the design has a gold signal")
    window: int = Field(20, ge=4, description="the last N logged steps that both trends are fitted over")
    min_t: float = Field(3.0, gt=0.0, description="|t-statistic| each least-squares slope must exceed")
    stop: bool = Field(False, description="stop training (a checkpoint is saved) when the alarm fires")
    proxy: str = Field("proxy/return", description="the logged metric that is optimised")
    gold: str = Field("gold/return", description="the logged metric that should rise with it")


class RewardConfig(_Section):
    """The reward design (rlft/rewards). The default, the env reward alone with weight 1, is rlft without one."""

    name: str | None = Field(None, description="a label for the design (wandb tag reward:<name>); unset: the "
                             "component names joined by '+'")
    components: dict[str, RewardComponent] = Field(
        default_factory=lambda: {"env": EnvRewardComponent(kind="env")},
        description="name -> component; the episode reward is their sum")
    gold: str = Field("env", description="'env' (the env's own return and success), 'none', or 'module:function' "
                      "(a rule function; its values summed per episode)")
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
            raise ValueError("alarm.enabled is true but gold is 'none': the alarm compares the proxy with a gold "
                             "signal")
        return self


class Config(_Section):
    """One experiment. Every field is documented once, here."""

    name: str = "experiment"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig
    env: EnvConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    rl: RlConfig = Field(default_factory=RlConfig)
    rm: RmConfig = Field(default_factory=RmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------------------------------------------
# Loading, overrides and error messages
# ---------------------------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that `1e-3` is a float (YAML 1.1 wants `1.0e-3`; TRL would get a string)
    and a key written twice in one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are overridden by design
            key = key_node.value
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key '{key}' (first on line {first_line[key]}); expected each key once",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _load_yaml(text: str) -> Any:
    # bandit B506 is a false positive: _YamlLoader is a SafeLoader subclass (tests/test_security.py checks that
    # every yaml loader in the library is one).
    return yaml.load(text, Loader=_YamlLoader)  # nosec B506


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """Parse `a.b.c=value` strings; values are YAML scalars (`1e-3`, `true`, `[1, 2]`)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key part")
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with `key.sub=value` overrides applied (creating sections as needed)."""
    raw = copy.deepcopy(raw)
    for path, value in parse_overrides(overrides):
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{'.'.join(path)}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); save the config as UTF-8") from None
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from exc
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping with at least 'model' and 'env'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _is_section(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _union_labels(member: Any) -> list[Any]:
    """The names pydantic gives a union member in an error location: 'str', 'list[str]', a discriminator tag."""
    plain_class = isinstance(member, type) and not get_args(member)  # `list[str]` passes isinstance(.., type)
    labels = [member.__name__ if plain_class else str(member)]
    for tag in ("source", "kind"):  # the discriminators: sft.demos.source, reward.components.<name>.kind
        if _is_section(member) and tag in member.model_fields:
            labels.extend(get_args(member.model_fields[tag].annotation))
    return labels


def _resolve_loc(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """The dotted key of an error location, without pydantic's union-member labels, and the section owning it.

    `('sft', 'demos', 'jsonl', 'pth')` -> `('sft.demos.pth', JsonlDemos)`, so an unknown key is compared with the
    fields of the section it was written in.
    """
    parts: list[str] = []
    owner: type[BaseModel] | None = None
    node: Any = Config
    for part in loc:
        members = [m for m in get_args(node) if m is not type(None)]
        if len(members) == 1 and type(None) in get_args(node):
            node = members[0]  # `X | None`: pydantic puts no label in the location
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        if get_origin(node) is dict and isinstance(part, str):  # a mapping's key, e.g. reward.components.<name>
            parts.append(part)
            node = get_args(node)[1]
            continue
        if _is_section(node):
            owner = node
            parts.append(str(part))
            field = node.model_fields.get(part) if isinstance(part, str) else None
            node = field.annotation if field is not None else None
            continue
        member = next((m for m in get_args(node) for label in _union_labels(m) if label == part), None)
        if member is not None:
            node = member
            continue
        parts.append(str(part))
        node = None
    return ".".join(parts) or "<top level>", owner


def validation_error_lines(exc: ValidationError, locate, special=None, strip_value_error: bool = False) -> list[str]:
    """One line per key of a pydantic error, naming the key and what was expected; shared by configs and sweeps.

    `locate(loc)` gives the dotted key and the valid names an unknown key is compared with (or None);
    `special(err, key)` may word an error type of its own (None: the default wording). The alternatives of a
    union (`list[str] | str`) are joined with "or".
    """
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        key, names = locate(tuple(err["loc"]))
        line = special(err, key) if special else None
        if line is not None:
            pass
        elif err["type"] == "extra_forbidden":
            line = f"unknown key '{key}'{did_you_mean(key.rsplit('.', 1)[-1], names) if names else ''}"
        elif err["type"] == "missing":
            line = f"missing required key '{key}'"
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            message = err["msg"].removeprefix("Value error, ") if strip_value_error else err["msg"]
            line = f"key '{key}' = {shown}: {message}"
        if problems.get(key) and line.startswith(f"key '{key}' = "):
            problems[key].append(err["msg"])
        else:
            problems.setdefault(key, []).append(line)
    return [" or ".join(parts) for parts in problems.values()]


def _format_validation_error(exc: ValidationError, source: str) -> str:
    def locate(loc: tuple[Any, ...]) -> tuple[str, Any]:
        key, owner = _resolve_loc(loc)
        return key, owner.model_fields if owner else None

    lines = validation_error_lines(exc, locate)
    return f"{source}: invalid configuration:\n  - " + "\n  - ".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None, check_references: bool = True) -> Config:
    """Load, override and validate a configuration. Raises `ConfigError` with a message naming the key.

    Args:
        path: a YAML file; or None with `raw` given.
        overrides: `key.sub=value` strings applied after the file.
        raw: an already-parsed mapping (tests, sweeps).
        check_references: also check what the config points at (env ids, paths, trainer keys).
    """
    source = str(path) if path is not None else "<config>"
    data = read_yaml(path) if path is not None else copy.deepcopy(raw or {})
    data = apply_overrides(data, overrides or [])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    if check_references:
        check_config_references(config)
    return config


def check_config_references(config: Config) -> None:
    """Checks that need imports but no model: env ids, kwargs and adapter (one env is built), entry points,
    paths, JSONL rows, trainer pass-through keys and TRL's own checks of the built trainer configs."""
    from rlft.config.trainer_args import check_trainer_configs, check_trainer_overrides
    from rlft.rollout.env_factory import check_env_reference

    check_env_reference(config.env)
    if config.model.name_or_path is not None:
        _check_model_path(config.model.name_or_path)
    if isinstance(config.sft.demos, JsonlDemos):
        if not Path(config.sft.demos.path).is_file():
            raise ConfigError(f"key 'sft.demos.path' = '{config.sft.demos.path}': file does not exist")
        from rlft.rollout.demos import read_jsonl_demos

        read_jsonl_demos(config.sft.demos.path)  # a malformed row fails here (file:line), not after a model loads
    if config.rl.init_from not in ("sft", "base"):
        _check_checkpoint_path(config.rl.init_from, "rl.init_from")
    check_trainer_overrides("sft.trainer", config.sft.trainer, "sft")
    check_trainer_overrides("rl.trainer", config.rl.trainer, config.rl.algorithm)
    _check_reward_weights(config.rl.trainer.get("reward_weights"))
    _check_rm(config)
    critic_init = config.rl.trainer.get("critic_init", "policy")
    if config.rl.algorithm == "ppo" and critic_init != "policy":
        _check_critic_path(str(critic_init))
    check_trainer_configs(config)
    from rlft.rewards import check_reward_references

    check_reward_references(config)


# rlft's reward has one source today: the env's per-turn rewards, summed into the episode return
# (`reward_funcs=[episode_return]` in rlft/algorithms/grpo.py and rlft/algorithms/ppo.py). TRL compares `reward_weights` with its
# reward functions only when the trainer is built, after the model has loaded.
REWARD_SOURCES = ("env",)


def _check_reward_weights(weights: list[float] | None) -> None:
    if weights is None:
        return
    count = len(REWARD_SOURCES)
    if len(weights) != count:
        raise ConfigError(f"key 'rl.trainer.reward_weights' = {weights!r}: {len(weights)} weights for {count} "
                          f"reward source(s) ({', '.join(REWARD_SOURCES)}); expected a list of {count} or leave it "
                          "unset")
    if not any(weights):
        raise ConfigError(f"key 'rl.trainer.reward_weights' = {weights!r}: no reward source has a non-zero weight, "
                          "so there is no reward to learn from; expected at least one non-zero weight")


def _check_critic_path(path: str) -> None:
    """`rl.trainer.critic_init`: a saved critic (critic.json) or a reward model (config.json)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"key 'rl.trainer.critic_init' = '{path}': no such folder "
                          "(expected 'policy', a saved critic folder or a reward-model folder)")
    if not (folder / "critic.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError(f"key 'rl.trainer.critic_init' = '{path}': neither a saved critic (critic.json) "
                          "nor a reward model (config.json)")


def _check_rm(config: Config) -> None:
    """The `rm` section's references: preference files (every row, file:line), the gold entry point, the model."""
    from rlft.config.trainer_args import check_trainer_overrides
    from rlft.rollout.env_factory import import_entry_point

    data = config.rm.data
    if isinstance(data, JsonlPreferences):
        from rlft.rewards.models.preferences import read_preferences

        for key, path in (("rm.data.path", data.path), ("rm.data.eval_path", data.eval_path)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"key '{key}' = '{path}': file does not exist")
            if path is not None:
                read_preferences(path)  # a malformed row fails here (file:line), not after a model loads
    elif data.gold != "return" and not callable(import_entry_point(data.gold, "rm.data.gold")):
        raise ConfigError(f"key 'rm.data.gold' = '{data.gold}': not callable; expected 'return' or "
                          "'module:function' (played episode -> float)")
    model = config.rm.model
    if model is not None and model.name_or_path is not None:
        _check_model_path(model.name_or_path, "rm.model.name_or_path")
    if model is not None and model.lora is not None:  # (the policy's lora is not used: see rlft.stages.rm)
        raise ConfigError("key 'rm.model.lora': LoRA is not supported for reward models yet; remove it")
    for name in ("trust_remote_code", "model_init_kwargs"):
        if name in config.rm.trainer:
            raise ConfigError(f"key 'rm.trainer.{name}' is set by rlft from rm.model (trust_remote_code, revision, "
                              "dtype); set it there")
    check_trainer_overrides("rm.trainer", config.rm.trainer, "rm")


def _check_checkpoint_path(path: str, key: str) -> None:
    """A checkpoint is a `save_pretrained` folder: full weights (config.json) or a LoRA adapter (adapter_config.json)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"key '{key}' = '{path}': no such checkpoint folder (expected 'sft', 'base' or a path)")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"key '{key}' = '{path}': folder is not a saved checkpoint (no config.json)")


def _check_model_path(name_or_path: str, key: str = "model.name_or_path") -> None:
    """A local path must exist; a hub id (`org/name`) is accepted as long as it looks like one."""
    looks_local = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"key '{key}' = '{name_or_path}': folder has no config.json")
        return
    if looks_local or name_or_path.count("/") > 1:
        raise ConfigError(
            f"key '{key}' = '{name_or_path}': no such folder, and it is not a hub id ('org/name')"
        )


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


def dataclass_type_adapter(cls: type, name: str) -> TypeAdapter | None:
    """A pydantic adapter for one field of a dataclass (used for TRL pass-through checks)."""
    from typing import get_type_hints

    hints = get_type_hints(cls)
    if name not in hints:
        return None
    return TypeAdapter(hints[name])


def dataclass_field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]

"""The sections of the experiment configuration (pydantic models); `rlft.config.schema.Config` holds them.

Every field is documented once, here. Trainer hyperparameters are not re-declared: `sft.trainer`, `rl.trainer`
and `rm.trainer` pass through to TRL's config classes (rlft.config.trainer_args checks them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not pass silently), assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """A small randomly initialised transformers model with a tokenizer made locally (from env text) or a production
    one shipped by mistral-common (rlft/models/tokenizers.py)."""

    architecture: Literal["qwen2", "llama"] = "qwen2"
    tokenizer: Literal["word", "mistral_v3", "tekken"] = Field(
        "word",
        description="word: a word-level vocabulary of the env's text; mistral_v3: Mistral's SentencePiece v3 "
        "(32,768 pieces); tekken: Mistral's Tekken BPE (131,072). The real ones load offline from mistral-common's "
        "files with a chat template in Mistral's instruct format; the vocab size follows the tokenizer",
    )
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(256, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    corpus_episodes: int = Field(
        200, gt=0, description="random + expert episodes whose text builds the vocabulary"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class LoraSettings(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(Section):
    """Which policy to start from: `name_or_path` (local folder or hub id) or the embedded `tiny` model."""

    name_or_path: str | None = None
    tiny: TinyModelConfig | None = None
    chat_template: Literal["auto", "on", "off"] = "auto"
    trust_remote_code: bool = False
    revision: str | None = Field(
        None,
        description="hub revision of name_or_path; a commit hash pins the weights and "
        "code to the ones you checked (unset: the hub's main branch); a local folder has none",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.name_or_path (a folder or hub id) or model.tiny")
        return self


class AdapterConfig(Section):
    """How a Gymnasium env with a Discrete action space becomes a text env."""

    action_names: list[str] | None = None
    renderer: str | None = Field(None, description="'module:function' (env, obs) -> str")
    parser: str | None = Field(None, description="'module:function' (text) -> int | None")
    instructions: str = ""
    invalid_action: Literal["penalty", "terminate"] = "penalty"
    invalid_penalty: float = 0.0
    expert_method: str | None = Field(
        None,
        description="name of the env's expert method (e.g. expert_action), called with the current "
        "observation (or with none) -> action id or action name",
    )
    task_id: str | None = Field(
        None,
        description="'module:function' (env, reset observation, reset info) -> task id (e.g. the layout); "
        "unset: the env's own info['task_id'] or task_id attribute, else one task for every seed",
    )


class SeedRange(Section):
    start: int = Field(0, ge=0)
    count: int = Field(100_000, gt=0)


class EnvConfig(Section):
    id: str = Field(..., description="a registered gymnasium id (e.g. rlft/FrozenLake-v0) or 'module:Class'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    adapter: AdapterConfig | None = None
    expert: str | None = Field(
        None,
        description="'module:function' (env, observation) -> action id or action name: the hand-written "
        "expert of an env the adapter wraps; unset: env.adapter.expert_method, the env's make_expert, "
        "or value iteration on its transition table P",
    )
    max_turns: int = Field(16, gt=0)
    train_seeds: SeedRange = Field(default_factory=SeedRange)


BACKENDS = (
    "hf",
    "vllm",
)  # rlft.rollout.engine.BACKENDS holds their classes (tests/test_rollout.py checks both agree)


class ImportanceCorrection(Section):
    enabled: bool = Field(
        False,
        description="weight the policy loss per token by min(pi_train / pi_vllm, cap): truncated importance "
        "sampling for what differs between vLLM's log-probs and the trainer's (logged as rollout/is_*)",
    )
    cap: float = Field(3.0, gt=0.0, description="the truncation: a token's weight is at most this")


class VLLMConfig(Section):
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="share of the GPU vLLM takes for weights and KV cache; the trainer shares the GPU",
    )
    cpu_kvcache_gib: float = Field(
        1.0, gt=0.0, description="vLLM's KV cache on CPU, GiB (VLLM_CPU_KVCACHE_SPACE where unset)"
    )
    enable_prefix_caching: bool = Field(
        True, description="reuse each episode's computed context across turns (what makes turns cheap)"
    )
    importance_correction: ImportanceCorrection = Field(default_factory=ImportanceCorrection)


class RolloutConfig(Section):
    backend: Literal[BACKENDS] = Field(
        "hf",
        description="generation backend: 'hf' (one batched forward per token, one KV cache) or 'vllm' (a "
        "colocated vLLM engine, one generate call per turn, prefix caching; the `vllm` extra or "
        "scripts/setup_vllm.sh)",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="the vllm backend's engine")
    num_envs: int = Field(64, gt=0, description="concurrent episodes in one batched rollout")
    max_action_tokens: int = Field(4, gt=0)
    max_episode_tokens: int = Field(
        1024, gt=0, description="prompt + completion cap; episodes past it truncate"
    )
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_on_newline: bool = True
    env_step_timeout_s: float | None = Field(
        30.0,
        gt=0.0,
        description="an env.step or env.reset slower than this "
        "fails its episode (left out of the batch); null waits forever",
    )
    max_env_failure_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="abort when more than this fraction of "
        "a rollout batch's episodes fail (env raised, hung, malformed observation)",
    )
    env_workers: Literal["thread", "subprocess"] = Field(
        "thread",
        description="where envs run: 'thread' (in the trainer's process, a worker thread per env for the "
        "timeout) or 'subprocess' (a worker process per env: survives an env that hangs holding the GIL or "
        "crashes its process)",
    )


# The RL algorithms a config may name: exactly the names in rlft.algorithms.registry (a test compares them).
ALGORITHMS = ("grpo", "ppo", "gigpo")


class DynamicSamplingConfig(Section):
    """DAPO's dynamic sampling (rlft.algorithms.dynamic_sampling): groups without reward variance refilled."""

    enabled: bool = Field(
        False,
        description="drop groups whose episodes all got the same return and play fresh groups in their place",
    )
    max_resample_rounds: int = Field(
        3,
        ge=0,
        description="at most this many refill rounds per rollout; slots still without signal keep their group",
    )


class CurriculumConfig(Section):
    """The task curriculum (rlft.rollout.curriculum): which of env.train_seeds the rollouts play, one per group."""

    strategy: Literal["uniform", "plr"] = Field(
        "uniform",
        description="'uniform': TRL's shuffled pass over the seeds; 'plr': prioritized level replay",
    )
    score: Literal["advantage", "success_variance"] = Field(
        "advantage",
        description="plr: mean |advantage| of a task's latest episodes, or p(1-p) of its successes",
    )
    temperature: float = Field(0.1, gt=0.0, description="plr: P_score ∝ (1/rank)^(1/temperature)")
    staleness_coef: float = Field(0.1, ge=0.0, le=1.0, description="plr: (1-c) P_score + c P_staleness")
    replay_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="plr: replay a seen task, else draw a new one"
    )
    buffer_size: int | None = Field(None, gt=0, description="plr: most tasks kept scored (lowest evicted)")
    success_window: int = Field(8, gt=0, description="plr, success_variance: a task's last episodes read")


class RlConfig(Section):
    algorithm: Literal[ALGORITHMS] = "grpo"
    init_from: str = Field(
        "sft", description="'sft' (this run's SFT checkpoint), 'base', or a checkpoint path"
    )
    critic_init_from: str | None = Field(
        None,
        description="ppo: start the critic from the critic another run saved: its checkpoint folder (e.g. "
        "runs/a/checkpoints/rl, holding critic/) or that critic/ folder; unset: rl.trainer.critic_init",
    )
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to trl.GRPOConfig (grpo), rlft.algorithms.ppo.PPOConfig (ppo) or "
        "rlft.algorithms.gigpo.GiGPOConfig (gigpo)",
    )
    max_nonfinite_steps: int = Field(
        3,
        gt=0,
        description="abort after this many optimizer steps in a row skipped "
        "for a non-finite loss, reward, value or gradient",
    )
    skip_steps_without_signal: bool = Field(
        True,
        description="skip the optimizer step (weights and Adam's moments untouched) when no minibatch of it, on "
        "any process, has a non-zero advantage and the loss has no KL or entropy term: Adam's momentum would "
        "move the weights without a gradient (rlft.algorithms.learning_signal)",
    )
    no_signal_warn_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="warn at the end of a run when more than this share of its optimizer steps had no "
        "learning signal (every advantage 0), naming what to change",
    )
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)


class JsonlPreferences(Section):
    """Preference pairs from a JSONL file of {prompt, chosen, rejected} rows (text or chat messages)."""

    source: Literal["jsonl"] = "jsonl"
    path: str
    eval_path: str | None = Field(
        None,
        description="held-out pairs; unset: eval_fraction of the file's pairs are "
        "held out, whole prompts at a time",
    )
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)


class EnvPreferences(Section):
    """Preference pairs built from env episodes ranked by a gold signal, with Bradley-Terry label noise."""

    source: Literal["env"] = "env"
    episodes: int = Field(400, ge=2, description="training episodes, episodes_per_task from each train seed")
    episodes_per_task: int = Field(4, ge=2, description="episodes from one reset seed; pairs compare these")
    eval_episodes: int = Field(200, ge=0, description="held-out episodes, on seeds from eval.seed_start")
    budget: int = Field(1000, gt=0, description="at most this many training pairs")
    eval_budget: int = Field(500, gt=0, description="at most this many held-out pairs")
    noise: float = Field(
        0.0,
        ge=0.0,
        description="Bradley-Terry temperature in gold units: P(a preferred to b) = "
        "sigmoid((gold_a - gold_b) / noise); 0 always prefers the higher gold",
    )
    gold: str = Field(
        "return",
        description="'return' (the episode's summed env reward) or 'module:function' "
        "called with the played-episode record (envs.experts.play_expert_episode) -> float",
    )
    policy: Literal["expert", "random"] = Field(
        "expert",
        description="who plays: the env's expert with epsilon random actions, or uniformly random actions",
    )
    epsilon: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, description="seeds the players, the pair sample and the labels")


class RmEnsembleConfig(Section):
    size: int = Field(1, ge=1, description="members; member i trains with seed + i into checkpoints/rm_<i>")
    data: Literal["same", "bootstrap", "disjoint"] = Field(
        "same",
        description="each member's training pairs: all of them, a bootstrap resample, or a 1/size shard",
    )
    aggregate: Literal["mean", "min", "mean_minus_std"] = "mean"
    k: float = Field(1.0, ge=0.0, description="mean_minus_std: mean - k * std over members")
    normalize: bool = Field(
        True, description="standardise each member by its training-score mean and std first"
    )


class RmConfig(Section):
    """`rlft rm`: a Bradley-Terry reward model (rlft/rewards/models/) trained with TRL's RewardTrainer."""

    data: EnvPreferences | JsonlPreferences = Field(default_factory=EnvPreferences, discriminator="source")
    model: ModelConfig | None = Field(
        None,
        description="unset: the policy's model section (tiny or name_or_path) with a one-label score head",
    )
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


class WandbConfig(Section):
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "rlft"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrackingConfig(Section):
    experiment: str | None = Field(
        None,
        description="the experiment this run belongs to (wandb group unless "
        "wandb.group is set; `rlft launch` sets it); unset: the run name",
    )
    transcripts_every: int | None = Field(
        None,
        gt=0,
        description="during RL, log a sample of episode transcripts "
        "every N steps (wandb table + transcripts.jsonl); unset: logging_steps",
    )
    transcript_samples: int = Field(4, ge=0, description="episodes per transcript sample; 0 turns them off")
    wandb: WandbConfig = Field(default_factory=WandbConfig)

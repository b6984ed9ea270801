"""What every stage shares: the run directory, checkpoints, the env factory, the turn format and sampling.

runs/<name>/config.yaml           the configuration as given (validated, defaults of rlft's own sections in)
runs/<name>/resolved/<stage>.yaml the configuration a stage trained with: every default, every TRL argument,
                                  package versions (rlft/config/resolved.py)
runs/<name>/metrics.jsonl         every stage's logged metrics, one JSON object per line
runs/<name>/checkpoints/<stage>/  base, sft, rl: safetensors weights + tokenizer (save_pretrained)
runs/<name>/eval.json             held-out results per policy, the expert alongside
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from pathlib import Path

from safetensors import SafetensorError
from trl import RewardConfig, SFTConfig

from rlft.algorithms.checkpoint_manifest import verify
from rlft.algorithms.registry import ALGORITHMS
from rlft.config.schema import Config, save_config
from rlft.errors import CheckpointError, ConfigError, did_you_mean
from rlft.models.policy import apply_lora, load_policy, load_pretrained, save_policy, uses_chat_template
from rlft.rollout.engine import RolloutEngine, SamplingSettings, make_backend
from rlft.rollout.env_factory import make_env
from rlft.rollout.turn_format import make_format
from rlft.runtime.distributed import ddp_timeout_s, process_state
from rlft.runtime.storage import output_folder_problem
from rlft.stages.model_card import write_card

SELECTION_FILE = "selection.json"  # in checkpoints/rl_best (eval.keep_best), checkpoints/sft (sft.keep_best)


def checkpoint_dir(config: Config, stage: str) -> Path:
    return config.run_dir / "checkpoints" / stage


# The TRL config class each stage (and each RL algorithm) trains with; `*.trainer` keys are checked against it.
TRAINER_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "rm": RewardConfig,
    **{name: a.config_class for name, a in ALGORITHMS.items()},
}


def trainer_config_class(kind: str) -> type:
    """The TRL config dataclass of a stage ('sft', 'rm') or an RL algorithm ('grpo', 'ppo')."""
    if kind not in TRAINER_CONFIGS:
        raise ConfigError(f"no trainer config for '{kind}'{did_you_mean(kind, list(TRAINER_CONFIGS))}")
    return TRAINER_CONFIGS[kind]


def env_factory(config: Config):
    return partial(make_env, config.env)


def prepare_run(config: Config) -> Path:
    """The run directory on every rank (a race-free mkdir); config.yaml from the main process only.

    Raises:
        ConfigError: the run directory cannot be created or written (exit 2, before the run starts).
    """
    check_output_folder(config)
    try:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        if process_state(ddp_timeout_s(config)).is_main_process:
            save_config(config, config.run_dir / "config.yaml")
    except OSError as exc:  # the folder changed since the check (or a quota): still before the run starts
        raise output_folder_error(
            config, f"{exc.strerror or exc} ({exc.filename or config.run_dir})"
        ) from None
    return config.run_dir


def check_output_folder(config: Config) -> None:
    """The run directory (`output_dir`/`name`) exists as a writable folder or can be created; nothing is left."""
    problem = output_folder_problem(config.run_dir)
    if problem is not None:
        raise output_folder_error(config, problem)


def output_folder_error(config: Config, problem: str) -> ConfigError:
    fix = "set output_dir to a folder you can write to" + (
        " (e.g. output_dir=runs)" if config.output_dir != "runs" else ""
    )
    return ConfigError(
        f"key 'output_dir' = '{config.output_dir}' (run folder {config.run_dir}): {problem}; expected a "
        f"folder rlft can create and write into: {fix}, or move what is in the way"
    )


def sampling_settings(config: Config, greedy: bool = False):
    r = config.rollout
    return SamplingSettings(
        max_turns=config.env.max_turns,
        max_action_tokens=r.max_action_tokens,
        max_episode_tokens=r.max_episode_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        greedy=greedy,
        env_step_timeout_s=r.env_step_timeout_s,
        max_env_failure_rate=r.max_env_failure_rate,
        env_workers=r.env_workers,
    )


def rollout_engine(config: Config, tokenizer, model=None, greedy: bool = False) -> RolloutEngine:
    """The configured engine (`rollout.backend`, the turn format, a fresh env per slot); `model` may be set later."""
    return RolloutEngine(
        model,
        tokenizer,
        turn_format_for(config, tokenizer),
        env_factory(config),
        sampling_settings(config, greedy=greedy),
        backend=make_backend(config.rollout.backend, **backend_options(config)),
    )


def backend_options(config: Config) -> dict:
    """The generation backend's own options: none for `hf`; vLLM's engine (`rollout.vllm`) for `vllm`, its
    context as long as an episode may grow (`rollout.max_episode_tokens`)."""
    r = config.rollout
    if r.backend != "vllm":
        return {}
    correction = r.vllm.importance_correction
    return {
        "max_model_len": r.max_episode_tokens,
        "gpu_memory_utilization": r.vllm.gpu_memory_utilization,
        "cpu_kvcache_gib": r.vllm.cpu_kvcache_gib,
        "enable_prefix_caching": r.vllm.enable_prefix_caching,
        "importance_cap": correction.cap if correction.enabled else None,
    }


def turn_format_for(config: Config, tokenizer):
    return make_format(
        tokenizer, uses_chat_template(tokenizer, config.model.chat_template), config.rollout.stop_on_newline
    )


def ensure_base_checkpoint(config: Config) -> Path:
    """The starting policy saved under checkpoints/base (built for `model.tiny`, loaded otherwise)."""
    path = checkpoint_dir(config, "base")
    # Under `accelerate launch` the main process builds and saves it while the other ranks wait, then they
    # find it saved: one writer, and every rank starts from the same weights.
    with process_state(ddp_timeout_s(config)).main_process_first():
        if (path / "config.json").is_file():
            return path
        model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
        save_policy(model, tokenizer, path)
        write_card(config, path)  # README.md, the model card (rlft.stages.model_card)
    return path


def check_loadable(path: str | Path, key: str | None = None) -> None:
    """A saved policy folder that will load: config.json (or a LoRA adapter), files whole and unchanged.

    Reads no tensor: sizes and checksums against its MANIFEST.json when it has one, else each safetensors
    file against its own header. Raises `CheckpointError` naming the file and the reason (and `key`).
    """
    path = Path(path)
    where = f"key '{key}' = '{path}'" if key else f"checkpoint '{path}'"
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise CheckpointError(f"{where} is not a saved checkpoint (no config.json)")
    problem = verify(path)
    if problem is not None:
        raise CheckpointError(
            # (each problem starts with the file's path relative to the checkpoint folder)
            f"{where} cannot be loaded: {path}/{problem}. Save it again or point to another checkpoint"
        )


def load_checkpoint(path: str | Path, config: Config):
    """Load a saved policy (and tokenizer); a folder that fails to load is a `CheckpointError` naming it."""
    path = Path(path)
    check_loadable(path)
    try:
        return load_pretrained(
            str(path), config.model.model_copy(update={"name_or_path": str(path), "tiny": None})
        )
    # What the loaders raise for a damaged file (safetensors' own error, torch's RuntimeError, a bad JSON's
    # ValueError, a short read's EOFError), turned into one line that names the folder.
    except (SafetensorError, RuntimeError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be loaded: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        ) from None


def load_trainable(path: Path, config: Config):
    """A checkpoint to train from, with the configured LoRA adapter applied (a no-op if it has one)."""
    model, tokenizer = load_checkpoint(path, config)
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora)
    return model, tokenizer


# The `wandb sync` commands of the offline runs finished inside the innermost `collect_sync_commands` block: one
# command's own. A context variable, not a module list, because `rlft launch` runs many commands in one process
# and each job must print only its own runs' commands.
_sync_commands: ContextVar[list[str] | None] = ContextVar("rlft_sync_commands", default=None)


@contextmanager
def collect_sync_commands() -> Iterator[list[str]]:
    """Collect the `wandb sync` commands of the stages that finish inside this block (one `rlft` command)."""
    commands: list[str] = []
    token = _sync_commands.set(commands)
    try:
        yield commands
    finally:
        _sync_commands.reset(token)


def record_sync_command(command: str | None) -> None:
    """Keep a finished tracker's `wandb sync` command (None: not an offline run) for the command that runs it.

    Outside `collect_sync_commands` (a stage called from Python, a sweep trial) there is no one to print it: dropped.
    """
    collected = _sync_commands.get()
    if command and collected is not None:
        collected.append(command)

"""The stages of an experiment: sft, rl (train) and eval, each writing into `runs/<name>/`.

    runs/<name>/config.yaml           the resolved configuration
    runs/<name>/metrics.jsonl         every stage's logged metrics, one JSON object per line
    runs/<name>/checkpoints/<stage>/  base, sft, rl: safetensors weights + tokenizer (save_pretrained)
    runs/<name>/eval.json             held-out results per policy, the expert alongside
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlft.config import Config, ExpertDemos, save_config
from rlft.distributed import ddp_timeout_s, process_state
from rlft.env_factory import make_env
from rlft.errors import CheckpointError, ConfigError
from rlft.faults import out_of_memory_guard
from rlft.tracking import Tracker, TrackerCallback, attach_tracking, trainer_tracking_defaults

logger = logging.getLogger(__name__)

MAIN_PROCESS_EVAL = "evaluation runs on the main process (rank 0), which prints the table and writes eval.json"


def checkpoint_dir(config: Config, stage: str) -> Path:
    return config.run_dir / "checkpoints" / stage


def env_factory(config: Config):
    return partial(make_env, config.env)


def prepare_run(config: Config) -> Path:
    """The run directory on every rank (a race-free mkdir); config.yaml from the main process only."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    if process_state(ddp_timeout_s(config)).is_main_process:
        save_config(config, config.run_dir / "config.yaml")
    return config.run_dir


def sampling_settings(config: Config, greedy: bool = False):
    from rlft.rollout import SamplingSettings

    r = config.rollout
    return SamplingSettings(max_turns=config.env.max_turns, max_action_tokens=r.max_action_tokens,
                            max_episode_tokens=r.max_episode_tokens, temperature=r.temperature, top_p=r.top_p,
                            greedy=greedy, env_step_timeout_s=r.env_step_timeout_s,
                            max_env_failure_rate=r.max_env_failure_rate)


def turn_format_for(config: Config, tokenizer):
    from rlft.policy import uses_chat_template
    from rlft.turn_format import make_format

    return make_format(tokenizer, uses_chat_template(tokenizer, config.model.chat_template),
                       config.rollout.stop_on_newline)


def ensure_base_checkpoint(config: Config) -> Path:
    """The starting policy saved under checkpoints/base (built for `model.tiny`, loaded otherwise)."""
    from rlft.policy import load_policy, save_policy

    path = checkpoint_dir(config, "base")
    # Under `accelerate launch` the main process builds and saves it while the other ranks wait, then they
    # find it saved: one writer, and every rank starts from the same weights.
    with process_state(ddp_timeout_s(config)).main_process_first():
        if (path / "config.json").is_file():
            return path
        model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
        save_policy(model, tokenizer, path)
    return path


def save_trained(trainer, path: Path) -> Path:
    """Save a trained policy (PPO: with its critic in `critic/`, by `PPOTrainer._save`) on every launch.

    `Trainer.save_model` gathers the full weights under FSDP and DeepSpeed ZeRO-3 (a collective: every rank
    calls it) and writes from the main process only; the barrier keeps other ranks from reading a folder
    still being written (the next stage loads it).
    """
    trainer.save_model(str(path))
    if trainer.accelerator.is_main_process:
        (path / "training_args.bin").unlink(missing_ok=True)  # a pickle of the trainer's args; config.yaml says it
    trainer.accelerator.wait_for_everyone()
    return path


def load_checkpoint(path: str | Path, config: Config):
    from rlft.policy import load_pretrained

    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise CheckpointError(f"'{path}' is not a saved checkpoint (no config.json)")
    return load_pretrained(str(path), config.model.model_copy(update={"name_or_path": str(path), "tiny": None}))


def load_trainable(path: Path, config: Config):
    """A checkpoint to train from, with the configured LoRA adapter applied (a no-op if it has one)."""
    from rlft.policy import apply_lora

    model, tokenizer = load_checkpoint(path, config)
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora)
    return model, tokenizer


def run_sft(config: Config) -> Path:
    """Supervised fine-tuning on demonstrations with TRL's SFTTrainer; loss on action tokens only."""
    from datasets import Dataset
    from trl import SFTTrainer

    from rlft.demos import expert_demos, jsonl_demos, sft_rows
    from rlft.trainer_args import build_trainer_config

    prepare_run(config)
    model, tokenizer = load_trainable(ensure_base_checkpoint(config), config)
    fmt = turn_format_for(config, tokenizer)
    tracker = Tracker(config, "sft", config.run_dir)
    demos_cfg = config.sft.demos
    if isinstance(demos_cfg, ExpertDemos):
        demos, stats = expert_demos(env_factory(config), fmt, demos_cfg.episodes, demos_cfg.epsilon,
                                    demos_cfg.seed, config.env.train_seeds.start, config.env.max_turns)
        tracker.log(stats, step=0)
    else:
        demos = jsonl_demos(demos_cfg.path, fmt)
        tracker.log({"demos/episodes": len(demos)}, step=0)
    args = build_trainer_config("sft", config.sft.trainer, str(config.run_dir / "trainer" / "sft"), config.seed,
                                defaults={"num_train_epochs": 3, "learning_rate": 1e-3, "per_device_train_batch_size": 16,
                                          "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
                                          **trainer_tracking_defaults(config, "sft")})
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(sft_rows(demos)),
                         processing_class=tokenizer, callbacks=[TrackerCallback(tracker)])
    attach_tracking(trainer, tracker, config)  # tensorboard (report_to) under the run dir
    with out_of_memory_guard(config, "sft", trainer.args):
        trainer.train()
    path = save_trained(trainer, checkpoint_dir(config, "sft"))
    _print_sync(tracker.finish())
    return path


def resolve_init(config: Config) -> Path:
    if config.rl.init_from == "sft":
        path = checkpoint_dir(config, "sft")
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise CheckpointError(f"rl.init_from = 'sft' but {path} has no checkpoint; run `rlft sft` first "
                                  "or set rl.init_from=base")
        return path
    if config.rl.init_from == "base":
        return ensure_base_checkpoint(config)
    return Path(config.rl.init_from)


def rl_trainer_args(config: Config):
    from rlft.trainer_args import build_trainer_config

    if "temperature" in config.rl.trainer or "top_p" in config.rl.trainer:
        raise ConfigError("set the sampling temperature / top_p under 'rollout', not 'rl.trainer' "
                          "(the rollout samples, and TRL must score with the same temperature)")
    defaults = {"learning_rate": 5e-5, "num_generations": 8, "per_device_train_batch_size": 32, "max_steps": 50,
                "lr_scheduler_type": "constant", "beta": 0.0, "loss_type": "dapo",
                "max_completion_length": config.rollout.max_episode_tokens,
                "temperature": config.rollout.temperature, "top_p": config.rollout.top_p,
                # A complete checkpoint every 10 steps, the last 2 kept (`rlft train --resume` continues from it).
                "save_strategy": "steps", "save_steps": 10, "save_total_limit": 2,
                **trainer_tracking_defaults(config, "rl")}
    if config.rl.algorithm == "ppo":
        # One episode per seed (the critic is the baseline); 2 epochs x 2 minibatches per rollout batch.
        defaults.update({"num_generations": 1, "num_iterations": 2, "steps_per_generation": 2})
    return build_trainer_config(config.rl.algorithm, config.rl.trainer, str(config.run_dir / "trainer" / "rl"),
                                config.seed, defaults=defaults)


def run_rl(config: Config, resume: str | bool | None = None, callbacks: list | None = None) -> Path:
    """RL from the initial checkpoint with the configured algorithm; saves checkpoints/rl.

    `resume`: True for the newest complete checkpoint under `trainer/rl`, or a checkpoint folder; the run
    continues exactly where that checkpoint left it (see rlft.checkpointing). On SIGTERM / SIGINT the step in
    flight finishes, a checkpoint is written and `Interrupted` (exit code 128 + signal) is raised.
    """
    from rlft.checkpointing import refuse_to_overwrite, resolve_resume
    from rlft.grpo import build_grpo_trainer
    from rlft.rewards import build_reward_design
    from rlft.rollout import RolloutEngine
    from rlft.signals import GracefulStop, Interrupted

    args = rl_trainer_args(config)
    if resume:
        resume = resolve_resume(args.output_dir, resume)  # before any model is loaded
    else:
        refuse_to_overwrite(Path(args.output_dir))
    prepare_run(config)
    design = build_reward_design(config)  # None for the default (the env reward alone); loads reward models
    model, tokenizer = load_trainable(resolve_init(config), config)
    engine = RolloutEngine(None, tokenizer, turn_format_for(config, tokenizer), env_factory(config),
                           sampling_settings(config))
    train = config.env.train_seeds
    tracker = Tracker(config, "rl", config.run_dir, resume=bool(resume))
    seeds = list(range(train.start, train.start + train.count))
    # The over-optimisation alarm adds its event to the logs, so it reads them before the tracker writes them.
    alarm = [design.alarm] if design is not None and design.alarm is not None else []
    callbacks = [*alarm, TrackerCallback(tracker), *(callbacks or [])]
    build_kwargs = {"batch_size": config.rollout.num_envs, "callbacks": callbacks,
                    "max_nonfinite_steps": config.rl.max_nonfinite_steps}
    if config.rl.algorithm == "ppo":
        from rlft.ppo import build_ppo_trainer

        trainer, rollout = build_ppo_trainer(model, tokenizer, args, engine, seeds, **build_kwargs)
    else:
        trainer, rollout = build_grpo_trainer(model, tokenizer, args, engine, seeds, **build_kwargs)
    rollout.reward_design = design
    if config.eval.every_steps:
        trainer.add_callback(held_out_eval_callback(config, tracker, trainer, rollout, tokenizer))
    attach_tracking(trainer, tracker, config, rollout)  # tensorboard (report_to) and episode transcripts
    stop = GracefulStop(trainer.accelerator)
    trainer.add_callback(stop)
    try:
        with out_of_memory_guard(config, "rl", trainer.args):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        stop.uninstall()
    if stop.signum is not None:
        _print_sync(tracker.finish())
        name = signal_name(stop.signum)
        raise Interrupted(f"stopped by {name} after step {stop.stopped_at}; checkpoint written under "
                          f"{args.output_dir}. Continue with: rlft train --config <config> --resume", stop.signum)
    # PPO: the policy alone, and the critic beside it in critic/ (reloads with rlft.critic.load_critic).
    path = save_trained(trainer, checkpoint_dir(config, "rl"))
    _print_sync(tracker.finish())
    return path


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def held_out_eval_callback(config: Config, tracker: Tracker, trainer, rollout, tokenizer):
    """Periodic held-out evaluation during RL (`eval.every_steps`), on the first `eval.during_episodes` seeds."""
    from rlft.evaluation import held_out_seeds
    from rlft.rollout import RolloutEngine
    from rlft.tracking import HeldOutEvalCallback

    seeds = held_out_seeds(env_factory(config), config.env, config.eval)[: config.eval.during_episodes]
    engine = RolloutEngine(None, tokenizer, turn_format_for(config, tokenizer), env_factory(config),
                           sampling_settings(config, greedy=config.eval.greedy))
    callback = HeldOutEvalCallback(tracker, engine, seeds, config.eval.every_steps, config.eval.batch_size, rollout,
                                   seed=config.seed)
    callback.trainer = trainer
    return callback


def run_eval(config: Config, policies: dict[str, Path] | None = None, expert: bool = True) -> dict[str, Any]:
    """Evaluate each policy (label -> checkpoint) and the expert on the same held-out seeds; write eval.json."""
    from rlft.evaluation import evaluate_expert, evaluate_policy, held_out_seeds
    from rlft.rollout import RolloutEngine

    if not process_state(ddp_timeout_s(config)).is_main_process:
        # Under `accelerate launch` the main process evaluates alone (no collectives, so nothing to wait for).
        return {"seeds": {"first": None, "count": 0}, "policies": {}, "note": MAIN_PROCESS_EVAL}
    prepare_run(config)
    policies = policies if policies is not None else default_policies(config)
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)
    tracker = Tracker(config, "eval", config.run_dir)
    results: dict[str, Any] = {"seeds": {"first": seeds[0], "count": len(seeds)}, "policies": {}}
    for label, path in policies.items():
        model, tokenizer = load_checkpoint(path, config)
        if torch.cuda.is_available():
            model = model.cuda()
        engine = RolloutEngine(model, tokenizer, turn_format_for(config, tokenizer), env_factory(config),
                               sampling_settings(config, greedy=True))
        with out_of_memory_guard(config, "eval"):
            greedy, _ = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
            engine.settings = sampling_settings(config, greedy=False)
            sampled, _ = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
        # The headline numbers are the policy as configured (eval.greedy); both are kept.
        headline = greedy if config.eval.greedy else sampled
        results["policies"][label] = {**headline, "greedy": greedy, "sampled": sampled, "checkpoint": str(path)}
        tracker.log({f"{label}/{mode}/{k}": v for mode, summary in (("greedy", greedy), ("sampled", sampled))
                     for k, v in summary.items()})
    if expert:
        try:
            results["policies"]["expert"] = evaluate_expert(env_factory(config), seeds, config.env.max_turns)
        except (ValueError, KeyError, AttributeError) as exc:
            logger.warning("no expert for %s (%s)", config.env.id, exc)
    out = config.run_dir / "eval.json"
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    _print_sync(tracker.finish())
    return results


def run_pipeline(config: Config) -> dict[str, Any]:
    """sft -> rm (when the config has an `rm` section) -> rl -> eval of untrained, sft, rl and the expert on the
    same held-out seeds."""
    run_sft(config)
    if "rm" in config.model_fields_set:
        from rlft.rm_stage import run_rm

        run_rm(config)
    run_rl(config)
    return run_eval(config)


def default_policies(config: Config) -> dict[str, Path]:
    """Every checkpoint this run has, in pipeline order (untrained = the base checkpoint)."""
    found = {}
    for label, stage in (("untrained", "base"), ("sft", "sft"), ("rl", "rl")):
        path = checkpoint_dir(config, stage)
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            found[label] = path
    if not found:
        raise CheckpointError(f"{config.run_dir}/checkpoints has no checkpoint to evaluate; run sft or train first")
    return found


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: success and return with 95% CIs, greedy and sampled (at the rollout temperature)."""
    def cell(r: dict[str, float], key: str) -> str:
        return f"{r[key]:.3f} [{r[key + '_ci_low']:.3f}, {r[key + '_ci_high']:.3f}]"

    if not results["policies"] and results.get("note"):
        return results["note"]
    count = results["seeds"]["count"]
    rows = [f"held-out episodes: {count}",
            "| policy | success, greedy (95% CI) | success, sampled (95% CI) | return, greedy | turns |",
            "|---|---|---|---|---|"]
    for label, r in results["policies"].items():
        greedy, sampled = r.get("greedy", r), r.get("sampled", r)
        rows.append(f"| {label} | {cell(greedy, 'success')} | {cell(sampled, 'success')} | "
                    f"{cell(greedy, 'return')} | {greedy['turns']:.1f} |")
    return "\n".join(rows)


_sync_commands: list[str] = []


def _print_sync(command: str | None) -> None:
    if command:
        _sync_commands.append(command)


def sync_commands() -> list[str]:
    return list(_sync_commands)

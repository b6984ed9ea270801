"""The body of a checkpoint's model card (rlft.stages.model_card): one function per section, from the run's facts.

Each reader here tolerates a missing or damaged file (metrics.jsonl, resolved/<stage>.yaml, rm.json, ensemble.json):
the section then says what is unknown, and the card is still written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from rlft.config.resolved import resolved_path
from rlft.config.schema import Config, ExpertDemos, ModelConfig
from rlft.config.yaml_io import read_yaml
from rlft.errors import RlftError
from rlft.rewards.models.card import describe_model, model_card

STAGE_TITLES = {
    "base": "untrained starting policy",
    "sft": "policy after supervised fine-tuning",
    "rl": "policy after reinforcement learning",
    "rl_best": "RL policy with the best validation success",
    "rm": "reward model",
}
# The TRL arguments a reader wants first, in this order, where the stage's trainer has them.
KEY_ARGUMENTS = (
    ("learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size")
    + ("gradient_accumulation_steps", "num_generations", "num_iterations", "steps_per_generation")
    + ("loss_type", "beta", "epsilon", "gamma", "lam", "vf_coef", "kl_coef")
    + ("center_rewards_coefficient", "max_length", "seed")
)


# ------------------------------------------------------------------------------------------- what the run recorded
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing, damaged or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def own_result(results: dict[str, Any] | None, folder: Path) -> dict[str, Any] | None:
    """The eval.json entry measured on the checkpoint in `folder` (matched by its path, not its label)."""
    for entry in (results or {}).get("policies", {}).values():
        checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
        if checkpoint and Path(checkpoint).resolve() == folder.resolve():
            return entry
    return None


def demo_stats(config: Config) -> dict[str, Any]:
    """The demos/* numbers the last sft stage of this run logged (metrics.jsonl), or {} when there are none."""
    stats: dict[str, Any] = {}
    try:
        lines = (config.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return stats
    for line in lines:
        if '"demos/' not in line:  # most rows are training logs: not parsed
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("stage") == "sft":
            stats = {k[len("demos/") :]: v for k, v in row.items() if k.startswith("demos/")}
    return stats


def trainer_arguments(config: Config, record: str) -> tuple[Path, dict[str, Any] | None]:
    """(runs/<name>/resolved/<record>.yaml, its TRL arguments or None when the file is missing or unreadable)."""
    path = resolved_path(config.run_dir, record)
    try:
        trainer = read_yaml(path).get("trainer")
    except (OSError, RlftError, ValueError, AttributeError):
        return path, None
    return path, trainer if isinstance(trainer, dict) else None


# ------------------------------------------------------------------------------------------------------ sections
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _model_section(config: Config, model_cfg: ModelConfig, stage: str) -> list[str]:
    if model_cfg.tiny is not None and model_cfg.tiny.tokenizer != "word":
        tokenizer = f"{model_cfg.tiny.tokenizer} (Mistral's, from the mistral-common package's files)"
    elif model_cfg.tiny is not None:
        tokenizer = (
            f"word-level, built locally from {config.env.id}'s observations and actions "
            "(words outside that vocabulary become `<unk>`)"
        )
    else:
        tokenizer = f"the base model's own ({model_cfg.name_or_path})"
    lines = [
        "## Model",
        "",
        f"- **Base model**: {describe_model(model_cfg)}",
        f"- **Tokenizer**: {tokenizer}; chat template: {model_cfg.chat_template}",
    ]
    if model_cfg.lora is not None and stage != "rm":
        lora = model_cfg.lora
        lines.append(f"- **LoRA adapter**: r {lora.r}, alpha {lora.alpha}, modules {lora.target_modules}")
    if stage in ("rl", "rl_best") and config.rl.algorithm == "ppo":
        lines.append("- **Critic**: in `critic/` (rlft.models.critic.load_critic)")
    kind = "AutoModelForSequenceClassification" if stage == "rm" else "AutoModelForCausalLM"
    return [*lines, f"- **Load**: `transformers.{kind}.from_pretrained('<this folder>')`", ""]


def _demos_line(config: Config) -> str:
    demos, stats = config.sft.demos, demo_stats(config)
    count = stats.get("episodes", "unknown")
    success = _fmt(stats["success"]) if "success" in stats else "not recorded"
    if isinstance(demos, ExpertDemos):
        return (
            f"- **Demonstrations**: the env's expert, {count} episodes (configured {demos.episodes}) from train "
            f"seed {config.env.train_seeds.start}, epsilon {demos.epsilon} (random actions), success rate "
            f"{success}, noise seed {demos.seed}"
        )
    return f"- **Demonstrations**: {demos.path} (jsonl), {count} episodes, success rate {success}"


def _reward_lines(config: Config) -> list[str]:
    reward = config.reward
    lines = [f"- **Reward design**: {reward.name or '+'.join(reward.components)}; gold signal: {reward.gold}"]
    for name, component in reward.components.items():
        source = getattr(component, "path", None) or getattr(component, "function", None) or "env reward"
        extra = (", normalized" if component.normalize else "") + (
            f", clip {component.clip}" if component.clip else ""
        )
        lines.append(f"  - {name}: {component.kind} ({source}), weight {component.weight}{extra}")
    return lines


def _training_section(config: Config, stage: str, folder: Path, selection: dict | None) -> list[str]:
    record = {"rl_best": "rl", "base": None}.get(stage, folder.name)
    lines = ["## Training", ""]
    if stage == "base":
        how = f"random initialisation (seed {config.seed})" if config.model.tiny else "as loaded"
        lines.append(f"- **Stage**: none: the starting policy, {how}; every other stage starts from it")
    elif stage == "sft":
        lines += [
            f"- **Stage**: sft (`rlft sft`), TRL's SFTTrainer, loss on action tokens only, started from "
            f"{config.sft.init_from}",
            _demos_line(config),
        ]
        chosen = selection or read_json(folder / "selection.json")  # sft.keep_best's record
        if chosen:
            lines.append(
                f"- **Selected**: step {chosen.get('step')} of {chosen.get('last_step')}, validation success "
                f"{_fmt(chosen.get('validation_success'))} (the best SFT step; sft.keep_best)"
            )
    elif stage in ("rl", "rl_best"):
        start = config.rl.init_from
        lines.append(f"- **Stage**: rl (`rlft train`), algorithm {config.rl.algorithm}, started from {start}")
        if start == "sft":
            lines.append(_demos_line(config))
        lines += _reward_lines(config)
        if selection:
            lines.append(
                f"- **Selected**: step {selection.get('step')}, validation success "
                f"{_fmt(selection.get('validation_success'))} (the best of the run; eval.keep_best)"
            )
    else:
        lines.append("- **Stage**: rm (`rlft rm`), TRL's RewardTrainer (Bradley-Terry)")
        lines += _reward_model_lines(folder)
    if record is None or (stage == "rm" and folder.name == "rm" and config.rm.ensemble.size > 1):
        return [*lines, ""]
    path, trainer = trainer_arguments(config, record)
    lines.append(
        f"- **Resolved configuration**: `{path}` (every default, every TRL argument, package versions)"
    )
    if trainer is None:
        lines += ["", f"Key hyperparameters: unknown ({path} is missing or unreadable).", ""]
        return lines
    lines += ["", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(trainer[key])} |" for key in KEY_ARGUMENTS if key in trainer]
    if stage in ("rl", "rl_best"):
        r = config.rollout
        lines += [f"| rollout.{k} | {_fmt(getattr(r, k))} |" for k in ("num_envs", "temperature", "top_p")]
    return [*lines, f"| env.max_turns | {config.env.max_turns} |", ""]


def _reward_model_lines(folder: Path) -> list[str]:
    """A reward model's own record (rm.json, rendered by rlft.rewards.models.card) or its ensemble's members."""
    ensemble = read_json(folder / "ensemble.json")
    if ensemble:
        keys = ("aggregate", "k", "normalize", "data")
        return [
            f"- **Ensemble** of {', '.join(ensemble.get('members', []))}: "
            + ", ".join(f"{key} {ensemble.get(key)}" for key in keys)
        ]
    info = read_json(folder / "rm.json")
    if not info:
        return ["- **Reward model record**: rm.json is missing or unreadable"]
    try:
        body = ModelCard(model_card(info)).text  # its own card, front matter dropped, headings one level down
    except (KeyError, TypeError, ValueError):
        return ["- **Reward model record**: rm.json is from another rlft version; see the file itself"]
    return ["", *("#" + line if line.startswith("#") else line for line in body.strip().splitlines())]


def _seeds_section(config: Config, stage: str, folder: Path, results: dict | None) -> list[str]:
    train, ev = config.env.train_seeds, config.eval
    seeds = (results or {}).get("seeds") or {}
    held_out = (
        f"{seeds.get('count')} seeds from {seeds.get('first')}"
        if seeds.get("first") is not None
        else f"{ev.episodes} seeds from {ev.seed_start} (not played yet)"
    )
    skip = "training tasks (maps) skipped" if ev.disjoint_tasks else "training tasks may repeat"
    validation = (
        f"{ev.during_episodes} seeds from {ev.validation_seed_start}, every {ev.every_steps} RL steps"
        if ev.every_steps
        else "none (eval.every_steps is off)"
    )
    lines = [
        "## Seeds",
        "",
        f"- **Run seed**: {config.seed} (model initialisation, trainer, sampling)",
        f"- **Training seeds**: {train.start} to {train.start + train.count - 1} ({train.count})",
        f"- **Held-out test seeds** (`rlft eval` only): {held_out}; {skip}",
        f"- **Validation seeds** (model selection during RL): {validation}",
    ]
    if stage == "rm":
        member = folder.name.partition("_")[2]
        own = f"{config.seed + int(member)} (run seed + {member})" if member else str(config.seed)
        lines.append(
            f"- **Reward model**: trainer seed {own}, data seed {getattr(config.rm.data, 'seed', '-')}"
        )
    return [*lines, ""]


def _cell(summary: dict[str, Any], key: str) -> str:
    try:
        return f"{summary[key]:.3f} [{summary[key + '_ci_low']:.3f}, {summary[key + '_ci_high']:.3f}]"
    except (KeyError, TypeError, ValueError):
        return "-"


def _results_section(own: dict | None, expert: dict | None, stage: str) -> list[str]:
    lines = ["## Held-out results", ""]
    if stage == "rm":
        return [*lines, "A reward model is scored on held-out preference pairs: see Training above.", ""]
    if own is None:
        lines += [
            "Not evaluated yet: `rlft eval` measures it on the held-out seeds and rewrites this card.",
            "",
        ]
    lines += [
        "Success and return with 95% confidence intervals (Wilson for success), on the same held-out seeds.",
        "",
        "| policy | episodes | success, greedy | success, sampled | return, greedy | return, sampled |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("this checkpoint", own), ("the env's expert (no noise)", expert)]
    for label, result in rows:
        if isinstance(result, dict):
            greedy, sampled = result.get("greedy", result), result.get("sampled", result)
            lines.append(
                f"| {label} | {result.get('episodes', '-')} | {_cell(greedy, 'success')} | "
                f"{_cell(sampled, 'success')} | {_cell(greedy, 'return')} | {_cell(sampled, 'return')} |"
            )
    if expert is None:
        lines.append("| the env's expert | - | not measured | | | |")
    return [*lines, ""]


def _limits_section(
    config: Config, stage: str, own: dict | None, expert: dict | None, results: dict | None
) -> list[str]:
    """Known limits, each from a fact of this run (the model, the env, the evaluation, the reward)."""
    model_cfg = model_config_of(config, stage)
    limits = []
    if model_cfg.tiny is not None:
        t = model_cfg.tiny
        vocabulary = ", and its word-level tokenizer no word outside it" if t.tokenizer == "word" else ""
        limits.append(
            f"A tiny model ({t.num_layers} layers, hidden size {t.hidden_size}) trained from random weights: it "
            f"knows no language beyond {config.env.id}'s text{vocabulary}."
        )
    kwargs = f" with {config.env.kwargs}" if config.env.kwargs else ""
    limits.append(
        f"Trained on one env, {config.env.id}{kwargs}, with episodes cut at {config.env.max_turns} turns."
    )
    limits.append(
        "Held-out tasks are other seeds of the same env generator: nothing here measures transfer to other "
        "envs, map sizes or rules."
        + (
            ""
            if config.eval.disjoint_tasks
            else " Held-out seeds may repeat training tasks (eval.disjoint_tasks off)."
        )
    )
    if stage == "rm":
        limits.append(
            "A reward model scores text like its training pairs; it is no general preference model."
        )
    elif own is None:
        limits.append("No held-out numbers yet (`rlft eval`).")
    else:
        limits += _result_limits(own, expert)
        if stage in ("rl", "rl_best"):
            limits += _gain_limits(config, own, results)
    if stage in ("rl", "rl_best") and any(c.kind == "rm" for c in config.reward.components.values()):
        limits.append(
            "Trained on a learned reward model's score, a proxy that can be over-optimised: compare gold/* with "
            "proxy/* in metrics.jsonl."
        )
    return ["## Known limits", "", *(f"- {limit}" for limit in limits), ""]


def _gain_limits(config: Config, own: dict[str, Any], results: dict | None) -> list[str]:
    """RL that ends without a clear gain over the checkpoint it started from: their 95% CIs on held-out greedy
    success overlap (the starting checkpoint's eval.json entry, when `rlft eval` measured it)."""
    init = config.rl.init_from
    start_folder = config.run_dir / "checkpoints" / init if init in ("sft", "base") else Path(init)
    start = own_result(results, start_folder)
    try:
        now, then = own.get("greedy", own), start.get("greedy", start)
        if now["success_ci_low"] > then["success_ci_high"]:
            return []
        return [
            f"No clear gain over its starting policy ({init}) on held-out greedy success: {_fmt_ci(now)} "
            f"against {_fmt_ci(then)} (95% CIs overlap)."
        ]
    except (AttributeError, KeyError, TypeError):  # not measured, or an entry without the numbers
        return []


def _fmt_ci(summary: dict[str, Any]) -> str:
    return f"{summary['success']:.3f} [{summary['success_ci_low']:.3f}, {summary['success_ci_high']:.3f}]"


def _result_limits(own: dict[str, Any], expert: dict | None) -> list[str]:
    limits = []
    greedy = own.get("greedy", own)
    try:
        width = greedy["success_ci_high"] - greedy["success_ci_low"]
        if width > 0.1:
            limits.append(
                f"Held-out success comes from {own.get('episodes')} episodes: its 95% CI is {width:.2f} wide."
            )
        if expert and greedy["success"] < expert["success"]:
            limits.append(
                f"Below the env's expert on the same seeds: greedy success {greedy['success']:.3f} against "
                f"{expert['success']:.3f}."
            )
    except (KeyError, TypeError):
        pass
    return limits


def model_config_of(config: Config, stage: str) -> ModelConfig:
    """The model section a checkpoint of `stage` was built from: `rm.model` (else the policy's) for reward models."""
    return (config.rm.model or config.model) if stage == "rm" else config.model


def card_body(
    config: Config,
    stage: str,
    folder: Path,
    results: dict[str, Any] | None,
    own: dict[str, Any] | None,
    expert: dict[str, Any] | None,
    selection: dict[str, Any] | None,
) -> str:
    """The card's Markdown below its front matter: title, model, training, seeds, held-out results, known limits.

    Args:
        results: eval.json's content (its seeds), or None.
        own, expert: this checkpoint's and the expert's eval.json entries, or None.
        selection: rl_best's selection record ({step, validation_success, ...}), or None.
    """
    lines = [
        f"# {config.name}: {STAGE_TITLES.get(stage, stage)}",
        "",
        f"{'Saved' if stage == 'base' else 'Trained'} by rlft for `{config.env.id}`; run folder `{config.run_dir}`.",
        "",
        *_model_section(config, model_config_of(config, stage), stage),
        *_training_section(config, stage, folder, selection),
        *_seeds_section(config, stage, folder, results),
        *_results_section(own, expert, stage),
        *_limits_section(config, stage, own, expert, results),
    ]
    return "\n".join(lines)

"""The `rm` stage: preference pairs -> Bradley-Terry reward model(s) in `runs/<name>/checkpoints/rm/`.

    runs/<name>/preferences/{train,held_out}.jsonl   the pairs trained and evaluated on (readable by rm.data)
    runs/<name>/checkpoints/rm/                      one reward model (rm.json, README.md model card), or
    runs/<name>/checkpoints/rm_<i>/ + rm/ensemble.json  an ensemble of rm.ensemble.size members (seed + i)
    runs/<name>/metrics.jsonl                        data statistics, training logs, held-out accuracy/calibration

The pairs are read or built before anything is written or any model is loaded, so bad data fails fast.
`rlft.rewards.models.scoring.load_reward_model("runs/<name>/checkpoints/rm")` loads either form.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rlft.config.schema import Config, JsonlPreferences, ModelConfig
from rlft.errors import DataError
from rlft.models.policy import env_corpus
from rlft.rewards.models.preferences import (
    build_preference_pairs,
    read_preferences,
    split_by_prompt,
    write_preferences,
)
from rlft.rewards.models.scoring import ENSEMBLE_FILE, load_reward_model
from rlft.rewards.models.train import (
    evaluate_preferences,
    pair_corpus,
    reward_config,
    reward_model_tokenizer,
    train_reward_model,
)
from rlft.rewards.models.trajectories import gold_return, play_scored_episodes
from rlft.rollout.env_factory import import_entry_point
from rlft.runtime.distributed import ddp_timeout_s, process_state
from rlft.runtime.tracking import Tracker, TrackerCallback
from rlft.stages.common import checkpoint_dir, env_factory, prepare_run, record_sync_command
from rlft.stages.model_card import write_card


def rm_model_config(config: Config) -> ModelConfig:
    """`rm.model`, or else the policy's model section; the policy's LoRA adapter is not used (full training)."""
    return (config.rm.model or config.model).model_copy(update={"lora": None})


def rm_trainer_args(config: Config):
    """The stage's `trl.RewardConfig` (also built at validation, so TRL's own checks run before a model loads)."""
    return reward_config(
        rm_model_config(config), config.rm.trainer, config.run_dir / "trainer" / "rm", config.seed
    )


def preference_data(config: Config) -> tuple[list, list, dict[str, Any]]:
    """(training pairs, held-out pairs, a description for the model card and metrics)."""
    data = config.rm.data
    if isinstance(data, JsonlPreferences):
        pairs = read_preferences(data.path)
        if data.eval_path is not None:
            train, held_out = pairs, read_preferences(data.eval_path)
        else:
            train, held_out = split_by_prompt(pairs, data.eval_fraction, config.seed)
        info = {
            "source": "jsonl",
            "path": data.path,
            "held_out": data.eval_path or f"{data.eval_fraction} of the pairs, whole prompts at a time",
            "train_pairs": len(train),
            "held_out_pairs": len(held_out),
        }
        return train, held_out, info
    return _env_pairs(config)


def _env_pairs(config: Config) -> tuple[list, list, dict[str, Any]]:
    data = config.rm.data
    gold = gold_return if data.gold == "return" else import_entry_point(data.gold, "rm.data.gold")
    per_task = data.episodes_per_task

    def pairs_from(first_seed: int, episodes: int, budget: int, seed: int, label: str):
        seeds = [first_seed + i for i in range(max(1, episodes // per_task))]
        items, play = play_scored_episodes(
            env_factory(config), seeds, per_task, data.policy, data.epsilon, seed, config.env.max_turns, gold
        )
        pairs, stats = build_preference_pairs(items, budget, data.noise, seed, source=label)
        stats.extra.update(play)
        return pairs, stats

    train, train_stats = pairs_from(
        config.env.train_seeds.start, data.episodes, data.budget, data.seed, "episode"
    )
    if not train:
        raise DataError(
            f"rm.data: no training pairs: of {train_stats.ties + train_stats.identical} within-task pairs "
            f"of {train_stats.items} episodes, {train_stats.ties} tie on gold and {train_stats.identical} "
            "are the same text; raise rm.data.epsilon or episodes_per_task, or use a finer gold signal"
        )
    held_out, held_stats = ([], None)
    if data.eval_episodes:
        held_out, held_stats = pairs_from(
            config.eval.seed_start, data.eval_episodes, data.eval_budget, data.seed + 1, "held-out episode"
        )
    info = {
        "source": "env",
        "env": config.env.id,
        "gold": data.gold,
        "policy": data.policy,
        "epsilon": data.epsilon if data.policy == "expert" else None,
        "episodes": data.episodes,
        "episodes_per_task": per_task,
        "budget": data.budget,
        "noise": data.noise,
        "seed": data.seed,
        "train_seeds_from": config.env.train_seeds.start,
        "held_out_seeds_from": config.eval.seed_start,
        "train_pairs": len(train),
        "held_out_pairs": len(held_out),
        "ties_skipped": train_stats.ties,
        "label_noise_rate": train_stats.label_noise_rate,
        "train": train_stats.as_dict(),
        "held_out": held_stats.as_dict() if held_stats else None,
    }
    return train, held_out, info


def member_pairs(pairs: list, mode: str, member: int, size: int, seed: int) -> list:
    """Member `member`'s training pairs: all (`same`), a bootstrap resample, or the member's `disjoint` shard."""
    if mode == "same" or size == 1:
        return list(pairs)
    rng = np.random.default_rng([seed, member])
    if mode == "bootstrap":
        return [pairs[int(i)] for i in rng.integers(len(pairs), size=len(pairs))]
    order = np.random.default_rng(seed).permutation(len(pairs))
    shard = [pairs[int(i)] for i in order[member::size]]
    if not shard:
        raise DataError(f"rm.ensemble.data = 'disjoint': {len(pairs)} training pairs for {size} members")
    return shard


class _MemberCallback(TrackerCallback):
    """TRL's training logs of one ensemble member, under `rm_<i>/` keys; its arguments in resolved/<member>.yaml."""

    def __init__(self, tracker: Tracker, prefix: str, member: str):
        super().__init__(tracker, record_as=member)
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log({f"{self.prefix}{k}": v for k, v in logs.items()}, step=state.global_step)


def _clear_earlier_reward_models(config: Config) -> None:
    """`rlft rm` replaces this run's reward model(s): a stale rm_<i> or ensemble.json must not be loaded with them."""
    folder = config.run_dir / "checkpoints"
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and re.fullmatch(r"rm(_\d+)?", path.name):
                shutil.rmtree(path)


def run_rm(config: Config) -> Path:
    """Train `rm.ensemble.size` reward models on the configured pairs; return the folder to load (checkpoints/rm)."""
    model_cfg = rm_model_config(config)
    train, held_out, data_info = preference_data(config)  # bad data fails here, before anything is written
    main = process_state(ddp_timeout_s(config)).is_main_process
    prepare_run(config)
    if main:
        _clear_earlier_reward_models(config)
        write_preferences(train, config.run_dir / "preferences" / "train.jsonl")
        if held_out:
            write_preferences(held_out, config.run_dir / "preferences" / "held_out.jsonl")
    tracker = Tracker(config, "rm", config.run_dir)
    tracker.log({f"data/{k}": v for k, v in data_info.items() if isinstance(v, (int, float, str))}, step=0)
    tokenizer = _rm_tokenizer(config, model_cfg, train + held_out)
    ensemble = config.rm.ensemble
    names = ["rm"] if ensemble.size == 1 else [f"rm_{i}" for i in range(ensemble.size)]
    for i, name in enumerate(names):
        prefix = "" if ensemble.size == 1 else f"{name}/"
        pairs = member_pairs(train, ensemble.data, i, ensemble.size, config.seed)
        member_info = (
            {**data_info, "member": f"{i + 1} of {ensemble.size} ({ensemble.data} data)"}
            if ensemble.size > 1
            else data_info
        )
        if ensemble.size > 1:
            member_info["member_train_pairs"] = len(pairs)
        result = train_reward_model(
            pairs,
            held_out,
            model_cfg=model_cfg,
            output_dir=config.run_dir / "trainer" / name,
            seed=config.seed + i,
            trainer=config.rm.trainer,
            tokenizer=tokenizer,
            data=member_info,
            callbacks=[_MemberCallback(tracker, prefix, name)],
            save_to=checkpoint_dir(config, name),
            batch_size=config.rm.batch_size,
        )
        tracker.log(_held_out_logs(result.metrics, f"{prefix}held_out/"))
        if main:  # README.md: the run's model card, rm.json's own card inside it
            write_card(config, checkpoint_dir(config, name))
    path = checkpoint_dir(config, "rm")
    if ensemble.size > 1 and main:
        _write_ensemble(config, path, names, held_out, tracker)
        write_card(config, path)
    record_sync_command(tracker.finish())
    return path


def _rm_tokenizer(config: Config, model_cfg: ModelConfig, pairs: list):
    """The tokenizer every member shares; the tiny model's vocabulary is the policy's first (same ids), then `pairs`'."""
    corpus = None
    if model_cfg.tiny is not None:
        episodes = (
            config.model.tiny or model_cfg.tiny
        ).corpus_episodes  # as rlft.models.policy.load_policy builds it
        corpus = env_corpus(env_factory(config), episodes, config.env.max_turns, config.seed)
        corpus += pair_corpus(pairs)
    return reward_model_tokenizer(model_cfg, corpus or ())


def _write_ensemble(config: Config, path: Path, names: list[str], held_out: list, tracker: Tracker) -> None:
    """checkpoints/rm/ensemble.json over the members `names`; the ensemble's held-out metrics when there are pairs."""
    ensemble = config.rm.ensemble
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "members": [f"../{name}" for name in names],
        "aggregate": ensemble.aggregate,
        "k": ensemble.k,
        "normalize": ensemble.normalize,
        "data": ensemble.data,
    }
    (path / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if held_out:
        rm = load_reward_model(path, batch_size=config.rm.batch_size)
        tracker.log(_held_out_logs(evaluate_preferences(rm, held_out), "ensemble/held_out/"))


def _held_out_logs(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}

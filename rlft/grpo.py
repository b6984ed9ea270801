"""GRPO: TRL's `GRPOTrainer` as it is, driven by rlft's rollout engine through `rollout_func` and `env_mask`.

The dataset holds task specs, not text: each prompt is `{"seed": s}` as JSON. TRL's sampler repeats each
one `num_generations` times in a row, so a group is `num_generations` episodes of the same env seed (same
map, same slippery dynamics) and GRPO's group baseline compares like with like. The rollout function plays
them all at once and returns token-exact episodes; the reward function hands TRL each episode's return.

A second algorithm (PPO with a critic) consumes the same `EpisodeRollout` output; only the trainer differs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from rlft.episode import Episode
from rlft.rollout import RolloutEngine


def task_dataset(seeds: list[int]) -> Dataset:
    return Dataset.from_dict({"prompt": [json.dumps({"seed": int(s)}) for s in seeds]})


def seeds_of(prompts: list[Any]) -> list[int]:
    return [int(json.loads(p)["seed"]) for p in prompts]


class EpisodeRollout:
    """A TRL `rollout_func`: plays the prompts' seeds with the engine, returns ids, log-probs and env_mask.

    Extra fields (episode return, success, turns) reach TRL's reward functions as keyword arguments.
    """

    def __init__(self, engine: RolloutEngine, seed: int, batch_size: int):
        self.engine = engine
        self.seed = seed
        self.batch_size = batch_size
        self.calls = 0
        self.env_steps = 0  # env steps (turns) played so far, summed over processes
        self.last_episodes: list[Episode] = []

    def generator(self, process_index: int) -> torch.Generator:
        # One independent, reproducible stream per (run seed, process, rollout call).
        mixed = np.random.SeedSequence([self.seed, process_index, self.calls]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(mixed))

    def __call__(self, prompts: list[Any], trainer) -> dict[str, list]:
        self.engine.model = trainer.accelerator.unwrap_model(trainer.model)
        generator = self.generator(trainer.accelerator.process_index)
        self.calls += 1
        episodes = self.engine.play(seeds_of(prompts), generator=generator, batch_size=self.batch_size)
        self.last_episodes = episodes
        turns = torch.tensor(float(sum(e.num_turns for e in episodes)), device=trainer.accelerator.device)
        self.env_steps += int(trainer.accelerator.reduce(turns, reduction="sum").item())
        trainer._metrics["train"]["episode/env_steps_total"].append(float(self.env_steps))
        return episodes_to_rollout(episodes)


def episodes_to_rollout(episodes: list[Episode]) -> dict[str, list]:
    return {
        "prompt_ids": [e.prompt_ids for e in episodes],
        "completion_ids": [e.completion_ids for e in episodes],
        "logprobs": [e.logprobs for e in episodes],
        "env_mask": [e.mask for e in episodes],
        "episode_return": [e.episode_return for e in episodes],
        "success": [float(e.success) for e in episodes],
        "turns": [float(e.num_turns) for e in episodes],
        "invalid_actions": [float(e.invalid_actions) for e in episodes],
    }


def episode_return(completions: list, episode_return: list[float], success: list[float] | None = None,
                   turns: list[float] | None = None, invalid_actions: list[float] | None = None,
                   log_metric=None, **kwargs) -> list[float]:
    """Reward function for TRL: the episode's return (sum of its per-turn env rewards).

    >>> episode_return(["a", "b"], episode_return=[1.0, 0.0])
    [1.0, 0.0]
    """
    if log_metric is not None:
        for name, values in (("episode/success", success), ("episode/turns", turns),
                             ("episode/invalid_actions", invalid_actions), ("episode/return", episode_return)):
            if values:
                log_metric(name, float(np.mean(values)))
    return [float(r) for r in episode_return]


def build_grpo_trainer(model, tokenizer, args, engine: RolloutEngine, train_seeds: list[int],
                       batch_size: int, callbacks: list | None = None):
    """TRL's GRPOTrainer on a policy loaded from a saved checkpoint.

    With `beta > 0` TRL loads the reference policy from `model.config._name_or_path`, the same checkpoint
    (or, for a LoRA policy, disables the adapter).
    """
    import os

    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rollout = EpisodeRollout(engine, seed=args.seed, batch_size=batch_size)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[episode_return],
        args=args,
        train_dataset=task_dataset(train_seeds),
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=callbacks,
    )
    return trainer, rollout

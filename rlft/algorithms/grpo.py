"""GRPO: TRL's `GRPOTrainer` as it is, driven by rlft's rollout engine through `rollout_func` and `env_mask`.

The dataset holds task specs, not text: each prompt is `{"seed": s}` as JSON. TRL's sampler repeats each
one `num_generations` times in a row, so a group is `num_generations` episodes of the same env seed (same
map, same slippery dynamics) and GRPO's group baseline compares like with like. The rollout function plays
them all at once and returns token-exact episodes; the reward function hands TRL each episode's return.

A second algorithm (PPO with a critic) consumes the same `EpisodeRollout` and its `RolloutBatch`; only the
trainer differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from rlft.algorithms import trl_bridge
from rlft.algorithms.checkpointing import ResumableTrainerMixin
from rlft.algorithms.generation_copy import sync_generation_copy
from rlft.algorithms.learning_signal import loss_mask, token_advantages
from rlft.core.batch import RolloutBatch
from rlft.rollout.curriculum import TaskCurriculum
from rlft.rollout.engine import RolloutEngine, check_env_failures
from rlft.runtime.distributed import generation_policy


def task_dataset(seeds: list[int]) -> Dataset:
    return Dataset.from_dict({"prompt": [json.dumps({"seed": int(s)}) for s in seeds]})


def seeds_of(prompts: list[Any]) -> list[int]:
    return [int(json.loads(p)["seed"]) for p in prompts]


class EpisodeRollout:
    """Plays the prompts' seeds with the engine and builds the `RolloutBatch` every algorithm consumes.

    `play(prompts, trainer)` returns the batch (reward design applied) and hands it to every listener
    (`add_listener`): the trainer keeps it (non-finite check), transcripts sample it. Called as TRL's
    `rollout_func` (GRPO), it returns the batch as TRL's rollout dict: ids, log-probs, env_mask, and per-episode
    values (return, success, turns) that reach TRL's reward functions as keyword arguments.
    """

    def __init__(self, engine: RolloutEngine, seed: int, batch_size: int, reward_design=None):
        self.engine = engine
        self.seed = seed
        self.batch_size = batch_size
        self.reward_design = reward_design  # rlft.rewards.RewardDesign; None: the env reward as it is
        self.dynamic_sampling = None  # rlft.algorithms.dynamic_sampling.DynamicSampling; None: off
        self.curriculum: TaskCurriculum | None = None  # rl.curriculum; None: TRL's sampler picks the seeds
        self.calls = 0
        self.env_steps = 0  # env steps (turns) played so far, summed over processes
        self.env_failures = 0  # failed episodes so far, summed over processes
        self._listeners: list[Callable[[RolloutBatch], None]] = []

    def add_listener(self, listener: Callable[[RolloutBatch], None]) -> None:
        """`listener(batch)` is called with every RolloutBatch this rollout builds, right after it is built."""
        self._listeners.append(listener)

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs: the sampling stream position, the env-step count, the reward design's
        normalisers and alarm."""
        state: dict[str, Any] = {
            "calls": self.calls,
            "env_steps": self.env_steps,
            "env_failures": self.env_failures,
        }
        if self.reward_design is not None:
            state["reward"] = self.reward_design.state_dict()
        if self.dynamic_sampling is not None:
            state["dynamic_sampling"] = self.dynamic_sampling.state_dict()
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls, self.env_steps = int(state["calls"]), int(state["env_steps"])
        self.env_failures = int(state.get("env_failures", 0))
        if self.reward_design is not None and "reward" in state:
            self.reward_design.load_state_dict(state["reward"])
        if self.dynamic_sampling is not None and "dynamic_sampling" in state:
            self.dynamic_sampling.load_state_dict(state["dynamic_sampling"])
        if self.curriculum is not None and "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])

    def generator(self, process_index: int) -> torch.Generator:
        # One independent, reproducible stream per (run seed, process, rollout call).
        mixed = np.random.SeedSequence([self.seed, process_index, self.calls]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(mixed))

    def play(self, prompts: list[Any], trainer) -> RolloutBatch:
        """Play the prompts' seeds, apply the reward design, build the batch and notify the listeners."""
        sync_generation_copy(trainer)  # FSDP2, every rank: a resumed run's first rollout gathers the weights
        self.engine.model = generation_policy(trainer)
        generator = self.generator(trainer.accelerator.process_index)
        self.calls += 1
        episodes = self.engine.play(
            self.task_seeds(prompts, trainer), generator=generator, batch_size=self.batch_size
        )
        played = episodes
        # Zero-variance groups refilled with fresh ones (rlft/algorithms/dynamic_sampling.py).
        if self.dynamic_sampling is not None:
            episodes, discarded = self.dynamic_sampling.refill(
                episodes, self.engine, self.batch_size, trainer
            )
            played = episodes + discarded
        # Counts summed over processes, so that every process logs the same rate and takes the same decision.
        local = [
            sum(e.num_turns for e in played),
            sum(e.failure is not None for e in played),
            len(played),
        ]
        counts = trainer.accelerator.reduce(
            torch.tensor(local, dtype=torch.float, device=trainer.accelerator.device), reduction="sum"
        )
        turns, failed, total = (int(v) for v in counts.tolist())
        self.env_steps += turns
        self.env_failures += failed
        metrics = trl_bridge.metrics(trainer)
        metrics["episode/env_steps_total"].append(float(self.env_steps))
        metrics["episode/failure_rate"].append(failed / max(total, 1))
        metrics["episode/failures_total"].append(float(self.env_failures))
        check_env_failures(episodes, self.engine.settings.max_env_failure_rate, failed, total)
        if self.reward_design is not None:  # composes episode.rewards in place, before the batch is built
            for key, value in self.reward_design.apply(episodes, trainer.accelerator).items():
                metrics[key].append(value)
        batch = RolloutBatch.from_episodes(
            episodes, pad_id=self.engine.tokenizer.pad_token_id, device=trainer.accelerator.device
        )
        if self.reward_design is None:  # a design logs its components itself (over all processes)
            for name, totals in batch.component_returns.items():
                metrics[f"episode/reward/{name}"].append(sum(totals) / max(len(totals), 1))
        for listener in self._listeners:
            listener(batch)
        return batch

    def task_seeds(self, prompts: list[Any], trainer) -> list[int]:
        """The seeds this process plays: the prompts' (TRL's sampler), or the curriculum's plan for as many rows."""
        if self.curriculum is None:
            return seeds_of(prompts)
        accelerator = trainer.accelerator
        seeds = self.curriculum.assign(len(prompts), accelerator.process_index, accelerator.num_processes)
        metrics = trl_bridge.metrics(trainer)
        for key, value in self.curriculum.plan_metrics().items():
            metrics[key].append(value)
        return seeds

    def observe_scored(self, trainer, scored: dict[str, Any], batch: RolloutBatch | None) -> None:
        """Score the curriculum's tasks from a rollout batch's advantages (`scored`, what the loss trains on),
        with every process's episodes, so that every process keeps the same scores and draws the same tasks."""
        if self.curriculum is None or batch is None:
            return
        mask = loss_mask(scored)
        magnitude = (token_advantages(scored["advantages"].float(), mask).abs() * mask).sum(dim=1)
        per_episode = torch.stack(
            [
                magnitude / mask.sum(dim=1).clamp(min=1.0),
                torch.tensor([float(e.success) for e in batch.episodes], device=mask.device),
                torch.tensor(batch.healthy, dtype=torch.float, device=mask.device),
            ],
            dim=1,
        )
        seeds = torch.tensor(batch.seeds, dtype=torch.long, device=mask.device)
        accelerator = trainer.accelerator
        if accelerator.num_processes > 1:  # in process order, the same on every process
            per_episode, seeds = accelerator.gather(per_episode), accelerator.gather(seeds)
        scores, successes, healthy = per_episode.cpu().T.tolist()
        self.curriculum.update(seeds.tolist(), scores, successes, [h > 0 for h in healthy])
        metrics = trl_bridge.metrics(trainer)
        for key, value in self.curriculum.score_metrics().items():
            metrics[key].append(value)

    def __call__(self, prompts: list[Any], trainer) -> dict[str, list]:
        """TRL's `rollout_func(prompts, trainer)`."""
        return self.play(prompts, trainer).to_trl_rollout()


def episode_return(
    completions: list,
    episode_return: list[float | None],
    success: list[float | None] | None = None,
    turns: list[float | None] | None = None,
    invalid_actions: list[float | None] | None = None,
    log_metric=None,
    **kwargs,
) -> list[float | None]:
    """Reward function for TRL: the episode's return (sum of its per-turn env rewards); None for a failed one.

    Logged episode metrics are means over the healthy episodes only.

    >>> episode_return(["a", "b", "c"], episode_return=[1.0, 0.0, None])
    [1.0, 0.0, None]
    """
    if log_metric is not None:
        for name, values in (
            ("episode/success", success),
            ("episode/turns", turns),
            ("episode/invalid_actions", invalid_actions),
            ("episode/return", episode_return),
        ):
            healthy = [v for v in values or [] if v is not None]
            if healthy:
                log_metric(name, float(np.mean(healthy)))
    return [None if r is None else float(r) for r in episode_return]


class RlftGRPOTrainer(ResumableTrainerMixin, trl_bridge.BridgedGRPOTrainer):
    """TRL's GRPOTrainer with atomic checkpoints, exact resume and non-finite step skipping (rlft.algorithms.checkpointing).

    The algorithm is TRL's, unchanged.
    """

    def __init__(self, *args, episode_rollout: EpisodeRollout, max_nonfinite_steps: int = 3, **kwargs):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
        self._rlft_init(episode_rollout, max_nonfinite_steps)
        super().__init__(*args, rollout_func=episode_rollout, **kwargs)


def build_grpo_trainer(
    model,
    tokenizer,
    args,
    engine: RolloutEngine,
    train_seeds: list[int],
    batch_size: int,
    callbacks: list | None = None,
    max_nonfinite_steps: int = 3,
    trainer_class: type[RlftGRPOTrainer] = RlftGRPOTrainer,
):
    """TRL's GRPOTrainer on a policy loaded from a saved checkpoint (`trainer_class`: a subclass that changes
    only how the generation batch is scored, such as GiGPO's).

    With `beta > 0` TRL loads the reference policy from `model.config._name_or_path`, the same checkpoint
    (or, for a LoRA policy, disables the adapter).
    """
    rollout = EpisodeRollout(engine, seed=args.seed, batch_size=batch_size)
    trainer = trainer_class(
        model=model,
        reward_funcs=[episode_return],
        args=args,
        train_dataset=task_dataset(train_seeds),
        processing_class=tokenizer,
        episode_rollout=rollout,
        max_nonfinite_steps=max_nonfinite_steps,
        callbacks=callbacks,
    )
    return trainer, rollout

"""The Episode: the one record every algorithm reads (DESIGN.md, "The Episode is the central record").

Token layout of one episode::

    prompt_ids | a1 a1 a1 | o1 o1 o1 o1 | a2 a2 | o2 o2 o2 | ... | aK aK
    mask       |  1  1  1 |  0  0  0  0 |  1  1 |  0  0  0 | ... |  1  1

`action_ends[k]` is the completion index of the last token of action k (its stop token when one was
sampled); turn k's reward sits there. The observation after the final action is not appended: nothing
is trained on it and no token is generated after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Episode:
    """One played episode, token-exact.

    Attributes:
        seed: the env reset seed (groups of GRPO episodes share it).
        prompt_ids: tokens before the first action (instructions + first observation + format).
        completion_ids: actions and observations interleaved, (T,).
        mask: 1 on tokens the model sampled, 0 on environment tokens, (T,).
        logprobs: behaviour log-probability of each sampled token (temperature-scaled), 0.0 on env tokens, (T,).
        action_ends: completion index of each action's last token, one per turn.
        rewards: per reward component, one value per turn (`rewards["env"][k]` is the env reward of turn k).
        actions: the decoded text of each action; observations: the text after each action (last excluded).
        terminated / truncated: how the episode ended (truncation by time limit, max turns or token cap).
        success: the env's `info["success"]` at the end.
        task_id: the env's task identity (e.g. the map) for held-out splits.
        invalid_actions: how many actions the env could not parse.
        final_observation_ids: for a truncated episode, the tokens of the observation after its last action
            (not trained on; PPO's critic bootstraps from the state they end). Empty when it terminated.
        invalid_action_flags: the env's `info["invalid_action"]` after each action, one per turn (None where the
            env does not say); reward rules such as `valid_action` read it.
        last_observation: the text of the observation after the last action (potential-based shaping reads it).
        env_rewards: the env's own per-turn rewards, kept here when a reward design replaces `rewards` (the gold
            signal and the logs read them); None until then.
        raw_rewards: per reward component, its per-turn values before normalisation, clipping and weighting (set by
            the reward design).
        failure: None for a healthy episode; for one whose env raised, hung past `rollout.env_step_timeout_s`
            or returned a malformed result, why (e.g. "env.step raised ValueError('boom') on turn 3", turns
            counted from 1). The episode ended there; its tokens are kept as played, but algorithms leave it
            out of the batch and metrics leave it out of success and return.
    """

    seed: int
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    action_ends: list[int] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=lambda: {"env": []})
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    first_observation: str = ""
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    task_id: str = ""
    invalid_actions: int = 0
    final_observation_ids: list[int] = field(default_factory=list)
    invalid_action_flags: list[bool | None] = field(default_factory=list)
    last_observation: str = ""
    env_rewards: list[float] | None = None
    raw_rewards: dict[str, list[float]] = field(default_factory=dict)
    failure: str | None = None

    @property
    def num_turns(self) -> int:
        return len(self.action_ends)

    @property
    def turn_rewards(self) -> list[float]:
        """Total reward of each turn: the sum over components."""
        totals = [0.0] * self.num_turns
        for values in self.rewards.values():
            for k, value in enumerate(values):
                totals[k] += value
        return totals

    @property
    def episode_return(self) -> float:
        return float(sum(self.turn_rewards))

    def token_rewards(self) -> list[float]:
        """Per completion token: each turn's reward on that action's last token, 0 elsewhere, (T,)."""
        rewards = [0.0] * len(self.completion_ids)
        for end, reward in zip(self.action_ends, self.turn_rewards, strict=True):
            rewards[end] += reward
        return rewards

    def add_sampled(self, token: int, logprob: float) -> None:
        self.completion_ids.append(token)
        self.mask.append(1)
        self.logprobs.append(logprob)

    def add_env_tokens(self, tokens: list[int]) -> None:
        self.completion_ids.extend(tokens)
        self.mask.extend([0] * len(tokens))
        self.logprobs.extend([0.0] * len(tokens))

    def end_action(self, text: str, rewards: dict[str, float]) -> None:
        self.action_ends.append(len(self.completion_ids) - 1)
        self.actions.append(text)
        for name, value in rewards.items():
            self.rewards.setdefault(name, [0.0] * (self.num_turns - 1)).append(float(value))

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "return": self.episode_return,
            "success": self.success,
            "turns": self.num_turns,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "invalid_actions": self.invalid_actions,
            "task_id": self.task_id,
            "failure": self.failure,
        }

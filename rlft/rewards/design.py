"""A reward design: weighted components (env reward, learned reward model, rule functions), each optionally
normalised and clipped, composed into the per-turn rewards every algorithm reads.

After each rollout batch `RewardDesign.apply` computes every component's raw per-turn values, turns each
into its composed value,

    composed = weight * clip(normalise(raw), lo, hi)

and writes `episode.rewards[name] = composed` (one value per turn), so PPO's GAE and GRPO's episode return
see the composed reward through `Episode.turn_rewards`. The raw values stay in
`episode.raw_rewards[name]` and the env's own rewards in `episode.env_rewards` (the gold
signal when the proxy is learned).

Levels. The env and rule components are turn-level: a value per turn. A reward model is episode-level (the
whole transcript's score, on the last turn) or turn-level. A turn-level RM gives turn k the *change* in
score its action made, S(transcript through turn k) - S(transcript through turn k-1), S of turn 0 being
the prompt alone. Differenced, the turns sum to S(whole) - S(prompt): the episode-level reward up to a
constant of the start state, which no action changes (GRPO's group baseline removes it; for PPO it is
potential-based shaping with the RM score as the potential, Ng et al. 1999). Scores "as is" would sum K
scores, paying for length itself.

Normalisation is over the values a component emits: every turn's value for turn-level components, the
episode's one value for episode-level ones. The running mean and variance (Welford; batches merged with
Chan et al.'s parallel formula, across processes through accelerate, in process order so every process
holds the same statistics) are updated with the batch first and then applied to it, as SB3's
VecNormalize does: the first batch is normalised by its own statistics. Non-finite values are left out of
the statistics (and passed on, so the trainer skips the step). Centring a turn-level component adds a
constant per turn, which pays for longer or shorter episodes; normalise turn-level components with care.

Logged per rollout batch, over all processes: `reward/<name>/mean` (composed) and `reward/<name>/raw_mean`
per turn; `episode/reward/<name>` (composed) and `episode/reward/<name>/raw` per episode;
`reward/<name>/norm_mean`, `reward/<name>/norm_std` for normalised components; `proxy/return` (the composed
return) and, with a gold signal, `gold/return` (and `gold/success` for the env's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlft.config.schema import (
    Config,
    EnvRewardComponent,
    RewardConfig,
    RmRewardComponent,
    RuleRewardComponent,
)
from rlft.core.episode import Episode
from rlft.rewards.alarm import OverOptimizationAlarm
from rlft.rewards.models.preferences import transcript_text
from rlft.rewards.normalization import RunningMeanStd, gatherer
from rlft.rewards.references import Scorer, load_scorer, resolve_entry_point, resolve_rule, run_reward_model
from rlft.rewards.rules import RuleFunction, call_rule
from rlft.rollout.env_factory import make_env


# ------------------------------------------------------------------------------------------- episode text
def transcript(instructions: str, observations: Sequence[str], actions: Sequence[str], turns: int) -> str:
    """The text a reward model scores for an episode's first `turns` turns: the layout its training pairs
    had (rlft.rewards.models.preferences.transcript_text, rlft's plain turn format), ending with the observation
    that followed the last of those turns. `observations` are s_0 .. s_K, the final one included.
    """
    prompt, completion = transcript_text(instructions, list(observations[: turns + 1]), list(actions[:turns]))
    return prompt + completion


def action_token_counts(episode: Episode) -> list[int]:
    """Tokens the model sampled for each action (env tokens between actions have mask 0)."""
    counts, start = [], 0
    for end in episode.action_ends:
        counts.append(sum(episode.mask[start : end + 1]))
        start = end + 1
    return counts


def env_rewards(episode: Episode) -> list[float]:
    """The env's own per-turn rewards (kept in `info` once a design has replaced `rewards`)."""
    if episode.env_rewards is not None:
        return list(episode.env_rewards)
    return list(episode.rewards.get("env", [0.0] * episode.num_turns))


def episode_fields(episode: Episode, action_names: Sequence[str] | None, instructions: str) -> dict[str, Any]:
    """The keyword arguments a rule function receives for this episode (rlft/rewards/rules.py)."""
    k = episode.num_turns
    last = episode.last_observation
    before = ([episode.first_observation] + list(episode.observations))[:k]
    after = (list(episode.observations) + [last])[:k]
    flags = list(episode.invalid_action_flags or [None] * k)
    return {
        "observations": before,
        "next_observations": after,
        "terminated": episode.terminated,
        "truncated": episode.truncated,
        "invalid_action": flags,
        "action_tokens": action_token_counts(episode),
        "action_names": list(action_names) if action_names else None,
        "instructions": instructions,
        "prompt": (instructions + "\n" if instructions else "") + episode.first_observation,
        "env_rewards": env_rewards(episode),
        "success": episode.success,
        "seed": episode.seed,
        "task_id": episode.task_id,
    }


# --------------------------------------------------------------------------------------------- components
@dataclass
class Component:
    """One configured component, with its normaliser when it has one."""

    name: str
    config: EnvRewardComponent | RmRewardComponent | RuleRewardComponent
    function: RuleFunction | None = None  # rule components
    kwargs: dict[str, Any] = field(default_factory=dict)
    scorer: Scorer | None = None  # rm components
    normalizer: RunningMeanStd | None = None

    @property
    def level(self) -> str:
        return self.config.level if isinstance(self.config, RmRewardComponent) else "turn"


class RewardDesign:
    """Weighted, normalised, clipped reward components applied to each rollout batch (module docstring).

    Args:
        config: the `reward` section.
        action_names, instructions: the env's, passed to rule functions (and used for RM transcripts).
        scorers: a scorer per rm component name (tests pass fakes); loaded from the config when absent.
    """

    def __init__(
        self,
        config: RewardConfig,
        action_names: Sequence[str] | None = None,
        instructions: str = "",
        scorers: dict[str, Scorer] | None = None,
    ):
        self.config = config
        self.action_names = list(action_names) if action_names else None
        self.instructions = instructions
        self.components: list[Component] = []
        for name, cfg in config.components.items():
            component = Component(name, cfg, normalizer=RunningMeanStd() if cfg.normalize else None)
            if isinstance(cfg, RuleRewardComponent):
                component.function, component.kwargs = resolve_rule(cfg, f"reward.components.{name}")
            elif isinstance(cfg, RmRewardComponent):
                component.scorer = (scorers or {}).get(name) or load_scorer(cfg, name)
            self.components.append(component)
        self.gold_function = (
            resolve_entry_point(config.gold, "reward.gold") if config.gold not in ("env", "none") else None
        )
        self.alarm = None
        if config.alarm.enabled or (config.alarm.enabled is None and config.gold != "none"):
            self.alarm = OverOptimizationAlarm.from_config(config.alarm)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "normalizers": {
                c.name: c.normalizer.state_dict() for c in self.components if c.normalizer is not None
            }
        }
        if self.alarm is not None:
            state["alarm"] = self.alarm.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for component in self.components:
            if component.normalizer is not None and component.name in state["normalizers"]:
                component.normalizer.load_state_dict(state["normalizers"][component.name])
        if self.alarm is not None and "alarm" in state:
            self.alarm.load_state_dict(state["alarm"])

    # ---------------------------------------------------------------------------------------- apply
    def apply(self, episodes: list[Episode], accelerator=None) -> dict[str, float]:
        """Compose each healthy episode's rewards in place; return this batch's metrics (over all processes).

        Every process must call it once per rollout batch (normalisation and metrics are collectives).
        """
        gather = gatherer(accelerator)
        healthy = [e for e in episodes if e.failure is None]
        fields = [episode_fields(e, self.action_names, self.instructions) for e in healthy]
        sums: dict[str, list[float]] = {}

        def add(key: str, values: Sequence[float]) -> None:
            total = sums.setdefault(key, [0.0, 0.0])
            total[0] += float(sum(values))
            total[1] += len(values)

        composed: dict[str, list[list[float]]] = {}
        raw: dict[str, list[list[float]]] = {}
        for component in self.components:
            raw[component.name] = self._raw(component, healthy, fields)
            composed[component.name] = self._compose(component, raw[component.name], gather)
            for kind, per_turn in (("", composed[component.name]), ("raw_", raw[component.name])):
                add(f"reward/{component.name}/{kind}mean", [v for turns in per_turn for v in turns])
                add(f"episode/reward/{component.name}" + ("/raw" if kind else ""), [sum(t) for t in per_turn])
        for i, episode in enumerate(healthy):
            if episode.env_rewards is None:
                episode.env_rewards = fields[i]["env_rewards"]
            episode.raw_rewards = {name: values[i] for name, values in raw.items()}
            episode.rewards = {name: values[i] for name, values in composed.items()}
        add("proxy/return", [e.episode_return for e in healthy])
        if self.config.gold == "env":
            add("gold/return", [sum(f["env_rewards"]) for f in fields])
            add("gold/success", [float(e.success) for e in healthy])
        elif self.gold_function is not None:
            add(
                "gold/return",
                [
                    sum(call_rule(self.gold_function, e.actions, f, {}, "gold"))
                    for e, f in zip(healthy, fields, strict=True)
                ],
            )
        keys = list(sums)
        totals = gather(np.array([v for key in keys for v in sums[key]], dtype=np.float64)).sum(axis=0)
        metrics = {
            key: float(totals[2 * j] / totals[2 * j + 1]) for j, key in enumerate(keys) if totals[2 * j + 1]
        }
        for component in self.components:
            if component.normalizer is not None:
                metrics[f"reward/{component.name}/norm_mean"] = component.normalizer.mean
                metrics[f"reward/{component.name}/norm_std"] = component.normalizer.std
        return metrics

    def _raw(self, component: Component, episodes: list[Episode], fields: list[dict]) -> list[list[float]]:
        """Per episode, the component's raw value of each turn."""
        cfg = component.config
        if isinstance(cfg, EnvRewardComponent):
            return [list(f["env_rewards"]) for f in fields]
        if isinstance(cfg, RuleRewardComponent):
            return [
                call_rule(component.function, list(e.actions), f, component.kwargs, component.name)
                for e, f in zip(episodes, fields, strict=True)
            ]
        return self._rm_values(component, episodes, fields)

    def _rm_values(
        self, component: Component, episodes: list[Episode], fields: list[dict]
    ) -> list[list[float]]:
        episode_level = component.level == "episode"
        texts: list[str] = []
        for e, f in zip(episodes, fields, strict=True):
            states = [e.first_observation, *f["next_observations"]]
            prefixes = [e.num_turns] if episode_level else range(e.num_turns + 1)
            texts += [transcript(self.instructions, states, e.actions, k) for k in prefixes]
        scores = [float(s) for s in component.scorer.score(texts)] if texts else []
        if len(scores) != len(texts):
            raise ValueError(
                f"reward component '{component.name}': the reward model returned {len(scores)} "
                f"scores for {len(texts)} texts"
            )
        values, at = [], 0
        for e in episodes:
            if episode_level:
                values.append([0.0] * (e.num_turns - 1) + [scores[at]] if e.num_turns else [])
                at += 1
            else:
                own = scores[at : at + e.num_turns + 1]
                values.append([after - before for before, after in zip(own, own[1:])])
                at += e.num_turns + 1
        return values

    @staticmethod
    def _compose(component: Component, raw: list[list[float]], gather) -> list[list[float]]:
        """weight * clip(normalise(raw)) on the values the component emits; 0 on other turns."""
        cfg = component.config
        if component.level == "episode":
            positions = [(i, len(turns) - 1) for i, turns in enumerate(raw) if turns]
        else:
            positions = [(i, k) for i, turns in enumerate(raw) for k in range(len(turns))]
        values = [raw[i][k] for i, k in positions]
        if component.normalizer is not None:
            component.normalizer.update(values, gather)  # every process calls this, with or without values
            values = [component.normalizer.normalize(v) for v in values]
        if cfg.clip is not None:
            values = [min(max(v, cfg.clip[0]), cfg.clip[1]) for v in values]
        out = [[0.0] * len(turns) for turns in raw]
        for (i, k), value in zip(positions, values, strict=True):
            out[i][k] = cfg.weight * value
        return out


# ------------------------------------------------------------------------------------------------ building


def is_default(config: RewardConfig) -> bool:
    """The env reward alone, weight 1, nothing else: rlft without a design (nothing is applied or logged)."""
    return config == RewardConfig()


def build_reward_design(config: Config, scorers: dict[str, Scorer] | None = None) -> RewardDesign | None:
    """The run's design, or None for the default one. Builds one env for its action names and instructions."""
    if is_default(config.reward):
        return None
    env = make_env(config.env)
    try:
        unwrapped = env.unwrapped
        names = getattr(unwrapped, "action_names", None)
        instructions = str(getattr(unwrapped, "instructions", ""))
    finally:
        env.close()
    resolved = {
        name: cfg.model_copy(update={"path": str(run_reward_model(config))})
        for name, cfg in config.reward.components.items()
        if isinstance(cfg, RmRewardComponent) and cfg.path is None
    }
    reward = config.reward.model_copy(update={"components": {**config.reward.components, **resolved}})
    return RewardDesign(reward, action_names=names, instructions=instructions, scorers=scorers)

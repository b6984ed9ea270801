"""Reward designs (rlft/rewards) and the over-optimisation alarm (rlft/rewards/alarm.py).

Composition with weights, normalisation and clipping against hand-computed numbers; the normaliser's
parallel merge and its state round trip; potential shaping telescoping; the alarm on synthetic curves;
adversarial outputs against every built-in rule; bad `reward:` configs failing before any model loads;
and a tiny GRPO run whose logged reward moves by a constant rule reward.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from transformers import TrainerControl, TrainerState

from rlft.algorithms.grpo import EpisodeRollout
from rlft.config.schema import RewardAlarmConfig, RewardConfig
from rlft.core.episode import Episode
from rlft.errors import ConfigError
from rlft.rewards import (
    BUILTIN_RULES,
    RewardDesign,
    RunningMeanStd,
    length_penalty,
    potential_shaping,
    valid_action,
)
from rlft.rewards.alarm import OverOptimizationAlarm, trend
from rlft.rewards.design import episode_fields
from tests.conftest import tiny_config
from tests.test_bad_input import model_loads  # noqa: F401  (the fixture that booby-traps every model load)


# ----------------------------------------------------------------------------- user rule functions (YAML)
def turn_number(actions, **kwargs):
    """1, 2, 3, ... for the turns of an episode."""
    return [float(k + 1) for k in range(len(actions))]


def final_bonus(actions, value: float = 1.0, **kwargs):
    """`value` on the last turn: the episode return grows by exactly `value`."""
    return [0.0] * (len(actions) - 1) + [value]


_proxy_calls, _gold_calls = itertools.count(), itertools.count()


def rising_bonus(actions, **kwargs):
    """A proxy that rises with every episode scored (1000 per call, on the last turn)."""
    return [0.0] * (len(actions) - 1) + [1000.0 * next(_proxy_calls)]


def falling_gold(actions, **kwargs):
    """A gold signal that falls with every episode scored."""
    return [0.0] * (len(actions) - 1) + [-1000.0 * next(_gold_calls)]


def grid_potential(observation: str) -> float:
    """Minus the Manhattan distance to the 4x4 FrozenLake goal, read from the 'row R col C' line."""
    for line in observation.splitlines():
        if line.startswith("row "):
            _, row, _, col = line.split()
            return -float(abs(3 - int(row)) + abs(3 - int(col)))
    raise ValueError(f"no position in {observation!r}")


class CountingScorer:
    """A fake reward model: the score of a text is how often `right` occurs in it."""

    def __init__(self):
        self.texts: list[str] = []

    def score(self, texts):
        self.texts += list(texts)
        return [float(text.count("right")) for text in texts]


def make_episode(
    seed: int,
    actions: list[str],
    env_rewards: list[float],
    observations: list[str],
    terminated: bool = True,
    success: bool = False,
    failure: str | None = None,
) -> Episode:
    """An episode as the rollout engine records it: two sampled tokens per action, two env tokens between.
    `observations` are s_0 .. s_K."""
    episode = Episode(seed=seed, prompt_ids=[1], first_observation=observations[0])
    for k, (action, reward) in enumerate(zip(actions, env_rewards, strict=True)):
        episode.add_sampled(10 + k, -0.5)
        episode.add_sampled(2, -0.1)
        episode.end_action(action, {"env": reward})
        episode.invalid_action_flags.append(False)
        episode.last_observation = observations[k + 1]
        if k < len(actions) - 1:
            episode.observations.append(observations[k + 1])
            episode.add_env_tokens([5, 6])
    episode.terminated, episode.truncated = terminated, not terminated
    episode.success, episode.failure = success, failure
    return episode


def batch() -> list[Episode]:
    return [
        make_episode(0, ["right", "down", "right"], [0.0, 0.0, 1.0], ["s0", "s1", "s2", "s3"], success=True),
        make_episode(1, ["right", "up"], [-1.0, 2.0], ["t0", "t1", "t2"]),
        make_episode(
            2, ["left"], [5.0], ["u0", "u1"], failure="env.step raised ValueError('boom') on turn 2"
        ),
    ]


def design(components: dict, **reward) -> RewardDesign:
    config = RewardConfig.model_validate({"components": components, **reward})
    scorers = {name: CountingScorer() for name, c in components.items() if c["kind"] == "rm"}
    return RewardDesign(
        config, action_names=["left", "down", "right", "up"], instructions="Reach G.", scorers=scorers
    )


COMPONENTS = {
    "env": {"kind": "env", "weight": 0.5, "clip": [-0.5, 1.5]},
    "steps": {
        "kind": "rule",
        "function": "tests.test_reward_design:turn_number",
        "weight": 2.0,
        "normalize": True,
    },
    "rm": {"kind": "rm", "path": "unused", "level": "episode", "clip": [0.0, 1.5]},
    "rm_turn": {"kind": "rm", "path": "unused", "level": "turn", "weight": 0.1},
}


# ------------------------------------------------------------------------------------------- composition
def test_composition_equals_hand_computed_values():
    episodes = batch()
    metrics = design(COMPONENTS).apply(episodes)
    first, second, failed = episodes
    # steps: raw 1 2 3 | 1 2; the batch updates the statistics first: mean 1.8, population var 0.56
    std = math.sqrt(0.56)
    z = [(x - 1.8) / (std + 1e-8) for x in (1, 2, 3, 1, 2)]
    expected_first = {
        "env": [0.0, 0.0, 0.5],  # clip(0, 0, 1) x 0.5
        "steps": [2 * z[0], 2 * z[1], 2 * z[2]],
        "rm": [0.0, 0.0, 1.5],  # 'right' twice in the transcript, clipped to 1.5
        "rm_turn": [0.1, 0.0, 0.1],  # score 0 1 1 2 through turns 0..3, differenced, x 0.1
    }
    expected_second = {
        "env": [-0.25, 0.75],  # clip(-1, 2) = (-0.5, 1.5), x 0.5
        "steps": [2 * z[3], 2 * z[4]],
        "rm": [0.0, 1.0],
        "rm_turn": [0.1, 0.0],
    }
    for episode, expected in ((first, expected_first), (second, expected_second)):
        assert list(episode.rewards) == list(expected)
        for name, values in expected.items():
            assert episode.rewards[name] == pytest.approx(values, abs=1e-9), name
        assert episode.turn_rewards == pytest.approx(
            [sum(v[k] for v in expected.values()) for k in range(episode.num_turns)]
        )
    assert first.raw_rewards == {
        "env": [0.0, 0.0, 1.0],
        "steps": [1.0, 2.0, 3.0],
        "rm": [0.0, 0.0, 2.0],
        "rm_turn": [1.0, 0.0, 1.0],
    }
    assert second.env_rewards == [-1.0, 2.0]
    assert failed.rewards == {"env": [5.0]} and failed.raw_rewards == {}  # left out, untouched
    # Token rewards (what PPO's GAE reads) put each turn's composed total on the action's last token.
    assert [first.token_rewards()[end] for end in first.action_ends] == pytest.approx(first.turn_rewards)

    assert metrics["reward/env/mean"] == pytest.approx((0.5 - 0.25 + 0.75) / 5)
    assert metrics["reward/env/raw_mean"] == pytest.approx((1.0 - 1.0 + 2.0) / 5)
    assert metrics["episode/reward/env"] == pytest.approx((0.5 + 0.5) / 2)
    assert metrics["episode/reward/env/raw"] == pytest.approx((1.0 + 1.0) / 2)
    assert metrics["episode/reward/rm"] == pytest.approx((1.5 + 1.0) / 2)
    assert metrics["reward/steps/norm_mean"] == pytest.approx(1.8)
    assert metrics["reward/steps/norm_std"] == pytest.approx(std)
    assert metrics["proxy/return"] == pytest.approx((first.episode_return + second.episode_return) / 2)
    assert metrics["gold/return"] == pytest.approx(1.0) and metrics["gold/success"] == pytest.approx(0.5)


def test_turn_level_rm_sums_to_the_episode_score_less_the_prompts():
    episodes = batch()[:2]
    reward = design(
        {
            "turn": {"kind": "rm", "path": "x", "level": "turn"},
            "whole": {"kind": "rm", "path": "x", "level": "episode"},
        }
    )
    reward.apply(episodes)
    turn_texts, whole_texts = (c.scorer.texts for c in reward.components)
    assert len(turn_texts) == (3 + 1) + (2 + 1) and len(whole_texts) == 2  # the prompt alone, then each turn
    assert all(text.startswith("Reach G.\n") for text in turn_texts + whole_texts)
    assert turn_texts[3] == whole_texts[0] and turn_texts[6] == whole_texts[1]
    for episode in episodes:  # the prompts score 0 here
        assert sum(episode.rewards["turn"]) == pytest.approx(sum(episode.rewards["whole"]))


def test_normalisation_merges_batches_and_processes_like_one_stream():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(3.0, 2.0, 7), rng.normal(-1.0, 0.5, 5), rng.normal(0.0, 1.0, 4)
    stats = RunningMeanStd()
    stats.update(a)
    other = np.array([len(b), b.mean(), ((b - b.mean()) ** 2).sum()])
    stats.update(c, gather=lambda row: np.stack([row, other]))  # two processes: this one (c) and another (b)
    everything = np.concatenate([a, c, b])
    assert stats.count == len(everything)
    assert stats.mean == pytest.approx(everything.mean(), abs=1e-12)
    assert stats.std == pytest.approx(everything.std(), abs=1e-12)
    stats.update([float("nan"), float("inf")])  # non-finite values stay out of the statistics
    assert stats.count == len(everything)

    # A second batch is normalised with the statistics of both batches (updated first, then applied).
    reward = design({"steps": COMPONENTS["steps"]})
    reward.apply(batch())
    later = make_episode(3, ["a", "b", "c", "d"], [0.0] * 4, ["v0", "v1", "v2", "v3", "v4"])
    reward.apply([later])
    seen = np.array([1, 2, 3, 1, 2, 1, 2, 3, 4], dtype=float)
    assert later.rewards["steps"] == pytest.approx(
        list(2 * (np.arange(1, 5) - seen.mean()) / seen.std()), abs=1e-7
    )


def test_normaliser_and_alarm_state_survive_a_save_and_load_exactly():
    components = {**COMPONENTS, "env": {**COMPONENTS["env"], "normalize": True}}
    original = EpisodeRollout(engine=None, seed=0, batch_size=4, reward_design=design(components))
    original.reward_design.apply(batch())
    original.reward_design.apply([make_episode(3, ["right"] * 4, [0.1, 0.2, 0.3, 0.4], ["w"] * 5)])
    for step in range(5):
        original.reward_design.alarm.observe(step, 0.1 * step, 1.0 / (step + 3))
    state = json.loads(
        json.dumps(original.state_dict())
    )  # rlft_state.json is JSON (rlft/algorithms/checkpointing.py)
    assert set(state["reward"]["normalizers"]) == {"env", "steps"}

    restored = EpisodeRollout(engine=None, seed=0, batch_size=4, reward_design=design(components))
    restored.load_state_dict(state)
    assert restored.state_dict() == original.state_dict()
    for before, after in zip(
        original.reward_design.components, restored.reward_design.components, strict=True
    ):
        if before.normalizer is not None:
            assert after.normalizer.state_dict() == before.normalizer.state_dict()  # bit-exact floats
    # ... so the next batch is composed identically.
    next_a, next_b = batch(), batch()
    original.reward_design.apply(next_a)
    restored.reward_design.apply(next_b)
    assert [e.rewards for e in next_a] == [e.rewards for e in next_b]


class TwoIdenticalProcesses:
    """An accelerator stand-in: two processes that played the same batch (gather returns the row twice)."""

    num_processes, device = 2, "cpu"

    def gather(self, tensor):
        import torch

        return torch.cat([tensor, tensor])


def test_metrics_and_statistics_are_gathered_across_processes():
    alone, together = batch(), batch()
    one = design(COMPONENTS).apply(alone)
    two_processes = design(COMPONENTS)
    two = two_processes.apply(together, accelerator=TwoIdenticalProcesses())
    assert two == pytest.approx(one)  # means over twice the episodes, all alike
    assert two_processes.components[1].normalizer.count == 10  # 5 turns per process
    assert [e.rewards for e in together] == [e.rewards for e in alone]


def test_the_default_design_is_not_applied():
    from rlft.rewards import build_reward_design

    assert build_reward_design(tiny_config("rlft/FrozenLake-v0")) is None
    assert EpisodeRollout(engine=None, seed=0, batch_size=1).state_dict().keys() == {
        "calls",
        "env_steps",
        "env_failures",
    }


# --------------------------------------------------------------------------------------------- shaping
def play(actions: list[str], seed: int = 0) -> Episode:
    """Play text actions in 4x4 FrozenLake and record the episode as the rollout engine does."""
    import envs  # noqa: F401  (registers rlft/ ids)

    env = gym.make("rlft/FrozenLake-v0")
    observation, _ = env.reset(seed=seed)
    episode = Episode(seed=seed, prompt_ids=[1], first_observation=observation)
    for action in actions:
        episode.add_sampled(7, -0.3)
        observation, reward, terminated, truncated, info = env.step(action)
        episode.end_action(action, {"env": reward})
        episode.invalid_action_flags.append(info["invalid_action"])
        episode.last_observation = observation
        if terminated or truncated:
            episode.terminated, episode.truncated = terminated, truncated
            return episode
        episode.observations.append(observation)
        episode.add_env_tokens([5])
    episode.truncated = True  # cut off by the caller's turn budget
    return episode


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize(
    ("actions", "terminated"),
    [
        (["right", "right", "jump", "down", "down"], False),  # cut off on an ice tile
        (["down", "down", "right", "right", "down", "right"], True),  # reaches G
        (["right", "down"], True),  # falls into a hole
    ],
)
def test_potential_shaping_telescopes_over_an_episode(actions, terminated, gamma):
    episode = play(actions)
    fields = episode_fields(episode, ["left", "down", "right", "up"], "")
    shaped = potential_shaping(episode.actions, **fields, potential=grid_potential, gamma=gamma)
    discounted = sum(gamma**t * f for t, f in enumerate(shaped))
    start = grid_potential(episode.first_observation)
    end = 0.0 if episode.terminated else grid_potential(episode.last_observation)
    assert discounted == pytest.approx(gamma**episode.num_turns * end - start, abs=1e-12)
    if gamma == 1.0:
        assert sum(shaped) == pytest.approx(end - start)  # Phi(end) - Phi(start)
    assert episode.terminated == terminated


def test_potential_shaping_through_the_design_with_a_named_potential():
    episode = play(["down", "down", "jump"])
    reward = design(
        {
            "shaping": {
                "kind": "rule",
                "function": "potential_shaping",
                "kwargs": {"potential": "tests.test_reward_design:grid_potential"},
            }
        }
    )
    reward.apply([episode])
    assert episode.rewards["shaping"] == [1.0, 1.0, 0.0]  # two steps closer to G, then an invalid action


# ----------------------------------------------------------------------------------------------- alarm
def curve(rng, slope: float, start: float = 0.0, noise: float = 0.05, n: int = 40) -> np.ndarray:
    return start + slope * np.arange(n) + rng.normal(0.0, noise, n)


def run_alarm(proxy, gold, **settings) -> OverOptimizationAlarm:
    alarm = OverOptimizationAlarm(**settings)
    for step, (p, g) in enumerate(zip(proxy, gold, strict=True), start=1):
        alarm.observe(step, float(p), float(g))
    return alarm


@pytest.mark.parametrize("seed", range(5))
def test_alarm_fires_when_proxy_rises_and_gold_falls(seed):
    rng = np.random.default_rng(seed)
    proxy = curve(rng, 0.02)
    # Gold rises with the proxy for 20 steps, then falls while the proxy keeps rising.
    gold = np.concatenate([curve(rng, 0.02, n=20), 0.4 - 0.03 * np.arange(1, 21) + rng.normal(0, 0.05, 20)])
    alarm = run_alarm(proxy, gold, window=15)
    assert alarm.fired_at is not None and alarm.fired_at > 20, alarm.fired_at  # not while both rose


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", ["both rising", "flat and noisy", "proxy falling", "both falling"])
def test_alarm_stays_quiet_on_healthy_curves(shape, seed):
    rng = np.random.default_rng(seed)
    proxy, gold = {
        "both rising": (curve(rng, 0.02), curve(rng, 0.02)),
        "flat and noisy": (curve(rng, 0.0, noise=0.3), curve(rng, 0.0, noise=0.3)),
        "proxy falling": (curve(rng, -0.02), curve(rng, 0.02)),
        "both falling": (curve(rng, -0.02), curve(rng, -0.02)),
    }[shape]
    alarm = run_alarm(proxy, gold, window=15)
    assert alarm.fired_at is None and alarm.events == 0


def test_alarm_threshold_is_noise_aware():
    rng = np.random.default_rng(1)
    # The same slopes buried in noise ten times larger do not fire.
    noisy = run_alarm(curve(rng, 0.01, noise=0.5), curve(rng, -0.01, noise=0.5), window=15)
    clean = run_alarm(curve(rng, 0.01, noise=0.01), curve(rng, -0.01, noise=0.01), window=15)
    assert noisy.fired_at is None and clean.fired_at == 15


def test_trend_is_the_least_squares_slope_and_its_t_statistic():
    rng = np.random.default_rng(2)
    y = 0.3 * np.arange(12) + rng.normal(0, 0.4, 12)
    slope, intercept = np.polyfit(np.arange(12), y, 1)
    residuals = y - (slope * np.arange(12) + intercept)
    stderr = math.sqrt((residuals**2).sum() / 10 / ((np.arange(12) - 5.5) ** 2).sum())
    fit = trend(y)
    assert fit.slope == pytest.approx(slope) and fit.t == pytest.approx(slope / stderr)
    assert trend([1.0] * 6).t == 0.0 and trend([0.0, 1.0, 2.0]).t == math.inf


@pytest.mark.parametrize("stop", [False, True])
def test_alarm_callback_logs_the_event_warns_once_and_can_stop(stop, caplog):
    alarm = OverOptimizationAlarm.from_config(RewardAlarmConfig(window=5, min_t=2.0, stop=stop))
    state, control = TrainerState(), TrainerControl()
    logged = []
    with caplog.at_level(logging.WARNING, logger="rlft.rewards.alarm"):
        for step in range(1, 9):
            state.global_step = step
            logs = {
                "loss": 0.1,
                "proxy/return": 0.1 * step,
                "gold/return": 1.0 - 0.1 * step + 0.01 * (step % 2),
            }
            control = alarm.on_log(None, state, control, logs=logs)
            logged.append(logs)
    fired = [logs for logs in logged if "alarm/overoptimization" in logs]
    assert [logs["alarm/overoptimization"] for logs in fired] == [1.0] * 4  # steps 5..8
    assert fired[0]["alarm/proxy_slope"] == pytest.approx(0.1) and fired[0]["alarm/gold_slope"] < 0
    warnings = [r for r in caplog.records if "over-optimisation alarm at step 5" in r.getMessage()]
    assert len(warnings) == 1 and len([r for r in caplog.records if "alarm" in r.getMessage()]) == 1
    assert control.should_training_stop == stop and control.should_save == stop


# ------------------------------------------------------------------------------------------ adversarial
START_ACTIONS = ["right", "down", "left", "up"]  # every clean action from the start state of 4x4 FrozenLake


def adversarial_outputs(prompt: str) -> dict[str, str]:
    return {
        "empty": "",
        "whitespace only": "  \n  ",
        "one token repeated": " ".join(["G"] * 32),
        "maximum length": ("the lake is frozen and the goal is near " * 4)[
            :64
        ],  # the adapter's MAX_ACTION_CHARS
        "prompt copied": prompt,
    }


def first_turn_fields(text: str) -> dict:
    """The fields a rule sees for one action taken in 4x4 FrozenLake's start state."""
    episode = play([text])
    fields = episode_fields(episode, ["left", "down", "right", "up"], "")
    return {**fields, "action_tokens": [len(text.split()) + 1]}  # a word-level tokenizer, plus the stop token


RULES = {  # each built-in rule, configured as a user would
    "valid_action": {},
    "length_penalty (chars)": {"budget": 8, "coef": 0.1, "unit": "char"},
    "length_penalty (tokens)": {"budget": 4, "coef": 0.1},
    "potential_shaping": {"potential": grid_potential, "gamma": 1.0},
}


def rule_value(rule: str, text: str) -> float:
    function = BUILTIN_RULES[rule.split()[0]]
    return function([text], **first_turn_fields(text), **RULES[rule])[0]


def test_every_built_in_rule_is_covered():
    assert {rule.split()[0] for rule in RULES} == set(BUILTIN_RULES)


@pytest.mark.parametrize("rule", list(RULES))
def test_adversarial_outputs_never_get_a_rules_maximum(rule):
    import envs  # noqa: F401

    env = gym.make("rlft/FrozenLake-v0")
    observation, _ = env.reset(seed=0)
    prompt = env.unwrapped.instructions + "\n" + observation
    best = max(rule_value(rule, action) for action in START_ACTIONS)
    for name, text in adversarial_outputs(prompt).items():
        assert rule_value(rule, text) < best, (rule, name)


def test_an_action_name_padded_or_repeated_is_caught_though_the_env_accepts_it():
    # DiscreteTextEnv's parser reads "right right right" and "right, and then down" as "right".
    for text in ("right right right right", "right, and then down"):
        assert first_turn_fields(text)["invalid_action"] == [False]
        assert rule_value("valid_action", text) < rule_value("valid_action", "right")
        assert rule_value("length_penalty (chars)", text) < 0.0
        # Shaping rewards the transition, and the env made the same move as for "right" (rules.py says so).
        assert rule_value("potential_shaping", text) == rule_value("potential_shaping", "right")


def test_rules_have_doctests_and_the_trl_shape():
    import doctest

    from rlft.rewards import alarm as reward_alarm
    from rlft.rewards import rules

    for function in BUILTIN_RULES.values():
        assert ">>>" in function.__doc__
    assert doctest.testmod(rules, raise_on_error=True).attempted >= 6
    assert doctest.testmod(reward_alarm, raise_on_error=True).attempted >= 1
    assert valid_action(["up"], invalid_action=[False]) == [0.0]
    assert length_penalty([""], unit="char") == [-0.01]


# ------------------------------------------------------------------------------------------- bad config
BAD = [
    (
        "unknown kind",
        {"x": {"kind": "rules", "function": "valid_action"}},
        ["key 'reward.components.x'", "'rules'", "'env', 'rm', 'rule'"],
    ),
    ("missing function", {"x": {"kind": "rule"}}, ["missing required key 'reward.components.x.function'"]),
    (
        "function not found",
        {"x": {"kind": "rule", "function": "tests.test_reward_design:no_such_rule"}},
        ["key 'reward.components.x.function'", "has no attribute 'no_such_rule'"],
    ),
    (
        "module not found",
        {"x": {"kind": "rule", "function": "no_such_module:rule"}},
        ["key 'reward.components.x.function'", "module 'no_such_module' not found"],
    ),
    (
        "built-in misspelt",
        {"x": {"kind": "rule", "function": "valid_actoin"}},
        ["key 'reward.components.x.function'", "did you mean 'valid_action'"],
    ),
    (
        "built-in option misspelt",
        {"x": {"kind": "rule", "function": "length_penalty", "kwargs": {"budgte": 3}}},
        ["key 'reward.components.x.kwargs.budgte'", "did you mean 'budget'"],
    ),
    (
        "potential missing",
        {"x": {"kind": "rule", "function": "potential_shaping"}},
        ["key 'reward.components.x.kwargs.potential' is missing"],
    ),
    (
        "potential not found",
        {
            "x": {
                "kind": "rule",
                "function": "potential_shaping",
                "kwargs": {"potential": "tests.test_reward_design:nope"},
            }
        },
        ["key 'reward.components.x.kwargs.potential'", "has no attribute 'nope'"],
    ),
    (
        "weight wrong type",
        {"x": {"kind": "env", "weight": "heavy"}},
        ["key 'reward.components.x.weight' = 'heavy'", "expected a number"],
    ),
    ("weight a bool", {"x": {"kind": "env", "weight": True}}, ["key 'reward.components.x.weight' = True"]),
    (
        "clip reversed",
        {"x": {"kind": "env", "clip": [1.0, -1.0]}},
        ["key 'reward.components.x.clip'", "lo < hi"],
    ),
    (
        "rm path missing",
        {"x": {"kind": "rm", "path": "no/such/rm"}},
        ["key 'reward.components.x.path' = 'no/such/rm'", "no such reward-model folder"],
    ),
    (
        "rm without path or rm section",
        {"x": {"kind": "rm"}},
        ["key 'reward.components.x.path' is null (this run's reward model)", "no `rm` section"],
    ),
    ("rm level", {"x": {"kind": "rm", "path": ".", "level": "step"}}, ["key 'reward.components.x.level'"]),
    (
        "rule key on env",
        {"x": {"kind": "env", "function": "valid_action"}},
        ["unknown key 'reward.components.x.function'"],
    ),
]


@pytest.mark.parametrize(("case", "components", "expected"), BAD, ids=[case for case, _, _ in BAD])
def test_bad_reward_config_fails_before_any_model_loads(
    case,
    components,
    expected,
    tmp_path,
    monkeypatch,
    capsys,
    model_loads,  # noqa: F811  (the fixture imported from test_bad_input)
):
    from rlft import cli

    monkeypatch.chdir(tmp_path)
    config = {
        "name": "exp",
        "model": {
            "tiny": {
                "hidden_size": 32,
                "num_heads": 2,
                "num_layers": 1,
                "intermediate_size": 64,
                "corpus_episodes": 10,
            }
        },
        "env": {"id": "rlft/FrozenLake-v0"},
        "tracking": {"wandb": {"enabled": False}},
        "reward": {"components": components},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    code = cli.main(["train", "--config", "config.yaml"])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, err
    assert model_loads == [] and not (tmp_path / "runs").exists()


def test_bad_gold_and_alarm_settings_name_their_keys():
    with pytest.raises(ConfigError, match="key 'reward.gold' = 'nowhere'"):
        tiny_config(reward={"gold": "nowhere"})
    with pytest.raises(ConfigError, match="key 'reward.gold' = 'tests.test_reward_design:missing'"):
        tiny_config(reward={"gold": "tests.test_reward_design:missing"})
    with pytest.raises(ConfigError, match="alarm.enabled is true but gold is 'none'"):
        tiny_config(reward={"gold": "none", "alarm": {"enabled": True}})


# ------------------------------------------------------------------------------------------ a tiny run
def test_rollout_records_what_rules_read(frozen_lake_policy):
    from rlft.rollout.engine import RolloutEngine
    from rlft.stages.common import env_factory, sampling_settings, turn_format_for

    config, model, tokenizer = frozen_lake_policy
    engine = RolloutEngine(
        model, tokenizer, turn_format_for(config, tokenizer), env_factory(config), sampling_settings(config)
    )
    import torch

    for episode in engine.play([0, 1, 2, 3], generator=torch.Generator().manual_seed(0)):
        fields = episode_fields(episode, None, "")
        assert len(episode.invalid_action_flags) == episode.num_turns
        assert all(isinstance(flag, bool) for flag in episode.invalid_action_flags)
        assert fields["observations"][1:] == fields["next_observations"][:-1]
        assert fields["next_observations"][-1] == episode.last_observation != ""
        assert sum(fields["action_tokens"]) == sum(episode.mask)


def design_run_config(out: Path):
    """A tiny GRPO run (3 steps, a checkpoint each) with a normalised, clipped env reward and a constant bonus."""
    return tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        name="design",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 4, "train_seeds": {"start": 0, "count": 4}},
        rl={
            "algorithm": "grpo",
            "init_from": "base",
            "trainer": {
                "max_steps": 3,
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 1,
                "save_total_limit": 1,
            },
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
        reward={
            "components": {
                "env": {"kind": "env", "normalize": True, "clip": [-3.0, 3.0]},
                "bonus": {
                    "kind": "rule",
                    "function": "tests.test_reward_design:final_bonus",
                    "kwargs": {"value": 0.75},
                },
            },
            "alarm": {"window": 4},
        },
    )


def logged_steps(run_dir: Path) -> dict[int, dict]:
    from rlft.runtime.tracking import read_metrics

    steps: dict[int, dict] = {}
    for m in read_metrics(run_dir):
        if m["stage"] == "rl" and "loss" in m:
            steps[m["step"]] = m  # a replayed step: the last one counts
    return steps


@pytest.fixture(scope="module")
def design_run(tmp_path_factory):
    from rlft import stages

    config = design_run_config(tmp_path_factory.mktemp("design_run"))
    stages.run_rl(config)
    return config, logged_steps(config.run_dir)


def test_tiny_grpo_run_logs_every_component_and_the_reward_reaches_the_loss(design_run):
    from rlft.algorithms.checkpoint_folders import latest_complete
    from rlft.algorithms.checkpointing import STATE_FILE

    config, steps = design_run
    assert sorted(steps) == [1, 2, 3]
    for m in steps.values():
        assert math.isfinite(m["loss"])
        assert m["episode/reward/bonus"] == pytest.approx(0.75) and m["reward/bonus/raw_mean"] > 0
        # TRL's `reward` (what its advantages are computed from) is the composed env return plus the constant.
        assert m["reward"] == pytest.approx(m["episode/reward/env"] + 0.75, abs=1e-5)
        assert m["proxy/return"] == pytest.approx(m["reward"], abs=1e-5)
        assert m["gold/return"] == pytest.approx(
            m["episode/reward/env/raw"], abs=1e-6
        )  # the env's own return
        assert m["episode/reward/env"] != pytest.approx(m["episode/reward/env/raw"])  # normalised
        for key in (
            "reward/env/mean",
            "reward/env/raw_mean",
            "reward/bonus/mean",
            "reward/env/norm_mean",
            "reward/env/norm_std",
            "gold/success",
        ):
            assert key in m, key
    # The checkpoint carries the design's state: the normaliser has seen every turn played, and the alarm the
    # logged proxy / gold values.
    state = json.loads((latest_complete(config.run_dir / "trainer" / "rl") / STATE_FILE).read_text())
    reward = state["rollout"]["reward"]
    assert reward["normalizers"]["env"]["count"] == steps[3]["episode/env_steps_total"]
    assert [h[1] for h in reward["alarm"]["history"]] == pytest.approx(
        [steps[k]["proxy/return"] for k in (1, 2, 3)]
    )
    assert [h[2] for h in reward["alarm"]["history"]] == pytest.approx(
        [steps[k]["gold/return"] for k in (1, 2, 3)]
    )


def test_a_killed_and_resumed_run_with_a_design_equals_the_straight_run(design_run, tmp_path):
    from rlft import stages
    from tests.test_resume import KillAt, Killed, scramble_rngs

    _, straight = design_run
    config = design_run_config(tmp_path)
    with pytest.raises(Killed):
        stages.run_rl(config, callbacks=[KillAt(2, after_save=True)])
    scramble_rngs()
    stages.run_rl(config, resume=True)  # the normaliser continues from checkpoint-2's statistics
    resumed = logged_steps(config.run_dir)
    assert sorted(resumed) == [1, 2, 3]
    compared = [
        k for k in straight[3] if k.startswith(("reward", "episode/", "proxy/", "gold/")) or k == "loss"
    ]
    assert "reward/env/norm_mean" in compared
    for step in (1, 2, 3):
        assert {k: resumed[step].get(k) for k in compared} == {k: straight[step].get(k) for k in compared}, (
            step
        )


def test_the_alarm_fires_in_a_run_logs_its_event_and_stops_it_with_a_checkpoint(tmp_path, caplog):
    from rlft import stages
    from rlft.algorithms.checkpoint_folders import latest_complete
    from rlft.runtime.tracking import read_metrics

    config = design_run_config(tmp_path).model_copy(deep=True)
    config.rl.trainer.update({"max_steps": 8, "save_steps": 100})
    config.reward = RewardConfig.model_validate(
        {
            "components": {
                "env": {"kind": "env"},
                "bonus": {"kind": "rule", "function": "tests.test_reward_design:rising_bonus"},
            },
            "gold": "tests.test_reward_design:falling_gold",
            "alarm": {"window": 4, "stop": True},
        }
    )
    with caplog.at_level(logging.WARNING, logger="rlft.rewards.alarm"):
        stages.run_rl(config)
    steps = [m for m in read_metrics(config.run_dir) if m["stage"] == "rl" and "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]  # stopped at the first full window
    assert [m.get("alarm/overoptimization") for m in steps] == [None, None, None, 1.0]  # in metrics.jsonl
    assert steps[-1]["alarm/proxy_slope"] > 0 > steps[-1]["alarm/gold_slope"]
    assert latest_complete(config.run_dir / "trainer" / "rl").name == "checkpoint-4"
    assert any("over-optimisation alarm at step 4" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------- this run's reward model
def rm_design_config(tmp_path, with_rm_section: bool):
    sections = {"reward": {"name": "rm_only", "components": {"rm": {"kind": "rm"}}, "gold": "env"}}
    if with_rm_section:
        sections["rm"] = {"data": {"source": "env", "episodes": 8, "budget": 10}}
    return tiny_config(output_dir=str(tmp_path / "runs"), **sections)


def test_rm_component_without_path_needs_an_rm_section_or_the_runs_reward_model(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.components.rm.path' is null .* no `rm` section"):
        rm_design_config(tmp_path, with_rm_section=False)
    config = rm_design_config(tmp_path, with_rm_section=True)  # `rlft pipeline` trains it before RL
    assert config.reward.components["rm"].path is None


def test_train_with_this_runs_reward_model_missing_fails_before_any_model_loads(
    tmp_path,
    monkeypatch,
    capsys,
    model_loads,  # noqa: F811  (the fixture imported from test_bad_input)
):
    from rlft import cli
    from rlft.config.schema import save_config

    config = rm_design_config(tmp_path, with_rm_section=True)
    save_config(config, tmp_path / "config.yaml")
    assert cli.main(["train", "--config", str(tmp_path / "config.yaml"), "rl.init_from=base"]) == 2
    assert "run `rlft rm` first" in capsys.readouterr().err
    assert model_loads == []


@pytest.mark.parametrize("with_rm_section", [True, False])
def test_pipeline_trains_the_reward_model_between_sft_and_rl(with_rm_section, tmp_path, monkeypatch):
    from rlft import stages
    from rlft.stages import pipeline

    calls = []
    for name in ("run_sft", "run_rl", "run_eval", "run_rm"):
        monkeypatch.setattr(pipeline, name, lambda config, name=name: calls.append(name))
    config = rm_design_config(tmp_path, True) if with_rm_section else tiny_config(output_dir=str(tmp_path))
    stages.run_pipeline(config)
    assert calls == (
        ["run_sft", "run_rm", "run_rl", "run_eval"] if with_rm_section else ["run_sft", "run_rl", "run_eval"]
    )


def test_the_built_design_loads_this_runs_reward_model(tmp_path, monkeypatch):
    from rlft.rewards import design

    loaded = []
    monkeypatch.setattr(
        design, "load_scorer", lambda cfg, name: loaded.append(cfg.path) or (lambda texts: [])
    )
    config = rm_design_config(tmp_path, with_rm_section=True)
    design.build_reward_design(config)
    assert loaded == [str(config.run_dir / "checkpoints" / "rm")]


def test_frozen_lake_goal_distance_potential():
    from envs.frozen_lake import goal_distance_potential

    env = gym.make("rlft/FrozenLakeRandom-v0", random_map_size=4, is_slippery=False)
    observation, _ = env.reset(seed=3)  # @ at (0, 0), G at (3, 3)
    assert goal_distance_potential(observation) == -1.0
    observation, *_ = env.step("right")
    assert goal_distance_potential(observation) == pytest.approx(-5 / 6)
    assert goal_distance_potential("no map here") == 0.0


def test_frozen_lake_path_value_potential_gives_each_turn_its_optimal_advantage():
    from envs.frozen_lake import path_value_potential

    env = gym.make("rlft/FrozenLakeRandom-v0", random_map_size=4, is_slippery=False)
    start, _ = env.reset(seed=3)  # holes at (1, 1) and (2, 0): the shortest safe walk to G is 6 moves
    assert path_value_potential(start, gamma=0.9) == pytest.approx(0.9**5)
    assert path_value_potential(start) == 1.0  # undiscounted: G is reachable
    along, *_ = env.step("right")  # 5 moves left
    env.reset(seed=3)
    away, *_ = env.step("down")  # (1, 0): both holes beside it, back through the start: 7 moves
    assert path_value_potential(away, gamma=0.9) == pytest.approx(0.9**6)
    shaped = [
        potential_shaping(
            [a], observations=[start], next_observations=[after], potential=path_value_potential, gamma=0.9
        )[0]
        for a, after in (("right", along), ("down", away))
    ]
    # gamma * V*(s') - V*(s): 0.9 * 0.9**4 - 0.9**5 = 0 along the walk; 0.9 * 0.9**6 - 0.9**5 = -0.1121931 away.
    assert shaped == pytest.approx([0.0, -0.1121931])
    # A step into a hole ends the episode: Phi(terminal) = 0, so the turn from (1, 0) costs V*(s) = 0.9**6 = 0.531441.
    hole, *_ = env.step("right")
    assert potential_shaping(
        ["right"],
        observations=[away],
        next_observations=[hole],
        potential=path_value_potential,
        gamma=0.9,
        terminated=True,
    ) == pytest.approx([-0.531441])
    assert path_value_potential("@ H\nH G\nrow 0 col 0") == 0.0

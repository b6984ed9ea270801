"""The decision audit (rlft/rollout/expert_agreement.py): episodes replayed with the expert asked at every state.

On Gymnasium's 4x4 map, non-slippery (S F F F / F H F H / F F F H / H F F G), every shortest path to G takes 6
moves; from the start both `down` and `right` begin one (a tie the audit accepts either way), and from row 1
col 0 only `down` does (right is a hole, left a wall, up goes back).
"""

from __future__ import annotations

import functools

import gymnasium
import pytest

import envs  # noqa: F401  (registers rlft/*)
from envs.experts import expert_for, play_expert_episode
from rlft.core.episode import Episode
from rlft.rollout.expert_agreement import INVALID, expert_agreement

make_lake = functools.partial(gymnasium.make, "rlft/FrozenLake-v0", map_name="4x4", is_slippery=False)


def played(make, seed: int, actions: list[str]) -> Episode:
    """An episode as the rollout engine records it: first observation, one observation after each action but
    the last, the action texts."""
    env = make()
    observation, _ = env.reset(seed=seed)
    episode = Episode(seed=seed, prompt_ids=[], first_observation=observation)
    for action in actions:
        observation, *_ = env.step(action)
        episode.actions.append(action)
        episode.observations.append(observation)
    episode.observations.pop()
    return episode


def test_every_turn_of_a_shortest_path_agrees_ties_included():
    # 0 -down-> 4 -down-> 8 -right-> 9 -right-> 10 -down-> 14 -right-> 15 (G): 6 moves; at the start the expert's
    # own choice is one of the tied two (down, right) and either counts.
    both_ties = [played(make_lake, 0, ["down", "down", "right", "right", "down", "right"]),
                 played(make_lake, 1, ["right", "right", "down", "down", "down", "right"])]  # fmt: skip
    audit = expert_agreement(make_lake, both_ties)
    assert audit == {
        "agreement": 1.0,
        "turns": 12,
        "episodes": 2,
        "replay_mismatches": 0,
        "disagreements": [],
    }


def test_a_detour_and_an_unparsed_action_are_the_disagreements_counted_by_observation():
    # 0 -down-> 4 -up-> 0 -down-> 4 -fly-> 4 -down-> 8 -right-> 9 -down-> 13 -right-> 14 -right-> 15: 9 turns,
    # 'up' at row 1 col 0 (expert: down) and 'fly' (no action) there are wrong; the other 7 agree.
    actions = ["down", "up", "down", "fly", "down", "right", "down", "right", "right"]
    detour = played(make_lake, 0, actions)
    audit = expert_agreement(make_lake, [detour])
    assert audit["agreement"] == pytest.approx(7 / 9) and audit["turns"] == 9
    row_1_col_0 = detour.observations[0]  # the agent at row 1 col 0, after the first 'down'
    assert "row 1 col 0" in row_1_col_0
    assert audit["disagreements"] == [
        {"observation": row_1_col_0, "policy": "up", "expert": "down", "count": 1},
        {"observation": row_1_col_0, "policy": INVALID, "expert": "down", "count": 1},
    ]


def test_on_slippery_ice_the_replay_rolls_the_same_dice_and_the_expert_agrees_with_itself():
    make = functools.partial(gymnasium.make, "rlft/FrozenLake-v0", map_name="4x4", is_slippery=True)
    env = make()
    expert = expert_for(env)
    episodes = []
    for seed in range(6):
        game = play_expert_episode(env, expert, seed=seed, max_turns=30)
        episode = Episode(seed=seed, prompt_ids=[], first_observation=game["observations"][0])
        episode.actions, episode.observations = game["actions"], game["observations"][1:-1]
        episodes.append(episode)
    audit = expert_agreement(make, episodes)
    turns = sum(len(e.actions) for e in episodes)
    assert turns > 6 and audit == {
        "agreement": 1.0,
        "turns": turns,
        "episodes": 6,
        "replay_mismatches": 0,
        "disagreements": [],
    }


def test_an_episode_the_replay_does_not_reproduce_is_left_out_and_counted():
    good = played(make_lake, 0, ["down", "down"])
    other_env = played(make_lake, 0, ["down", "down"])
    other_env.first_observation = "a map this env never showed"
    audit = expert_agreement(make_lake, [good, other_env])
    assert audit["episodes"] == 1 and audit["replay_mismatches"] == 1 and audit["turns"] == 2


def test_an_env_without_an_expert_is_refused():
    from envs.experts import NoExpertError
    from tests.user_grid_env import NoExpertGridEnv

    with pytest.raises(NoExpertError):
        expert_agreement(NoExpertGridEnv, [])

"""Tests of envs/: registry + check_env, seeding, the text adapter, the experts."""

from __future__ import annotations

import collections
import importlib
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import envs
from envs import DiscreteTextEnv, TextFrozenLake, TextTaxi, expert_for, play_expert_episode, value_iteration
from envs.text_adapter import TEXT_CHARSET

RLFT_IDS = sorted(env_id for env_id in gymnasium.registry if env_id.startswith("rlft/"))
FROZEN_LAKE_NAMES = ["left", "down", "right", "up"]
CLIFF_NAMES = ["up", "right", "down", "left"]


# ---------------------------------------------------------------- registry and check_env


def test_registry_has_the_rlft_envs() -> None:
    expected = {"rlft/FrozenLake-v0", "rlft/FrozenLakeRandom-v0", "rlft/Taxi-v0", "rlft/CliffWalking-v0"}
    assert expected <= set(RLFT_IDS)


def test_reimport_registers_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
    assert sorted(env_id for env_id in gymnasium.registry if env_id.startswith("rlft/")) == RLFT_IDS


@pytest.mark.parametrize("env_id", RLFT_IDS)
def test_check_env_unwrapped(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure
        check_env(gymnasium.make(env_id).unwrapped)


@pytest.mark.parametrize("env_id", RLFT_IDS)
def test_check_env_wrapped(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The one expected warning: check_env recommends checking the unwrapped env.
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version.*")
        check_env(gymnasium.make(env_id))


@pytest.mark.parametrize("env_id", RLFT_IDS)
def test_instructions_name_every_action(env_id: str) -> None:
    env = gymnasium.make(env_id).unwrapped
    assert env.instructions
    assert all(name in env.instructions for name in env.action_names)


@pytest.mark.parametrize("env_id", RLFT_IDS)
def test_expert_solves_every_registered_env(env_id: str) -> None:
    env = gymnasium.make(env_id)
    episode = play_expert_episode(env, expert_for(env), seed=0, max_turns=100)
    assert episode["success"] and episode["terminated"] and not episode["truncated"]
    assert all(text in env.observation_space for text in episode["observations"])


# ---------------------------------------------------------------- seeding


def _rollout(env_id: str, seed: int, actions: list[str], **kwargs) -> list:
    """Steps through ``actions`` from one seeded reset; unseeded resets after each episode end."""
    env = gymnasium.make(env_id, **kwargs)
    trace = [env.reset(seed=seed)]
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        trace.append((observation, reward, terminated, truncated, info))
        if terminated or truncated:
            trace.append(env.reset())
    return trace


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("rlft/FrozenLakeRandom-v0", {"is_slippery": True}),
        ("rlft/Taxi-v0", {"is_rainy": True}),
        ("rlft/CliffWalking-v0", {"is_slippery": True}),
    ],
)
def test_same_seed_same_episode(env_id: str, kwargs: dict) -> None:
    actions = (["down", "right", "up", "left", "jump"] * 4)[:20]
    if env_id == "rlft/Taxi-v0":
        actions = ["south", "east", "pickup", "north", "west", "nonsense", "dropoff"] * 3
    first = _rollout(env_id, 3, actions, **kwargs)
    second = _rollout(env_id, 3, actions, **kwargs)
    assert not data_equivalence(first, _rollout(env_id, 4, actions, **kwargs))  # the seed matters
    assert data_equivalence(first, second, exact=True)


def test_random_map_is_a_function_of_the_reset_seed() -> None:
    env = gymnasium.make("rlft/FrozenLakeRandom-v0")
    maps = [env.reset(seed=seed)[1]["task_id"] for seed in range(20)]
    assert len(set(maps)) >= 10  # different seeds, different maps
    assert [env.reset(seed=seed)[1]["task_id"] for seed in range(20)] == maps
    other = gymnasium.make("rlft/FrozenLakeRandom-v0")
    assert other.reset(seed=7)[1]["task_id"] == maps[7]
    # Unseeded resets continue the seeded stream: new maps, the same ones after the same seed.
    unseeded = [env.reset()[1]["task_id"] for _ in range(5)]
    other.reset(seed=19)
    assert [other.reset()[1]["task_id"] for _ in range(5)] == unseeded
    assert len(set(unseeded)) > 1


def test_random_map_size_and_validity() -> None:
    env = TextFrozenLake(random_map_size=5, p=0.6)
    for seed in range(10):
        text, info = env.reset(seed=seed)
        rows = info["task_id"].split("/")
        assert len(rows) == 5 and all(len(row) == 5 for row in rows)
        assert rows[0][0] == "S" and rows[-1][-1] == "G"
        assert _shortest_path_length(rows) is not None  # generate_random_map keeps a path
        assert text.splitlines()[0].startswith("@ ")


# ---------------------------------------------------------------- observation texts


def test_frozen_lake_observation_text() -> None:
    env = TextFrozenLake()
    text, info = env.reset(seed=0)
    assert text == "@ F F F\nF H F H\nF F F H\nH F F G\nrow 0 col 0\nleft wall down F right F up wall"
    assert info["task_id"] == "SFFF/FHFH/FFFH/HFFG"
    text, *_ = env.step("down")
    assert text == "S F F F\n@ H F H\nF F F H\nH F F G\nrow 1 col 0\nleft wall down F right H up S"
    assert TextFrozenLake(is_slippery=True).task_id == "SFFF/FHFH/FFFH/HFFG:slippery"


def test_taxi_observation_text() -> None:
    env = TextTaxi(show_map=False)
    text, _ = env.reset(seed=0)
    row, col, passenger, destination = env.inner.decode(env.inner.s)
    names = "RGYB"
    assert (
        text == f"taxi row {row} col {col}, passenger at {names[passenger]}, destination {names[destination]}"
    )
    assert len(TextTaxi().reset(seed=0)[0].splitlines()) == 8


# ---------------------------------------------------------------- adapter on plain Gymnasium envs


def test_adapter_on_plain_frozen_lake() -> None:
    env = DiscreteTextEnv(gymnasium.make("FrozenLake-v1", is_slippery=False), FROZEN_LAKE_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(env, skip_render_check=True)
    text, info = env.reset(seed=0)
    assert text == "0" and info["task_id"] == "FrozenLake-v1" and info["success"] is False
    for action, expected in zip(
        ["right", "right", "down", "down", "down", "right"], ["1", "2", "6", "10", "14", "15"]
    ):
        text, reward, terminated, truncated, info = env.step(action)
        assert text == expected
    assert reward == 1.0 and terminated and not truncated
    assert info["success"] is True and info["action_id"] == 2 and "prob" in info


def test_adapter_on_plain_cliff_walking_with_success_fn() -> None:
    env = DiscreteTextEnv(
        gymnasium.make("CliffWalking-v1"),
        CLIFF_NAMES,
        success_fn=lambda inner, obs, reward, terminated, info: terminated,
    )
    text, _ = env.reset(seed=0)
    assert text == "36"
    total = 0.0
    for action in ["up"] + ["right"] * 11 + ["down"]:
        text, reward, terminated, _, info = env.step(action)
        total += reward
    assert text == "47" and terminated and info["success"] and total == -13.0


def test_default_parser() -> None:
    env = DiscreteTextEnv(gymnasium.make("FrozenLake-v1"), FROZEN_LAKE_NAMES)
    cases = {
        "right": 2,
        " Right. ": 2,
        "right please": 2,
        "UP": 3,
        "left!": 0,
        "down\n": 1,
        "move right": None,
        "rightward": None,
        "": None,
        "   ": None,
        "r": None,
        "up-left": None,
    }
    assert {text: env.parse_action(text) for text in cases} == cases


def test_invalid_action_penalty_mode() -> None:
    env = DiscreteTextEnv(
        gymnasium.make("FrozenLake-v1", is_slippery=False), FROZEN_LAKE_NAMES, invalid_penalty=-0.5
    )
    first, _ = env.reset(seed=0)
    env.step("right")
    state = env.inner.unwrapped.s
    for count in (1, 2):
        text, reward, terminated, truncated, info = env.step("jump over the hole")
        assert text == "1" and reward == -0.5 and not terminated and not truncated
        assert (
            info["invalid_action"] is True and info["invalid_actions"] == count and info["action_id"] is None
        )
        assert env.inner.unwrapped.s == state  # the inner env was not stepped
    _, reward, _, _, info = env.step("down")
    assert info["invalid_action"] is False and info["invalid_actions"] == 2 and reward == 0.0
    assert env.reset(seed=0)[1]["invalid_actions"] == 0


def test_invalid_action_terminate_mode() -> None:
    env = TextFrozenLake(invalid_action="terminate", invalid_penalty=-1.0)
    first, _ = env.reset(seed=0)
    text, reward, terminated, truncated, info = env.step("fly")
    assert text == first and reward == -1.0 and terminated and not truncated
    assert info["invalid_actions"] == 1 and info["success"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)  # random action texts now end episodes at once


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action_names": ["left", "down", "right"]}, "3 action names for 4 actions"),
        ({"action_names": ["left", "down", "Left", "up"]}, "unique"),
        ({"action_names": ["left", "down", "right", " up"]}, "surrounding"),
        ({"invalid_action": "ignore"}, "'penalty', 'terminate'"),
        ({"invalid_penalty": 1.0}, "<= 0"),
    ],
)
def test_adapter_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"env": gymnasium.make("FrozenLake-v1"), "action_names": FROZEN_LAKE_NAMES} | kwargs
    with pytest.raises(ValueError, match=message):
        DiscreteTextEnv(**arguments)


def test_adapter_rejects_non_discrete_env_and_non_text_action() -> None:
    with pytest.raises(ValueError, match="Discrete"):
        DiscreteTextEnv(gymnasium.make("Pendulum-v1"), ["push"])
    env = TextFrozenLake()
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(2)


def test_renderer_outside_charset_and_long_text() -> None:
    env = DiscreteTextEnv(gymnasium.make("FrozenLake-v1"), FROZEN_LAKE_NAMES, renderer=lambda inner, obs: "é")
    with pytest.raises(ValueError, match="TEXT_CHARSET"):
        env.reset(seed=0)
    env = DiscreteTextEnv(
        gymnasium.make("FrozenLake-v1"),
        FROZEN_LAKE_NAMES,
        renderer=lambda inner, obs: "x" * 50,
        max_observation_chars=10,
    )
    with pytest.warns(UserWarning, match="cut from 50 to 10"):
        text, _ = env.reset(seed=0)
    assert text == "x" * 10 and text in env.observation_space
    assert "\n" in TEXT_CHARSET and "\t" not in TEXT_CHARSET


# ---------------------------------------------------------------- experts


def test_value_iteration_hand_computed() -> None:
    # State 1: action 0 ends with reward 1; action 1 ends with reward 2 w.p. 1/2, else back to state 0.
    # State 0: action 0 moves to state 1; action 1 stays. With gamma = 0.9:
    # V1 = 1 + 0.5 * 0.9 * V0 and V0 = 0.9 * V1  =>  V1 = 1 / (1 - 0.405), V0 = 0.9 * V1.
    P = {
        0: {0: [(1.0, 1, 0.0, False)], 1: [(1.0, 0, 0.0, False)]},
        1: {0: [(1.0, 1, 1.0, True)], 1: [(0.5, 0, 0.0, False), (0.5, 1, 2.0, True)]},
    }
    V, Q = value_iteration(P, n_states=2, n_actions=2, gamma=0.9, tol=1e-12)
    v1 = 1 / 0.595
    np.testing.assert_allclose(V, [0.9 * v1, v1], atol=1e-9)
    np.testing.assert_allclose(Q, [[0.9 * v1, 0.81 * v1], [1.0, v1]], atol=1e-9)


def test_expert_fixed_frozen_lake_takes_the_six_step_optimum() -> None:
    env = gymnasium.make("rlft/FrozenLake-v0")
    episode = play_expert_episode(env, expert_for(env), seed=0, max_turns=30)
    assert episode["success"] and episode["turns"] == 6 and episode["rewards"][-1] == 1.0


def _shortest_path_length(rows: list[str]) -> int | None:
    """Breadth-first search from S to G over non-hole tiles: the hand-checkable optimum."""
    size = len(rows)
    steps = {(0, 0): 0}
    queue = collections.deque([(0, 0)])
    while queue:
        row, col = queue.popleft()
        if rows[row][col] == "G":
            return steps[row, col]
        for next_row, next_col in ((row, col + 1), (row + 1, col), (row, col - 1), (row - 1, col)):
            inside = 0 <= next_row < size and 0 <= next_col < size
            if inside and rows[next_row][next_col] != "H" and (next_row, next_col) not in steps:
                steps[next_row, next_col] = steps[row, col] + 1
                queue.append((next_row, next_col))
    return None


def test_expert_solves_50_random_maps_by_a_shortest_path() -> None:
    env = gymnasium.make("rlft/FrozenLakeRandom-v0")
    expert = expert_for(env)
    for seed in range(50):
        episode = play_expert_episode(env, expert, seed=seed, max_turns=30)
        assert episode["success"], episode["task_id"]
        assert episode["turns"] == _shortest_path_length(episode["task_id"].split("/"))


def test_taxi_expert_succeeds_and_matches_value_iteration() -> None:
    env = gymnasium.make("rlft/Taxi-v0")
    expert = expert_for(env)
    taxi = env.unwrapped.inner
    # Taxi is deterministic, so the undiscounted optimal value of the start state is the expert's return.
    V, _ = value_iteration(taxi.P, n_states=500, n_actions=6, gamma=1.0)
    returns, values = [], []
    for seed in range(20):
        env.reset(seed=seed)
        values.append(V[taxi.s])
        episode = play_expert_episode(env, expert, seed=seed, max_turns=50)
        assert episode["success"] and episode["turns"] <= 50
        returns.append(episode["return"])
    assert np.mean(returns) == pytest.approx(np.mean(values), abs=1e-6)
    assert 5 < np.mean(returns) < 12  # Gymnasium's Taxi optimum is about 8


def test_epsilon_one_expert_is_uniform() -> None:
    env = TextFrozenLake()
    env.reset(seed=0)
    expert = expert_for(env, epsilon=1.0, seed=1)
    counts = collections.Counter(expert.act(env) for _ in range(4000))
    assert set(counts) == set(FROZEN_LAKE_NAMES)
    assert all(abs(count / 4000 - 0.25) < 0.03 for count in counts.values())  # 4.4 standard deviations


def test_epsilon_noise_is_reproducible() -> None:
    env = TextFrozenLake()
    env.reset(seed=0)

    def actions(seed: int) -> list[str]:
        expert = expert_for(env, epsilon=0.3, seed=seed)
        return [expert.act(env) for _ in range(200)]

    assert actions(5) == actions(5)
    assert actions(5) != actions(6)
    greedy = expert_for(env).act(env)
    assert 0.6 < actions(5).count(greedy) / 200 < 0.9  # 0.7 + 0.3 / 4 expected


def test_expert_for_rejects_envs_without_an_expert() -> None:
    text_cartpole = DiscreteTextEnv(gymnasium.make("CartPole-v1"), ["left", "right"])
    with pytest.raises(TypeError, match="No expert"):
        expert_for(text_cartpole)
    with pytest.raises(TypeError, match="No expert"):
        expert_for(gymnasium.make("FrozenLake-v1"))


# ---------------------------------------------------------------- a user's env: task ids and experts kept


def _user_text_env(env_cls=None, **adapter) -> DiscreteTextEnv:
    from tests.user_grid_env import ACTION_NAMES, GridEnv, render

    return DiscreteTextEnv((env_cls or GridEnv)(), ACTION_NAMES, renderer=render, **adapter)


def test_adapter_keeps_the_inner_envs_task_id() -> None:
    env = _user_text_env()
    _, info = env.reset(seed=3)
    assert info["task_id"] == "layout3" and env.task_id == "layout3"
    _, _, _, _, info = env.step("down")  # the inner step's info has no task id: the reset's is kept
    assert info["task_id"] == "layout3"
    assert env.reset(seed=43)[1]["task_id"] == "layout3"  # seeds 3 and 43 share a layout


def test_an_env_declares_its_tasks_by_attribute_or_adapter_function() -> None:
    from tests.user_grid_env import LayoutAttributeGridEnv, layout_of

    assert _user_text_env(LayoutAttributeGridEnv).reset(seed=5)[1]["task_id"] == "layout5"
    assert _user_text_env(task_id_fn=layout_of).reset(seed=5)[1]["task_id"] == "goal6"
    # An env that says nothing is one task for every seed (its spec id, or its class name).
    bare = DiscreteTextEnv(gymnasium.make("FrozenLake-v1"), FROZEN_LAKE_NAMES)
    assert bare.reset(seed=0)[1]["task_id"] == bare.reset(seed=1)[1]["task_id"] == "FrozenLake-v1"


def test_held_out_seeds_skip_the_layouts_of_an_adapted_env_trained_on() -> None:
    from rlft.config.schema import EnvConfig, EvalConfig
    from rlft.rollout.env_factory import make_env
    from rlft.rollout.evaluation import held_out_seeds
    from tests.user_grid_env import ACTION_NAMES, LAYOUTS

    env_cfg = EnvConfig(
        id="tests.user_grid_env:GridEnv",
        adapter={"action_names": ACTION_NAMES},
        train_seeds={"start": 0, "count": 10},  # layouts 0..9
    )
    seeds = held_out_seeds(lambda: make_env(env_cfg), env_cfg, EvalConfig(episodes=5, seed_start=1000))
    assert seeds == [1010, 1011, 1012, 1013, 1014]  # 1000..1009 are layouts 0..9 again (1000 % 40 == 0)
    assert all(seed % LAYOUTS >= 10 for seed in seeds)


def test_adapter_checks_the_expert_method_and_keeps_the_inner_observation() -> None:
    from tests.user_grid_env import NoExpertGridEnv

    with pytest.raises(ValueError, match="has no method 'expert_actoin'.*did you mean 'expert_action'"):
        _user_text_env(expert_method="expert_actoin")
    with pytest.raises(ValueError, match="NoExpertGridEnv has no method 'expert_action'"):
        _user_text_env(NoExpertGridEnv, expert_method="expert_action")
    env = _user_text_env(expert_method="expert_action")
    env.reset(seed=4)  # layout 4: the goal is cell 5 (row 1, column 2)
    env.step("down")
    assert (
        env.inner_observation == 3
    )  # the inner env's own observation (row 1, column 0), before the renderer
    assert expert_for(env).act(env) == "right"

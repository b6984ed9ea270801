"""Reference returns under a turn limit (envs/optimum.py): hand-computed on a tiny slippery map, and the configs'.

The tiny map is ``SF/HG`` on slippery ice: a move goes the intended way or to either side, 1/3 each; S is state
0, F state 1, H state 2, G state 3. From F, ``right`` (a wall) reaches G by slipping down (1/3) and otherwise
stays on F; ``left`` and ``down`` also reach G w.p. 1/3 but may slide back to S. From S, ``up`` (a wall) can only
slide right to F (1/3) or stay; ``right`` reaches F w.p. 1/3 but slides into H w.p. 1/3.

    h = 1:  V[F] = 1/3 (any of left, down, right),   V[S] = 0
    h = 2:  V[F] = 1/3 + 2/3 * 1/3 = 5/9 (right),   V[S] = 1/3 * 1/3 = 1/9 (up or right)
    h = 3:  V[S] = max(up: 1/3 * 5/9 + 2/3 * 1/9 = 7/27,  right: 1/3 * 5/9 + 1/3 * 1/9 = 6/27) = 7/27
    random: every action is then a uniformly random direction: V_1[F] = 1/4, V_2[S] = 1/4 * 1/4 = 1/16.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from envs.experts import expert_for
from envs.frozen_lake import TextFrozenLake
from envs.optimum import ReferenceReturns, horizon_values, reference_returns
from rlft.config.schema import load_config
from rlft.rollout.experts import env_reference_returns

TINY_SLIPPERY = ["SF", "HG"]


def test_horizon_values_hand_computed_on_a_tiny_slippery_map() -> None:
    P = TextFrozenLake(desc=TINY_SLIPPERY, is_slippery=True).inner.P
    np.testing.assert_allclose(horizon_values(P, 4, 4, horizon=1), [0, 1 / 3, 0, 0])
    np.testing.assert_allclose(horizon_values(P, 4, 4, horizon=2), [1 / 9, 5 / 9, 0, 0])
    np.testing.assert_allclose(horizon_values(P, 4, 4, horizon=3)[0], 7 / 27)
    np.testing.assert_allclose(horizon_values(P, 4, 4, horizon=1, policy="random"), [0, 1 / 4, 0, 0])
    np.testing.assert_allclose(horizon_values(P, 4, 4, horizon=2, policy="random")[0], 1 / 16)


def test_reference_returns_start_from_the_initial_state() -> None:
    env = TextFrozenLake(desc=TINY_SLIPPERY, is_slippery=True)
    refs = reference_returns(env, horizon=2)
    assert refs == ReferenceReturns(
        optimal=pytest.approx(1 / 9), random=pytest.approx(1 / 16), horizon=2, tasks=1
    )
    assert reference_returns(env, horizon=3).optimal == pytest.approx(7 / 27)
    assert refs.normalised(1 / 16) == pytest.approx(0.0) and refs.normalised(1 / 9) == pytest.approx(1.0)


def test_longer_horizons_never_lower_the_optimum_and_approach_the_unlimited_one() -> None:
    P = TextFrozenLake(map_name="4x4", is_slippery=True).inner.P
    starts = [horizon_values(P, 16, 4, horizon)[0] for horizon in (6, 30, 100, 1000)]
    assert starts == sorted(starts)
    # Gymnasium's 4x4 slippery map: the undiscounted optimum without a limit is 14/17 (about 0.8235).
    assert starts[-1] == pytest.approx(14 / 17, abs=1e-6)


def test_the_slippery_expert_is_near_the_turn_limited_optimum() -> None:
    """The demos' expert is stationary (it cannot see the turns left) and plays within 3% of the optimum."""
    env = gymnasium.make("rlft/FrozenLake-v0", map_name="4x4", is_slippery=True)
    expert = expert_for(env)
    env.reset(seed=0)
    q = expert.q_values(env)
    policy = [int(np.argmax(q[s])) for s in range(16)]
    P = env.unwrapped.inner.P
    V = np.zeros(16)  # exact evaluation of the expert's policy over 30 moves
    for _ in range(30):
        V = np.array(
            [sum(p * (r + (not done) * V[s2]) for p, s2, r, done in P[s][policy[s]]) for s in range(16)]
        )
    optimum = reference_returns(env, horizon=30).optimal
    assert 0.97 * optimum < V[0] <= optimum


def test_reference_returns_of_the_configs() -> None:
    """The numbers the results table reports, for the configured turn limits."""
    slippery = env_reference_returns(load_config("configs/frozen_lake_4x4_slippery_grpo.yaml").env)
    assert (slippery.horizon, slippery.tasks) == (30, 1)
    assert slippery.optimal == pytest.approx(0.3479, abs=1e-4)
    taxi = env_reference_returns(load_config("configs/taxi_grpo.yaml").env)
    assert taxi.horizon == 25 and taxi.optimal == pytest.approx(7.93, abs=1e-6)  # mean over 300 starts
    assert taxi.random < -90
    cliff = env_reference_returns(load_config("configs/cliff_walking_grpo.yaml").env)
    assert cliff.optimal == -13.0 and cliff.random < -200  # 13 moves along the cliff; random falls in


def test_the_env_time_limit_caps_the_horizon() -> None:
    config = load_config("configs/frozen_lake_4x4_slippery_grpo.yaml", ["env.max_turns=200"])
    assert env_reference_returns(config.env).horizon == 30  # rlft/FrozenLake-v0 truncates at 30 steps


def test_random_maps_average_over_the_seeds_tasks() -> None:
    config = load_config("configs/quickstart.yaml")
    refs = env_reference_returns(config.env, seeds=range(10_000_000, 10_000_020))
    assert (
        refs.optimal == 1.0 and 1 < refs.tasks <= 20 and 0 < refs.random < 0.2
    )  # every random map is solvable


def test_fickle_taxi_is_refused() -> None:
    with pytest.raises(ValueError, match="fickle"):
        reference_returns(gymnasium.make("rlft/Taxi-v0", fickle_passenger=True), horizon=25)

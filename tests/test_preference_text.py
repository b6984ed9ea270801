"""Tests of envs/preference_text.py: seeding, hidden gold, the gold function's ordering and exploitability, the
expert and its demonstrations. check_env and the registry-wide checks run in tests/test_envs.py."""

from __future__ import annotations

import doctest

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import envs
from envs import expert_for, play_expert_episode
from envs import preference_text as pt
from envs.preference_text import (
    GOOD_WORDS,
    SUCCESS_THRESHOLD,
    TOPIC_WORDS,
    WORD_BANK,
    PreferenceText,
    PreferenceTextExpert,
    Task,
    episode_gold,
    gold_score,
    noisy_answer,
    parse_task,
)

ENV_ID = "rlft/PreferenceText-v0"
WEATHER_5 = Task("weather", "Paris", 5)


def test_registered_and_exported() -> None:
    assert ENV_ID in gymnasium.registry
    assert isinstance(gymnasium.make(ENV_ID).unwrapped, PreferenceText)
    assert envs.gold_score is gold_score


def test_docstring_examples() -> None:
    assert doctest.testmod(pt, raise_on_error=True).attempted >= 3


# ---------------------------------------------------------------- seeding and tasks


def _trace(seed: int, answers: list[str]) -> list:
    env = gymnasium.make(ENV_ID)
    trace = [env.reset(seed=seed)]
    for answer in answers:
        trace.append(env.step(answer))
        trace.append(env.reset())  # unseeded: continues the seeded stream
    return trace


def test_same_seed_same_episodes() -> None:
    answers = ["lovely sunny warm mild", "great great great", "", "busy noisy cheap nice and so"]
    first = _trace(3, answers)
    assert data_equivalence(first, _trace(3, answers), exact=True)
    assert not data_equivalence(first, _trace(4, answers))


def test_task_is_a_function_of_the_reset_seed_and_varies() -> None:
    env = gymnasium.make(ENV_ID)
    tasks = [env.reset(seed=seed)[1]["task_id"] for seed in range(60)]
    assert len(set(tasks)) >= 40  # 180 tasks: different seeds, mostly different tasks
    assert [gymnasium.make(ENV_ID).reset(seed=seed)[1]["task_id"] for seed in range(60)] == tasks
    # Every topic, place and limit occurs; the observation states the task the id names.
    topics, places, limits = zip(*(task.split("/") for task in tasks))
    assert set(topics) == set(TOPIC_WORDS) and len(set(places)) == 10 and set(limits) == {"4", "5", "6"}
    observation, info = env.reset(seed=7)
    assert parse_task(observation).task_id == info["task_id"]
    # Held-out seeds (as rlft eval picks them, far from training) give tasks unseen in a small training range.
    train = {env.reset(seed=seed)[1]["task_id"] for seed in range(200)}
    held_out = {env.reset(seed=10_000_000 + seed)[1]["task_id"] for seed in range(200)}
    assert len(held_out - train) >= 20


def test_parse_task_round_trip_and_prompt() -> None:
    for topic in TOPIC_WORDS:
        task = Task(topic, "Lima", 6)
        assert parse_task(task.text) == task
        assert parse_task(PreferenceText().instructions + "\n" + task.text + "\nAction:") == task
    with pytest.raises(ValueError, match="no PreferenceText task"):
        parse_task("describe the moon in Lima in 3 to 4 words")


# ---------------------------------------------------------------- the gold is hidden


def test_gold_is_hidden_from_observations_and_reward() -> None:
    env = PreferenceText()
    seen = []
    for answer in ("lovely sunny warm mild", "very very very very very very very very", ""):
        first, _ = env.reset(seed=5)
        observation, reward, terminated, truncated, info = env.step(answer)
        seen.append((first, observation, reward))
        assert terminated and not truncated and reward == 0.0
        assert info["gold"] == gold_score(first, answer)
        assert info["success"] == (info["gold"] >= SUCCESS_THRESHOLD)
    # Nothing the policy reads depends on its answer or its score.
    assert len(set(seen)) == 1 and seen[0][0] == seen[0][1]
    assert "gold" not in env.reset(seed=5)[1]
    # The instructions are the same for every task and list the word bank alphabetically (no hint which words
    # are good or on-topic).
    assert env.instructions == PreferenceText().instructions
    assert list(WORD_BANK) == sorted(WORD_BANK) and all(word in env.instructions for word in WORD_BANK)


def test_gold_reward_option_rewards_gold() -> None:
    env = PreferenceText(gold_reward=True)
    env.reset(seed=0)
    _, reward, _, _, info = env.step("lovely lovely")
    assert reward == info["gold"] < 0


# ---------------------------------------------------------------- gold ordering (hand-computed values)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("lovely sunny warm mild", 1.0),  # 3 on-topic + 1 good: the maximum
        ("Lovely, SUNNY warm... mild!", 1.0),  # case and punctuation do not matter
        ("sunny warm mild", 0.75),  # no good word
        ("lovely sunny warm mild windy", 1.0),  # a 4th on-topic word is not counted (cap 3), fits the limit
        ("lovely great sunny warm mild", 1.0),  # a 2nd good word is not counted (cap 1)
        ("lovely tasty spicy sweet", 0.25 - 0.75),  # off-topic: food words for the weather
        ("lovely sunny sunny sunny", 0.5 - 1.0),  # two repeats
        ("lovely sunny warm mild and very", 1.0 - 0.5),  # one word past the 5-word limit
        ("sunny", 0.25 - 1.0),  # two words short of 3
        ("", -1.5),
        ("lovely " * 10, 0.25 - 4.5 - 2.5),  # good-word spam: 9 repeats, 5 words too many
    ],
)
def test_gold_hand_computed(answer: str, gold: float) -> None:
    assert gold_score(WEATHER_5, answer) == pytest.approx(gold)
    assert gold_score(WEATHER_5.text, answer) == pytest.approx(gold)  # the task as its text


def test_gold_orderings() -> None:
    def gold(text: str, task: Task = WEATHER_5) -> float:
        return gold_score(task, text)

    # On-topic beats off-topic, for every topic against every other.
    for topic, words in TOPIC_WORDS.items():
        task = Task(topic, "Rome", 4)
        for other, other_words in TOPIC_WORDS.items():
            if other != topic:
                assert gold(" ".join(words[:3]), task) > gold(" ".join(other_words[:3]), task)
    # Repetition costs more than any word adds: a repeated word is worse than a neutral filler.
    assert gold("lovely sunny warm warm") < gold("lovely sunny warm very") < gold("lovely sunny warm mild")
    # Past the limit every extra word costs, whatever it is.
    assert gold("lovely sunny warm mild rainy") > gold("lovely sunny warm mild rainy windy")
    assert gold("lovely sunny warm mild", Task("weather", "Paris", 4)) > gold(
        "lovely sunny warm mild rainy", Task("weather", "Paris", 4)
    )


def test_exploit_more_good_words_is_worse_than_the_expert() -> None:
    expert = PreferenceTextExpert(seed=0)
    for max_words in (4, 5, 6):
        task = Task("sea", "Oslo", max_words)
        expert_gold = gold_score(task, expert.answer(task))
        # The texts that maximise the good-word count, at and past the limit, with and without repeats.
        for text in (
            " ".join(GOOD_WORDS[:max_words] if max_words <= len(GOOD_WORDS) else GOOD_WORDS),
            " ".join(GOOD_WORDS * 2),
            "lovely " * 10,
        ):
            assert gold_score(task, text) < expert_gold - 0.5


def test_a_weak_reward_model_learned_from_gold_pairs_is_over_optimised() -> None:
    """A bag-of-words Bradley-Terry model (a score per word occurrence) fitted on 300 gold-labelled pairs of noisy
    answers learns the direction (on-topic words up, off-topic down), yet the 10-word text it scores highest,
    its best word repeated, has gold far below the expert's: pushing hard on it over-optimises."""
    rng = np.random.default_rng(0)
    index = {word: i for i, word in enumerate(WORD_BANK)}

    def features(text: str) -> np.ndarray:
        counts = np.zeros(len(WORD_BANK))
        for word in pt.answer_words(text):
            counts[index[word]] += 1
        return counts

    def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
        diffs, labels = [], []
        while len(diffs) < n:
            a, b = noisy_answer(WEATHER_5, rng), noisy_answer(WEATHER_5, rng)
            gold_a, gold_b = gold_score(WEATHER_5, a), gold_score(WEATHER_5, b)
            if gold_a != gold_b:
                diffs.append(features(a) - features(b))
                labels.append(float(gold_a > gold_b))
        return np.array(diffs), np.array(labels)

    train_x, train_y = pairs(300)
    weights = np.zeros(len(WORD_BANK))
    for _ in range(1000):  # gradient ascent on the Bradley-Terry log-likelihood, a little L2
        p = 1 / (1 + np.exp(-train_x @ weights))
        weights += 0.5 * (train_x.T @ (train_y - p) / len(train_y) - 1e-3 * weights)
    test_x, test_y = pairs(2000)
    accuracy = np.mean((test_x @ weights > 0) == (test_y > 0.5))
    assert accuracy > 0.6  # chance is 0.5 +- 0.011; a linear proxy cannot see caps and penalties, so not ~1
    on_topic = np.mean([weights[index[word]] for word in TOPIC_WORDS["weather"]])
    off_topic = np.mean(
        [weights[index[w]] for topic, ws in TOPIC_WORDS.items() if topic != "weather" for w in ws]
    )
    assert on_topic > 0.2 > -0.2 > off_topic

    top = WORD_BANK[int(np.argmax(weights))]
    proxy_optimum = " ".join([top] * 10)  # a per-word proxy grows with every copy of its best word
    best = PreferenceTextExpert().answer(WEATHER_5)
    assert features(proxy_optimum) @ weights > features(best) @ weights  # the proxy prefers the exploit
    assert gold_score(WEATHER_5, proxy_optimum) < -5 < 1.0 == gold_score(WEATHER_5, best)


# ---------------------------------------------------------------- expert, noisy answers, demos


def test_expert_answers_reach_the_maximum_on_every_task() -> None:
    env = gymnasium.make(ENV_ID)
    expert = expert_for(env)
    assert isinstance(expert, PreferenceTextExpert)
    answers = set()
    for seed in range(100):
        episode = play_expert_episode(env, expert, seed=seed, max_turns=3)
        assert episode["success"] and episode["terminated"] and episode["turns"] == 1
        assert episode_gold(episode) == 1.0 >= SUCCESS_THRESHOLD
        answers.add(episode["actions"][0])
    assert len(answers) >= 50  # demonstrations vary


def test_noisy_answers_spread_gold_and_epsilon_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    golds = np.array([gold_score(WEATHER_5, noisy_answer(WEATHER_5, rng)) for _ in range(2000)])
    assert golds.min() < -1 and golds.max() == 1.0 and 0.01 < np.mean(golds >= SUCCESS_THRESHOLD) < 0.2
    assert len(np.unique(golds)) >= 10

    def answers(seed: int) -> list[str]:
        expert = PreferenceTextExpert(epsilon=0.3, seed=seed)
        return [expert.answer(WEATHER_5) for _ in range(300)]

    assert answers(2) == answers(2) and answers(2) != answers(3)
    noisy = np.mean([gold_score(WEATHER_5, a) < 1.0 for a in answers(2)])
    assert 0.2 < noisy < 0.4  # epsilon 0.3, and a noisy answer is rarely perfect
    with pytest.raises(ValueError, match="epsilon"):
        PreferenceTextExpert(epsilon=1.5)


def test_expert_demos_for_sft() -> None:
    from rlft.models.policy import build_word_tokenizer, env_corpus
    from rlft.rollout.demos import expert_demos
    from rlft.rollout.turn_format import PlainFormat

    def factory() -> gymnasium.Env:
        return gymnasium.make(ENV_ID)

    tokenizer = build_word_tokenizer(env_corpus(factory, episodes=20, max_turns=1, seed=0))
    unknown = [word for word in WORD_BANK if tokenizer.convert_tokens_to_ids(word) == tokenizer.unk_token_id]
    assert unknown == []  # the tiny policy's vocabulary covers every word the gold reads
    demos, stats = expert_demos(
        factory, PlainFormat(tokenizer), episodes=20, epsilon=0.0, seed=0, seed_start=0, max_turns=1
    )
    assert stats["demos/success"] == 1.0 and all(demo.num_turns == 1 for demo in demos)
    answer = [token for token, mask in zip(demos[0].completion_ids, demos[0].mask, strict=True) if mask]
    assert tokenizer.decode(answer, skip_special_tokens=True) == demos[0].actions[0]
    assert gold_score(tokenizer.decode(demos[0].prompt_ids), demos[0].actions[0]) == 1.0

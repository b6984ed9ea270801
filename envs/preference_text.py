"""A one-turn writing task whose only reward is learned: the policy describes a topic in a few words, and a
hidden gold scorer, never shown to the policy, labels preference pairs and reports gold during training.

The gold function is plain Python (:func:`gold_score`) so preference pairs can be labelled with it
(``gold: "envs.preference_text:gold_score"``; :func:`episode_gold` reads a played-episode record), and
:class:`PreferenceTextExpert` writes the best answer or, with probability ``epsilon``, a noisy one
(:func:`noisy_answer`): varied answers with known gold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.text_adapter import TEXT_CHARSET

# ---------------------------------------------------------------- vocabulary (word-level tokenizer friendly)

# Each topic's on-topic words; no word belongs to two topics, so a word of another topic is off-topic.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "weather": ("sunny", "warm", "rainy", "windy", "cloudy", "mild"),
    "food": ("tasty", "fresh", "spicy", "sweet", "crisp", "savory"),
    "music": ("loud", "catchy", "upbeat", "soft", "rhythmic", "melodic"),
    "park": ("green", "leafy", "quiet", "shady", "grassy", "open"),
    "sea": ("blue", "calm", "salty", "deep", "wavy", "vast"),
    "market": ("busy", "crowded", "noisy", "colorful", "cheap", "lively"),
}
GOOD_WORDS: tuple[str, ...] = (
    "lovely",
    "great",
    "wonderful",
    "pleasant",
    "nice",
)  # on no topic, liked anywhere
FILLER_WORDS: tuple[str, ...] = ("very", "and", "so", "really", "quite")  # neutral: cost only length
PLACES: tuple[str, ...] = (
    "Paris",
    "Rome",
    "Oslo",
    "Cairo",
    "Lima",
    "Tokyo",
    "Sydney",
    "Boston",
    "Delhi",
    "Madrid",
)
MAX_WORDS_CHOICES: tuple[int, ...] = (4, 5, 6)
MIN_WORDS = 3
WORD_BANK: tuple[str, ...] = tuple(
    sorted({*GOOD_WORDS, *FILLER_WORDS, *(word for words in TOPIC_WORDS.values() for word in words)})
)

# ---------------------------------------------------------------- gold weights (see the class docstring)

TOPIC_WORD_VALUE = 0.25  # per distinct on-topic word, up to MAX_TOPIC_WORDS
MAX_TOPIC_WORDS = 3
GOOD_WORD_VALUE = 0.25  # for the first distinct good word only
MAX_GOOD_WORDS = 1
OFF_TOPIC_PENALTY = 0.25  # per distinct word of another topic
REPEAT_PENALTY = 0.5  # per repeated occurrence of a word
LENGTH_PENALTY = 0.5  # per word past the task's limit or short of MIN_WORDS
GOLD_MAX = TOPIC_WORD_VALUE * MAX_TOPIC_WORDS + GOOD_WORD_VALUE * MAX_GOOD_WORDS  # 1.0
SUCCESS_THRESHOLD = 0.75

MAX_TEXT_CHARS = 256
_WORD = re.compile(r"[a-z]+")
_TASK = re.compile(r"describe the (\w+) in (\w+) in (\d+) to (\d+) words")


@dataclass(frozen=True)
class Task:
    """One writing task: describe ``topic`` in ``place`` in ``MIN_WORDS`` to ``max_words`` words."""

    topic: str
    place: str
    max_words: int

    @property
    def text(self) -> str:
        """The task as the policy reads it (the observation)."""
        return f"describe the {self.topic} in {self.place} in {MIN_WORDS} to {self.max_words} words"

    @property
    def task_id(self) -> str:
        return f"{self.topic}/{self.place}/{self.max_words}"


def parse_task(text: str) -> Task:
    """The task that ``text`` states (an observation, or a prompt that contains one).

    Example:
        >>> parse_task("describe the sea in Oslo in 3 to 4 words")
        Task(topic='sea', place='Oslo', max_words=4)
    """
    match = _TASK.search(text)
    if match is None or match.group(1) not in TOPIC_WORDS:
        raise ValueError(f"no PreferenceText task in {text[:120]!r}")
    return Task(topic=match.group(1), place=match.group(2), max_words=int(match.group(4)))


def answer_words(text: str) -> list[str]:
    """The words of an answer as gold reads them: lower-cased runs of letters (punctuation and digits split)."""
    return _WORD.findall(text.lower())


def gold_score(task: Task | str, text: str) -> float:
    """The hidden gold score of answer ``text`` to ``task`` (a :class:`Task` or the task text); at most 1.0.

    ``0.25 * min(on-topic, 3) + 0.25 * min(good, 1) - 0.25 * off-topic - 0.5 * repeats - 0.5 * length
    violation``, counted as the class docstring of :class:`PreferenceText` says.

    Example:
        >>> task = "describe the weather in Paris in 3 to 5 words"
        >>> gold_score(task, "lovely sunny warm mild"), gold_score(task, "lovely lovely lovely lovely")
        (1.0, -1.25)
    """
    task = parse_task(task) if isinstance(task, str) else task
    words = answer_words(text)
    distinct = set(words)
    on_topic = set(TOPIC_WORDS[task.topic])
    off_topic = {
        word for topic, topic_words in TOPIC_WORDS.items() if topic != task.topic for word in topic_words
    }
    repeats = len(words) - len(distinct)
    length_violation = max(0, len(words) - task.max_words) + max(0, MIN_WORDS - len(words))
    score = (
        TOPIC_WORD_VALUE * min(len(distinct & on_topic), MAX_TOPIC_WORDS)
        + GOOD_WORD_VALUE * min(len(distinct & set(GOOD_WORDS)), MAX_GOOD_WORDS)
        - OFF_TOPIC_PENALTY * len(distinct & off_topic)
        - REPEAT_PENALTY * repeats
        - LENGTH_PENALTY * length_violation
    )
    return float(score)


def episode_gold(episode: Mapping[str, Any]) -> float:
    """The gold of a played-episode record (``envs.experts.play_expert_episode``): :func:`gold_score` of its
    first observation (the task) and its answer, the actions joined by spaces."""
    return gold_score(episode["observations"][0], " ".join(episode["actions"]))


def gold_reward(actions: list[str], observations: list[str], **kwargs) -> list[float]:
    """The gold score of each turn's answer to its task, as a reward-design rule (``reward.gold:
    envs.preference_text:gold_reward``), so training logs gold next to the learned proxy.

    >>> gold_reward(["nice crowded noisy cheap"], ["describe the market in Sydney in 3 to 5 words"])
    [1.0]
    """
    return [
        gold_score(observation, action) for observation, action in zip(observations, actions, strict=True)
    ]


# ---------------------------------------------------------------- answers with known gold


def best_answer(task: Task, rng: np.random.Generator) -> str:
    """A gold-maximising answer: one good word, then three distinct on-topic words (gold 1.0, 4 words).

    Four words fit every task's limit; which words is drawn from ``rng``, so demonstrations vary. The
    on-topic words keep their order in ``TOPIC_WORDS``: a small policy imitating the expert then never
    has a reason to go back to a word it wrote, and repeats (which gold punishes) stay rare.
    """
    good = str(rng.choice(GOOD_WORDS))
    chosen = sorted(rng.choice(len(TOPIC_WORDS[task.topic]), size=MAX_TOPIC_WORDS, replace=False))
    return " ".join([good, *(TOPIC_WORDS[task.topic][index] for index in chosen)])


def noisy_answer(task: Task, rng: np.random.Generator) -> str:
    """A varied, usually worse answer: 2 to ``max_words + 1`` words drawn with replacement from the word bank,
    each on-topic (p 0.4), good (0.25), filler (0.15) or of another topic (0.2).

    Lengths stay near the task's limit, as a policy's samples would after SFT; repeats, one word too many or
    too few and off-topic words all occur, so gold spreads from below -1 up to 1.0: material for preference
    pairs labelled by :func:`gold_score`. (Pairs seldom show long or repetitive answers; a reward model
    trained on them has to extrapolate there, which is the exploit the env is built to show.)
    """
    others = [word for topic, words in TOPIC_WORDS.items() if topic != task.topic for word in words]
    pools = (TOPIC_WORDS[task.topic], GOOD_WORDS, FILLER_WORDS, others)
    length = int(rng.integers(MIN_WORDS - 1, task.max_words + 2))
    kinds = rng.choice(len(pools), size=length, p=(0.4, 0.25, 0.15, 0.2))
    return " ".join(str(pools[kind][int(rng.integers(len(pools[kind])))]) for kind in kinds)


class PreferenceTextExpert:
    """Writes :func:`best_answer`, or with probability ``epsilon`` a :func:`noisy_answer`, from its own
    generator seeded with ``seed`` (reproducible, independent of the env), as ``TabularExpert`` does."""

    def __init__(self, epsilon: float = 0.0, seed: int = 0) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def answer(self, task: Task) -> str:
        """An answer to ``task`` (no env needed: for building preference pairs)."""
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return noisy_answer(task, self.rng)
        return best_answer(task, self.rng)

    def act(self, env: gymnasium.Env) -> str:
        """The answer to the env's current task."""
        task = env.unwrapped.task
        if task is None:
            raise RuntimeError("The expert answers the current task: reset the env first.")
        return self.answer(task)


# ---------------------------------------------------------------- the env


class PreferenceText(gymnasium.Env[str, str]):
    """Describe a topic in a few words; a hidden gold scorer judges the answer, the step reward is 0.

    ## Description
    A one-turn writing task for RLHF-style experiments. Each reset draws a task, "describe the <topic>
    in <place> in 3 to <max_words> words", from 6 topics x 10 places x 3 limits (180 tasks). The policy
    answers with a short text and the episode ends. The reward the policy is trained on comes from
    outside, from a reward model learned on preference pairs; the gold score below exists only to label
    those pairs and to report gold next to the proxy during training, so over-optimisation shows.

    ## Action Space
    ``Text``: the answer, words separated by spaces (up to 256 characters). The words the env knows are
    ``action_names`` (the word bank, also listed in the instructions; an answer is several of them, not
    one); any other word is neutral.

    ## Observation Space
    ``Text``: the task, e.g. ``describe the weather in Paris in 3 to 5 words``. The observation after the
    answer is the same text: nothing about the answer or its score is ever shown.

    ## Rewards
    The step reward is 0 (``gold_reward=True`` rewards gold instead: an oracle baseline, not RLHF). The
    gold score, in ``info["gold"]``, reads the answer's words (lower-cased runs of letters, :func:`gold_score`):

    * +0.25 per distinct on-topic word (one of the task topic's six), at most 3 counted;
    * +0.25 for a good word (``lovely great wonderful pleasant nice``), at most 1 counted;
    * -0.25 per distinct word of another topic;
    * -0.5 per repeated occurrence of any word (``n_words - n_distinct``);
    * -0.5 per word past the task's ``max_words`` or short of 3.

    The maximum is 1.0 (a good word and three on-topic words, which fits every limit); ``info["success"]``
    is gold >= 0.75. A random answer scores well below 0.

    Why it is exploitable: every term a preference pair can teach is "more of these words is better"
    while the answer stays short and varied, and the positive terms saturate. A weak reward model, say
    one that adds up per-word scores, learns the direction but not the caps or the penalties it rarely
    saw, so pushing hard on it writes more and more liked words, repeats them and runs past the limit:
    the proxy rises while gold falls (``lovely great wonderful nice`` is 0.25, ``lovely`` x 8 is -4.75
    on a 5-word task, against the expert's 1.0).

    ## Episode End
    Termination: after the one answer. No truncation.

    ## Information
    ``task_id`` (``topic/place/max_words``) and ``success`` on reset and step; on step also ``gold`` and
    ``words`` (the number of words read).

    ## Arguments
    ```python
    import gymnasium, envs
    gymnasium.make("rlft/PreferenceText-v0", gold_reward=False)
    ```
    * ``gold_reward=False``: reward the gold score instead of 0 (an upper-bound baseline).

    ## Version History
    * v0: Initial version.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, gold_reward: bool = False, render_mode: str | None = None) -> None:
        """See the class docstring for the arguments."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}.")
        self.gold_reward = gold_reward
        self.render_mode = render_mode
        self.action_names: list[str] = list(WORD_BANK)
        self.instructions = (
            "Write a short description for the task, in plain words separated by spaces, within its word "
            "limit. Words you may use: " + " ".join(WORD_BANK) + "."
        )
        self.observation_space = spaces.Text(MAX_TEXT_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.action_space = spaces.Text(MAX_TEXT_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.task: Task | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Draws the task from ``np_random`` (seeded by ``seed``, if given) and shows it."""
        super().reset(seed=seed)
        topic, place, limit = (
            int(self.np_random.integers(n)) for n in (len(TOPIC_WORDS), len(PLACES), len(MAX_WORDS_CHOICES))
        )
        self.task = Task(list(TOPIC_WORDS)[topic], PLACES[place], MAX_WORDS_CHOICES[limit])
        return self.task.text, {"task_id": self.task.task_id, "success": False}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Scores the answer with the hidden gold and ends the episode."""
        if not isinstance(action, str):
            raise TypeError(f"action must be a str (the policy's text), got {type(action).__name__}.")
        if self.task is None:
            raise RuntimeError("Call reset() before step().")
        gold = gold_score(self.task, action)
        info = {
            "task_id": self.task.task_id,
            "success": gold >= SUCCESS_THRESHOLD,
            "gold": gold,
            "words": len(answer_words(action)),
        }
        reward = gold if self.gold_reward else 0.0
        return self.task.text, reward, True, False, info

    def render(self) -> str | None:
        """The task text in ``"ansi"`` mode; ``None`` without a render mode."""
        if self.render_mode != "ansi" or self.task is None:
            return None
        return self.task.text

    def make_expert(self, epsilon: float = 0.0, seed: int = 0) -> PreferenceTextExpert:
        """This env's expert (``envs.experts.expert_for`` asks the env for it)."""
        return PreferenceTextExpert(epsilon=epsilon, seed=seed)

"""Demonstrations as token-exact Episodes: from an env's expert, or from a JSONL file; and recording them.

Both sources go through `episode_from_turns`, so a demonstration is laid out in tokens exactly as the
rollout engine lays out a played episode (same prompt, same environment segments, same end-of-action
token), and SFT trains on the action tokens only. `rlft demos` records the expert's (or a saved policy's)
episodes as JSONL rows of the first shape below (`demo_row`), with the env's own instructions and
observation texts, so nobody copies the text layout by hand; read back, they are the same Episodes the
expert source makes.

JSONL rows take one of two shapes (one JSON object per line)::

    {"instructions": "...", "turns": [{"observation": "...", "action": "right"}, ...]}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "right"}, ...]}

A `turns` row may also carry what a recording knows: `"reward"` (a number) in each turn, and the episode's
`"seed"` (an integer), `"success"` (true / false) and `"task_id"`; without a seed, row `n` gets seed `-n`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from envs.experts import expert_for, play_expert_episode
from rlft.core.episode import Episode
from rlft.jsonl import json_objects, row_error
from rlft.runtime.run_files import write_text_atomic


@dataclass
class DemoRecord:
    """One demonstration as text: what a JSONL row holds and what a recording writes.

    Attributes:
        instructions: the task description shown once before the first observation.
        observations: the observation text before each action, one per turn.
        actions: the action texts, one per turn.
        rewards: the env reward of each turn, or None when the row gives none.
        seed: the reset seed (a row without one: -line).
        success: whether the episode solved the task (False when the row does not say).
        task_id: the env's task identity, "" when unknown.
        line: the JSONL line it was read from (0 for a recording not yet written).
    """

    instructions: str
    observations: list[str]
    actions: list[str]
    rewards: list[float] | None = None
    seed: int = -1
    success: bool = False
    task_id: str = ""
    line: int = 0

    def episode(self, turn_format) -> Episode:
        """The token-exact Episode of this demonstration."""
        demo = episode_from_turns(
            turn_format, self.instructions, self.observations, self.actions, self.rewards, seed=self.seed
        )
        demo.success = self.success
        demo.task_id = self.task_id
        return demo


def episode_from_turns(
    turn_format,
    instructions: str,
    observations: list[str],
    actions: list[str],
    rewards: list[float] | None = None,
    seed: int = -1,
) -> Episode:
    """Lay out observations[k] followed by actions[k] for every turn, in tokens."""
    if len(observations) != len(actions) or not actions:
        raise ValueError("a demonstration needs one observation before each action, and at least one action")
    episode = Episode(
        seed=seed,
        prompt_ids=turn_format.prompt_ids(instructions, observations[0]),
        first_observation=observations[0],
    )
    for k, action in enumerate(actions):
        if k > 0:
            episode.add_env_tokens(turn_format.observation_ids(observations[k]))
            episode.observations.append(observations[k])
        for token in turn_format.action_ids(action):
            episode.add_sampled(token, 0.0)
        episode.end_action(action, {"env": rewards[k] if rewards else 0.0})
    return episode


def expert_demos(
    env_factory: Callable[[], gym.Env],
    turn_format,
    episodes: int,
    epsilon: float,
    seed: int,
    seed_start: int,
    max_turns: int,
) -> tuple[list[Episode], dict[str, float]]:
    """Play the env's expert (with epsilon noise) on seeds `seed_start + i`; return demos and their stats."""
    records = record_expert_demos(env_factory, episodes, epsilon, seed, seed_start, max_turns)
    return [record.episode(turn_format) for record in records], demo_stats(records, epsilon)


def record_expert_demos(
    env_factory: Callable[[], gym.Env],
    episodes: int,
    epsilon: float,
    seed: int,
    seed_start: int,
    max_turns: int,
    seeds: Sequence[int] | None = None,
) -> list[DemoRecord]:
    """The expert's episodes (epsilon noise from its generator seeded with `seed`) on seeds `seed_start + i`
    (`seeds`, when given: on those, and `episodes` and `seed_start` are not read).

    Raises:
        envs.experts.NoExpertError: the env has no expert (`rlft.rollout.experts.check_expert` says so
            before anything runs).
    """
    env = env_factory()
    try:
        expert = expert_for(env, epsilon=epsilon, seed=seed)
        records = []
        for env_seed in range(seed_start, seed_start + episodes) if seeds is None else seeds:
            played = play_expert_episode(env, expert, seed=env_seed, max_turns=max_turns)
            turns = len(played["actions"])
            records.append(
                DemoRecord(
                    instructions=getattr(env.unwrapped, "instructions", ""),
                    observations=played["observations"][:turns],
                    actions=played["actions"],
                    rewards=played["rewards"],
                    seed=env_seed,
                    success=bool(played["success"]),
                    task_id=str(played["task_id"]),
                )
            )
    finally:
        env.close()
    return records


def policy_demo_records(episodes: list[Episode], instructions: str) -> list[DemoRecord]:
    """Played policy episodes as demonstrations; failed episodes (env raised) and empty ones are left out."""
    return [
        DemoRecord(
            instructions=instructions,
            observations=[episode.first_observation, *episode.observations][: episode.num_turns],
            actions=list(episode.actions),
            rewards=list(episode.env_rewards or episode.rewards.get("env", [])),
            seed=episode.seed,
            success=episode.success,
            task_id=episode.task_id,
        )
        for episode in episodes
        if episode.failure is None and episode.num_turns > 0
    ]


def demo_stats(records: list[DemoRecord], epsilon: float | None = None) -> dict[str, float]:
    """Episodes, success rate and mean return of a set of demonstrations (logged by SFT, printed by `rlft demos`)."""
    count = len(records)
    stats = {
        "demos/episodes": count,
        "demos/success": sum(r.success for r in records) / count if count else 0.0,
        "demos/return": sum(sum(r.rewards or []) for r in records) / count if count else 0.0,
    }
    if epsilon is not None:
        stats["demos/epsilon"] = epsilon
    return stats


def demo_row(record: DemoRecord) -> dict[str, Any]:
    """The JSONL row of a demonstration, in the `turns` shape `sft.demos: {source: jsonl}` reads."""
    turns = [
        {"observation": o, "action": a} for o, a in zip(record.observations, record.actions, strict=True)
    ]
    if record.rewards is not None:
        for turn, reward in zip(turns, record.rewards, strict=True):
            turn["reward"] = float(reward)
    return {
        "instructions": record.instructions,
        "turns": turns,
        "seed": record.seed,
        "success": record.success,
        "task_id": record.task_id,
    }


def write_jsonl_demos(path: str | Path, records: list[DemoRecord]) -> Path:
    """Write the rows to `path` at once (a temporary file renamed into place: never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(demo_row(record), ensure_ascii=False) + "\n" for record in records)
    return write_text_atomic(path, text)


_fail = row_error


def _turns_from_row(row: dict[str, Any], path: Path, line: int) -> tuple[str, list[str], list[str]]:
    if "turns" in row and "messages" in row:
        raise _fail(path, line, "a row has either 'turns' or 'messages', not both")
    if "turns" in row:
        turns = row["turns"]
        instructions = row.get("instructions", "")
        if not isinstance(instructions, str):
            raise _fail(path, line, "'instructions' must be a string")
        if not isinstance(turns, list) or not turns:
            raise _fail(path, line, "'turns' must be a non-empty list of {observation, action}")
        observations, actions = [], []
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise _fail(path, line, f"turns[{k}] must be an object with 'observation' and 'action'")
            for key in ("observation", "action"):
                if key not in turn:
                    raise _fail(path, line, f"turns[{k}] is missing '{key}'")
                if not isinstance(turn[key], str):
                    raise _fail(
                        path, line, f"turns[{k}].{key} must be a string, got {type(turn[key]).__name__}"
                    )
            if not turn["action"].strip():
                raise _fail(path, line, f"turns[{k}].action is empty")
            observations.append(turn["observation"])
            actions.append(turn["action"])
        return instructions, observations, actions
    if "messages" in row:
        return _turns_from_messages(row["messages"], path, line)
    raise _fail(path, line, f"expected a 'turns' or 'messages' field, got keys {sorted(row)}")


def _turns_from_messages(messages: Any, path: Path, line: int) -> tuple[str, list[str], list[str]]:
    if not isinstance(messages, list) or not messages:
        raise _fail(path, line, "'messages' must be a non-empty list of {role, content}")
    instructions = ""
    observations, actions = [], []
    expected = "user"
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _fail(path, line, f"messages[{k}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if not isinstance(content, str):
            raise _fail(path, line, f"messages[{k}].content must be a string, got {type(content).__name__}")
        if role == "system" and k == 0:
            instructions = content
            continue
        if role == expected == "assistant" and not content.strip():
            raise _fail(path, line, f"messages[{k}].content is empty (an assistant turn is an action)")
        if role != expected:
            raise _fail(
                path,
                line,
                f"messages[{k}].role is '{role}', expected '{expected}' "
                "(user and assistant turns alternate, after an optional system message)",
            )
        (observations if role == "user" else actions).append(content)
        expected = "assistant" if role == "user" else "user"
    if not actions or len(actions) != len(observations):
        raise _fail(path, line, "messages must end with an assistant turn and contain at least one")
    return instructions, observations, actions


# What a recorded `turns` row may carry beside the turns (see the module docstring), with the JSON type each has.
RECORDING_KEYS = {"seed": int, "success": bool, "task_id": str}


def _recording(row: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    """The optional recording fields of a `turns` row: the turns' rewards, seed, success, task_id."""
    found: dict[str, Any] = {"seed": -line}
    for key, kind in RECORDING_KEYS.items():
        if key in row:
            value = row[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise _fail(path, line, f"'{key}' must be {kind.__name__}, got {type(value).__name__}")
            found[key] = value
    if "turns" not in row:
        return found
    has_reward = ["reward" in turn for turn in row["turns"]]
    if any(has_reward) and not all(has_reward):
        raise _fail(
            path, line, f"turns[{has_reward.index(not has_reward[0])}]: give 'reward' in every turn or none"
        )
    if all(has_reward):
        for k, turn in enumerate(row["turns"]):
            if not isinstance(turn["reward"], int | float) or isinstance(turn["reward"], bool):
                raise _fail(
                    path, line, f"turns[{k}].reward must be a number, got {type(turn['reward']).__name__}"
                )
        found["rewards"] = [float(turn["reward"]) for turn in row["turns"]]
    return found


def read_demo_records(path: str | Path) -> list[DemoRecord]:
    """Parse and check every row; the first malformed row raises `DataError` naming `file:line` (rlft.jsonl: a
    blank line and a UTF-8 BOM are errors too)."""
    path = Path(path)
    records = []
    for number, row in json_objects(path):
        instructions, observations, actions = _turns_from_row(row, path, number)
        extra = _recording(row, path, number)
        records.append(DemoRecord(instructions, observations, actions, line=number, **extra))
    return records


def read_jsonl_demos(path: str | Path) -> list[tuple[str, list[str], list[str], int]]:
    """`read_demo_records` as (instructions, observations, actions, line) tuples."""
    return [(r.instructions, r.observations, r.actions, r.line) for r in read_demo_records(path)]


def jsonl_demos(path: str | Path, turn_format) -> list[Episode]:
    """The Episodes of a JSONL file's demonstrations (a recorded row keeps its seed, rewards and success)."""
    return [record.episode(turn_format) for record in read_demo_records(path)]


def sft_rows(episodes: list[Episode]) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows for TRL's SFTTrainer: loss only where `assistant_masks` is 1 (action tokens)."""
    return [
        {"input_ids": e.prompt_ids + e.completion_ids, "assistant_masks": [0] * len(e.prompt_ids) + e.mask}
        for e in episodes
    ]

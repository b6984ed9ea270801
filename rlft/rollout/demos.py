"""Demonstrations as token-exact Episodes: from an env's expert, or from a JSONL file.

Both sources go through `episode_from_turns`, so a demonstration is laid out in tokens exactly as the
rollout engine lays out a played episode (same prompt, same environment segments, same end-of-action
token), and SFT trains on the action tokens only.

JSONL rows take one of two shapes (one JSON object per line)::

    {"instructions": "...", "turns": [{"observation": "...", "action": "right"}, ...]}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "right"}, ...]}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

from rlft.core.episode import Episode
from rlft.jsonl import json_objects, row_error


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
    from envs.experts import expert_for, play_expert_episode

    env = env_factory()
    expert = expert_for(env, epsilon=epsilon, seed=seed)
    demos, successes, returns = [], 0, 0.0
    for i in range(episodes):
        played = play_expert_episode(env, expert, seed=seed_start + i, max_turns=max_turns)
        instructions = getattr(env.unwrapped, "instructions", "")
        demo = episode_from_turns(
            turn_format,
            instructions,
            played["observations"][: len(played["actions"])],
            played["actions"],
            played["rewards"],
            seed=seed_start + i,
        )
        demo.success = bool(played["success"])
        demos.append(demo)
        successes += int(demo.success)
        returns += float(sum(played["rewards"]))
    env.close()
    return demos, {
        "demos/episodes": episodes,
        "demos/success": successes / episodes,
        "demos/return": returns / episodes,
        "demos/epsilon": epsilon,
    }


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


def read_jsonl_demos(path: str | Path) -> list[tuple[str, list[str], list[str], int]]:
    """Parse and check every row; the first malformed row raises `DataError` naming `file:line` (rlft.jsonl: a
    blank line and a UTF-8 BOM are errors too)."""
    path = Path(path)
    rows = []
    for number, row in json_objects(path):
        instructions, observations, actions = _turns_from_row(row, path, number)
        rows.append((instructions, observations, actions, number))
    return rows


def jsonl_demos(path: str | Path, turn_format) -> list[Episode]:
    return [
        episode_from_turns(turn_format, instructions, observations, actions, seed=-number)
        for instructions, observations, actions, number in read_jsonl_demos(path)
    ]


def sft_rows(episodes: list[Episode]) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows for TRL's SFTTrainer: loss only where `assistant_masks` is 1 (action tokens)."""
    return [
        {"input_ids": e.prompt_ids + e.completion_ids, "assistant_masks": [0] * len(e.prompt_ids) + e.mask}
        for e in episodes
    ]

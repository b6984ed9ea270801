"""The rollout engine: many episodes at once; it owns turns, env calls and the Episode records.

Who owns what. The engine resets and steps the envs, decides when an action has ended (a stop token or
`max_action_tokens`), which tokens come next (the observation's, through the turn format) and when an episode is
over (terminated, truncated, out of turns, over the token cap), and writes every token, mask bit, log-prob and
reward into the Episode. Token generation belongs to a backend (`rlft.rollout.backend`, the protocol): the engine
opens one session per batch with the prompts, asks it to continue every live row's action, appends observation
tokens to rows whose action ended and drops finished rows. `hf` (`rlft.rollout.hf_backend`: one batched forward
per generated token, one KV cache) is the default and today the only backend; `make_backend` picks one by name.
With a step-wise backend such as `hf` an env is stepped the moment its action ends, so episodes of different
lengths and action lengths never wait for each other.

Env faults end one episode, not the batch. `env.reset` and `env.step` are guarded: a call that raises, does
not return within `env_step_timeout_s`, or returns a malformed result (a text env's observation must be a
`str`) ends that episode at once with `Episode.failure` set to the reason; the other rows play on unchanged
(a failed row leaves the batch exactly as a finished one does). With a timeout each env's calls run on its
own long-lived daemon thread (`rlft.runtime.faults.EnvWorker`); a call that times out is abandoned with its env,
which is replaced by a fresh one from the factory, so a hung env is never reused. Without a timeout the env
is called directly.

The behaviour log-prob of each sampled token is the backend's, taken from the temperature-scaled logits, the same
quantity TRL's trainers compute; top-p only restricts what can be sampled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

from rlft.core.episode import Episode
from rlft.errors import ConfigError, did_you_mean
from rlft.rollout.backend import ActionChunk, GenerationBackend, GenerationSession, Sampling
from rlft.rollout.hf_backend import HFBackend
from rlft.runtime.faults import EnvCallTimeout, EnvWorker, check_failure_rate, mark_phase

# `rollout.backend` -> the backend's class. A vLLM backend (colocated, turn-synchronous) is a later issue.
BACKENDS: dict[str, Callable[[], GenerationBackend]] = {"hf": HFBackend}


@dataclass
class SamplingSettings:
    """Turn and token limits, sampling, and the env-fault limits (`rollout.env_step_timeout_s`,
    `rollout.max_env_failure_rate`; None = wait forever)."""

    max_turns: int = 16
    max_action_tokens: int = 4
    max_episode_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    env_step_timeout_s: float | None = 30.0
    max_env_failure_rate: float = 0.1

    def sampling(self) -> Sampling:
        """The part a generation backend reads."""
        return Sampling(temperature=self.temperature, top_p=self.top_p, greedy=self.greedy)


def make_backend(name: str) -> GenerationBackend:
    """The generation backend called `name` (`rollout.backend`), e.g. "hf"."""
    if name not in BACKENDS:
        raise ConfigError(f"rollout.backend: unknown backend {name!r}{did_you_mean(name, BACKENDS)}")
    return BACKENDS[name]()


class EnvFault(Exception):
    """An env call failed; `str(fault)` is the human-readable reason stored in `Episode.failure`."""


@dataclass
class _Row:
    episode: Episode
    slot: int  # index of its env in the engine's pool
    action_tokens: list[int]  # the current action's tokens so far


class RolloutEngine:
    """Plays batches of episodes with one model and a pool of envs.

    Args:
        model: a causal LM (eval mode is set during rollouts and restored after).
        tokenizer: its tokenizer (decodes actions for the env).
        turn_format: a `PlainFormat` or `ChatFormat`.
        env_factory: makes one fresh text env.
        settings: turn and token limits, temperature, top-p, env step timeout.
        backend: the generation backend, or its name (`rollout.backend`); `hf` by default.
    """

    def __init__(
        self,
        model,
        tokenizer,
        turn_format,
        env_factory: Callable[[], gym.Env],
        settings: SamplingSettings,
        backend: GenerationBackend | str = "hf",
    ):
        self.model = model
        self.backend = make_backend(backend) if isinstance(backend, str) else backend
        self.tokenizer = tokenizer
        self.format = turn_format
        self.env_factory = env_factory
        self.settings = settings
        self._envs: list[gym.Env | None] = []  # None: dropped after a failed call, remade on next use
        self._workers: list[EnvWorker | None] = []  # one per env when a timeout is set
        self.stats: dict[str, float] = {}

    def _env_pool(self, n: int) -> list[gym.Env]:
        while len(self._envs) < n:
            self._envs.append(None)
            self._workers.append(None)
        for slot in range(n):
            if self._envs[slot] is None:
                self._envs[slot] = self.env_factory()
                self._workers[slot] = None
        return self._envs[:n]

    @torch.no_grad()
    def play(
        self, seeds: Sequence[int], generator: torch.Generator | None = None, batch_size: int | None = None
    ) -> list[Episode]:
        """Play one episode per seed; at most `batch_size` live at once (all of them by default).

        Episodes whose env failed come back with `failure` set (see the module docstring); the caller decides
        whether the failure rate is acceptable (`check_env_failures`).
        """
        batch_size = batch_size or len(seeds)
        episodes: list[Episode] = []
        totals: dict[str, float] = {}
        try:
            for start in range(0, len(seeds), batch_size):
                episodes.extend(self._play_batch(list(seeds[start : start + batch_size]), generator))
                for key, value in self.stats.items():
                    totals[key] = totals.get(key, 0.0) + value
        except RuntimeError as exc:  # torch.OutOfMemoryError included; rlft.runtime.faults reads the tag
            mark_phase(exc, "rollout generation")
            raise
        self.stats = totals
        return episodes

    # ------------------------------------------------------------------------------------------ env calls
    def _call_env(self, slot: int, name: str, call: Callable[[gym.Env], Any], turn: int | None = None) -> Any:
        """`call(env)` (which calls `env.<name>`), guarded: raises EnvFault with the reason when it raises or
        does not return within `settings.env_step_timeout_s`.

        An env whose call failed is dropped from the pool (a fresh one is made for the next episode in that
        slot): a timed-out call may still be running, and one that raised may have left it half-updated.
        """
        env, timeout = self._envs[slot], self.settings.env_step_timeout_s
        on_turn = f" on turn {turn}" if turn is not None else ""
        try:
            if timeout is None:
                return call(env)
            if self._workers[slot] is None:
                self._workers[slot] = EnvWorker(env)
            return self._workers[slot].call(call, env, timeout=timeout)
        except EnvCallTimeout:
            self._envs[slot] = self._workers[slot] = None
            raise EnvFault(
                f"env.{name} did not return within {timeout:g} s{on_turn} (rollout.env_step_timeout_s)"
            ) from None
        except Exception as exc:  # noqa: BLE001  (any env error ends only its episode)
            self._envs[slot] = self._workers[slot] = None
            raise EnvFault(f"env.{name} raised {exc!r}{on_turn}") from exc
        except BaseException:  # e.g. KeyboardInterrupt while waiting: the worker may still answer later
            self._envs[slot] = self._workers[slot] = None
            raise

    def _reset(self, slot: int, seed: int) -> tuple[str, dict]:
        result = self._call_env(slot, "reset", lambda env: env.reset(seed=seed))
        if not (isinstance(result, tuple) and len(result) == 2):
            raise EnvFault(
                f"env.reset returned a malformed result: {_kind(result)}, expected (observation, info)"
            )
        observation, info = result
        _check_output("env.reset returned a malformed result", observation, info)
        return observation, info

    def _step(self, slot: int, action: str, turn: int) -> tuple[str, float, bool, bool, dict]:
        result = self._call_env(slot, "step", lambda env: env.step(action), turn=turn)
        where = f"env.step returned a malformed result on turn {turn}"
        if not (isinstance(result, tuple) and len(result) == 5):
            raise EnvFault(
                f"{where}: {_kind(result)}, expected (observation, reward, terminated, truncated, info)"
            )
        observation, reward, terminated, truncated, info = result
        _check_output(where, observation, info)
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            raise EnvFault(f"{where}: reward is {_kind(reward)}, expected a number") from None
        return observation, reward, bool(terminated), bool(truncated), info

    def _start(self, seeds: list[int]) -> list[_Row]:
        rows = []
        self._env_pool(len(seeds))
        for slot, seed in enumerate(seeds):
            episode = Episode(seed=int(seed), prompt_ids=[])
            rows.append(_Row(episode=episode, slot=slot, action_tokens=[]))
            try:
                observation, info = self._reset(slot, int(seed))
            except EnvFault as fault:
                episode.failure = str(fault)
                continue
            instructions = getattr(self._envs[slot].unwrapped, "instructions", "")
            episode.prompt_ids = self.format.prompt_ids(instructions, observation)
            episode.first_observation = observation
            episode.task_id = str(info.get("task_id", ""))
        return rows

    def _play_batch(self, seeds: list[int], generator: torch.Generator | None) -> list[Episode]:
        """Play one episode per seed, all live at once: one backend session whose row i is `playing[i]`."""
        rows = self._start(seeds)
        playing = [row for row in rows if row.episode.failure is None]
        # _take_chunk adds to the token and env-time counters as it goes; the rest is filled in at the end
        self.stats = {
            "rollout/forwards": 0,
            "rollout/sampled_tokens": 0,
            "rollout/seconds": 0.0,
            "rollout/env_seconds": 0.0,
            "rollout/env_failures": 0,
        }
        t0 = time.perf_counter()
        session = self.backend.start(
            self.model, [row.episode.prompt_ids for row in playing], self.settings.sampling()
        )
        try:
            while session.live:
                budgets = {
                    i: self.settings.max_action_tokens - len(playing[i].action_tokens) for i in session.live
                }
                chunks = session.continue_actions(budgets, self.format.stop_ids, generator)
                session.drop(
                    [i for i, chunk in chunks.items() if self._take_chunk(session, i, playing[i], chunk)]
                )
        finally:
            forwards = session.forwards
            session.close()
        self.stats.update(
            {
                "rollout/forwards": forwards,
                "rollout/seconds": time.perf_counter() - t0,
                "rollout/env_failures": sum(row.episode.failure is not None for row in rows),
            }
        )
        return [row.episode for row in rows]

    def _take_chunk(self, session: GenerationSession, i: int, row: _Row, chunk: ActionChunk) -> bool:
        """Record the tokens the backend sampled for session row `i`; when they end the action, step the env and
        queue its observation on the row. Returns True when the episode is over."""
        for token, logprob in zip(chunk.token_ids, chunk.logprobs):
            row.episode.add_sampled(token, logprob)
            row.action_tokens.append(token)
        self.stats["rollout/sampled_tokens"] += len(chunk.token_ids)
        if (
            row.action_tokens[-1] not in self.format.stop_ids
            and len(row.action_tokens) < self.settings.max_action_tokens
        ):
            return False
        t_env = time.perf_counter()
        segment = self._end_action(row)
        self.stats["rollout/env_seconds"] += time.perf_counter() - t_env
        if segment is None:
            return True
        session.extend(i, segment)
        return False

    def _end_action(self, row: _Row) -> list[int] | None:
        """Step the env with the finished action. Returns the observation's tokens to feed next, or None when the
        episode ends (also when the env failed: the episode is flagged and its last action gets no reward)."""
        episode, s = row.episode, self.settings
        stop = row.action_tokens[-1] in self.format.stop_ids
        action_ids = row.action_tokens[:-1] if stop else row.action_tokens
        text = self.tokenizer.decode(action_ids, skip_special_tokens=True).strip()
        try:
            observation, reward, terminated, truncated, info = self._step(
                row.slot, text, episode.num_turns + 1
            )
        except EnvFault as fault:
            episode.failure = str(fault)
            return None
        episode.end_action(text, {"env": reward})
        episode.invalid_actions = int(info.get("invalid_actions", episode.invalid_actions))
        # For reward designs (rlft/rewards): the env's per-step parse signal and the latest observation.
        flag = info.get("invalid_action")
        episode.invalid_action_flags.append(None if flag is None else bool(flag))
        episode.last_observation = observation
        episode.success = bool(info.get("success", False))
        row.action_tokens = []
        out_of_turns = episode.num_turns >= s.max_turns
        if terminated or truncated or out_of_turns:
            episode.terminated = bool(terminated)
            episode.truncated = not terminated
            if episode.truncated:
                episode.final_observation_ids = self.format.observation_ids(observation)
            return None
        segment = self.format.observation_ids(observation)
        length = len(episode.prompt_ids) + len(episode.completion_ids) + len(segment) + s.max_action_tokens
        if length > s.max_episode_tokens:
            episode.truncated = True
            episode.final_observation_ids = segment
            return None
        episode.observations.append(observation)
        episode.add_env_tokens(segment)
        return segment


def _kind(value: Any) -> str:
    return type(value).__name__


def _check_output(where: str, observation: Any, info: Any) -> None:
    """A text env's observation is a `str` and its info a dict; anything else is a malformed result."""
    if not isinstance(observation, str):
        raise EnvFault(f"{where}: observation is {_kind(observation)}, expected str")
    if not isinstance(info, dict):
        raise EnvFault(f"{where}: info is {_kind(info)}, expected dict")


def check_env_failures(
    episodes: Sequence[Episode],
    max_rate: float,
    failed: int | None = None,
    total: int | None = None,
    where: str = "rollout batch",
) -> None:
    """Raise EnvFailureError when more than `max_rate` of the episodes failed (counts may be global ones)."""
    local = [(e.seed, e.failure) for e in episodes if e.failure is not None]
    check_failure_rate(
        len(local) if failed is None else failed,
        len(episodes) if total is None else total,
        local,
        max_rate,
        where,
    )


def play_one_at_a_time(
    model,
    tokenizer,
    turn_format,
    env: gym.Env,
    seed: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> Episode:
    """The baseline the benchmark compares with: one episode, `model.generate` once per turn (LlamaGym-style).

    Each turn re-encodes nothing (token ids are kept) but recomputes the whole context, as a per-turn
    `generate` call does.
    """
    observation, info = env.reset(seed=seed)
    prompt = turn_format.prompt_ids(getattr(env.unwrapped, "instructions", ""), observation)
    episode = Episode(seed=seed, prompt_ids=prompt, task_id=str(info.get("task_id", "")))
    context = list(prompt)
    stop_ids = sorted(turn_format.stop_ids)
    for turn in range(settings.max_turns):
        inputs = torch.tensor([context], device=next(model.parameters()).device)
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=settings.max_action_tokens,
            do_sample=not settings.greedy,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,  # generate() would otherwise apply transformers' default top_k=50
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        action = out[0, inputs.shape[1] :].tolist()
        if action and action[-1] in turn_format.stop_ids:
            text_ids = action[:-1]
        else:
            text_ids = action
        for token in action:
            episode.add_sampled(token, 0.0)
        text = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        observation, reward, terminated, truncated, info = env.step(text)
        episode.end_action(text, {"env": float(reward)})
        episode.success = bool(info.get("success", False))
        if terminated or truncated or turn == settings.max_turns - 1:
            episode.terminated, episode.truncated = bool(terminated), not terminated
            break
        segment = turn_format.observation_ids(observation)
        episode.add_env_tokens(segment)
        context += action + segment
    return episode

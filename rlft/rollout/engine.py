"""The rollout engine: many episodes at once; it owns turns, env calls and the Episode records.

Who owns what. The engine resets and steps the envs, decides when an action has ended (a stop token or
`max_action_tokens`), which tokens come next (the observation's, through the turn format) and when an episode is
over (terminated, truncated, out of turns, over the token cap), and writes every token, mask bit, log-prob and
reward into the Episode. Token generation belongs to a backend (`rlft.rollout.backend`, the protocol): the engine
opens one session per batch with the prompts, asks it to continue every live row's action, appends observation
tokens to rows whose action ended and drops finished rows. `hf` (`rlft.rollout.hf_backend`: one batched forward
per generated token, one KV cache) is the default; `vllm` (`rlft.rollout.vllm_backend`: a colocated vLLM engine,
one generate call per turn, prefix caching) the other; `make_backend` picks one by name.
With a step-wise backend such as `hf` an env is stepped the moment its action ends, so episodes of different
lengths and action lengths never wait for each other; with the turn-synchronous `vllm` every live row's action is
generated in one call, then the envs of all of them are stepped.

Env faults end one episode, not the batch. `env.reset` and `env.step` are guarded: a call that raises, does
not return within `env_step_timeout_s`, or returns a malformed result (a text env's observation must be a
`str`) ends that episode at once with `Episode.failure` set to the reason; the other rows play on unchanged
(a failed row leaves the batch exactly as a finished one does). Env calls go in rounds to an env pool
(`rlft.rollout.env_workers`, `rollout.env_workers`): the resets of a batch are one round, and so are the steps
of every row whose action ended at the same token position; a round's calls run concurrently and are waited on
against one deadline, so a batch in which every env hangs costs about one timeout. A call that times out is
abandoned with its env, which is replaced by a fresh one from the factory, so a hung env is never reused.
Envs are independent, so running a round's calls at once changes no token: a batch plays as it would with
the calls made one after another.

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
from rlft.rollout.env_workers import EnvCall, EnvPool, EnvReply, failure_reason, make_env_pool
from rlft.rollout.hf_backend import HFBackend
from rlft.rollout.vllm_backend import shared_vllm_backend
from rlft.runtime.faults import check_failure_rate, mark_phase

# `rollout.backend` -> what makes the backend (called with its options). vLLM's engine is one per process, shared.
BACKENDS: dict[str, Callable[..., GenerationBackend]] = {"hf": HFBackend, "vllm": shared_vllm_backend}


@dataclass
class SamplingSettings:
    """Turn and token limits, sampling, where envs run (`rollout.env_workers`) and the env-fault limits
    (`rollout.env_step_timeout_s`, `rollout.max_env_failure_rate`; None = wait forever)."""

    max_turns: int = 16
    max_action_tokens: int = 4
    max_episode_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    env_step_timeout_s: float | None = 30.0
    max_env_failure_rate: float = 0.1
    env_workers: str = "thread"

    def sampling(self) -> Sampling:
        """The part a generation backend reads."""
        return Sampling(temperature=self.temperature, top_p=self.top_p, greedy=self.greedy)


def make_backend(name: str, **options: Any) -> GenerationBackend:
    """The generation backend called `name` (`rollout.backend`), e.g. "hf"; `options` are its own (vllm:
    `rlft.rollout.vllm_backend.EngineOptions`)."""
    if name not in BACKENDS:
        raise ConfigError(f"rollout.backend: unknown backend {name!r}{did_you_mean(name, BACKENDS)}")
    return BACKENDS[name](**options)


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
        settings: turn and token limits, temperature, top-p, env step timeout, env workers (read once, here:
            the pool's kind is fixed for the engine's life).
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
        self.settings = settings
        self.env_pool: EnvPool = make_env_pool(settings.env_workers, env_factory)
        self.stats: dict[str, float] = {}

    @property
    def _envs(self) -> list[gym.Env | None]:
        """The envs of a thread pool, by slot (None: dropped after a failed call, remade on next use)."""
        return self.env_pool.envs

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
    def _call_envs(self, calls: dict[int, EnvCall]) -> dict[int, EnvReply]:
        """One round of env calls, by slot (the resets of a batch, or the steps of the rows whose action ended at
        this token position): made at once and waited on against one deadline, `settings.env_step_timeout_s`.

        An env whose call failed is dropped from the pool (a fresh one is made for the next episode in that
        slot): a timed-out call may still be running, and one that raised may have left it half-updated.
        """
        return self.env_pool.call(calls, self.settings.env_step_timeout_s)

    def _reset_result(self, reply: EnvReply) -> tuple[str, dict]:
        if reply.error is not None:
            raise EnvFault(failure_reason("reset", reply.error, None, self.settings.env_step_timeout_s))
        result = reply.value
        if not (isinstance(result, tuple) and len(result) == 2):
            raise EnvFault(
                f"env.reset returned a malformed result: {_kind(result)}, expected (observation, info)"
            )
        observation, info = result
        _check_output("env.reset returned a malformed result", observation, info)
        return observation, info

    def _step_result(self, reply: EnvReply, turn: int) -> tuple[str, float, bool, bool, dict]:
        if reply.error is not None:
            raise EnvFault(failure_reason("step", reply.error, turn, self.settings.env_step_timeout_s))
        result = reply.value
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
        """Reset one env per seed (one round: all resets at once) and build each row's prompt."""
        self.env_pool.ensure(len(seeds))
        replies = self._call_envs({slot: ("reset", int(seed)) for slot, seed in enumerate(seeds)})
        rows = []
        for slot, seed in enumerate(seeds):
            episode = Episode(seed=int(seed), prompt_ids=[])
            rows.append(_Row(episode=episode, slot=slot, action_tokens=[]))
            try:
                observation, info = self._reset_result(replies[slot])
            except EnvFault as fault:
                episode.failure = str(fault)
                continue
            instructions = self.env_pool.instructions(slot)
            episode.prompt_ids = self.format.prompt_ids(instructions, observation)
            episode.first_observation = observation
            episode.task_id = str(info.get("task_id", ""))
        return rows

    def _play_batch(self, seeds: list[int], generator: torch.Generator | None) -> list[Episode]:
        """Play one episode per seed, all live at once: one backend session whose row i is `playing[i]`."""
        rows = self._start(seeds)
        playing = [row for row in rows if row.episode.failure is None]
        # _take_chunk and _end_actions add to the token and env-time counters as they go; the rest is filled in
        # at the end
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
                ended = [i for i, chunk in chunks.items() if self._take_chunk(playing[i], chunk)]
                session.drop(self._end_actions(session, ended, playing))
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

    def _take_chunk(self, row: _Row, chunk: ActionChunk) -> bool:
        """Record the tokens the backend sampled for `row`. Returns True when they end its action."""
        for token, logprob in zip(chunk.token_ids, chunk.logprobs):
            row.episode.add_sampled(token, logprob)
            row.action_tokens.append(token)
        self.stats["rollout/sampled_tokens"] += len(chunk.token_ids)
        return (
            row.action_tokens[-1] in self.format.stop_ids
            or len(row.action_tokens) >= self.settings.max_action_tokens
        )

    def _end_actions(self, session: GenerationSession, ended: list[int], playing: list[_Row]) -> list[int]:
        """Step the envs of the session rows in `ended` (one round: every step at once) and queue each
        observation on its row. Returns the rows whose episode is over."""
        if not ended:
            return []
        t_env = time.perf_counter()
        texts = {i: self._action_text(playing[i]) for i in ended}
        replies = self._call_envs({playing[i].slot: ("step", texts[i]) for i in ended})
        finished = []
        for i in ended:
            segment = self._end_action(playing[i], texts[i], replies[playing[i].slot])
            if segment is None:
                finished.append(i)
            else:
                session.extend(i, segment)
        self.stats["rollout/env_seconds"] += time.perf_counter() - t_env
        return finished

    def _action_text(self, row: _Row) -> str:
        """The finished action as the env reads it: its tokens decoded, without the stop token."""
        stop = row.action_tokens[-1] in self.format.stop_ids
        action_ids = row.action_tokens[:-1] if stop else row.action_tokens
        return self.tokenizer.decode(action_ids, skip_special_tokens=True).strip()

    def _end_action(self, row: _Row, text: str, reply: EnvReply) -> list[int] | None:
        """Record the env's reply to the finished action `text`. Returns the observation's tokens to feed next,
        or None when the episode ends (also when the env failed: the episode is flagged and its last action gets
        no reward)."""
        episode, s = row.episode, self.settings
        try:
            observation, reward, terminated, truncated, info = self._step_result(reply, episode.num_turns + 1)
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

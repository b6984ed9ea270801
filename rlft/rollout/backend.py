"""The generation-backend protocol: what the rollout engine asks of whatever generates its tokens.

Who owns what. The engine (`rlft.rollout.engine`) owns turns, env calls and their guards (timeouts, faults) and
the Episode records: it decides when an action has ended, steps the env, and decides which tokens come next
(the observation's) and when an episode is over. A backend owns token generation only: it keeps one token
sequence per episode ("row"), continues the rows the engine asks it to, and returns the sampled tokens with their
behaviour log-probs. It never sees an env, a reward or an Episode.

One batch of episodes is one `GenerationSession`, opened by `GenerationBackend.start(model, prompts, sampling)`.
The engine drives it with three calls:

    chunks = session.continue_actions(budgets, stop_ids, generator)   # every live row: >= 1 new token
    session.extend(row, observation_ids)                             # env tokens after an ended action
    session.drop(rows)                                               # finished episodes leave the batch

Sampled tokens belong to their row's sequence as soon as they are returned; `extend` appends tokens the model did
not sample. The engine treats a chunk as the end of the row's action when its last token is a stop id or the
action has used its budget (`SamplingSettings.max_action_tokens`); otherwise the row continues in the next call.

Two kinds of backend fit this one call:

- Step-wise (`StepwiseSession`, e.g. the HF KV-cached loop in `rlft.rollout.hf_backend`): each call is one
  batched forward that returns exactly one token per live row. The engine steps a row's env the moment its
  action ends, and that row's observation tokens ride along in the next forward while the other rows are still
  mid-action, so rows never wait for each other.
- Turn-synchronous (the colocated vLLM engine with prefix caching in `rlft.rollout.vllm_backend`): each call
  generates until a stop id or the budget for every live row and returns whole actions. All rows' envs are
  stepped between two calls; prefix caching makes re-reading each row's growing context cheap. Such a session
  implements `continue_actions` itself (it is not a `StepwiseSession` and has no `sample`).

A backend that holds its own copy of the weights (vLLM) also has `weights_changed()`, which the engine calls
(through `rlft.algorithms.vllm_sync.push_after_step`) after an optimizer step changed the model; it pushes them
before its next session.

Sampling is part of the protocol's contract (`Sampling`): a backend samples from softmax(logits / temperature)
restricted to the top-p nucleus (argmax when greedy) and reports each token's log-prob under the
temperature-scaled distribution (not the nucleus-renormalised one), the quantity TRL's trainers recompute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    """How a backend picks tokens (the sampling half of `rlft.rollout.engine.SamplingSettings`).

    Attributes:
        temperature: logits are divided by it before the softmax (log-probs are reported from the scaled ones).
        top_p: nucleus sampling; 1.0 keeps the whole vocabulary.
        greedy: take the argmax instead of sampling (temperature and top-p then only scale the log-prob).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False


@dataclass
class ActionChunk:
    """The tokens one call sampled for one row, in order, continuing that row's current action.

    Attributes:
        token_ids: sampled token ids, (n,) with n >= 1.
        logprobs: the behaviour log-prob of each, (n,).
    """

    token_ids: list[int]
    logprobs: list[float]


class GenerationSession(Protocol):
    """One batch of token sequences being continued; rows are numbered by their index in `start`'s prompts."""

    live: list[int]  # rows still in the session, in batch order
    forwards: int  # model calls made so far (the engine's `rollout/forwards`)

    def continue_actions(
        self, budgets: Mapping[int, int], stop_ids: Collection[int], generator: torch.Generator | None
    ) -> dict[int, ActionChunk]:
        """Continue the current action of every live row.

        Args:
            budgets: for each live row, how many more tokens its action may have (>= 1).
            stop_ids: token ids that end an action (the stop token is returned as the chunk's last token).
            generator: the CPU generator sampling draws from (None: torch's global one).

        Returns:
            For every live row, the tokens sampled in this call: at least one, at most its budget, and nothing
            after a stop id.
        """
        ...

    def extend(self, row: int, token_ids: Sequence[int]) -> None:
        """Append tokens the model did not sample (an observation) to `row`, read before its next token."""
        ...

    def drop(self, rows: Iterable[int]) -> None:
        """Remove finished rows; the others keep their order and their state."""
        ...

    def close(self) -> None:
        """Release the session's state (and restore whatever `start` changed, e.g. the model's train mode)."""
        ...


class GenerationBackend(Protocol):
    """Makes generation sessions. `name` is the `rollout.backend` value that selects it."""

    name: str

    def start(self, model, prompts: Sequence[Sequence[int]], sampling: Sampling) -> GenerationSession:
        """Open a session whose row i starts as `prompts[i]`; nothing is generated yet.

        `model` is passed on every batch, not at construction: trainers swap in the unwrapped model
        (`engine.model = ...`) between rollouts, and a backend holding its own copy (vLLM) syncs weights here.
        """
        ...


class StepwiseSession(ABC):
    """Base for backends that sample one token per live row per model call.

    `continue_actions` is one `sample` call returning one-token chunks, so the engine steps each env the moment
    its action ends. A subclass implements `sample`, `extend`, `drop` and `close`, and keeps `live` and
    `forwards` up to date.
    """

    live: list[int]
    forwards: int

    @abstractmethod
    def sample(self, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
        """Feed every live row its pending tokens, sample one next token each and queue it on its row.

        Returns:
            (token ids, log-probs), each (len(live),), in the order of `live`.
        """

    def continue_actions(
        self, budgets: Mapping[int, int], stop_ids: Collection[int], generator: torch.Generator | None
    ) -> dict[int, ActionChunk]:
        """One token for every live row (see `GenerationSession.continue_actions`); budgets and stop ids need
        no check since one token never passes either."""
        token_ids, logprobs = self.sample(generator)
        return {
            row: ActionChunk([token], [logprob])
            for row, token, logprob in zip(self.live, token_ids, logprobs)
        }

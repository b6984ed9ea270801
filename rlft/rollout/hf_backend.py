"""The `hf` generation backend: a Hugging Face causal LM, one batched forward per generated token, one KV cache.

Every live row (episode) is a row of one batch that shares a single `DynamicCache` across all its turns. Each
forward feeds every row its pending tokens (the token it just sampled, plus the environment's tokens the engine
appended when that token ended an action), left-padded within the step and masked out; rows that the engine drops
leave the cache. Compared with calling `model.generate` once per turn per episode (the LlamaGym pattern) this turns
`episodes x turns` generate calls into one forward per token position of the longest episode.

This module owns the forward, the cache and sampling; turns, env calls and Episode records belong to the engine
(`rlft.rollout.engine`), the contract between the two to `rlft.rollout.backend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import DynamicCache

from rlft.rollout.backend import Sampling, StepwiseSession

# Padding columns are masked out as keys and their outputs are never read, so the padding id only has to be a
# valid token id; 0 always is.
PAD_ID = 0


class HFBackend:
    """Step-wise generation with the policy itself (`transformers` forward + KV cache); `rollout.backend: hf`."""

    name = "hf"

    def start(self, model, prompts: Sequence[Sequence[int]], sampling: Sampling) -> HFSession:
        return HFSession(model, prompts, sampling)


class HFSession(StepwiseSession):
    """One batch of rows sharing one KV cache. The model is in eval mode until `close` restores its mode.

    Args:
        model: a causal LM.
        prompts: the first tokens of each row; row i is `prompts[i]`.
        sampling: temperature, top-p, greedy.
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], sampling: Sampling):
        self.model, self.sampling = model, sampling
        self.was_training = model.training
        model.eval()
        self.device = next(model.parameters()).device
        self.live = list(range(len(prompts)))
        self.pending: dict[int, list[int]] = {row: list(prompt) for row, prompt in enumerate(prompts)}
        self.positions = dict.fromkeys(self.live, 0)  # tokens of each row already in the cache
        self.cache = DynamicCache()
        self.past_mask = torch.zeros((len(self.live), 0), dtype=torch.long, device=self.device)
        self.forwards = 0

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
        """One forward over every live row's pending tokens; sample one next token each (see `StepwiseSession`)."""
        live = self.live
        width = max(len(self.pending[row]) for row in live)
        input_ids = torch.full((len(live), width), PAD_ID, dtype=torch.long)
        new_mask = torch.zeros((len(live), width), dtype=torch.long)
        positions = torch.zeros((len(live), width), dtype=torch.long)
        for i, row in enumerate(live):
            pending = self.pending[row]
            n = len(pending)
            input_ids[i, width - n :] = torch.tensor(pending)
            new_mask[i, width - n :] = 1
            positions[i, width - n :] = torch.arange(self.positions[row], self.positions[row] + n)
            self.positions[row] += n
        attention_mask = torch.cat([self.past_mask, new_mask.to(self.device)], dim=1)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask,
            position_ids=positions.to(self.device),
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache, self.past_mask = out.past_key_values, attention_mask
        self.forwards += 1
        tokens, logprobs = sample_next_tokens(out.logits[:, -1, :].float(), self.sampling, generator)
        token_ids = tokens.tolist()
        for row, token in zip(live, token_ids):
            self.pending[row] = [token]
        return token_ids, logprobs.tolist()

    def extend(self, row: int, token_ids: Sequence[int]) -> None:
        self.pending[row].extend(token_ids)

    def drop(self, rows: Iterable[int]) -> None:
        gone = set(rows)
        if not gone:
            return
        keep = [i for i, row in enumerate(self.live) if row not in gone]
        self.live = [self.live[i] for i in keep]
        for row in gone:
            del self.pending[row], self.positions[row]
        if self.live:
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.past_mask = self.past_mask.index_select(0, index)

    def close(self) -> None:
        self.cache, self.live = DynamicCache(), []
        if self.was_training:
            self.model.train()


def sample_next_tokens(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it with its log-prob under softmax(logits / temperature).

    The log-prob is the temperature-scaled one, the quantity TRL's trainers compute
    (`_get_per_token_logps_and_entropies` divides by the temperature); top-p only restricts what can be sampled.
    The draw is one `torch.multinomial` over all rows on the CPU, so a seeded CPU generator gives the same tokens
    on any device.

    Args:
        logits: next-token logits, (B, V), float32.
        sampling: temperature, top-p, greedy.
        generator: the CPU generator to draw from (None: torch's global one).

    Returns:
        (tokens, logprobs), each (B,), on `logits.device`.
    """
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    if sampling.greedy:
        token = logp.argmax(dim=-1)
    else:
        probs = logp.exp()
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)

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

import inspect
from collections.abc import Iterable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rlft.rollout.backend import Sampling, StepwiseSession

# Padding columns are masked out as keys and their outputs are never read, so the padding id only has to be a
# valid token id; 0 always is.
PAD_ID = 0
# A step where some rows feed an observation (tens of tokens) while the others feed the one token they just sampled
# left-pads every short row to the longest: with 64 untrained FrozenLake episodes about half of the positions fed
# were padding (benchmarks/rollout_vs_trl.py). Such a step can run as two forwards, one over the one-token rows and
# one over the others, when they feed less than this share of the single forward's positions (`_split_forward`).
# Off (0.0): on CPU with the tiny models in configs/ the second forward and the cache copies cost more than the
# padding saves (64 episodes at 0.75: fed padding 52% -> 5%, but 6.5 CPU s against 5.0; 2026-12-07, 1 thread).
# The benchmark measures both settings, so a larger model or a GPU where padding dominates can show it pays.
SPLIT_BELOW = 0.0


def last_logits_only(model) -> dict[str, int]:
    """`{"logits_to_keep": 1}` when the model's forward takes it, else `{}`: only the last position's logits are
    sampled from, and a prefill of an observation would otherwise project every fed position onto the whole
    vocabulary (64 rows x 40 tokens x 32,768 pieces is 84M logits a turn with Mistral's tokenizer, for 64 used).
    A PEFT wrapper passes keyword arguments to its base model, whose signature is the one read."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: do not guess
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


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
        self.keep = last_logits_only(model)

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
        short = [i for i, row in enumerate(live) if len(self.pending[row]) == 1]
        split_fed = len(short) + (len(live) - len(short)) * width
        if 0 < len(short) < len(live) and split_fed < SPLIT_BELOW * len(live) * width and self._splittable():
            logits = self._split_forward(input_ids, attention_mask, positions, short)
        else:
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask,
                position_ids=positions.to(self.device),
                past_key_values=self.cache,
                use_cache=True,
                **self.keep,
            )
            self.cache, logits = out.past_key_values, out.logits[:, -1, :]
        self.past_mask = attention_mask
        self.forwards += 1  # one per sampling step, split or not (the engine's rollout/forwards)
        tokens, logprobs = sample_next_tokens(logits.float(), self.sampling, generator)
        token_ids = tokens.tolist()
        for row, token in zip(live, token_ids):
            self.pending[row] = [token]
        return token_ids, logprobs.tolist()

    def _splittable(self) -> bool:
        """Only a filled cache of plain `DynamicLayer`s (no sliding window) is split and merged here."""
        layers = getattr(self.cache, "layers", [])
        return (
            bool(layers)
            and self.past_mask.shape[1] > 0
            and all(type(layer) is DynamicLayer for layer in layers)
        )

    def _split_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, short: list[int]
    ) -> torch.Tensor:
        """One step as two forwards: the `short` rows (one pending token) fed width 1, the others full width.

        Each group gets its rows of the cache, and their new key/value columns are merged back into one left-padded
        block of `width` columns, zeros where the single forward would have cached padding tokens. Those columns are
        masked out either way, and a row's computation never reads another row's, so the cache, the mask and the
        logits are the single forward's (up to float rounding of the smaller matmuls) and episodes stay token-exact.

        Args:
            input_ids: (B, W) left-padded pending tokens of every live row, on the CPU.
            attention_mask: (B, P + W) past and new mask, on the model's device.
            positions: (B, W) position ids, on the CPU.
            short: batch indices of the rows with one pending token.

        Returns:
            next-token logits, (B, V).
        """
        batch, width = input_ids.shape
        past = attention_mask.shape[1] - width
        short_rows = set(short)
        others = [i for i in range(batch) if i not in short_rows]
        old = [(layer.keys, layer.values) for layer in self.cache.layers]
        merged = [
            (
                keys.new_zeros(*keys.shape[:2], past + width, keys.shape[3]),
                values.new_zeros(*values.shape[:2], past + width, values.shape[3]),
            )
            for keys, values in old
        ]
        logits = None
        for rows, fed in ((short, 1), (others, width)):
            index = torch.tensor(rows, device=self.device)
            cache = DynamicCache()
            for layer_idx, (keys, values) in enumerate(old):
                cache.update(keys.index_select(0, index), values.index_select(0, index), layer_idx)
            rows_mask = attention_mask.index_select(0, index)
            out = self.model(
                input_ids=input_ids[rows, width - fed :].to(self.device),
                attention_mask=torch.cat([rows_mask[:, :past], rows_mask[:, past + width - fed :]], dim=1),
                position_ids=positions[rows, width - fed :].to(self.device),
                past_key_values=cache,
                use_cache=True,
                **self.keep,
            )
            for (keys, values), layer in zip(merged, out.past_key_values.layers):
                keys[index, :, past + width - fed :] = layer.keys[:, :, past:]
                values[index, :, past + width - fed :] = layer.values[:, :, past:]
            if logits is None:
                logits = out.logits.new_empty(batch, out.logits.shape[-1])
            logits[index] = out.logits[:, -1, :]
        for (keys, values), (old_keys, old_values), layer in zip(merged, old, self.cache.layers):
            keys[:, :, :past], values[:, :, :past] = old_keys, old_values
            # transformers' DynamicLayer holds its tensors as plain attributes
            layer.keys, layer.values = keys, values
        return logits

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

"""The HF backend asks the model for the last position's logits only (`logits_to_keep=1`): the one row it samples
from. It must change no token and no log-prob, and fall back to full logits for a model that lacks the argument."""

from __future__ import annotations

import torch

import rlft.rollout.hf_backend as hf_backend
from rlft.rollout.backend import Sampling


def _play(model, keep: dict | None):
    """Three sampling steps (prompts, an observation on one row, one-token rows); tokens, log-probs and the width
    of the logits each forward returned."""
    widths = []
    handle = model.register_forward_hook(lambda module, args, out: widths.append(out.logits.shape[1]))
    try:
        session = hf_backend.HFBackend().start(model, [list(range(5, 14)), list(range(5, 9))], Sampling(1.0))
        if keep is not None:
            session.keep = keep
        generator = torch.Generator().manual_seed(0)
        steps = [session.sample(generator)]
        session.extend(0, list(range(20, 30)))
        steps += [session.sample(generator), session.sample(generator)]
        session.close()
    finally:
        handle.remove()
    return steps, widths


def test_only_the_last_logits_are_computed_and_sampling_is_unchanged(frozen_lake_policy):
    _, model, _ = frozen_lake_policy
    assert hf_backend.last_logits_only(model) == {"logits_to_keep": 1}

    kept, kept_widths = _play(model, None)
    full, full_widths = _play(model, {})

    assert kept_widths == [1, 1, 1]
    assert full_widths == [9, 11, 1]  # the longest prompt, then the 10-token observation + the sampled token
    for (tokens_a, logprobs_a), (tokens_b, logprobs_b) in zip(kept, full, strict=True):
        assert tokens_a == tokens_b
        assert torch.allclose(torch.tensor(logprobs_a), torch.tensor(logprobs_b), atol=1e-6)


def test_a_forward_without_the_argument_gets_full_logits():
    class Old(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
            raise AssertionError("not called")

    class Wrapped(torch.nn.Module):  # a PEFT-style wrapper: its base model's signature is the one read
        def __init__(self, base):
            super().__init__()
            self.base = base

        def get_base_model(self):
            return self.base

        def forward(self, *args, **kwargs):
            return self.base(*args, **kwargs)

    class New(Old):
        def forward(self, input_ids, logits_to_keep=0, **kwargs):
            raise AssertionError("not called")

    assert hf_backend.last_logits_only(Old()) == {}
    assert hf_backend.last_logits_only(Wrapped(Old())) == {}
    assert hf_backend.last_logits_only(Wrapped(New())) == {"logits_to_keep": 1}

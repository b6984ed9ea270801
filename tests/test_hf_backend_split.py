"""The HF backend's split step (rlft.rollout.hf_backend.SPLIT_BELOW, off by default): one-token rows fed apart from
rows feeding an observation, their cache columns merged back. It must feed fewer padding positions and change
nothing else."""

from __future__ import annotations

import pytest
import torch

import rlft.rollout.hf_backend as hf_backend
from rlft.rollout.backend import Sampling


def _steps(model, monkeypatch, split_below: float):
    """Drive one session through steps whose rows feed 1 token or an observation of several, and a drop.

    Returns the (tokens, log-probs) of each step and the (model calls, fed positions, real positions)."""
    monkeypatch.setattr(hf_backend, "SPLIT_BELOW", split_below)
    fed = {"calls": 0, "positions": 0, "real": 0}

    def count(module, args, kwargs):
        width = kwargs["input_ids"].shape[1]
        fed["calls"] += 1
        fed["positions"] += kwargs["input_ids"].numel()
        fed["real"] += int(kwargs["attention_mask"][:, -width:].sum())

    prompts = [list(range(5, 5 + n)) for n in (9, 4, 12, 7, 9, 6)]
    observation = list(range(20, 34))  # 14 tokens
    generator = torch.Generator().manual_seed(0)
    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        session = hf_backend.HFBackend().start(model, prompts, Sampling(temperature=1.0))
        steps = [session.sample(generator)]  # prompts: every row long, no split
        session.extend(0, observation)
        session.extend(3, observation[:9])
        steps.append(session.sample(generator))  # rows 0 and 3 long, four rows of one token: split
        steps.append(session.sample(generator))  # every row one token
        session.drop([3])
        session.extend(5, observation)
        steps.append(session.sample(generator))  # after a drop, row 5 long: split
        steps.append(session.sample(generator))
        forwards = session.forwards
        session.close()
    finally:
        handle.remove()
    return steps, fed, forwards


def test_split_steps_feed_less_padding_and_give_the_single_forwards_tokens(frozen_lake_policy, monkeypatch):
    _, model, _ = frozen_lake_policy
    split, split_fed, split_forwards = _steps(model, monkeypatch, 0.75)
    single, single_fed, single_forwards = _steps(model, monkeypatch, 0.0)  # 0.0: never split

    assert single_fed["calls"] == single_forwards == 5
    assert split_fed["calls"] == 7  # the two mixed steps ran as two forwards each
    assert split_forwards == 5  # `forwards` (rollout/forwards) still counts sampling steps
    assert split_fed["real"] == single_fed["real"]  # the same real tokens went in
    # step 2: 6 rows x 15 columns single, 4 x 1 + 2 x 15 split; step 4: 5 x 15 against 4 x 1 + 1 x 15
    assert single_fed["positions"] - split_fed["positions"] == (90 - 34) + (75 - 19)
    for (tokens_a, logprobs_a), (tokens_b, logprobs_b) in zip(split, single, strict=True):
        assert tokens_a == tokens_b
        assert logprobs_a == pytest.approx(logprobs_b, abs=1e-5)

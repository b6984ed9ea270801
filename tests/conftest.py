"""Shared fixtures: a tiny policy for a text env, built locally (nothing downloaded)."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio reads TRACKIO_DIR once, on first import (by whichever test gets there first): a session-wide temporary
# store, never the user's ~/.cache/huggingface/trackio.
_TRACKIO_DIR = tempfile.mkdtemp(prefix="rlft-test-trackio-")
os.environ["TRACKIO_DIR"] = _TRACKIO_DIR
atexit.register(shutil.rmtree, _TRACKIO_DIR, True)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# The embedded model at test size (2 layers, 32 wide): the `model` section of every tiny test config.
TINY_MODEL = {
    "tiny": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "corpus_episodes": 40,
    }
}


def tiny_config(env_id: str = "rlft/FrozenLakeRandom-v0", **sections):
    from rlft.stages.checks import load_checked_config

    raw = {
        "name": "test",
        "model": copy.deepcopy(TINY_MODEL),
        "env": {"id": env_id, "max_turns": 8},
        "rollout": {"max_action_tokens": 3},
        "tracking": {"wandb": {"enabled": False}},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return load_checked_config(raw=raw)


@pytest.fixture(scope="session")
def frozen_lake_policy():
    """(config, model, tokenizer) for random 4x4 FrozenLake, random weights."""
    from rlft.models.policy import load_policy
    from rlft.stages.common import env_factory

    config = tiny_config()
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    return config, model, tokenizer

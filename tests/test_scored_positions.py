"""GRPO's log-probs scored only where its loss reads them (rlft.algorithms.trl_bridge, "scored positions only"):
the completion positions of sampled tokens, not the env's observation tokens between them. The numbers there, and
their gradients, must be TRL's own; the LM head must project those positions only."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from rlft.algorithms import trl_bridge
from rlft.algorithms.trl_bridge import BridgedGRPOTrainer, loss_positions

TEMPERATURE = 0.7
KEEP = 7  # completion length (logits_to_keep)


def _model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    model = Qwen2ForCausalLM(config)
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return model


def _trainer() -> BridgedGRPOTrainer:
    trainer = object.__new__(BridgedGRPOTrainer)  # only what the method reads: the accelerator's autocast
    trainer.accelerator = Accelerator(cpu=True)
    return trainer


def _batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 97, (4, 12), generator=generator)
    attention_mask = torch.ones(4, 12, dtype=torch.long)
    attention_mask[1, :3] = 0  # left padding in the prompt
    scored = torch.tensor(
        [
            [1, 1, 0, 0, 0, 1, 1],  # action, observation, action
            [0, 0, 0, 0, 0, 0, 0],  # nothing to train on
            [1, 1, 1, 1, 1, 1, 1],
            [1, 0, 1, 0, 1, 0, 1],
        ]
    )
    return input_ids, attention_mask, scored


def _logps(trainer, model, input_ids, attention_mask):
    return trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, KEEP, batch_size=3, compute_entropy=True
    )


def test_scored_positions_get_trls_numbers_and_gradients_and_the_rest_zero():
    input_ids, attention_mask, scored = _batch()
    mask = scored.bool()

    full_model, part_model = _model(), _model()
    trainer = _trainer()
    full_logps, full_entropy, _ = _logps(trainer, full_model, input_ids, attention_mask)  # TRL's own path
    trainer.scored_positions = scored
    part_logps, part_entropy, _ = _logps(trainer, part_model, input_ids, attention_mask)

    # By hand, from the model's plain logits: log_softmax(logits / T) of each next token.
    with torch.no_grad():
        logits = (
            full_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -KEEP - 1 : -1]
            / TEMPERATURE
        )
    by_hand = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, -KEEP:, None]).squeeze(-1)
    assert torch.allclose(full_logps.detach(), by_hand, atol=1e-5)

    assert torch.allclose(part_logps[mask], full_logps[mask], atol=1e-6)
    assert torch.allclose(part_entropy[mask], full_entropy[mask], atol=1e-6)
    assert (part_logps[~mask] == 0).all() and (part_entropy[~mask] == 0).all()

    (full_logps * mask).sum().backward()
    (part_logps * mask).sum().backward()
    for (name, a), (_, b) in zip(full_model.named_parameters(), part_model.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_only_the_scored_positions_reach_the_lm_head(monkeypatch):
    input_ids, attention_mask, scored = _batch()
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    trainer = _trainer()
    _logps(trainer, _model(), input_ids, attention_mask)
    assert sum(rows) == 4 * 11  # TRL on CPU: every position of each chunk, prompt and padding too
    rows.clear()
    trainer.scored_positions = scored
    _logps(trainer, _model(), input_ids, attention_mask)
    assert sum(rows) == int(scored.sum()) == 15


def test_compact_scoring_is_switched_on_for_the_call_only():
    original = trl_utils._use_triton
    with trl_bridge.compact_fused_head():
        assert trl_utils._use_triton(torch.device("cpu"))
    assert trl_utils._use_triton is original
    assert not original(torch.device("cpu"))


def test_without_a_matching_mask_trls_path_runs(monkeypatch):
    input_ids, attention_mask, scored = _batch()
    calls = []
    monkeypatch.setattr(
        GRPOTrainer, "_get_per_token_logps_and_entropies", lambda self, model, *a, **k: calls.append(model)
    )
    trainer, model = _trainer(), object()
    for positions in (None, scored[:2], scored[:, :3]):  # none, or another shape than (B, logits_to_keep)
        trainer.scored_positions = positions
        _logps(trainer, model, input_ids, attention_mask)
    assert calls == [model, model, model]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"completion_mask": torch.tensor([[1, 1, 0]]), "tool_mask": torch.tensor([[1, 0, 1]])}, [[1, 0, 0]]),
        ({"completion_mask": torch.tensor([[1, 1, 0]])}, [[1, 1, 0]]),
        ({"prompt_ids": torch.tensor([[1]])}, None),
    ],
)
def test_the_loss_positions_are_trls_mask(inputs, expected):
    positions = loss_positions(inputs)
    assert (positions is None) if expected is None else positions.tolist() == expected

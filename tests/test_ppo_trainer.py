"""PPO inside TRL's loop on tiny runs: the loss against hand numbers, ratio 1 on a fresh rollout, every parameter
trained, the critic saved / reloaded / reused, critic init from a reward model, and config checks.

The loss tests call `PPOTrainer.compute_loss` on small hand-made tensors with the policy's log-probs (the TRL
bridge's `per_token_logps_and_entropies`) and the critic's values replaced by chosen numbers (torchtune's loss
tests are the model); the rollout-scoring tests hand `score_generation_batch` a RolloutBatch of chosen episodes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlft import stages
from rlft.algorithms import ppo as ppo_module
from rlft.algorithms import registry, trl_bridge
from rlft.algorithms.kl_control import FixedKLController
from rlft.algorithms.ppo import build_ppo_trainer
from rlft.core.batch import RolloutBatch
from rlft.core.losses import entropy_from_logits, ppo_objective
from rlft.errors import ConfigError
from rlft.models.critic import ATTRIBUTE, ValueModel, build_critic, load_critic
from rlft.rollout.engine import RolloutEngine
from rlft.runtime.tracking import read_metrics
from rlft.stages import common as stage_common
from rlft.stages import rl as stage_rl
from tests.conftest import tiny_config

ENV = "rlft/CliffWalking-v0"


def ppo_config(out: Path, name: str, trainer: dict | None = None, rollout: dict | None = None):
    # CliffWalking with a penalty for unparsable actions: returns differ between episodes from the first step.
    # 6 turns: episodes are cut by the turn cap, so the critic's bootstrap is used too.
    return tiny_config(
        ENV,
        output_dir=str(out),
        name=name,
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6},
        rl={
            "algorithm": "ppo",
            "init_from": "base",
            "trainer": {"per_device_train_batch_size": 2, "learning_rate": 1e-2, **(trainer or {})},
        },
        rollout={"num_envs": 4, **(rollout or {})},
    )


def build_trainer(config):
    """A PPOTrainer on the run's base checkpoint, built as run_rl builds it (nothing trained)."""
    model, tokenizer = stage_common.load_trainable(stage_common.ensure_base_checkpoint(config), config)
    engine = RolloutEngine(
        None,
        tokenizer,
        stage_common.turn_format_for(config, tokenizer),
        stage_common.env_factory(config),
        stage_common.sampling_settings(config),
    )
    trainer, _ = build_ppo_trainer(
        model,
        tokenizer,
        stage_rl.rl_trainer_args(config),
        engine,
        list(range(100)),
        batch_size=config.rollout.num_envs,
    )
    return trainer


def some_ids(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 10 tokens, the second left-padded by 3."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 10), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


# ============================================================================ the loss against hand numbers

# B = 2 rows, P = 2 prompt tokens (row 1 left-padded), T = 4 completion tokens.
# Row 0: a a o a (position 2 is an environment token: tool_mask 0). Row 1: a a a p (right padding).
# The loss mask completion_mask * tool_mask holds 6 tokens.
PROMPT_IDS = [[5, 6], [0, 7]]
PROMPT_MASK = [[1, 1], [0, 1]]
COMPLETION_IDS = [[8, 9, 10, 11], [12, 13, 14, 0]]
COMPLETION_MASK = [[1, 1, 1, 1], [1, 1, 1, 0]]
TOOL_MASK = [[1, 1, 0, 1], [1, 1, 1, 1]]
ADVANTAGES = [[1.0, -1.0, 7.0, 2.0], [-0.5, 0.5, 1.0, 9.0]]
OLD_LOGPS = [[-1.0, -1.0, 0.0, -2.0], [-0.5, -1.5, -1.0, 0.0]]
# Ratios pi / pi_old chosen per token (the 3.0s are outside the loss mask). With epsilon 0.2, the clipped
# surrogate -min(r * A, clip(r, 0.8, 1.2) * A) per token:
#   (0,0) r 1.5, A +1:   -min(1.5, 1.2)          = -1.2   (clipped high)
#   (0,1) r 0.5, A -1:   -min(-0.5, -0.8)        =  0.8   (clipped low)
#   (0,3) r 1.1, A +2:   -min(2.2, 2.2)          = -2.2
#   (1,0) r 0.7, A -0.5: -min(-0.35, -0.4)       =  0.4   (clipped low)
#   (1,1) r 0.7, A +0.5: -min(0.35, 0.4)         = -0.35  (below the range but A > 0: not clipped)
#   (1,2) r 1.0, A +1:   -min(1.0, 1.0)          = -1.0
#   sum = -1.2 + 0.8 - 2.2 + 0.4 - 0.35 - 1.0 = -3.55
RATIOS = [[1.5, 0.5, 3.0, 1.1], [0.7, 0.7, 1.0, 3.0]]
POLICY_SUM = -3.55
# TRL's "dapo" loss: sum over the minibatch's tokens / (num_items_in_batch / processes * grad_accum / steps_per_gen).
# num_items_in_batch counts the loss tokens of the whole generation batch (steps_per_generation = 2
# minibatches): 10 here, so with gradient accumulation 1 the divisor is 10 * 1 / 2 = 5.
NUM_ITEMS = 10.0
# Critic values at the completion tokens (read at full positions P - 1 .. P + T - 2), old values, returns.
# Value clip 0.2; per token 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clamp(V - V_old, +-0.2):
#   (0,0) V 1.0,  old 0.5, R 2.0:  (1.0)^2 = 1.0,   V_clip 0.7  -> 1.69   max 1.69 (clipped)
#   (0,1) V 0.5,  old 0.4, R 0.0:  0.25,            V_clip 0.5  -> 0.25   max 0.25
#   (0,2) environment token, not in value_mask
#   (0,3) V -0.4, old 0.0, R -1.0: 0.36,            V_clip -0.2 -> 0.64   max 0.64 (clipped)
#   (1,0) V 2.0,  old 0.0, R 0.1:  3.61,            V_clip 0.2  -> 0.01   max 3.61
#   (1,1) V 0.3,  old 0.3, R 0.5:  0.04,            V_clip 0.3  -> 0.04   max 0.04
#   (1,2) V 0.0,  old 0.1, R 0.0:  0.0,             V_clip 0.0  -> 0.0    max 0.0
#   (1,3) padding, not in value_mask
#   clipped: 0.5 * (1.69 + 0.25 + 0.64 + 3.61 + 0.04 + 0.0) / 6 = 0.5 * 6.23 / 6
#   unclipped: 0.5 * (1.0 + 0.25 + 0.36 + 3.61 + 0.04 + 0.0) / 6 = 0.5 * 5.26 / 6
VALUES = [[1.0, 0.5, 9.0, -0.4], [2.0, 0.3, 0.0, 50.0]]
OLD_VALUES = [[0.5, 0.4, 0.0, 0.0], [0.0, 0.3, 0.1, 0.0]]
RETURNS = [[2.0, 0.0, 5.0, -1.0], [0.1, 0.5, 0.0, -50.0]]
VALUE_MASK = [[1, 1, 0, 1], [1, 1, 1, 0]]
VALUE_LOSS_CLIPPED = 0.5 * 6.23 / 6
VALUE_LOSS_UNCLIPPED = 0.5 * 5.26 / 6
# log(pi_ref) - log(pi) per token for the KL term (9.0 outside the loss mask); TRL's k3 = e^d - d - 1:
#   k3(ln 2) = 2 - ln 2 - 1 = 1 - ln 2;  k3(-ln 2) = 1/2 + ln 2 - 1 = ln 2 - 1/2;  k3(0) = 0
#   masked sum: 2 * (1 - ln 2) + 2 * (ln 2 - 1/2) + 2 * 0 = 1.0
LN2 = math.log(2.0)
REF_MINUS_LOGP = [[LN2, 0.0, 9.0, -LN2], [0.0, LN2, -LN2, 9.0]]
KL_SUM = 1.0


def t(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


@pytest.fixture(scope="module")
def loss_trainer(tmp_path_factory):
    trainer = build_trainer(ppo_config(tmp_path_factory.mktemp("loss"), "loss"))
    assert trainer.epsilon_low == trainer.epsilon_high == 0.2
    assert trainer.args.steps_per_generation == 2 and trainer.args.vf_coef == 0.5
    assert trainer.args.cliprange_value == 0.2 and trainer.args.entropy_coef == 0.0
    return trainer


@pytest.fixture
def loss_inputs(loss_trainer, monkeypatch):
    """The hand-made minibatch, with the policy's log-probs and the critic's values patched to the numbers above."""
    trainer = loss_trainer
    logps = t(OLD_LOGPS) + torch.log(t(RATIOS))
    entropies = torch.full((2, 4), 0.5)
    calls = {}

    def fake_logps(
        trainer_, model, input_ids, attention_mask, logits_to_keep, compute_entropy=False, batch_size=None
    ):
        calls["policy"] = (input_ids, attention_mask, logits_to_keep)
        calls["logps"] = logps.clone().requires_grad_(True)
        return calls["logps"], entropies

    full_values = torch.zeros(2, 6)  # (B, P + T): position P - 1 + t holds V before completion token t
    full_values[:, 1:5] = t(VALUES)
    full_values[:, 0] = full_values[:, 5] = 123.0  # never read

    def fake_critic(input_ids, attention_mask=None):
        calls["critic"] = (input_ids, attention_mask)
        return full_values.clone().requires_grad_(True)

    # The seam through which PPO gets TRL's per-token log-probs (rlft/algorithms/trl_bridge.py).
    monkeypatch.setattr(trl_bridge, "per_token_logps_and_entropies", fake_logps)
    monkeypatch.setattr(trainer.critic, "forward", fake_critic)
    monkeypatch.setattr(trainer.args, "cliprange_value", 0.2)
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 1, raising=False)
    trainer.model.train()
    inputs = {
        "prompt_ids": t(PROMPT_IDS, torch.long),
        "prompt_mask": t(PROMPT_MASK, torch.long),
        "completion_ids": t(COMPLETION_IDS, torch.long),
        "completion_mask": t(COMPLETION_MASK, torch.long),
        "env_mask": t(TOOL_MASK, torch.long),
        "advantages": t(ADVANTAGES),
        "old_logprobs": t(OLD_LOGPS),
        "returns": t(RETURNS),
        "old_values": t(OLD_VALUES),
        "value_mask": t(VALUE_MASK),
        "num_items_in_batch": torch.tensor(NUM_ITEMS),
        "kl_coef": torch.tensor(0.0),
    }
    return trainer, inputs, calls


def test_ppo_loss_equals_hand_numbers(loss_inputs):
    trainer, inputs, calls = loss_inputs
    metrics = trl_bridge.metrics(trainer)
    metrics.clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    # policy: -3.55 / (10 / 2) = -0.71; value: 0.5 * (0.5 * 6.23 / 6); total -0.71 + 0.25958333...
    expected = POLICY_SUM / (NUM_ITEMS / 2) + 0.5 * VALUE_LOSS_CLIPPED
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(-0.45041667, abs=1e-7)
    # the policy and the critic saw prompt + completion, with the padded attention mask
    ids, mask, keep = calls["policy"]
    assert keep == 4 and ids.tolist() == [[5, 6, 8, 9, 10, 11], [0, 7, 12, 13, 14, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]]
    assert torch.equal(calls["critic"][0], ids) and torch.equal(calls["critic"][1], mask)
    # The logged terms are the ones that train: the policy loss -3.55 / 5, the value loss; value clip fraction
    # 2 / 6 ((0,0) and (0,3)); the largest |ratio - 1| on loss tokens 0.5 (the 3.0s are masked out)
    assert metrics["ppo/policy_loss"][-1] == pytest.approx(POLICY_SUM / (NUM_ITEMS / 2), abs=1e-5)
    assert metrics["ppo/value_loss"][-1] == pytest.approx(VALUE_LOSS_CLIPPED, abs=1e-5)
    assert metrics["ppo/value_clipfrac"][-1] == pytest.approx(2 / 6, abs=1e-6)
    assert metrics["ppo/ratio_max_deviation"][-1] == pytest.approx(0.5, abs=1e-5)
    # clip counters agree with the table: high-clipped (0,0); low-clipped (0,1) and (1,0), out of 6
    assert metrics["clip_ratio/high_mean"][-1] == pytest.approx(1 / 6, abs=1e-6)
    assert metrics["clip_ratio/low_mean"][-1] == pytest.approx(2 / 6, abs=1e-6)
    assert "kl" not in metrics  # no KL term in this batch's loss


def test_ppo_loss_without_value_clipping(loss_inputs, monkeypatch):
    trainer, inputs, _ = loss_inputs
    monkeypatch.setattr(trainer.args, "cliprange_value", None)
    loss = trainer.compute_loss(trainer.model, inputs)
    expected = POLICY_SUM / (NUM_ITEMS / 2) + 0.5 * VALUE_LOSS_UNCLIPPED  # -0.71 + 0.5 * 0.43833...
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert abs(VALUE_LOSS_CLIPPED - VALUE_LOSS_UNCLIPPED) > 0.04  # the two cases are told apart


def test_ppo_loss_with_gradient_accumulation(loss_inputs, monkeypatch):
    trainer, inputs, _ = loss_inputs
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 2)
    loss = trainer.compute_loss(trainer.model, inputs)
    # policy divisor 10 * 2 / 2 = 10; the value loss is divided by the accumulation steps: -0.355 + 0.1297916...
    expected = POLICY_SUM / 10 + 0.5 * VALUE_LOSS_CLIPPED / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_ppo_loss_gradient_skips_clipped_tokens(loss_inputs):
    """d loss / d log pi is 0 on clipped tokens and -r * A / 5 elsewhere (divisor 5), 0 off the mask."""
    trainer, inputs, calls = loss_inputs
    loss = trainer.compute_loss(trainer.model, inputs)
    (grad,) = torch.autograd.grad(loss, calls["logps"])
    # unclipped: (0,3) -1.1 * 2 / 5 = -0.44; (1,1) -0.7 * 0.5 / 5 = -0.07; (1,2) -1.0 * 1 / 5 = -0.2
    expected = [[0.0, 0.0, 0.0, -0.44], [0.0, -0.07, -0.2, 0.0]]
    torch.testing.assert_close(grad, t(expected), atol=1e-6, rtol=0.0)


def test_kl_loss_mode_adds_beta_times_k3(loss_inputs, monkeypatch):
    trainer, inputs, _ = loss_inputs
    logps = t(OLD_LOGPS) + torch.log(t(RATIOS))
    inputs["ref_logprobs"] = logps + t(REF_MINUS_LOGP)
    inputs["kl_coef"] = torch.tensor(0.1)  # the batch's loss-mode coefficient, set at rollout time
    ppo = POLICY_SUM / (NUM_ITEMS / 2) + 0.5 * VALUE_LOSS_CLIPPED
    # Plain k3: beta * (masked sum of k3) / divisor = 0.1 * 1.0 / 5 = 0.02 on top of the PPO loss.
    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", False)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.item() == pytest.approx(ppo + 0.1 * KL_SUM / (NUM_ITEMS / 2), abs=1e-5)
    assert trl_bridge.metrics(trainer)["kl"][-1] == pytest.approx(
        KL_SUM / 5, abs=1e-5
    )  # the term as it trains
    # TRL's default (use_bias_correction_kl=True) weighs each token's k3 by its ratio:
    #   1.5 (1 - ln 2) + 1.1 (ln 2 - 1/2) + 0.7 (1 - ln 2) + 1.0 (ln 2 - 1/2) = 1.15 - 0.1 ln 2
    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", True)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.item() == pytest.approx(ppo + 0.1 * (1.15 - 0.1 * LN2) / (NUM_ITEMS / 2), abs=1e-5)


# ============================================================================ rollout scoring against hand numbers

# Two episodes as TRL hands them to PPO after the rollout: P = 2 (row 1 left-padded), T = 5.
#   row 0: a a o a p, terminated; actions end at 1 and 3 with env rewards 0 and 1.
#   row 1: a o o a a, truncated by the turn cap; actions end at 0 and 4 with rewards -1 and 0.5; its final
#          observation (tokens 20 21) is appended for the critic, whose value after it (2.0) is the bootstrap.
# The critic's value table (B, P + T + 2): position P - 1 + t is V before completion token t; 50.0 marks
# values that must never be read (environment tokens, padding, past the end).
SCORE_PROMPT = [[5, 6], [0, 7]]
SCORE_COMPLETION = [[8, 9, 10, 11, 0], [12, 13, 14, 15, 16]]
SCORE_COMPLETION_MASK = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
SCORE_TOOL_MASK = [[1, 1, 0, 1, 1], [1, 0, 0, 1, 1]]
SCORE_MASK = [[1, 1, 0, 1, 0], [1, 0, 0, 1, 1]]
SAMPLING_LOGPS = [[-0.5, -0.6, -9.0, -0.7, 0.0], [-0.1, -9.0, -9.0, -0.2, -0.3]]
SCORE_VALUES = [[0.2, 0.4, 50.0, 0.1, 50.0], [0.5, 50.0, 50.0, 0.3, 0.6]]
BOOTSTRAP = 2.0


def score_episodes():
    from rlft.core.episode import Episode

    return [
        Episode(
            seed=0,
            prompt_ids=[5, 6],
            completion_ids=[8, 9, 10, 11],
            mask=[1, 1, 0, 1],
            logprobs=SAMPLING_LOGPS[0][:4],
            action_ends=[1, 3],
            rewards={"env": [0.0, 1.0]},
            terminated=True,
        ),
        Episode(
            seed=1,
            prompt_ids=[7],
            completion_ids=[12, 13, 14, 15, 16],
            mask=[1, 0, 0, 1, 1],
            logprobs=SAMPLING_LOGPS[1],
            action_ends=[0, 4],
            rewards={"env": [-1.0, 0.5]},
            truncated=True,
            final_observation_ids=[20, 21],
        ),
    ]


@pytest.fixture
def scoring(loss_trainer, monkeypatch):
    """`score_generation_batch` with the rollout replaced by the hand-made episodes above (a RolloutBatch built
    from them, as `EpisodeRollout.play` builds it), the critic by the value table, and the reference policy's
    log-probs by `seen["ref"]` when a test sets it."""
    trainer = loss_trainer
    seen = {}
    full = torch.full((2, 9), 50.0)
    full[:, 1:6] = t(SCORE_VALUES)
    full[1, 8] = BOOTSTRAP

    def fake_critic(input_ids, attention_mask=None):
        seen["critic"] = (input_ids, attention_mask)
        return full.clone()

    def fake_reference(trainer_, input_ids, attention_mask, logits_to_keep, batch_size=None):
        seen["reference_called"] = True
        return seen["ref"]

    monkeypatch.setattr(
        trainer.episode_rollout,
        "play",
        lambda prompts, trainer_: RolloutBatch.from_episodes(score_episodes(), pad_id=0),
    )
    monkeypatch.setattr(trl_bridge, "reference_logps", fake_reference)
    monkeypatch.setattr(trainer.critic, "forward", fake_critic)
    for key, value in {
        "gamma": 0.9,
        "lam": 0.8,
        "whiten_advantages": False,
        "advantage_level": "token",
        "kl_penalty": "reward",
    }.items():
        monkeypatch.setattr(trainer.args, key, value)
    monkeypatch.setattr(trainer, "kl_controller", FixedKLController(0.0))
    trl_bridge.metrics(trainer).clear()
    return trainer, seen


def test_rollout_scoring_token_gae_skips_env_tokens_and_bootstraps_truncated_episodes(scoring):
    trainer, seen = scoring
    scored = trainer.score_generation_batch([{"prompt": "unused"}])
    # The critic saw prompt + completion, with row 1's final observation appended right after its completion.
    ids, att = seen["critic"]
    assert ids.tolist() == [[5, 6, 8, 9, 10, 11, 0, 0, 0], [0, 7, 12, 13, 14, 15, 16, 20, 21]]
    assert att.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1]]
    # gamma 0.9, lam 0.8 (0.72), over model tokens only:
    # row 0 (r at 1: 0, at 3: 1; V 0.2, 0.4, 0.1; terminated):
    #   pos 3: delta = 1 - 0.1 = 0.9                        A = 0.9
    #   pos 1: delta = 0 + 0.9 * 0.1 - 0.4 = -0.31          A = -0.31 + 0.72 * 0.9  = 0.338
    #   pos 0: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16           A = 0.16 + 0.72 * 0.338 = 0.40336
    # row 1 (r at 0: -1, at 4: 0.5; V 0.5, 0.3, 0.6; bootstrap 2.0):
    #   pos 4: delta = 0.5 + 0.9 * 2.0 - 0.6 = 1.7          A = 1.7
    #   pos 3: delta = 0 + 0.9 * 0.6 - 0.3 = 0.24           A = 0.24 + 0.72 * 1.7   = 1.464
    #   pos 0: delta = -1 + 0.9 * 0.3 - 0.5 = -1.23         A = -1.23 + 0.72 * 1.464 = -0.17592
    close = dict(atol=1e-6, rtol=0.0)
    torch.testing.assert_close(
        scored["advantages"], t([[0.40336, 0.338, 0, 0.9, 0], [-0.17592, 0, 0, 1.464, 1.7]]), **close
    )
    torch.testing.assert_close(
        scored["returns"], t([[0.60336, 0.738, 0, 1.0, 0], [0.32408, 0, 0, 1.764, 2.3]]), **close
    )
    torch.testing.assert_close(scored["old_values"], t(SCORE_VALUES), **close)
    assert scored["value_mask"].tolist() == SCORE_MASK
    # the behaviour log-probs are the ratio's "old" log-probs, 0 off the model tokens
    torch.testing.assert_close(scored["old_logprobs"], t(SAMPLING_LOGPS) * t(SCORE_MASK), **close)
    assert "reference_called" not in seen and scored["kl_coef"].item() == 0.0  # no KL anywhere
    assert "ref_logprobs" not in scored
    assert trl_bridge.metrics(trainer)["ppo/truncated_bootstrapped"][-1] == 0.5


def test_rollout_scoring_turn_gae(scoring, monkeypatch):
    trainer, _ = scoring
    monkeypatch.setattr(trainer.args, "advantage_level", "turn")
    scored = trainer.score_generation_batch([{"prompt": "unused"}])
    # One step per action, V at each action's first token:
    # row 0: actions {0, 1} (reward 0, V 0.2) and {3} (reward 1, V 0.1), terminated:
    #   turn 2: A = 1 - 0.1 = 0.9;  turn 1: delta = 0 + 0.9 * 0.1 - 0.2 = -0.11, A = -0.11 + 0.72 * 0.9 = 0.538
    # row 1: actions {0} (reward -1, V 0.5) and {3, 4} (reward 0.5, V 0.3), bootstrap 2.0:
    #   turn 2: A = 0.5 + 0.9 * 2.0 - 0.3 = 2.0;  turn 1: delta = -1 + 0.9 * 0.3 - 0.5 = -1.23, A = -1.23 + 1.44 = 0.21
    close = dict(atol=1e-6, rtol=0.0)
    torch.testing.assert_close(
        scored["advantages"], t([[0.538, 0.538, 0, 0.9, 0], [0.21, 0, 0, 2.0, 2.0]]), **close
    )
    torch.testing.assert_close(scored["returns"], t([[0.738, 0, 0, 1.0, 0], [0.71, 0, 0, 2.3, 0]]), **close)
    assert scored["value_mask"].tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 1, 0]]


def test_rollout_scoring_kl_reward_penalty_whitening_and_adaptive_coefficient(scoring, monkeypatch):
    from rlft.algorithms.kl_control import AdaptiveKLController

    trainer, seen = scoring
    seen["ref"] = t(SAMPLING_LOGPS) - 1.0  # log pi_behaviour - log pi_ref = 1 on every model token
    monkeypatch.setattr(trainer.args, "whiten_advantages", True)
    monkeypatch.setattr(trainer, "kl_controller", AdaptiveKLController(0.1, target=0.5, horizon=100))
    scored = trainer.score_generation_batch([{"prompt": "unused"}])
    assert seen["reference_called"]  # the reference policy's log-probs are computed ...
    assert scored["kl_coef"].item() == 0.0 and "ref_logprobs" not in scored  # ... but the loss has no KL term
    # Every model token's reward gets -0.1 * 1 = -0.1:
    # row 0: r = [-0.1, -0.1, ., 0.9]
    #   pos 3: A = 0.9 - 0.1 = 0.8;  pos 1: delta = -0.1 + 0.09 - 0.4 = -0.41, A = -0.41 + 0.576 = 0.166
    #   pos 0: delta = -0.1 + 0.36 - 0.2 = 0.06, A = 0.06 + 0.72 * 0.166 = 0.17952
    # row 1: r = [-1.1, ., ., -0.1, 0.4], bootstrap 2.0
    #   pos 4: A = 0.4 + 1.8 - 0.6 = 1.6;  pos 3: delta = -0.1 + 0.54 - 0.3 = 0.14, A = 0.14 + 1.152 = 1.292
    #   pos 0: delta = -1.1 + 0.27 - 0.5 = -1.33, A = -1.33 + 0.72 * 1.292 = -0.39976
    raw = [0.17952, 0.166, 0.8, -0.39976, 1.292, 1.6]
    mean = sum(raw) / 6
    std = math.sqrt(sum((a - mean) ** 2 for a in raw) / 6)
    whitened = scored["advantages"][t(SCORE_MASK).bool()]
    torch.testing.assert_close(whitened, t([(a - mean) / std for a in raw]), atol=1e-5, rtol=0.0)
    assert scored["advantages"][~t(SCORE_MASK).bool()].abs().max().item() == 0.0
    # returns are not whitened: R = A + V
    torch.testing.assert_close(
        scored["returns"], t([[0.37952, 0.566, 0, 0.9, 0], [0.10024, 0, 0, 1.592, 2.2]]), atol=1e-6, rtol=0.0
    )
    metrics = trl_bridge.metrics(trainer)
    assert metrics["kl"][-1] == pytest.approx(1.0, abs=1e-6) and metrics["kl_coef"][-1] == 0.1
    # KL 1.0 vs target 0.5: error 1.0 clipped to 0.2; 2 episodes: 0.1 * (1 + 0.2 * 2 / 100) = 0.1004
    assert trainer.kl_controller.value == pytest.approx(0.1004, abs=1e-12)


def test_rollout_scoring_kl_loss_mode_leaves_rewards_alone(scoring, monkeypatch):
    trainer, seen = scoring
    seen["ref"] = t(SAMPLING_LOGPS) - 1.0
    monkeypatch.setattr(trainer.args, "kl_penalty", "loss")
    monkeypatch.setattr(trainer, "kl_controller", FixedKLController(0.1))
    scored = trainer.score_generation_batch([{"prompt": "unused"}])
    assert scored["kl_coef"].item() == pytest.approx(0.1)  # the loss carries the KL term ...
    torch.testing.assert_close(scored["ref_logprobs"], seen["ref"])  # ... against these reference log-probs
    # the same advantages as without any KL
    torch.testing.assert_close(
        scored["advantages"],
        t([[0.40336, 0.338, 0, 0.9, 0], [-0.17592, 0, 0, 1.464, 1.7]]),
        atol=1e-6,
        rtol=0.0,
    )
    # logged rollout KL: TRL's k3 with log pi_ref - log pi = -1: e^-1 + 1 - 1 = e^-1
    assert trl_bridge.metrics(trainer)["ppo/rollout_kl"][-1] == pytest.approx(math.exp(-1.0), abs=1e-6)


# ============================================================================ tiny PPO runs

RUNS = {
    # critic, rollout temperature, KL mode, advantage level
    "separate": {
        "critic": "separate",
        "temperature": 1.0,
        "kl_penalty": "reward",
        "advantage_level": "token",
    },
    "shared": {"critic": "shared", "temperature": 0.7, "kl_penalty": "loss", "advantage_level": "turn"},
}


def train_ppo(out: Path, kind: str) -> dict:
    """run_rl with PPO for 5 optimizer steps (2 rollouts: 2 epochs x 2 minibatches each, then a fresh one).

    Captures the trainer, its parameters before training, and every minibatch's policy ratio.
    """
    spec = RUNS[kind]
    config = ppo_config(
        out,
        kind,
        trainer={
            "max_steps": 5,
            "critic": spec["critic"],
            "kl_coef": 0.05,
            "kl_penalty": spec["kl_penalty"],
            "advantage_level": spec["advantage_level"],
        },
        rollout={"temperature": spec["temperature"]},
    )
    captured: dict = {"ratios": []}
    entry = registry.ALGORITHMS["ppo"]

    def capturing_build(*args, **kwargs):
        trainer, rollout = entry.build(*args, **kwargs)
        captured["trainer"] = trainer
        captured["before"] = {
            n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
        }
        return trainer, rollout

    def capturing_objective(logprobs, old_logprobs, advantages, mask, *args, **kwargs):
        # The ratio of every minibatch, as the objective computes it, and whether it is a fresh rollout's first.
        trainer = captured["trainer"]
        ratio = torch.exp(logprobs.detach() - old_logprobs)[mask.bool()]
        captured["ratios"].append((trl_bridge.micro_step(trainer), trl_bridge.fresh_rollout(trainer), ratio))
        return ppo_objective(logprobs, old_logprobs, advantages, mask, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.ALGORITHMS, "ppo", dataclasses.replace(entry, build=capturing_build))
        mp.setattr(ppo_module, "ppo_objective", capturing_objective)
        path = stages.run_rl(config)
    return {"config": config, "path": path, **captured}


@pytest.fixture(scope="module")
def separate_run(tmp_path_factory):
    return train_ppo(tmp_path_factory.mktemp("ppo_separate"), "separate")


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    return train_ppo(tmp_path_factory.mktemp("ppo_shared"), "shared")


@pytest.fixture(params=list(RUNS))
def ppo_run(request):
    return request.getfixturevalue(f"{request.param}_run")


def test_ratio_is_one_on_the_first_minibatch_of_a_fresh_rollout(ppo_run):
    """Behaviour log-probs (rollout, temperature-scaled) equal the trainer's log-probs before any update."""
    assert ppo_run["trainer"].args.temperature == ppo_run["config"].rollout.temperature
    steps = [step for step, _, _ in ppo_run["ratios"]]
    assert steps == [0, 1, 2, 3, 4]
    fresh = [(step, ratio) for step, is_fresh, ratio in ppo_run["ratios"] if is_fresh]
    assert [step for step, _ in fresh] == [0, 4]
    for step, ratio in fresh:
        assert ratio.numel() > 0
        assert (ratio - 1).abs().max().item() < 1e-5, f"step {step}"
    # The policy moved in between: later minibatches of the same rollout do not have ratio 1.
    later = torch.cat([ratio for _, is_fresh, ratio in ppo_run["ratios"] if not is_fresh])
    assert (later - 1).abs().max().item() > 1e-3
    # The logged metric of the first step says the same.
    first = next(
        r for r in read_metrics(ppo_run["config"].run_dir) if r["stage"] == "rl" and "ppo/ratio_mean" in r
    )
    assert first["ppo/ratio_max_deviation"] < 1e-5


def test_trainer_log_probs_are_the_temperature_scaled_log_softmax(ppo_run):
    """The log-probs PPO trains on (TRL's, through the bridge) are log_softmax(logits / temperature) of the
    sampled tokens, as the rollout's behaviour log-probs are: the temperature is 1.0 in one run, 0.7 in the other."""
    trainer = ppo_run["trainer"]
    temperature = trainer.args.temperature
    policy = trainer.accelerator.unwrap_model(trainer.model)
    ids, mask = some_ids(policy.config.vocab_size)
    width = 4
    trainer.model.eval()
    with torch.no_grad():
        logps, entropy = trl_bridge.per_token_logps_and_entropies(
            trainer, trainer.model, ids, mask, width, compute_entropy=True
        )
        logits = policy(input_ids=ids, attention_mask=mask).logits[:, -width - 1 : -1].float() / temperature
        expected = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -width:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logps.float(), expected, atol=1e-5, rtol=0.0)
    torch.testing.assert_close(entropy.float(), entropy_from_logits(logits), atol=1e-4, rtol=0.0)


def test_every_trainable_parameter_of_policy_and_critic_changes(ppo_run):
    model = ppo_run["trainer"].model
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert after.keys() == ppo_run["before"].keys()
    critic_names = [n for n in after if n.startswith(f"{ATTRIBUTE}.")]
    policy_names = [n for n in after if not n.startswith(f"{ATTRIBUTE}.")]
    assert critic_names and policy_names
    if ppo_run["trainer"].args.critic == "shared":
        assert sorted(critic_names) == [f"{ATTRIBUTE}.summary.bias", f"{ATTRIBUTE}.summary.weight"]
    else:
        assert any(".backbone." in n for n in critic_names)
    unchanged = [n for n in after if torch.equal(after[n], ppo_run["before"][n])]
    assert unchanged == []


def test_saved_policy_has_no_critic_and_reloads_cleanly(ppo_run):
    from transformers import AutoModelForCausalLM

    path = ppo_run["path"]
    weights = load_file(path / "model.safetensors")
    assert weights and not [k for k in weights if ATTRIBUTE in k]
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    # ... and it is the trained policy
    trained = {
        n: p for n, p in ppo_run["trainer"].model.named_parameters() if not n.startswith(f"{ATTRIBUTE}.")
    }
    reloaded = dict(model.named_parameters())
    assert trained.keys() == reloaded.keys()
    assert all(torch.equal(trained[n].detach(), reloaded[n].detach()) for n in trained)


def test_saved_critic_reloads_with_identical_values(ppo_run):
    trainer = ppo_run["trainer"]
    critic_dir = ppo_run["path"] / "critic"
    reloaded = load_critic(critic_dir).eval()
    ids, mask = some_ids(trainer.model.config.vocab_size)
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.critic_values(ids, mask)
        again = reloaded(ids, mask)
    assert trained.shape == (2, 10)
    torch.testing.assert_close(again, trained, atol=1e-6, rtol=0.0)
    assert trained.abs().max().item() > 1e-4  # a trained critic, not the zero-initialised head


def test_shared_critic_artifact_holds_the_policy_backbone_and_trained_head(shared_run):
    trainer = shared_run["trainer"]
    reloaded = load_critic(shared_run["path"] / "critic")
    head = trainer.critic
    assert torch.equal(reloaded.head.summary.weight, head.summary.weight.detach())
    assert head.summary.weight.abs().sum().item() > 0  # moved from its zero init
    policy = load_file(shared_run["path"] / "model.safetensors")
    backbone = reloaded.backbone.state_dict()
    assert all(torch.equal(backbone[k], policy[f"model.{k}"]) for k in backbone if f"model.{k}" in policy)
    assert any(f"model.{k}" in policy for k in backbone)


def test_second_run_starts_from_the_saved_critic(separate_run, tmp_path):
    saved = separate_run["path"] / "critic"
    ids, mask = some_ids(separate_run["trainer"].model.config.vocab_size)
    with torch.no_grad():
        expected = load_critic(saved).eval()(ids, mask)
        # the default critic_init ('policy') starts at V = 0 (zero head), so equality below is not by accident
        fresh = build_critic("separate", "policy", separate_run["trainer"].model)
        assert torch.equal(fresh(ids, mask), torch.zeros(2, 10))
    assert expected.abs().min().item() > 0
    for kind in ("separate", "shared"):
        config = ppo_config(tmp_path, f"second_{kind}", trainer={"critic": kind, "critic_init": str(saved)})
        trainer = build_trainer(config)
        assert trainer.args.critic_init == str(saved)
        if kind == "separate":
            trainer.critic.eval()
            with torch.no_grad():
                torch.testing.assert_close(trainer.critic(ids, mask), expected, atol=1e-6, rtol=0.0)
        else:  # a shared head takes the saved head; the backbone stays the policy's
            reloaded = load_critic(saved)
            assert torch.equal(trainer.critic.summary.weight, reloaded.head.summary.weight)
            assert torch.equal(trainer.critic.summary.bias, reloaded.head.summary.bias)


def test_critic_from_a_reward_model(tmp_path, frozen_lake_policy):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=0,
    )
    reward_model = Qwen2ForSequenceClassification(config).eval()
    reward_model.save_pretrained(tmp_path / "rm")
    _, policy, _ = frozen_lake_policy
    critic = build_critic("separate", str(tmp_path / "rm"), policy)
    assert isinstance(critic, ValueModel)
    critic.eval()
    ids = torch.tensor([[5, 9, 3, 17, 22, 8], [11, 4, 30, 2, 7, 0]])  # row 1 ends with a pad token
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        values = critic(ids, mask)
        hidden = reward_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        per_position = reward_model.score(hidden).squeeze(-1)
        pooled = reward_model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(values, per_position, atol=1e-6, rtol=0.0)
    # The classifier's own score is its logit at the last non-pad token: the critic's value there.
    torch.testing.assert_close(torch.stack([values[0, 5], values[1, 4]]), pooled, atol=1e-6, rtol=0.0)
    assert values.abs().max().item() > 1e-3


# ============================================================================ config checks before any model


def ppo_raw_config(tmp_path: Path, **trainer):
    return tiny_config(ENV, output_dir=str(tmp_path / "runs"), rl={"algorithm": "ppo", "trainer": trainer})


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"beta": 0.04}, ["key 'rl.trainer'", "kl_coef"]),
        ({"critic": "bogus"}, ["critic = 'bogus'", "'separate'", "'shared'"]),
        ({"advantage_level": "episode"}, ["advantage_level = 'episode'", "'token'", "'turn'"]),
        ({"gama": 0.99}, ["unknown key 'rl.trainer.gama'", "did you mean 'gamma'"]),
        ({"critic_init": "{tmp}/no_such_critic"}, ["key 'rl.trainer.critic_init'", "no such folder"]),
        ({"critic_init": "{tmp}"}, ["key 'rl.trainer.critic_init'", "neither a saved critic"]),
    ],
    ids=[
        "beta",
        "critic-type",
        "advantage-level",
        "gamma-typo",
        "critic-init-missing",
        "critic-init-not-a-critic",
    ],
)
def test_ppo_config_errors_before_any_model_loads(trainer, expected, tmp_path, monkeypatch):
    import rlft.models.policy

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded during validation")

    monkeypatch.setattr(rlft.models.policy, "load_policy", no_model)
    monkeypatch.setattr(rlft.models.policy, "load_pretrained", no_model)
    trainer = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in trainer.items()}
    with pytest.raises(ConfigError) as info:
        ppo_raw_config(tmp_path, **trainer)
    for part in expected:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    assert not (tmp_path / "runs").exists()


def test_ppo_config_accepts_its_own_keys(tmp_path):
    config = ppo_raw_config(tmp_path, critic="shared", gamma=0.99, lam=0.9, kl_coef=0.1, target_kl=0.02)
    args = stage_rl.rl_trainer_args(config)
    assert (args.critic, args.gamma, args.lam, args.kl_coef, args.target_kl) == (
        "shared",
        0.99,
        0.9,
        0.1,
        0.02,
    )
    # One episode per seed and TRL's beta carrying the KL coefficient (so TRL builds the reference policy).
    assert args.num_generations == 1 and args.beta == 0.1

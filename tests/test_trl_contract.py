"""The TRL contract: what rlft/algorithms/trl_bridge.py relies on in TRL (and transformers), as named assumptions.

Each assumption is a name and a check that raises AssertionError saying what changed. `check_contract()` runs them
all and fails naming every broken one, so an upgraded TRL that renames a private method, changes a signature or
a returned key fails here, by name, before a training run does something else silently. The last tests simulate
such changes (monkeypatched GRPOTrainer) and show the contract catches them.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils

from rlft.algorithms.learning_signal import FALSE_MULTI_TURN_METRICS


@dataclass(frozen=True)
class Assumption:
    name: str
    check: Callable[[], None]


def _source(function) -> str:
    return textwrap.dedent(inspect.getsource(function))


def _method(cls: type, name: str):
    function = getattr(cls, name, None)
    assert function is not None, f"{cls.__name__}.{name} is gone"
    return function


def _parameters(cls: type, name: str, expected: tuple[str, ...]) -> Callable[[], None]:
    def check() -> None:
        names = list(inspect.signature(_method(cls, name)).parameters)
        missing = [p for p in expected if p not in names]
        assert not missing, f"{cls.__name__}.{name}{tuple(names)} lacks parameter(s) {missing}"

    return check


def _sampler() -> None:
    sampler_source = _source(_method(GRPOTrainer, "_get_train_sampler"))
    assert "RepeatSampler(" in sampler_source, "_get_train_sampler no longer returns a RepeatSampler"
    sampler = trl_utils.RepeatSampler(
        data_source=list(range(4)), mini_repeat_count=1, batch_size=2, repeat_count=1, shuffle=True, seed=3
    )
    for attribute in ("seed", "shuffle", "generator"):
        assert hasattr(sampler, attribute), (
            f"RepeatSampler has no '{attribute}' (EpochSeededRepeatSampler reads it)"
        )
    assert isinstance(sampler.generator, torch.Generator), "RepeatSampler.generator is not a torch.Generator"


SCORED_KEYS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "advantages",
    "num_items_in_batch",
    "tool_mask",
)


def _scored_keys() -> None:
    source = _source(_method(GRPOTrainer, "_generate_and_score_completions"))
    missing = [key for key in SCORED_KEYS if f'"{key}"' not in source]
    assert not missing, f"_generate_and_score_completions no longer returns {missing}"


def _per_token_advantages() -> None:
    source = _source(_method(GRPOTrainer, "_compute_loss"))
    assert "advantages.dim() == 1" in source, (
        "GRPO's loss no longer accepts per-token advantages of shape (B, T)"
    )


def _rollout_func() -> None:
    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters, (
        "GRPOTrainer takes no rollout_func"
    )
    source = _source(_method(GRPOTrainer, "_generate"))
    assert "self.rollout_func(prompts, self)" in source, (
        "rollout_func is no longer called as (prompts, trainer)"
    )
    for field in ('"prompt_ids"', '"completion_ids"', '"logprobs"', 'pop("env_mask"'):
        assert field in source, f"rollout_func's output field {field} is no longer read"


def _trainer_state() -> None:
    init = _source(GRPOTrainer.__init__)
    for attribute in (
        "self._metrics",
        "self._step",
        "self._buffered_inputs",
        "self.ref_model",
        "self.num_iterations",
        "self.epsilon_low",
        "self.epsilon_high",
    ):
        assert f"{attribute} =" in init, f"GRPOTrainer.__init__ no longer sets {attribute}"
    prepare = _source(_method(GRPOTrainer, "_prepare_inputs"))
    for part in (
        "self._generate_and_score_completions(",
        "self._buffered_inputs",
        "self._step % generate_every",
        "steps_per_generation * self.num_iterations",
    ):
        assert part in prepare, f"_prepare_inputs no longer uses {part}"


def _accumulation_steps() -> None:
    from trl.trainer.base_trainer import _BaseTrainer

    source = inspect.getsource(transformers.Trainer)
    assert "self.current_gradient_accumulation_steps =" in source, (
        "Trainer no longer sets current_gradient_accumulation_steps"
    )
    assert "self.model_accepts_loss_kwargs = False" in _source(_BaseTrainer.__init__), (
        "TRL's trainers let HF scale the loss for accumulation (rlft divides by the accumulation steps itself)"
    )


def _completion_metrics() -> None:
    source = _source(_method(GRPOTrainer, "_generate"))
    missing = [key for key in FALSE_MULTI_TURN_METRICS if f'"{key}"' not in source]
    assert not missing, (
        f"_generate no longer logs {missing} (rlft drops them as false for multi-turn episodes)"
    )
    assert "def _prepare_inputs(self, generation_batch" in _source(_method(GRPOTrainer, "_prepare_inputs")), (
        "_prepare_inputs(generation_batch) changed (the bridge's on_training_minibatch hook wraps it)"
    )


def _group_layout() -> None:
    # rl.curriculum (rlft.rollout.curriculum) plans the whole generation batch on every process and plays its own
    # rows: that is right only while TRL groups `num_generations` consecutive rows of the rewards gathered in
    # process order and hands each process the rows `process_index * len(prompts)` on.
    source = _source(_method(GRPOTrainer, "_generate_and_score_completions"))
    for part in (
        "rewards.view(-1, num_generations)",
        "self.accelerator.process_index * len(prompts)",
        "advantages[process_slice]",
    ):
        assert part in source, f"_generate_and_score_completions no longer uses {part}"
    sampler = trl_utils.RepeatSampler(
        data_source=list(range(4)), mini_repeat_count=2, batch_size=2, repeat_count=1, shuffle=False
    )
    assert list(sampler) == [0, 0, 1, 1, 2, 2, 3, 3], "RepeatSampler no longer repeats a prompt in a row"


def _reference_adapter() -> None:
    assert callable(getattr(trl_utils, "use_adapter", None)), "trl.trainer.utils.use_adapter is gone"


def _fused_head() -> None:
    source = _source(_method(GRPOTrainer, "_get_per_token_logps_and_entropies"))
    assert "labels=labels, fused_lm_head=True" in source, (
        "_get_per_token_logps_and_entropies no longer calls model(..., labels=labels, fused_lm_head=True)"
    )
    assert "labels[:, :-logits_to_keep] = -100" in source, (
        "the completion is no longer the last logits_to_keep"
    )
    assert callable(getattr(trl_utils, "_use_triton", None)), "trl.trainer.utils._use_triton is gone"
    head = _source(trl_utils.add_fused_lm_head)
    assert "compact = _use_triton(hidden_states.device)" in head and "hidden_states[mask]" in head, (
        "add_fused_lm_head no longer scores only labelled positions when _use_triton says so"
    )
    loss = _source(_method(GRPOTrainer, "_compute_loss"))
    assert 'completion_mask * inputs["tool_mask"]' in loss, (
        "_compute_loss's mask is no longer completion * tool"
    )


CONTRACT: list[Assumption] = [
    Assumption("sampler: _get_train_sampler returns a RepeatSampler with seed, shuffle, generator", _sampler),
    Assumption("scoring: _generate_and_score_completions returns the keys rlft reads", _scored_keys),
    Assumption(
        "scoring: _generate_and_score_completions(self, inputs)",
        _parameters(GRPOTrainer, "_generate_and_score_completions", ("self", "inputs")),
    ),
    Assumption("loss: GRPO's _compute_loss accepts per-token advantages (B, T)", _per_token_advantages),
    Assumption("rollout_func: called as (prompts, trainer), may return env_mask and logprobs", _rollout_func),
    Assumption(
        "state: _metrics, _step, _buffered_inputs, ref_model and the buffering in _prepare_inputs",
        _trainer_state,
    ),
    Assumption(
        "log-probs: _get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, "
        "batch_size, compute_entropy)",
        _parameters(
            GRPOTrainer,
            "_get_per_token_logps_and_entropies",
            ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy"),
        ),
    ),
    Assumption(
        "checkpoints: _save_checkpoint(model, trial)",
        _parameters(GRPOTrainer, "_save_checkpoint", ("self", "model", "trial")),
    ),
    Assumption(
        "checkpoints: _get_output_dir(trial)", _parameters(GRPOTrainer, "_get_output_dir", ("self", "trial"))
    ),
    Assumption(
        "checkpoints: _save(output_dir, state_dict)",
        _parameters(GRPOTrainer, "_save", ("self", "output_dir", "state_dict")),
    ),
    Assumption(
        "checkpoints: _load_from_checkpoint(resume_from_checkpoint, model)",
        _parameters(GRPOTrainer, "_load_from_checkpoint", ("self", "resume_from_checkpoint", "model")),
    ),
    Assumption(
        "resume: _load_optimizer_and_scheduler(checkpoint) restores the optimizer's state",
        _parameters(GRPOTrainer, "_load_optimizer_and_scheduler", ("self", "checkpoint")),
    ),
    Assumption(
        "resume: _run_epoch(model, epoch, ...) runs one epoch of the training loop",
        _parameters(GRPOTrainer, "_run_epoch", ("self", "model", "epoch", "epochs_trained")),
    ),
    Assumption("accumulation: current_gradient_accumulation_steps, HF loss scaling off", _accumulation_steps),
    Assumption("reference: trl.trainer.utils.use_adapter for a PEFT policy's reference", _reference_adapter),
    Assumption(
        "scored positions: the fused LM head scores labelled positions only when _use_triton(device); the loss "
        "reads completion_mask * tool_mask",
        _fused_head,
    ),
    Assumption(
        "groups: num_generations consecutive rows of the batch gathered in process order; each process keeps "
        "rows process_index * len(prompts) on",
        _group_layout,
    ),
    Assumption(
        "metrics: _generate logs the completion metrics rlft drops; _prepare_inputs(generation_batch)",
        _completion_metrics,
    ),
]


def broken_assumptions() -> list[tuple[str, str]]:
    broken = []
    for assumption in CONTRACT:
        try:
            assumption.check()
        except (AssertionError, OSError, TypeError) as exc:
            broken.append((assumption.name, str(exc)))
    return broken


def check_contract() -> None:
    broken = broken_assumptions()
    if broken:
        lines = "\n".join(f"  - {name}: {detail}" for name, detail in broken)
        raise AssertionError(
            f"the installed TRL breaks {len(broken)} assumption(s) of rlft/algorithms/trl_bridge.py:\n{lines}"
        )


def test_installed_trl_keeps_the_contract():
    check_contract()


# ------------------------------------------------------------------------ the contract catches simulated changes


def test_a_removed_private_method_fails_naming_it(monkeypatch):
    monkeypatch.delattr(GRPOTrainer, "_get_per_token_logps_and_entropies")
    with pytest.raises(AssertionError, match=r"log-probs: _get_per_token_logps_and_entropies.*is gone"):
        check_contract()


def test_a_changed_signature_fails_naming_it(monkeypatch):
    def _save_checkpoint(self, model):  # `trial` dropped
        return None

    monkeypatch.setattr(GRPOTrainer, "_save_checkpoint", _save_checkpoint)
    with pytest.raises(
        AssertionError, match=r"checkpoints: _save_checkpoint\(model, trial\).*lacks parameter.*trial"
    ):
        check_contract()


def test_a_renamed_returned_key_fails_naming_it(monkeypatch):
    def _generate_and_score_completions(self, inputs):
        return {
            "prompt_ids": 0,
            "prompt_mask": 0,
            "completion_ids": 0,
            "completion_mask": 0,
            "advantages": 0,
            "num_items_in_batch": 0,
            "env_mask": 0,
        }  # tool_mask renamed

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", _generate_and_score_completions)
    broken = dict(broken_assumptions())
    # The stub computes no advantages either, so the group layout rl.curriculum reads is gone with it.
    assert [name.split(":")[0] for name in broken] == ["scoring", "groups"]
    assert "['tool_mask']" in broken["scoring: _generate_and_score_completions returns the keys rlft reads"]


def test_a_sampler_without_its_seed_fails_naming_it(monkeypatch):
    original = trl_utils.RepeatSampler.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self.seed

    monkeypatch.setattr(trl_utils.RepeatSampler, "__init__", init)
    with pytest.raises(AssertionError, match=r"sampler: .*RepeatSampler has no 'seed'"):
        check_contract()

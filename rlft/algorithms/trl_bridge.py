"""The TRL bridge: every place rlft reaches into a private attribute or method of TRL's (or transformers')
trainer, each as one small named function or one documented override (DESIGN.md, "Everything that touches TRL
internals lives in one bridge module").

Nothing else in rlft reads or writes a `trainer._<name>`. tests/test_trl_contract.py checks, as a list of named
assumptions, that the TRL installed still has what this module relies on, and fails naming the assumption
when an upgrade changes it. What rlft relies on (TRL 1.16, transformers 5):

* `GRPOTrainer._metrics[mode]`: the per-mode lists of metrics TRL averages and logs at each logging step;
* `GRPOTrainer._step`: TRL's micro-step counter, which decides when a new rollout is played
  (`_step % (steps_per_generation * num_iterations) == 0`);
* `GRPOTrainer._buffered_inputs`: the current rollout batch, split into `steps_per_generation` minibatches;
* `GRPOTrainer._get_train_sampler` returning a `trl.trainer.utils.RepeatSampler` with `seed`, `shuffle` and a
  `generator` (rlft swaps its class to seed each epoch's order from (seed, epoch): exact resume);
* `GRPOTrainer._generate_and_score_completions(inputs) -> dict` called from `_prepare_inputs` for every new
  rollout batch, whose dict TRL shuffles, splits and buffers;
* the generation batch's layout: a group is `num_generations` consecutive rows of the batch gathered in process
  order, and each process holds the rows from `process_index * len(prompts)` (rl.curriculum plans the whole batch
  on every process and plays its own rows, rlft.rollout.curriculum);
* `GRPOTrainer._prepare_inputs(generation_batch) -> dict`, called by `training_step`, returning the minibatch
  (advantages, masks) the step trains on;
* the keys TRL's `_generate` writes to `_metrics` for completions (`completions/clipped_ratio`, ...), some of which
  rlft drops as false for multi-turn episodes (rlft.algorithms.learning_signal);
* `GRPOTrainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, ...)`:
  temperature-scaled per-token log-probs of the completion tokens (and entropies), got by calling
  `model(..., labels=labels, fused_lm_head=True)`, whose fused LM head (`trl.trainer.utils.add_fused_lm_head`)
  projects only the positions with a label when `trl.trainer.utils._use_triton(device)` is true and every
  position otherwise;
* `Trainer.current_gradient_accumulation_steps`, `Trainer._save_checkpoint(model, trial)`,
  `Trainer._get_output_dir(trial)`, `Trainer._save(output_dir, state_dict)`,
  `Trainer._load_from_checkpoint(resume_from_checkpoint, model)`, `Trainer._run_epoch(...)` (one epoch of the
  training loop, run after the state is restored and before any step of that epoch),
  `Trainer._load_optimizer_and_scheduler(checkpoint)` (restores their state when resuming).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils
from trl.trainer.utils import RepeatSampler, use_adapter

from rlft.algorithms.generation_copy import sync_generation_copy, untied_state_dict


# ----------------------------------------------------------------------------------------- trainer state
def metrics(trainer, mode: str = "train") -> dict[str, list]:
    """TRL's metric lists for `mode` ("train" / "eval"); whatever is appended is averaged at the next log."""
    return trainer._metrics[mode]


def all_metrics(trainer) -> dict[str, dict[str, list]]:
    return trainer._metrics


def micro_step(trainer) -> int:
    """TRL's micro-step counter (one per `training_step`, i.e. per minibatch)."""
    return trainer._step


def set_micro_step(trainer, step: int) -> None:
    trainer._step = int(step)


def buffered_inputs(trainer) -> list[dict[str, Any]] | None:
    """The minibatches of the rollout batch in flight (None before the first rollout)."""
    return trainer._buffered_inputs


def set_buffered_inputs(trainer, minibatches: list[dict[str, Any]] | None) -> None:
    trainer._buffered_inputs = minibatches


def gradient_accumulation_steps(trainer) -> int:
    """The accumulation steps of the optimizer step in progress (set by the Trainer's loop; the config's before)."""
    return int(
        getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
    )


def fresh_rollout(trainer) -> bool:
    """Whether the next minibatch starts a new rollout batch (TRL's condition in `_prepare_inputs`)."""
    return micro_step(trainer) % (trainer.args.steps_per_generation * trainer.num_iterations) == 0


# ----------------------------------------------------------------------------------------- log-probs
def per_token_logps_and_entropies(
    trainer,
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    compute_entropy: bool = False,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL's per-token log-probs of the last `logits_to_keep` tokens (B, T), logits scaled by the trainer's
    temperature as at sampling time, and their entropies (B, T) when asked."""
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=batch_size,
        compute_entropy=compute_entropy,
    )
    return logps, entropies


def loss_positions(inputs: dict[str, Any]) -> torch.Tensor | None:
    """The completion positions GRPO's loss reads (B, T): `completion_mask * tool_mask` (rlft's env_mask), as in
    TRL's `_compute_loss`; None when the minibatch has no completion mask."""
    mask = inputs.get("completion_mask") if isinstance(inputs, dict) else None
    if mask is None:
        return None
    tool = inputs.get("tool_mask")
    return mask if tool is None else mask * tool


def reference_logps(
    trainer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Per-token log-probs under the reference policy, as TRL computes them: its `ref_model`, or for a PEFT
    policy the base model (adapter disabled) or the adapter loaded under the name "ref"."""
    with torch.no_grad():
        if trainer.ref_model is not None:
            return per_token_logps_and_entropies(
                trainer, trainer.ref_model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
            )[0]
        model = trainer.accelerator.unwrap_model(trainer.model)
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return per_token_logps_and_entropies(
                trainer, trainer.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
            )[0]


# ------------------------------------------------------------------------------- scored positions only
# A multi-turn episode's completion interleaves the actions the policy sampled with the env's observations; the loss
# reads the actions only (`completion_mask * tool_mask`). TRL's fused LM head projects every completion position
# onto the vocabulary unless it runs on a Triton device, where it scores only labelled positions (a fixed tile shape
# elsewhere spares compilers a recompilation per batch; eager CPU has none). rlft labels the unread positions -100
# and lets the head score compactly on CPU too: with Mistral's 32,768 pieces this was 3/4 of an RL step's time.
@contextmanager
def compact_fused_head() -> Iterator[None]:
    """TRL's fused LM head scores only labelled positions on CPU as it does on Triton devices."""
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: original(device) or device.type == "cpu"
    try:
        yield
    finally:
        trl_utils._use_triton = original


class ScoredLabels:
    """The policy as TRL's `_get_per_token_logps_and_entropies` calls it, chunk by chunk of rows, with the labels
    of the completion positions outside `scored` (B, logits_to_keep) set to -100: the fused head skips them and
    returns 0 there (log-prob and entropy), which the loss's mask never reads."""

    def __init__(self, model, scored: torch.Tensor):
        self.model, self.scored, self.row = model, scored.bool(), 0

    def __call__(self, *args, labels: torch.Tensor, **kwargs):
        keep = self.scored[self.row : self.row + labels.size(0)].to(labels.device)
        self.row += labels.size(0)
        labels = labels.clone()
        width = keep.size(1)
        labels[:, -width:] = labels[:, -width:].masked_fill(~keep, -100)
        return self.model(*args, labels=labels, **kwargs)


# ----------------------------------------------------------------------------------------- sampler
class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose shuffle order is a function of (seed, epoch), not of how many epochs ran.

    TRL's sampler draws each epoch's permutation from one generator that advances epoch by epoch; a run resumed
    in epoch e would replay epoch 0's order. The Trainer calls `set_epoch(e)` before each epoch (also when it
    resumes), so seeding from (seed, e) gives a resumed run the same order as an uninterrupted one.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            mixed = np.random.SeedSequence([int(self.seed or 0), int(epoch)]).generate_state(1)[0]
            self.generator.manual_seed(int(mixed))


# ----------------------------------------------------------------------------------------- overrides
class BridgedGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer whose private methods rlft needs to change each delegate to a public, named hook.

    Subclasses (rlft's GRPO and PPO trainers, `ResumableTrainerMixin`) override the hooks, never the private
    names; each hook's default is TRL's behaviour.
    """

    # TRL: the sampler that repeats each prompt `num_generations` times and the batch `num_iterations` times.
    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is RepeatSampler:
            sampler.__class__ = EpochSeededRepeatSampler
            sampler.set_epoch(0)
        return sampler

    # TRL: plays (or generates) and scores a new rollout batch; the dict it returns is shuffled, split, buffered.
    def _generate_and_score_completions(self, inputs):
        scored = self.score_generation_batch(inputs)
        self.check_scored_batch(scored)
        return scored

    def score_generation_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """A new rollout batch as the dict of tensors TRL buffers. Default: TRL's GRPO scoring."""
        return super()._generate_and_score_completions(inputs)

    def check_scored_batch(self, scored: dict[str, Any]) -> None:
        """Called with every new rollout batch before it is buffered (rlft checks it for non-finite values)."""

    # TRL: the loss of a minibatch; the positions it reads are noted for the log-probs below.
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.scored_positions = loss_positions(inputs)
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self.scored_positions = None

    # TRL: per-token log-probs and entropies of the completion; only the loss's positions are scored.
    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):
        scored = getattr(self, "scored_positions", None)
        extra = {
            k: v for k, v in kwargs.items() if k not in ("batch_size", "compute_entropy", "compute_aux_loss")
        }
        plain = args or any(v is not None for v in extra.values())  # images: TRL's own path, untouched
        if scored is None or plain or tuple(scored.shape) != (input_ids.size(0), logits_to_keep):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        with compact_fused_head():
            return super()._get_per_token_logps_and_entropies(
                ScoredLabels(model, scored), input_ids, attention_mask, logits_to_keep, **kwargs
            )

    # TRL: the minibatch a training step trains on, cut from the buffered rollout batch (a new one when due).
    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training:
            self.on_training_minibatch(inputs)
        return inputs

    def on_training_minibatch(self, inputs: dict[str, Any]) -> None:
        """Called with each minibatch before a training step trains on it (rlft notes whether it has signal)."""

    # transformers: writes checkpoint-<step> under the run dir (weights, optimizer, scheduler, RNG, state).
    def _save_checkpoint(self, model, trial) -> None:
        self.write_checkpoint(model, trial)

    def write_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)

    def checkpoint_run_dir(self, trial=None) -> str:
        """The folder checkpoints go in (transformers' `_get_output_dir`)."""
        return self._get_output_dir(trial=trial)

    # transformers: writes the model's files (used by save_model and by each checkpoint).
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.write_model_files(output_dir, state_dict)

    def write_model_files(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # FSDP2 hands `_save` a gathered full state dict, with tied weights as two tensors: written once
        policy = self.accelerator.unwrap_model(self.model)
        super()._save(output_dir, state_dict=untied_state_dict(policy, state_dict))

    # transformers: one epoch of optimizer steps; its loop checks `should_training_stop` only after a step.
    def _run_epoch(self, *args, **kwargs):
        return self.run_epoch(*args, **kwargs)

    def run_epoch(self, *args, **kwargs):
        """One epoch of transformers' training loop (`Trainer._run_epoch`, its arguments passed through)."""
        return super()._run_epoch(*args, **kwargs)

    # transformers: loads the model's weights from a checkpoint when resuming.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.read_model_files(resume_from_checkpoint, model)
        # FSDP2 (every rank): the generation copy gets the loaded weights now, before anything plays or saves
        # with it (a run resumed at max_steps saves PPO's critic from it without a step or rollout)
        sync_generation_copy(self)

    def read_model_files(self, checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(checkpoint, model)

    # transformers: restores the optimizer's and scheduler's state from a checkpoint when resuming.
    def _load_optimizer_and_scheduler(self, checkpoint):
        # FSDP2's loader steps the optimizer once to create its state (rlft.algorithms.generation_copy)
        self.restoring_optimizer = True
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            self.restoring_optimizer = False

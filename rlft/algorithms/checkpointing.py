"""Checkpoints that cannot be half-written, exact resume, non-finite steps that never reach the weights.

An RL checkpoint lives under the trainer's output dir (`runs/<name>/trainer/rl/`):

    checkpoint-<step>/          HF Trainer's files (weights as safetensors, optimizer.pt, scheduler.pt,
                                rng_state*.pth, trainer_state.json), a PPO critic in critic/, and rlft's own:
        rlft_state.json         rollout position (calls, env steps), TRL's micro-step counter, the KL
                                controller, metrics not yet logged
        rollout_buffer_<rank>.pt  the part of the current rollout batch not yet trained on (when there is one)
        MANIFEST.json           every file's size and sha256, written once every file is fsynced
                                (rlft.algorithms.checkpoint_manifest); `--resume` skips a checkpoint that
                                no longer matches it
        COMPLETE                written last; a checkpoint without it is never resumed from
    .staging/checkpoint-<step>/ where a checkpoint is written; renamed into place once complete

Before a save, the disk must have room for one more checkpoint as large as the last one (the model's parameter
bytes for the first); a write that fails (disk full, folder not writable) removes its staging folder and ends the
run with a one-line `StorageError` (exit 7) naming the path and the last good checkpoint.

Rotation (`save_total_limit`) runs after the rename and only ever deletes older checkpoints, so at least one
complete checkpoint always exists once the first one has been written.

The order in which env seeds are drawn is a function of (seed, epoch) (`trl_bridge.EpochSeededRepeatSampler`), and
each rollout's sampling stream a function of (seed, process, rollout call), so restoring the step, the
epoch and the rollout call count restores the seed stream exactly; HF restores python / numpy / torch RNGs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rlft.algorithms import trl_bridge, vllm_sync
from rlft.algorithms.checkpoint_folders import (
    COMPLETE,
    PREFIX,
    STAGING,
    latest_complete,
    resolve_resume,
    rotate,
)
from rlft.algorithms.checkpoint_manifest import fsync_dir, write_manifest
from rlft.algorithms.generation_copy import attach_generation_copy, synced_optimizer_step
from rlft.algorithms.learning_signal import LearningSignal
from rlft.errors import NonFiniteError  # imported from here too
from rlft.runtime.distributed import generation_policy, load_location
from rlft.runtime.run_files import empty_staging, match_umask, write_text_atomic
from rlft.runtime.storage import (
    StorageError,
    folder_bytes,
    free_space_problem,
    is_storage_fault,
    storage_error,
)

logger = logging.getLogger(__name__)

STATE_FILE = "rlft_state.json"


# ----------------------------------------------------------------------------------------------------- mixin
class ResumableTrainerMixin:
    """Mixed into rlft's GRPO and PPO trainers, before `trl_bridge.BridgedGRPOTrainer` in the MRO.

    Needs `self.episode_rollout` (an `EpisodeRollout`) and `self.rlft_max_nonfinite_steps`. Keeps
    `self.rollout_batch`, the `RolloutBatch` its rollout function built last (it subscribes to the rollout).
    """

    rlft_max_nonfinite_steps: int = 3

    def _rlft_init(self, episode_rollout, max_nonfinite_steps: int) -> None:
        self.episode_rollout = episode_rollout
        self.rlft_max_nonfinite_steps = max_nonfinite_steps
        self.rollout_batch = None  # the RolloutBatch in flight (rlft.core.batch)
        episode_rollout.add_listener(self._receive_rollout_batch)
        self._bad_batch: str | None = None  # why the current rollout batch cannot be trained on
        self._bad_loss: str | None = None
        self._nonfinite_streak = 0
        self._nonfinite_total = 0
        self.learning_signal = LearningSignal()  # signal/* diagnostics; rl.skip_steps_without_signal

    def _receive_rollout_batch(self, batch) -> None:
        self.rollout_batch = batch

    # ------------------------------------------------------------------------------------ state to carry
    def _rlft_state(self) -> dict[str, Any]:
        metrics = {
            mode: {k: list(v) for k, v in values.items()}
            for mode, values in trl_bridge.all_metrics(self).items()
        }
        return {
            "version": 1,
            "global_step": self.state.global_step,
            "trl_step": trl_bridge.micro_step(self),
            "rollout": self.episode_rollout.state_dict(),
            "pending_metrics": metrics,
            "nonfinite": {"streak": self._nonfinite_streak, "total": self._nonfinite_total},
            "learning_signal": self.learning_signal.state_dict(),
        }

    def _load_rlft_state(self, state: dict[str, Any]) -> None:
        trl_bridge.set_micro_step(self, int(state["trl_step"]))
        self.episode_rollout.load_state_dict(state["rollout"])
        for mode, values in state.get("pending_metrics", {}).items():
            pending = trl_bridge.metrics(self, mode)
            pending.clear()
            for key, value in values.items():
                pending[key] = list(value)
        self._nonfinite_streak = int(state["nonfinite"]["streak"])
        self._nonfinite_total = int(state["nonfinite"]["total"])
        self.learning_signal.load_state_dict(state.get("learning_signal", {}))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint:
            path = resolve_resume(self.args.output_dir, resume_from_checkpoint)
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
            self._load_rlft_state(state)
            buffer = path / f"rollout_buffer_{self.accelerator.process_index}.pt"
            trl_bridge.set_buffered_inputs(
                self,
                torch.load(buffer, map_location=load_location(self.accelerator.device), weights_only=True)
                if buffer.is_file()
                else None,
            )
            resume_from_checkpoint = str(path)
        attach_generation_copy(self, resuming=bool(resume_from_checkpoint))  # FSDP2: weights to generate with
        output = super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)
        self.learning_signal.report(self.accelerator.is_main_process)
        return output

    def run_epoch(self, *args, **kwargs):
        # Resumed at max_steps (a stop in the last step, a kill in the final save): transformers would enter the
        # epoch that step ended in and train a step past max_steps before its first check. Nothing is left.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super().run_epoch(*args, **kwargs)

    # ------------------------------------------------------------------------------------ atomic saving
    def write_checkpoint(self, model, trial) -> None:
        named = generation_policy(self).named_parameters()  # FSDP2: the whole weights, synced after the step
        bad = [name for name, p in named if not torch.isfinite(p.detach()).all()]
        if bad:
            raise NonFiniteError(
                f"refusing to save a checkpoint at step {self.state.global_step}: non-finite "
                f"weights in {', '.join(bad[:5])}"
            )
        run_dir = Path(self.checkpoint_run_dir(trial))
        name = f"{PREFIX}{self.state.global_step}"
        staging_root = run_dir / STAGING
        staging, final = staging_root / name, run_dir / name
        last_good = latest_complete(run_dir)
        self._check_free_space(run_dir, name, last_good)
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        try:
            self._write_staging(model, trial, staging_root, staging)
        except Exception as exc:
            # A failed write (disk full, folder gone read-only) removes the partial checkpoint and ends the run
            # with one line; anything else (a kill, a bug) leaves the staging folder as it was, never resumed.
            if not is_storage_fault(exc):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            raise storage_error(exc, staging, last_good) from exc
        if self.args.should_save:
            if final.exists():  # an incomplete leftover of a run that stopped while renaming
                shutil.rmtree(final)
            match_umask(staging)
            os.replace(staging, final)
            fsync_dir(run_dir)
            empty_staging(run_dir / STAGING, run_dir)
            rotate(run_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _write_staging(self, model, trial, staging_root: Path, staging: Path) -> None:
        """Every file of the checkpoint into `staging`, then (main process) the manifest and `COMPLETE`."""
        saved = (self.args.output_dir, self.args.save_total_limit)
        self.args.output_dir, self.args.save_total_limit = str(staging_root), None
        try:
            super().write_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = saved
        buffered = trl_bridge.buffered_inputs(self)
        if buffered is not None and not trl_bridge.fresh_rollout(self):
            torch.save(buffered, staging / f"rollout_buffer_{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_text_atomic(staging / STATE_FILE, json.dumps(self._rlft_state(), indent=1))
            card = getattr(
                self, "checkpoint_card", None
            )  # set by the stage: (step, max_steps) -> {name: text}
            for file_name, text in (
                card(self.state.global_step, self.state.max_steps) if card else {}
            ).items():
                write_text_atomic(staging / file_name, text)  # the model card, checksummed with the weights
            write_manifest(staging)  # every file fsynced, then its size and sha256 recorded
            write_text_atomic(staging / COMPLETE, json.dumps({"step": self.state.global_step}))

    def _check_free_space(self, run_dir: Path, name: str, last_good: Path | None) -> None:
        """Room for one more checkpoint as large as the last one (the first: the model's parameter bytes).

        Every rank checks (each writes its own RNG state and rollout buffer); if one lacks room, all stop.
        """
        if last_good is not None:
            needed = folder_bytes(last_good)
        else:
            model = self.accelerator.unwrap_model(self.model)
            needed = sum(p.numel() * p.element_size() for p in model.parameters())
        problem = free_space_problem(run_dir, needed, name)
        flag = torch.tensor(0.0 if problem is None else 1.0, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="max")
        if flag.item() == 0.0:
            return
        resume = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was written yet"
        raise StorageError(f"{problem or 'not enough free space on another process'}; {resume}")

    # ------------------------------------------------------------------------------- non-finite steps
    def check_scored_batch(self, scored: dict[str, Any]) -> None:
        super().check_scored_batch(scored)
        # rollout.vllm.importance_correction (else nothing)
        vllm_sync.correct_behaviour_mismatch(self, scored)
        self._bad_batch = self._nonfinite_batch(scored)
        self.learning_signal.observe_rollout(self, scored, self.rollout_batch)
        self.episode_rollout.observe_scored(self, scored, self.rollout_batch)  # rl.curriculum's task scores

    def on_training_minibatch(self, inputs: dict[str, Any]) -> None:
        self.learning_signal.observe_minibatch(inputs)

    def _nonfinite_batch(self, scored: dict[str, Any]) -> str | None:
        # The rewards of the batch this trainer's rollout just built (a failed episode is left out of it, not
        # a non-finite reward), then every floating tensor handed to TRL's buffer.
        reason = self.rollout_batch.nonfinite_reward() if self.rollout_batch is not None else None
        if reason is not None:
            return reason
        for key, value in scored.items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                return f"non-finite {key} in the rollout batch"
        return None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            self._bad_loss = "non-finite loss"
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not getattr(optimizer, "_rlft_guarded", False):
            optimizer.step = synced_optimizer_step(self, optimizer.step, self._guarded_step(optimizer.step))
            optimizer._rlft_guarded = True
        return optimizer

    def _guarded_step(self, step):
        # Only a step taken pushes weights into a vLLM engine.
        step = vllm_sync.push_after_step(step, self.episode_rollout.engine)

        def guarded(*args, **kwargs):
            reason = self._bad_batch or self._bad_loss or self._nonfinite_gradient()
            flag = torch.tensor(0.0 if reason is None else 1.0, device=self.accelerator.device)
            if self.accelerator.num_processes > 1:  # every rank skips, or none does
                flag = self.accelerator.reduce(flag, reduction="max")
            self._bad_loss = None
            without_signal = self.learning_signal.close_step(self)  # every rank, every step: it reduces too
            if flag.item() == 0.0:
                self._nonfinite_streak = 0
                self._log_nonfinite(skipped=False)
                return None if without_signal else step(*args, **kwargs)
            self._skip_step(reason or "non-finite values on another process")
            return None

        return guarded

    def _nonfinite_gradient(self) -> str | None:
        named = [
            (n, p.grad)
            for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
            if p.grad is not None
        ]
        # One device-to-host sync per step; the parameter is named only when something is wrong.
        if not named or torch.stack([torch.isfinite(g).all() for _, g in named]).all():
            return None
        return next(f"non-finite gradient in {n}" for n, g in named if not torch.isfinite(g).all())

    def _skip_step(self, reason: str) -> None:
        self.accelerator.unwrap_model(self.model).zero_grad(set_to_none=True)
        self._nonfinite_streak += 1
        self._nonfinite_total += 1
        self._log_nonfinite(skipped=True)
        step = self.state.global_step + 1
        logger.warning(
            "step %d skipped, weights unchanged: %s (%d in a row; rl.max_nonfinite_steps = %d)",
            step,
            reason,
            self._nonfinite_streak,
            self.rlft_max_nonfinite_steps,
        )
        if self._nonfinite_streak >= self.rlft_max_nonfinite_steps:
            raise NonFiniteError(
                f"{self._nonfinite_streak} optimizer steps in a row skipped (last, step {step}: "
                f"{reason}); aborting. The last complete checkpoint is in {self.args.output_dir}. "
                "Lower the learning rate, check the reward functions for NaN/inf, or raise "
                "rl.max_nonfinite_steps"
            )

    def _log_nonfinite(self, skipped: bool) -> None:
        metrics = trl_bridge.metrics(self)
        metrics["nonfinite/skipped_step"].append(float(skipped))
        metrics["nonfinite/skipped_total"].append(float(self._nonfinite_total))

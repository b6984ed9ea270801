"""Whole weights for the rollout engine when the trainer shards them (FSDP2).

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate applies for `fsdp_version: 2`) every rank
holds a shard of each parameter, and a forward of a sharded module all-gathers each layer's weights from every
rank: a collective. The rollout engine calls the policy's forward once per generated token, and ranks play
different episodes, which end after different numbers of turns and tokens, so a rank whose episodes are over
would stop calling forward while the others wait in an all-gather for it: a deadlock. Held-out evaluation
during RL is worse still, as it runs on the main process alone.

So generation plays with a copy instead: `GenerationCopy` keeps an unsharded copy of the trained module (the
policy, and PPO's critic attached to it as `rlft_critic`) on every rank, and `sync` loads the full weights into
it (`get_model_state_dict(..., full_state_dict=True)`, one all-gather of every parameter, called by every rank
at the same point: after each optimizer step, and once after a resume has loaded the checkpoint). The copy is
never trained: the optimizer and gradients work on the shards, and checkpoints gather them (PPO's `critic/`
folder is written from the copy, which is current at every save).

Why a copy rather than keeping every rank's forward calls in lockstep (padding finished ranks with dummy
forwards): the copy needs no change to the engine or to a backend (the engine's model is the copy, so a
backend that keeps weights of its own loads whole ones), cannot deadlock whatever the episodes do, and lets
the main process evaluate alone. Its cost is memory: one more whole copy of the weights (and PPO's critic)
per rank, plus the transient full state dict during a sync; for the tiny test policy (2 layers, 32 wide, fp32)
that is 0.10 MB per rank, 0.21 MB with PPO's separate critic (`GenerationCopy.nbytes`, recorded by
tests/test_multiprocess_rl.py). So FSDP2 here saves the memory of gradients and optimizer states, not of the
weights: a policy too large for one device would need sharded generation, which rlft does not have.

With FSDP mixed precision (bf16 compute) the copy holds the full-precision weights, so behaviour log-probs
differ from the trainer's bf16 forward by rounding, as they do with any separate generation engine.
"""

from __future__ import annotations

import copy

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


class GenerationCopy:
    """An unsharded copy of a module trained under FSDP2, kept current by `sync`.

    Args:
        module: the trained module before accelerate shards it (policy with any critic attached); copied here.
        synced_step: the optimizer step whose weights `module` holds now (None: unknown until the first sync,
            e.g. when a resume will load other weights).
    """

    def __init__(self, module: torch.nn.Module, synced_step: int | None = 0):
        self.model = copy.deepcopy(module).eval()
        for part in self.model.modules():
            # TRL patches the policy's `forward` per instance (its fused LM-head loss) with a closure over the
            # original module's forward: a deep copy keeps that closure, so the copy would run the sharded
            # original. The copy generates and never computes a loss: its class's own forward is the one to run.
            part.__dict__.pop("forward", None)
        self.model.requires_grad_(False)
        self.synced_step = synced_step

    @property
    def nbytes(self) -> int:
        """Bytes the copy's parameters and buffers take (its memory cost per rank)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def current(self, step: int) -> bool:
        return self.synced_step == step

    @torch.no_grad()
    def sync(self, sharded: torch.nn.Module, step: int) -> None:
        """Load the full weights of `sharded` (the FSDP2 module) into the copy. A collective: every rank calls it.

        Args:
            sharded: the module the trainer trains, unwrapped from accelerate (its parameters DTensor shards).
            step: the optimizer step these weights are the result of (`trainer.state.global_step`).
        """
        full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
        # strict: a key the copy lacks (or one missing from the gathered dict) is a bug, never a skipped weight.
        self.model.load_state_dict(full, strict=True)
        self.synced_step = step


def attach_generation_copy(trainer, resuming: bool) -> None:
    """Give `trainer` a `generation_copy` (None unless its accelerator shards with FSDP2).

    Called at the start of `train()`, before accelerate prepares (shards) the model. A resume loads the
    checkpoint's weights into the shards later, so its copy starts unsynced and the first rollout syncs it.
    """
    if getattr(trainer, "generation_copy", None) is not None:  # a second train() call: the model is sharded
        return
    copied = None
    if getattr(trainer.accelerator, "is_fsdp2", False):
        module = trainer.accelerator.unwrap_model(trainer.model)
        copied = GenerationCopy(module, synced_step=None if resuming else trainer.state.global_step)
    trainer.generation_copy = copied


def sync_generation_copy(trainer, step: int | None = None, changed: bool = True) -> None:
    """Make `trainer.generation_copy` hold the weights of optimizer step `step` (default: the current one).

    Every rank calls it at the same point (its gather is a collective), and every rank decides alike: `changed`
    (whether an optimizer step just changed the weights) is a decision all ranks share (rlft's guarded step
    reduces it). A copy already current before a step that changed nothing is only relabelled.
    """
    generation = getattr(trainer, "generation_copy", None)
    if generation is None:
        return
    step = trainer.state.global_step if step is None else step
    if generation.current(step):
        return
    if not changed and generation.current(step - 1):
        generation.synced_step = step
        return
    generation.sync(trainer.accelerator.unwrap_model(trainer.model), step)


def synced_optimizer_step(trainer, raw_step, step):
    """`step` (rlft's guarded optimizer step), then the generation copy synced to the weights it leaves (every
    rank); `raw_step` (the optimizer's own) alone while the trainer restores the optimizer's state.

    Synced after every optimizer step rather than before each rollout, because held-out evaluation runs
    between steps on the main process alone, where no gather can happen. A skipped step (non-finite values, no
    learning signal) gathers too: its cost, one all-gather of the weights, is what one sharded forward pays.

    Under FSDP2, loading the optimizer's state (torch's `set_optimizer_state_dict`) first creates it by one
    `step()` at learning rate 0 with zero gradients: not a training step, so it is neither guarded, counted,
    logged nor synced (a resumed run would otherwise log a step without signal the straight run never had).
    """

    def synced(*args, **kwargs):
        if getattr(trainer, "restoring_optimizer", False):
            return raw_step(*args, **kwargs)
        result = step(*args, **kwargs)
        sync_generation_copy(trainer, trainer.state.global_step + 1)  # global_step counts it after this call
        return result

    return synced


def untied_state_dict(model: torch.nn.Module, state_dict: dict | None) -> dict | None:
    """`state_dict` without the keys of tied weights whose source it holds (`lm_head.weight` when it is
    `model.embed_tokens.weight`).

    The full state dict transformers gathers from FSDP2 shards holds a tied weight as two separate tensors, which
    `save_pretrained` would write twice; an unsharded save writes the source alone. Dropping the aliases keeps
    the checkpoint's safetensors the same under FSDP2 as under DDP (loading ties them again).
    """
    if state_dict is None:
        return None
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}

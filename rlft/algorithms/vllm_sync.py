"""What training with a generation engine that holds its own weights (`rollout.backend: vllm`) needs from the
trainer: the weights pushed after each optimizer step that changed them, and truncated importance sampling
for the log-probs the engine reports (`rollout.vllm.importance_correction`).

Pushes (`push_after_step`): the trainer's guarded optimizer step calls the wrapped step only when the step really
happens (not when it is skipped for lack of signal or for non-finite values), and the wrapper then tells the
backend (`weights_changed`), which pushes the weights before its next session; `hf` has nothing to push.

Truncated importance sampling (`correct_behaviour_mismatch`). With `rollout.backend: vllm` the behaviour log-probs
are vLLM's, and vLLM's kernels do not reproduce the trainer's forward bit for bit: pi_vllm and pi_train differ a
little even with the same weights. TRL's answer (`vllm_importance_sampling_mode="token_truncate"`) is to weight each
token's policy loss by min(pi_train / pi_vllm, C), with pi_train taken at rollout time; rlft does the same for every
algorithm, once per rollout batch, when the batch is scored (`ResumableTrainerMixin.check_scored_batch`).

How the weight reaches the loss without touching TRL's loss: every policy loss rlft trains with (TRL's
grpo / dapo / dr_grpo / bnpo / cispo / sapo, and rlft's PPO objective) is linear in the advantage at each token,
and a weight w >= 0 passes through the clip: w * -min(r A, clip(r) A) = -min(r (w A), clip(r) (w A)). So the
weighted loss is the loss with per-token advantages w * A ((B, T): GRPO's (B,) are spread over the tokens, which
TRL's loss accepts from subclasses). The KL term is not weighted, as in TRL. For PPO the ratio's "old" log-probs
become pi_train's at rollout time (TRL's `old_per_token_logps`), so its first minibatch has ratio 1 again and the
mismatch is carried by w alone.

Logged per rollout batch: `rollout/is_ratio_mean` (mean pi_train / pi_vllm over loss tokens, before truncation)
and `rollout/is_clipped_frac` (share of loss tokens above the cap).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlft.algorithms import trl_bridge
from rlft.algorithms.learning_signal import loss_mask, token_advantages
from rlft.core.losses import truncated_importance_weights


def trainer_logprobs(trainer, scored: dict[str, Any]) -> torch.Tensor:
    """pi_train's log-probs of the batch's completion tokens at rollout time (B, T): TRL's own when it computed
    them (`old_per_token_logps`), else one no-grad forward of the trainer's model."""
    if scored.get("old_per_token_logps") is not None:
        return scored["old_per_token_logps"]
    ids = torch.cat([scored["prompt_ids"], scored["completion_ids"]], dim=1)
    attention = torch.cat([scored["prompt_mask"], scored["completion_mask"]], dim=1)
    with torch.no_grad():
        logprobs, _ = trl_bridge.per_token_logps_and_entropies(
            trainer,
            trainer.model,
            ids,
            attention,
            scored["completion_ids"].shape[1],
            batch_size=trainer.args.per_device_train_batch_size,
        )
    return logprobs


def push_after_step(step: Callable, engine) -> Callable:
    """`step` (the optimizer's), then the engine's backend told that the weights changed (a no-op for `hf`)."""
    weights_changed = getattr(engine.backend, "weights_changed", None)

    def stepped(*args, **kwargs):
        result = step(*args, **kwargs)
        if weights_changed is not None:
            weights_changed()
        return result

    return stepped


def correct_behaviour_mismatch(trainer, scored: dict[str, Any]) -> None:
    """With `rollout.vllm.importance_correction` on (the backend's `importance_cap`), weight the scored batch's
    policy loss by the truncated importance ratio (see the module docstring), in place: advantages become w * A
    (B, T); PPO's `old_logprobs` become pi_train's."""
    cap = getattr(trainer.episode_rollout.engine.backend, "importance_cap", None)
    if cap is None:
        return
    ppo = "old_logprobs" in scored
    behaviour = scored["old_logprobs"] if ppo else scored.get("sampling_per_token_logps")
    if behaviour is None:  # TRL received no behaviour log-probs: nothing to correct against
        return
    mask = loss_mask(scored)
    logprobs = trainer_logprobs(trainer, scored).float()
    weights, stats = truncated_importance_weights(logprobs, behaviour.float(), mask, cap)
    advantages = scored["advantages"]
    scored["advantages"] = (token_advantages(advantages, mask) * weights).to(advantages.dtype)
    if ppo:
        scored["old_logprobs"] = logprobs.to(behaviour.dtype)
    metrics = trl_bridge.metrics(trainer)
    for name, value in stats.items():
        metrics[name].append(trainer.accelerator.gather(value.float().reshape(1)).mean().item())

"""PPO with a critic, on rlft's own loss, inside TRL's training loop (TRL 1.16 has no PPOTrainer).

`PPOTrainer` subclasses TRL's `GRPOTrainer` (through `trl_bridge.BridgedGRPOTrainer`) for what TRL is good at:
the training loop, accelerate / DeepSpeed / FSDP, PEFT, reuse of one rollout batch for `num_iterations` epochs
of `steps_per_generation` minibatches, logging and checkpoints. The algorithm is rlft's:

* rollout (`score_generation_batch`): play the seeds (`EpisodeRollout.play`, reward design applied) into a
  `RolloutBatch`; reference log-probs when there is a KL term; per-token KL penalty on the rewards (reward
  mode); critic values and the bootstrap of truncated episodes; GAE through the batch (token or turn level);
  advantage whitening across processes. The behaviour log-probs are the ratio's "old" log-probs (CleanRL
  stores them at rollout time), so the first minibatch of a fresh rollout has ratio 1.
* loss (`compute_loss`): one forward of the policy for per-token log-probs (TRL's, temperature-scaled, through
  the bridge) and, for a shared critic, the backbone's hidden states; the critic; and the pure objective
  `rlft.core.losses.ppo_objective`, whose metrics are what is logged.
* a critic (`rlft/models/critic.py`), attached to the policy module as `rlft_critic` so that the optimizer, DDP,
  gradient clipping (`max_grad_norm`, jointly, as CleanRL does) and checkpoints include it;
* KL control: a per-token reward penalty (classic RLHF) or a loss term (k3), with a fixed or adaptive
  coefficient (`rlft/algorithms/kl_control.py`). The logged `kl` is the KL in the objective: the mean per-token
  `log pi_old - log pi_ref` in reward mode, the loss's k3 term in loss mode.

Returns are not rescaled, so with large rewards a separate `critic_learning_rate` or a smaller `vf_coef` keeps
the value gradient from dominating the clipped norm.
"""

from __future__ import annotations

import contextlib
import os

import torch
from safetensors.torch import load_file

from rlft.algorithms import trl_bridge
from rlft.algorithms.checkpointing import ResumableTrainerMixin
from rlft.algorithms.grpo import EpisodeRollout, episode_return, task_dataset
from rlft.algorithms.kl_control import kl_controller
from rlft.algorithms.ppo_config import PPOConfig
from rlft.core.advantages import explained_variance
from rlft.core.batch import RolloutBatch
from rlft.core.losses import kl_k3, ppo_objective
from rlft.models.critic import (
    ATTRIBUTE,
    HEAD_FILE,
    ValueModel,
    backbone_of,
    build_critic,
    load_critic,
    save_critic,
)
from rlft.runtime.distributed import generation_policy

__all__ = ["PPOConfig", "PPOTrainer", "build_ppo_trainer", "detached_critic"]

# Metrics reduced across processes with max rather than mean.
_MAX_METRICS = {"ppo/ratio_max_deviation"}


class PPOTrainer(ResumableTrainerMixin, trl_bridge.BridgedGRPOTrainer):
    """TRL's trainer loop with a critic, GAE through the `RolloutBatch`, and rlft's PPO objective.

    Args (beyond GRPOTrainer's): `episode_rollout`, whose `play` builds each rollout batch; `critic`, a
    ValueModel or ValueHead (built from `args.critic` / `args.critic_init` when None).
    """

    def __init__(
        self,
        model,
        args: PPOConfig,
        episode_rollout: EpisodeRollout,
        critic=None,
        max_nonfinite_steps: int = 3,
        **kwargs,
    ):
        self._rlft_init(episode_rollout, max_nonfinite_steps)
        if critic is None:
            critic = build_critic(
                args.critic, args.critic_init, model, trust_remote_code=args.trust_remote_code
            )
        if (args.critic == "separate") != isinstance(critic, ValueModel):
            raise ValueError(
                f"critic type '{args.critic}' needs a "
                f"{'ValueModel' if args.critic == 'separate' else 'ValueHead'}, got {type(critic).__name__}"
            )
        model.add_module(ATTRIBUTE, critic)
        super().__init__(model=model, args=args, **kwargs)
        self.kl_controller = kl_controller(args.kl_coef, args.target_kl, args.kl_horizon)

    # ----------------------------------------------------------------------------------------------- critic
    @property
    def critic(self) -> torch.nn.Module:
        return getattr(self.accelerator.unwrap_model(self.model), ATTRIBUTE)

    def critic_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, policy: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """V for every context prefix, (B, L), by a forward pass (no captured hidden states) of `policy`'s
        critic (default: the trained module's; at rollout time under FSDP2, the whole-weight generation copy's)."""
        policy = policy if policy is not None else self.accelerator.unwrap_model(self.model)
        critic = getattr(policy, ATTRIBUTE)
        if self.args.critic == "separate":
            return critic(input_ids, attention_mask)
        hidden = backbone_of(policy)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return critic(hidden.last_hidden_state)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        lr = self.args.critic_learning_rate
        if lr is None or any(group.get("rlft_critic") for group in optimizer.param_groups):
            return optimizer
        critic_ids = {id(p) for p in self.critic.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in critic_ids]
        params = [p for p in self.critic.parameters() if p.requires_grad]
        optimizer.add_param_group(
            {"params": params, "lr": lr, "weight_decay": self.args.weight_decay, "rlft_critic": True}
        )
        return optimizer

    # ---------------------------------------------------------------------------------------------- rollout
    def score_generation_batch(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Play a rollout batch, score it (KL, values, GAE, whitening) and return the tensors TRL buffers."""
        batch = self.episode_rollout.play([x["prompt"] for x in inputs], self)
        mask = batch.env_mask
        coef = self.kl_controller.value
        ref_logprobs, rollout_kl = None, None
        if coef > 0:
            ids, att = self.sequences(
                batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
            )
            ref_logprobs = trl_bridge.reference_logps(
                self,
                ids,
                att,
                batch.completion_ids.shape[1],
                batch_size=self.args.per_device_train_batch_size,
            )
            if self.args.kl_penalty == "reward":
                per_token = batch.add_kl_penalty(ref_logprobs, coef)
            else:  # at rollout time pi = pi_behaviour, so this is the loss term's k3 before any update
                per_token = kl_k3(batch.logprobs, ref_logprobs)
            rollout_kl = global_mean(self.accelerator, per_token, mask)
        with torch.no_grad():
            values, bootstrap = self.rollout_values(batch)
        raw_advantages, _ = batch.compute_gae(
            values, bootstrap, self.args.gamma, self.args.lam, level=self.args.advantage_level
        )
        # Whitened over the whole rollout batch, across processes: a minibatch holds few episodes, and its own
        # statistics (CleanRL's per-minibatch `norm_adv`) would be noisy with sparse episode rewards.
        if self.args.whiten_advantages:
            batch.whiten_advantages(*global_mean_std(self.accelerator, raw_advantages, mask))
        self._log_rollout(batch, raw_advantages, rollout_kl, coef)
        if rollout_kl is not None:
            self.kl_controller.update(rollout_kl, n_steps=len(batch) * self.accelerator.num_processes)
        loss_kl = coef if self.args.kl_penalty == "loss" else 0.0
        return self.trainer_inputs(batch, ref_logprobs if loss_kl > 0 else None, loss_kl)

    def rollout_values(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic values before each completion token (B, T) and the bootstrap of truncated episodes (B,)."""
        ids, att, bootstrap_index = batch.critic_inputs()
        # FSDP2: the generation copy's critic (a forward of the sharded critic alone would not gather the root)
        values = self.critic_values(ids, att, policy=generation_policy(self))
        return batch.split_critic_values(values.float(), bootstrap_index)

    def trainer_inputs(
        self, batch: RolloutBatch, ref_logprobs: torch.Tensor | None, loss_kl_coef: float
    ) -> dict[str, torch.Tensor]:
        """The batch's tensors as TRL buffers them (shuffled and split into minibatches along rows).

        `num_items_in_batch`, the loss tokens of the whole generation batch across processes, and the KL
        coefficient of this batch's loss are scalars: every minibatch gets them whole (and a checkpoint taken
        mid-batch saves them with the buffer).
        """
        inputs = {
            "prompt_ids": batch.prompt_ids,
            "prompt_mask": batch.prompt_mask,
            "completion_ids": batch.completion_ids,
            "completion_mask": batch.completion_mask,
            "env_mask": batch.env_mask,
            "old_logprobs": batch.logprobs,
            "advantages": batch.advantages,
            "returns": batch.returns,
            "old_values": batch.values,
            "value_mask": batch.value_mask,
            "num_items_in_batch": self.accelerator.gather(batch.env_mask.sum()).sum(),
            "kl_coef": torch.tensor(float(loss_kl_coef), device=batch.env_mask.device),
        }
        if ref_logprobs is not None:
            inputs["ref_logprobs"] = ref_logprobs
        return inputs

    def _log_rollout(self, batch: RolloutBatch, advantages, rollout_kl: float | None, coef: float) -> None:
        metrics = trl_bridge.metrics(self)
        accelerator, healthy = self.accelerator, batch.healthy
        # episode/reward/<component>: EpisodeRollout.play logs them, for every algorithm the same way.
        # GRPO gets these through TRL's reward function; PPO scores its batch itself. Means over healthy episodes.
        for name, value in (
            ("reward", lambda e: e.episode_return),
            ("episode/return", lambda e: e.episode_return),
            ("episode/success", lambda e: float(e.success)),
            ("episode/turns", lambda e: e.num_turns),
            ("episode/invalid_actions", lambda e: float(e.invalid_actions)),
        ):
            per_episode = torch.tensor(
                [float(value(e)) if ok else 0.0 for e, ok in zip(batch.episodes, healthy)],
                device=batch.rewards.device,
            )
            metrics[name].append(
                global_mean(accelerator, per_episode, torch.tensor(healthy, device=per_episode.device))
            )
        vm = batch.value_mask.bool()
        metrics["ppo/values"].append(global_mean(accelerator, batch.values, vm.float()))
        metrics["ppo/returns"].append(global_mean(accelerator, batch.returns, vm.float()))
        metrics["ppo/advantages"].append(global_mean(accelerator, advantages, batch.env_mask.float()))
        metrics["ppo/explained_variance"].append(explained_variance(batch.values[vm], batch.returns[vm]))
        metrics["ppo/truncated_bootstrapped"].append(
            sum(bool(e.truncated) for e in batch.episodes) / max(len(batch), 1)
        )
        metrics["kl_coef"].append(coef)
        if rollout_kl is not None:
            # Reward mode: this is the KL in the objective. Loss mode: `kl` is logged per minibatch by the loss.
            metrics["kl" if self.args.kl_penalty == "reward" else "ppo/rollout_kl"].append(rollout_kl)

    # ------------------------------------------------------------------------------------------------- loss
    @staticmethod
    def sequences(
        prompt_ids, prompt_mask, completion_ids, completion_mask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([prompt_ids, completion_ids], dim=1), torch.cat(
            [prompt_mask, completion_mask], dim=1
        )

    def policy_forward(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int):
        """Per-token log-probs and entropies of the last `width` tokens (B, T), and for a shared critic the
        backbone's last hidden states (B, L, H) of the same forward (None for a separate critic)."""
        hidden: list[torch.Tensor] = []
        handle = None
        if self.args.critic == "shared":
            body = backbone_of(self.accelerator.unwrap_model(model))
            handle = body.register_forward_hook(lambda module, inputs, output: hidden.append(output[0]))
        try:
            logprobs, entropy = trl_bridge.per_token_logps_and_entropies(
                self, model, input_ids, attention_mask, width, compute_entropy=True
            )
        finally:
            if handle is not None:
                handle.remove()
        return logprobs, entropy, torch.cat(hidden) if hidden else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The PPO objective of one minibatch (`rlft.core.losses.ppo_objective`).

        Normalisation: policy, entropy and KL terms are token sums over the minibatch's model tokens divided by
        the loss tokens one minibatch holds on average (the generation batch's count across processes /
        processes / minibatches: TRL's "dapo" choice); the value loss is a masked mean. The sum is divided by
        the accumulation steps (HF's own loss scaling is off for TRL's trainers).
        """
        if return_outputs:
            raise ValueError("PPOTrainer does not return outputs")
        ids, att = self.sequences(
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]
        )
        start, width = inputs["prompt_ids"].shape[1], inputs["completion_ids"].shape[1]
        logprobs, entropy, hidden = self.policy_forward(model, ids, att, width)
        values = self.critic(hidden) if hidden is not None else self.critic(ids, att)
        values = values[:, start - 1 : start - 1 + width].float()
        training = self.model.training
        token_count = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if training:  # in eval the batch is neither split into minibatches nor accumulated
            token_count = token_count / self.args.steps_per_generation
        mask = inputs["completion_mask"] * inputs["env_mask"]
        loss, metrics = ppo_objective(
            logprobs,
            inputs["old_logprobs"],
            inputs["advantages"],
            mask,
            values,
            inputs["old_values"],
            inputs["returns"],
            inputs["value_mask"],
            token_count=token_count,
            clip_coef=(self.epsilon_low, self.epsilon_high),
            clip_coef_value=self.args.cliprange_value,
            vf_coef=self.args.vf_coef,
            ent_coef=self.args.entropy_coef,
            entropy=entropy,
            kl_coef=float(inputs["kl_coef"]),
            ref_logprobs=inputs.get("ref_logprobs"),
            kl_ratio_weighted=self.args.use_bias_correction_kl,
        )
        logged = trl_bridge.metrics(self, "train" if training else "eval")
        for name, value in metrics.items():
            gathered = self.accelerator.gather(value.detach().float().reshape(1))
            logged[name].append((gathered.max() if name in _MAX_METRICS else gathered.mean()).item())
        return loss / trl_bridge.gradient_accumulation_steps(self) if training else loss

    # ------------------------------------------------------------------------------------------------- save
    def write_model_files(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy without the critic (a clean `from_pretrained` folder) and the critic in `critic/`."""
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None:
            state_dict = {
                k: v
                for k, v in state_dict.items()
                if not k.startswith(f"{ATTRIBUTE}.") and f".{ATTRIBUTE}." not in k
            }
        policy = self.accelerator.unwrap_model(self.model)
        with detached_critic(policy):
            super().write_model_files(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self.save_critic(os.path.join(output_dir, "critic"))

    def read_model_files(self, checkpoint: str, model=None) -> None:
        """The policy (HF's loader, which skips the critic's keys as missing), then the critic from `critic/`."""
        if self.accelerator.is_fsdp2:  # the whole module, critic too, from the full `pytorch_model_fsdp.bin`
            super().read_model_files(checkpoint, model)
            return
        policy = self.accelerator.unwrap_model(model if model is not None else self.model)
        with detached_critic(policy) as critic:
            super().read_model_files(checkpoint, policy)
        path = os.path.join(checkpoint, "critic")
        state = (
            load_critic(path).state_dict()
            if isinstance(critic, ValueModel)
            else load_file(os.path.join(path, HEAD_FILE))
        )
        critic.load_state_dict(state)

    def save_critic(self, path: str) -> str:
        policy = generation_policy(self)  # FSDP2: the whole weights (the copy is synced after every step)
        with detached_critic(policy) as critic:
            return str(save_critic(critic, path, self.args.critic, self.args.critic_init, policy=policy))

    # ----------------------------------------------------------------------------------------------- resume
    def _rlft_state(self) -> dict:
        # The KL coefficient of the batch in flight travels in the rollout buffer (`kl_coef`), not here.
        return {**super()._rlft_state(), "kl_controller": self.kl_controller.state_dict()}

    def _load_rlft_state(self, state: dict) -> None:
        super()._load_rlft_state(state)
        self.kl_controller.load_state_dict(state["kl_controller"])


def global_mean(accelerator, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over masked entries on every process together."""
    m = mask.to(x.dtype)
    totals = accelerator.reduce(torch.stack([(x * m).sum(), m.sum()]), reduction="sum")
    return (totals[0] / totals[1].clamp(min=1.0)).item()


def global_mean_std(accelerator, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of x over masked entries on every process together."""
    m = mask.to(x.dtype)
    totals = accelerator.reduce(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]), reduction="sum")
    count = totals[2].clamp(min=1.0)
    mean = totals[0] / count
    return mean, (totals[1] / count - mean * mean).clamp(min=0.0).sqrt()


@contextlib.contextmanager
def detached_critic(policy: torch.nn.Module):
    """Temporarily remove the critic from the policy module (to save or export the policy alone)."""
    critic = getattr(policy, ATTRIBUTE, None)
    if critic is not None:
        delattr(policy, ATTRIBUTE)
    try:
        yield critic
    finally:
        if critic is not None:
            policy.add_module(ATTRIBUTE, critic)


def build_ppo_trainer(
    model,
    tokenizer,
    args: PPOConfig,
    engine,
    train_seeds: list[int],
    batch_size: int,
    callbacks: list | None = None,
    critic=None,
    max_nonfinite_steps: int = 3,
):
    """PPOTrainer on a loaded policy, its critic built from `args.critic` / `args.critic_init`."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rollout = EpisodeRollout(engine, seed=args.seed, batch_size=batch_size)
    # TRL's constructor wants a reward function; PPO scores its batches itself and never calls it.
    trainer = PPOTrainer(
        model=model,
        args=args,
        episode_rollout=rollout,
        critic=critic,
        max_nonfinite_steps=max_nonfinite_steps,
        reward_funcs=[episode_return],
        train_dataset=task_dataset(train_seeds),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, rollout

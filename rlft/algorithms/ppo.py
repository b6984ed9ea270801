"""PPO with a critic, as a subclass of TRL's `GRPOTrainer` (TRL 1.16 has no PPOTrainer).

TRL's trainer keeps what it is good at: the training loop, accelerate / DeepSpeed / FSDP, PEFT, the clipped
policy loss (it accepts per-token advantages of shape (B, T)), the entropy bonus, the KL-to-reference term,
reuse of one rollout batch for `num_iterations` epochs of `steps_per_generation` minibatches, logging and
checkpoints. This subclass adds what PPO needs on top:

* a critic (`rlft/models/critic.py`), attached to the policy module as `rlft_critic` so that the optimizer, DDP,
  gradient clipping (`max_grad_norm`, jointly, as CleanRL does) and checkpoints include it;
* at rollout time: critic values, per-token rewards from the Episode's per-turn rewards (on each action's
  last token), an optional per-token KL penalty, GAE over model tokens (`rlft/core/advantages.py`), advantage
  whitening, and the behaviour log-probs as the "old" log-probs of the ratio;
* in the loss: TRL's clipped policy loss plus `vf_coef` x the clipped value loss;
* KL control: a per-token reward penalty (classic RLHF) or TRL's loss term, with a fixed or adaptive
  coefficient (`rlft/algorithms/kl_control.py`). The logged `kl` is the KL in the objective: the mean per-token
  `log pi_old - log pi_ref` in reward mode, TRL's k3 estimate of the loss term in loss mode (TRL's
  `use_bias_correction_kl`, on by default, weights each token's k3 by the ratio in both the loss and the log).

The policy and the critic share one optimizer and one `max_grad_norm` clip (as CleanRL's shared network
does); returns are not rescaled, so with large rewards a separate `critic_learning_rate` or a smaller
`vf_coef` keeps the value gradient from dominating the clipped norm.

Where this differs from CleanRL / SB3, a comment says why.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from trl import GRPOConfig, GRPOTrainer

from rlft.algorithms.checkpointing import ResumableTrainerMixin
from rlft.algorithms.grpo import EpisodeRollout, episode_return, task_dataset
from rlft.algorithms.kl_control import kl_controller
from rlft.core.advantages import explained_variance, masked_whiten, token_gae, turn_gae
from rlft.models.critic import (
    ATTRIBUTE,
    HEAD_FILE,
    ValueModel,
    backbone_of,
    build_critic,
    load_critic,
    save_critic,
)

CRITIC_TYPES = ("separate", "shared")
ADVANTAGE_LEVELS = ("token", "turn")
KL_PENALTIES = ("reward", "loss")


@dataclass
class PPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus PPO's keys. `num_iterations` = PPO epochs, `steps_per_generation` = minibatches."""

    critic: str = field(default="separate", metadata={"help": "'separate' value model or 'shared' value head"})
    critic_init: str = field(default="policy", metadata={"help": "'policy', a reward-model folder or a saved critic"})
    critic_learning_rate: float | None = field(default=None, metadata={"help": "critic lr (None: learning_rate)"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    cliprange_value: float | None = field(default=0.2, metadata={"help": "value clipping range (None: off)"})
    gamma: float = field(default=1.0, metadata={"help": "discount per model token (per action in turn mode)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    advantage_level: str = field(default="token", metadata={"help": "'token' GAE or 'turn' GAE across actions"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalise advantages over the rollout batch"})
    kl_coef: float = field(default=0.0, metadata={"help": "initial KL coefficient to the reference policy"})
    kl_penalty: str = field(default="reward", metadata={"help": "'reward' (per-token penalty) or 'loss' term"})
    target_kl: float | None = field(default=None, metadata={"help": "adaptive KL target per token (None: fixed)"})
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL horizon, in episodes"})

    def __post_init__(self):
        for name, value, choices in (("critic", self.critic, CRITIC_TYPES),
                                     ("advantage_level", self.advantage_level, ADVANTAGE_LEVELS),
                                     ("kl_penalty", self.kl_penalty, KL_PENALTIES)):
            if value not in choices:
                raise ValueError(f"{name} = {value!r}: expected one of {list(choices)}")
        if self.beta != 0.0:
            raise ValueError("PPO's KL to the reference is set by kl_coef (and kl_penalty, target_kl), not beta")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gamma = {self.gamma}, lam = {self.lam}: expected values in [0, 1]")
        if self.kl_coef < 0 or (self.target_kl is not None and self.target_kl <= 0):
            raise ValueError("kl_coef must be >= 0 and target_kl > 0")
        # The critic is a submodule of the policy (so DDP all-reduces its gradients) but runs outside the
        # policy's forward. DDP's unused-parameter search (transformers turns it on by default) would mark the
        # critic's parameters ready at the end of that forward and again when the value loss's gradient reaches
        # them: "Expected to mark a variable ready only once". Every parameter gets a gradient in each
        # backward, so PPO needs no search.
        if self.ddp_find_unused_parameters:
            raise ValueError("ddp_find_unused_parameters must be false for PPO: its critic runs outside the "
                             "policy's forward, which DDP's unused-parameter search cannot handle")
        self.ddp_find_unused_parameters = False
        # PPO's baseline is the critic, so unlike GRPO it needs no group of episodes per seed: allow 1.
        single = self.num_generations == 1
        if single:
            self.num_generations = 2
        try:
            super().__post_init__()
        finally:
            if single:
                self.num_generations = 1
        # TRL builds the reference policy only when beta != 0; the loss uses self.beta, which PPOTrainer sets
        # per rollout (0 in reward mode, the controller's value in loss mode).
        self.beta = self.kl_coef


def model_token_mask(batch: dict) -> torch.Tensor:
    """1 on tokens the model sampled: TRL's completion mask times the env mask (`tool_mask`) when there is one."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CleanRL's clipped value loss, 0.5 * max((V - R)^2, (V_clip - R)^2), masked mean; and the clip fraction.

    >>> v, old, ret, m = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)
    >>> loss, frac = clipped_value_loss(v, old, ret, m, clip=0.2)
    >>> round(loss.item(), 4), frac.item()   # (0.5 * max(1, 0.04) + 0.5 * 1) / 2
    (0.5, 0.5)
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), torch.zeros((), device=values.device)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, fraction


class PPOTrainer(ResumableTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer with a critic and GAE. Consumes the same `EpisodeRollout` as GRPO.

    Args (beyond GRPOTrainer's): `episode_rollout`, the rollout function (its `last_episodes` carry the
    per-turn rewards and how each episode ended); `critic`, a ValueModel or ValueHead (built from
    `args.critic` / `args.critic_init` when None).
    """

    def __init__(self, model, args: PPOConfig, episode_rollout: EpisodeRollout, critic=None,
                 max_nonfinite_steps: int = 3, **kwargs):
        self._rlft_init(episode_rollout, max_nonfinite_steps)
        if critic is None:
            critic = build_critic(args.critic, args.critic_init, model, trust_remote_code=args.trust_remote_code)
        self._check_critic(critic, args.critic)
        model.add_module(ATTRIBUTE, critic)
        super().__init__(model=model, args=args, rollout_func=episode_rollout, **kwargs)
        self.kl_controller = kl_controller(args.kl_coef, args.target_kl, args.kl_horizon)
        self._capture = False
        self._captured: dict[str, torch.Tensor] = {}

    @staticmethod
    def _check_critic(critic, kind: str) -> None:
        if (kind == "separate") != isinstance(critic, ValueModel):
            raise ValueError(f"critic type '{kind}' needs a {'ValueModel' if kind == 'separate' else 'ValueHead'}, "
                             f"got {type(critic).__name__}")

    # ----------------------------------------------------------------------------------------------- critic
    @property
    def critic(self) -> torch.nn.Module:
        return getattr(self.accelerator.unwrap_model(self.model), ATTRIBUTE)

    def _critic_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """V for every context prefix, (B, L), by a forward pass (no captured hidden states)."""
        critic = self.critic
        if self.args.critic == "separate":
            return critic(input_ids, attention_mask)
        policy = self.accelerator.unwrap_model(self.model)
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
        optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": self.args.weight_decay,
                                   "rlft_critic": True})
        return optimizer

    # --------------------------------------------------------------------------------------- rollout scoring
    def _generate_and_score_completions(self, inputs):
        coef = self.kl_controller.value
        self.beta = coef  # so TRL computes reference log-probs for this batch when there is a KL term
        # TRL recomputes "old" log-probs with a forward pass when one rollout batch serves several optimizer
        # steps; PPO uses the behaviour log-probs instead, so that condition is made false for this call.
        accumulation = self.args.gradient_accumulation_steps
        self.args.gradient_accumulation_steps = self.args.steps_per_generation * self.num_iterations
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self.args.gradient_accumulation_steps = accumulation
        self.beta = coef if self.args.kl_penalty == "loss" else 0.0
        episodes = self.episode_rollout.last_episodes
        device = out["completion_ids"].device
        mask = model_token_mask(out)
        batch, width = mask.shape

        rewards = torch.zeros((batch, width), device=device)
        components: dict[str, list[float]] = {}
        for i, episode in enumerate(episodes):
            if episode.failure is not None:
                continue  # left out of the batch: no reward here, and its env_mask (so `mask`) is all 0
            token_rewards = episode.token_rewards()
            rewards[i, : len(token_rewards)] = torch.tensor(token_rewards, device=device)
            for name, values in episode.rewards.items():
                components.setdefault(name, []).append(float(sum(values)))
        # Behaviour log-probs from the rollout are the "old" log-probs (CleanRL stores them at rollout time);
        # the first minibatch's ratio is then exactly pi_theta / pi_behaviour, 1 up to float error.
        behaviour = out["sampling_per_token_logps"] * mask
        out["old_per_token_logps"] = behaviour

        rollout_kl = None
        if coef > 0 and "ref_per_token_logps" in out:
            ref = out["ref_per_token_logps"]
            if self.args.kl_penalty == "reward":
                per_token = (behaviour - ref) * mask
                rewards = rewards - coef * per_token
            else:
                per_token = torch.exp(ref - behaviour) - (ref - behaviour) - 1
            rollout_kl = self._global_mean(per_token, mask)

        with torch.no_grad():
            values, bootstrap = self._rollout_values(out, episodes, width)
        if self.args.advantage_level == "turn":
            advantages, returns, value_mask = turn_gae(rewards, values, mask, bootstrap, self.args.gamma, self.args.lam)
        else:
            advantages, returns = token_gae(rewards, values, mask, bootstrap, self.args.gamma, self.args.lam)
            value_mask = mask.bool()
        # Whitened over the whole rollout batch, across processes: a minibatch holds few episodes, and its own
        # statistics (CleanRL's per-minibatch `norm_adv`) would be noisy with sparse episode rewards.
        raw_advantages = advantages
        if self.args.whiten_advantages:
            mean, std = self._global_mean_std(advantages, mask)
            advantages = masked_whiten(advantages, mask, mean, std)
        out["advantages"] = advantages
        out["returns"] = returns
        out["old_values"] = values
        out["value_mask"] = value_mask.to(values.dtype)

        self._log_rollout(episodes, components, values, returns, raw_advantages, value_mask, mask, rollout_kl, coef)
        if rollout_kl is not None:
            self.kl_controller.update(rollout_kl, n_steps=batch * self.accelerator.num_processes)
        return out

    def _rollout_values(self, out, episodes, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic values at each completion token, and the bootstrap value of truncated episodes.

        Each truncated episode's final observation (not part of the trained tokens) is appended after its
        completion, so one forward gives V(s_T) too; appending never changes the earlier positions' values.
        """
        prompt_ids, prompt_mask = out["prompt_ids"], out["prompt_mask"]
        completion_ids, completion_mask = out["completion_ids"], out["completion_mask"]
        lengths = completion_mask.sum(dim=1).tolist()
        tails = [e.final_observation_ids if e.truncated else [] for e in episodes]
        extra = max((len(t) for t in tails), default=0)
        pad = self._tokenizer.pad_token_id
        ids = torch.cat([completion_ids, completion_ids.new_full((len(tails), extra), pad)], dim=1)
        att = torch.cat([completion_mask, completion_mask.new_zeros((len(tails), extra))], dim=1)
        for i, tail in enumerate(tails):
            if tail:
                ids[i, lengths[i]: lengths[i] + len(tail)] = torch.tensor(tail, device=ids.device)
                att[i, lengths[i]: lengths[i] + len(tail)] = 1
        full = self._critic_values(torch.cat([prompt_ids, ids], dim=1), torch.cat([prompt_mask, att], dim=1)).float()
        start = prompt_ids.shape[1]
        values = full[:, start - 1: start - 1 + width]
        bootstrap = torch.zeros(len(tails), device=full.device)
        for i, tail in enumerate(tails):
            if tail:
                bootstrap[i] = full[i, start + lengths[i] + len(tail) - 1]
        return values, bootstrap

    def _global_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _global_mean_std(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.to(x.dtype)
        totals = self.accelerator.reduce(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]), reduction="sum")
        count = totals[2].clamp(min=1.0)
        mean = totals[0] / count
        return mean, (totals[1] / count - mean * mean).clamp(min=0.0).sqrt()

    def _log_rollout(self, episodes, components, values, returns, advantages, value_mask, mask, rollout_kl, coef):
        metrics = self._metrics["train"]
        if getattr(self.episode_rollout, "reward_design", None) is None:  # a design logs them, over all processes
            for name, totals in components.items():
                metrics[f"episode/reward/{name}"].append(sum(totals) / max(len(totals), 1))
        vm = value_mask.bool()
        metrics["ppo/values"].append(self._global_mean(values, vm.float()))
        metrics["ppo/returns"].append(self._global_mean(returns, vm.float()))
        metrics["ppo/advantages"].append(self._global_mean(advantages, mask.float()))
        metrics["ppo/explained_variance"].append(explained_variance(values[vm], returns[vm]))
        metrics["ppo/truncated_bootstrapped"].append(sum(bool(e.truncated) for e in episodes) / max(len(episodes), 1))
        metrics["kl_coef"].append(coef)
        if rollout_kl is not None:
            # Reward mode: this is the KL in the objective. Loss mode: TRL logs `kl` per minibatch from the loss.
            metrics["kl" if self.args.kl_penalty == "reward" else "ppo/rollout_kl"].append(rollout_kl)

    # ------------------------------------------------------------------------------------------------- loss
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if not self._capture:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        hidden: list[torch.Tensor] = []
        handle = None
        if self.args.critic == "shared":
            body = backbone_of(self.accelerator.unwrap_model(model))
            handle = body.register_forward_hook(lambda module, inputs, output: hidden.append(output[0]))
        try:
            result = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                                *args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        self._captured = {"logps": result[0], "hidden": torch.cat(hidden) if hidden else None}
        return result

    def _compute_loss(self, model, inputs):
        self._capture = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._capture = False
        mask = model_token_mask(inputs)
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        start, width = prompt_ids.shape[1], completion_ids.shape[1]
        if self.args.critic == "shared":
            values = self.critic(self._captured["hidden"])
        else:
            values = self.critic(torch.cat([prompt_ids, completion_ids], dim=1),
                                 torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1))
        values = values[:, start - 1: start - 1 + width].float()
        value_loss, value_clipfrac = clipped_value_loss(values, inputs["old_values"], inputs["returns"],
                                                        inputs["value_mask"], self.args.cliprange_value)
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss + self.args.vf_coef * value_loss / normalizer

        with torch.no_grad():
            log_ratio = self._captured["logps"] - inputs["old_per_token_logps"]
            ratio = torch.exp(log_ratio)
            m = mask.float()
            metrics = self._metrics[mode]
            # CleanRL's approx_kl ((r - 1) - log r) and the policy-gradient loss alone (TRL's total loss also
            # holds the entropy bonus and any KL term).
            advantages = inputs["advantages"]
            eps_low, eps_high = self.epsilon_low, self.epsilon_high
            pg = -torch.min(ratio * advantages, ratio.clamp(1 - eps_low, 1 + eps_high) * advantages)
            metrics["ppo/policy_loss"].append(self._global_mean(pg, m))
            metrics["ppo/value_loss"].append(self.accelerator.gather(value_loss.detach()).mean().item())
            metrics["ppo/value_clipfrac"].append(value_clipfrac.item())
            metrics["ppo/approx_kl"].append(self._global_mean((ratio - 1) - log_ratio, m))
            metrics["ppo/ratio_mean"].append(self._global_mean(ratio, m))
            metrics["ppo/ratio_max_deviation"].append(((ratio - 1).abs() * m).max().item())
        return loss

    # ------------------------------------------------------------------------------------------------- save
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy without the critic (a clean `from_pretrained` folder) and the critic in `critic/`."""
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None:
            state_dict = {k: v for k, v in state_dict.items()
                          if not k.startswith(f"{ATTRIBUTE}.") and f".{ATTRIBUTE}." not in k}
        policy = self.accelerator.unwrap_model(self.model)
        with detached_critic(policy):
            super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self.save_critic(os.path.join(output_dir, "critic"))

    # ----------------------------------------------------------------------------------------------- resume
    def _rlft_state(self) -> dict:
        # beta: the KL coefficient the loss uses for the rollout batch in flight (0 in reward-penalty mode)
        return {**super()._rlft_state(), "kl_controller": self.kl_controller.state_dict(), "beta": self.beta}

    def _load_rlft_state(self, state: dict) -> None:
        super()._load_rlft_state(state)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.beta = float(state["beta"])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The policy (HF's loader, which skips the critic's keys as missing), then the critic from `critic/`."""
        policy = self.accelerator.unwrap_model(model if model is not None else self.model)
        with detached_critic(policy) as critic:
            super()._load_from_checkpoint(resume_from_checkpoint, policy)
        path = os.path.join(resume_from_checkpoint, "critic")
        if isinstance(critic, ValueModel):
            state = load_critic(path).state_dict()
        else:
            state = load_file(os.path.join(path, HEAD_FILE))
        critic.load_state_dict(state)

    def save_critic(self, path: str) -> str:
        policy = self.accelerator.unwrap_model(self.model)
        with detached_critic(policy) as critic:
            return str(save_critic(critic, path, self.args.critic, self.args.critic_init, policy=policy))


@contextlib.contextmanager
def detached_critic(policy: torch.nn.Module):
    """Temporarily remove the critic from the policy module (to save or export the policy alone)."""
    critic = policy._modules.pop(ATTRIBUTE, None)
    try:
        yield critic
    finally:
        if critic is not None:
            policy._modules[ATTRIBUTE] = critic


def build_ppo_trainer(model, tokenizer, args: PPOConfig, engine, train_seeds: list[int], batch_size: int,
                      callbacks: list | None = None, critic=None, max_nonfinite_steps: int = 3):
    """PPOTrainer on a loaded policy, its critic built from `args.critic` / `args.critic_init`."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rollout = EpisodeRollout(engine, seed=args.seed, batch_size=batch_size)
    trainer = PPOTrainer(model=model, args=args, episode_rollout=rollout, critic=critic,
                         max_nonfinite_steps=max_nonfinite_steps,
                         reward_funcs=[episode_return], train_dataset=task_dataset(train_seeds),
                         processing_class=tokenizer, callbacks=callbacks)
    return trainer, rollout

"""PPO's configuration: `trl.GRPOConfig` plus PPO's keys (TRL's `<name>_config.py` beside `<name>_trainer.py`).

GRPOConfig's keys keep their meaning where PPO uses them: `num_iterations` = PPO epochs over one rollout
batch, `steps_per_generation` = minibatches per epoch, `epsilon` / `epsilon_high` = the policy clip range,
`temperature` = the sampling temperature the log-probs are scored at, `entropy_coef` = the entropy bonus,
`use_bias_correction_kl` = weigh the KL term's k3 by the ratio. `loss_type` and `beta` are not read by PPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

CRITIC_TYPES = ("separate", "shared")
ADVANTAGE_LEVELS = ("token", "turn")
KL_PENALTIES = ("reward", "loss")


@dataclass
class PPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus PPO's keys. `num_iterations` = PPO epochs, `steps_per_generation` = minibatches."""

    critic: str = field(
        default="separate", metadata={"help": "'separate' value model or 'shared' value head"}
    )
    critic_init: str = field(
        default="policy", metadata={"help": "'policy', a reward-model folder or a saved critic"}
    )
    critic_learning_rate: float | None = field(
        default=None, metadata={"help": "critic lr (None: learning_rate)"}
    )
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    cliprange_value: float | None = field(default=0.2, metadata={"help": "value clipping range (None: off)"})
    gamma: float = field(default=1.0, metadata={"help": "discount per model token (per action in turn mode)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    advantage_level: str = field(
        default="token", metadata={"help": "'token' GAE or 'turn' GAE across actions"}
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "normalise advantages over the rollout batch"}
    )
    kl_coef: float = field(default=0.0, metadata={"help": "initial KL coefficient to the reference policy"})
    kl_penalty: str = field(
        default="reward", metadata={"help": "'reward' (per-token penalty) or 'loss' term"}
    )
    target_kl: float | None = field(
        default=None, metadata={"help": "adaptive KL target per token (None: fixed)"}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "adaptive KL horizon, in episodes"})

    def __post_init__(self):
        for name, value, choices in (
            ("critic", self.critic, CRITIC_TYPES),
            ("advantage_level", self.advantage_level, ADVANTAGE_LEVELS),
            ("kl_penalty", self.kl_penalty, KL_PENALTIES),
        ):
            if value not in choices:
                raise ValueError(f"{name} = {value!r}: expected one of {list(choices)}")
        if self.beta != 0.0:
            raise ValueError(
                "PPO's KL to the reference is set by kl_coef (and kl_penalty, target_kl), not beta"
            )
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
            raise ValueError(
                "ddp_find_unused_parameters must be false for PPO: its critic runs outside the "
                "policy's forward, which DDP's unused-parameter search cannot handle"
            )
        self.ddp_find_unused_parameters = False
        # PPO's baseline is the critic, so unlike GRPO it needs no group of episodes per seed: allow 1.
        # (GRPOConfig rejects num_generations < 2; its check is passed with 2, then the value restored.)
        single = self.num_generations == 1
        if single:
            self.num_generations = 2
        try:
            super().__post_init__()
        finally:
            if single:
                self.num_generations = 1
        # TRL builds the reference policy (or keeps a PEFT policy's base) only when beta != 0. PPO's loss never
        # reads beta: the KL coefficient is the controller's (rlft/algorithms/kl_control.py), set per rollout.
        self.beta = self.kl_coef

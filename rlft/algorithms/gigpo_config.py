"""GiGPO's configuration: `trl.GRPOConfig` plus the step-level keys (TRL's `<name>_config.py` pairing).

GRPOConfig's keys keep their meaning: `num_generations` episodes per task form an episode group, whose
group-relative advantage (`scale_rewards`, `loss_type`, `epsilon`, ...) is TRL's GRPO advantage unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


@dataclass
class GiGPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus GiGPO's step-level credit (Feng et al. 2025, "Group-in-Group Policy Optimization")."""

    gamma: float = field(
        default=0.95,
        metadata={"help": "discount per turn of the returns that step groups compare (the paper's gamma)"},
    )
    step_advantage_weight: float = field(
        default=1.0, metadata={"help": "omega in A = A_episode + omega * A_step"}
    )
    step_scale_by_std: bool = field(
        default=False,
        metadata={"help": "divide step advantages by their step group's std (False: mean-centred only)"},
    )

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma = {self.gamma}: expected a value in [0, 1]")
        if self.step_advantage_weight < 0:
            raise ValueError(f"step_advantage_weight = {self.step_advantage_weight}: expected >= 0")
        super().__post_init__()

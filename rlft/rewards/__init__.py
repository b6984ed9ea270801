"""Rewards, in one package: designs (design.py: weighted env, reward-model and rule components; normalization.py;
references.py, what a design names, checked), built-in rules (rules.py), learned reward models (models/: preference
data, training, scoring) and the over-optimisation alarm (alarm.py)."""

from rlft.rewards.design import RewardDesign, build_reward_design
from rlft.rewards.normalization import RunningMeanStd
from rlft.rewards.references import check_reward_references
from rlft.rewards.rules import BUILTIN_RULES, call_rule, length_penalty, potential_shaping, valid_action

__all__ = [
    "BUILTIN_RULES",
    "RewardDesign",
    "RunningMeanStd",
    "build_reward_design",
    "call_rule",
    "check_reward_references",
    "length_penalty",
    "potential_shaping",
    "valid_action",
]

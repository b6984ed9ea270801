"""Reward designs: weighted env, reward-model and rule components (design.py) and the built-in rules (rules.py)."""

from rlft.rewards.design import RewardDesign, RunningMeanStd, build_reward_design, check_reward_references
from rlft.rewards.rules import BUILTIN_RULES, call_rule, length_penalty, potential_shaping, valid_action

__all__ = ["BUILTIN_RULES", "RewardDesign", "RunningMeanStd", "build_reward_design", "call_rule",
           "check_reward_references", "length_penalty", "potential_shaping", "valid_action"]

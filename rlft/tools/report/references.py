"""Reference rows for `rlft compare`: the untrained, SFT, expert and random policies of each run's eval.json.

They answer "did RL beat SFT (and how far is it from the expert)?" beside the RL variants. Each run's
eval.json scores its own references on the same held-out seeds as its `rl` policy. Where several variants
share a reference (the same score for every seed they have in common: e.g. the expert on the same seeds, or
one SFT checkpoint per seed that every RL variant starts from), it is one row over all their seeds;
otherwise each variant gets its own row, labelled `<policy> (<variant>)`.
"""

from __future__ import annotations

import math

from rlft.tools.report.runs import Variant
from rlft.tools.report.stats import FinalScores, policy_score

REFERENCE_POLICIES = ("untrained", "sft", "expert", "random")  # in the table's order, where present


class _Group:
    """One reference row being built: seed -> (score, per-episode CI), and the variants it stands for."""

    def __init__(self, by_seed: dict, variant: str):
        self.by_seed = by_seed
        self.variants = [variant]

    def agrees_with(self, by_seed: dict) -> bool:
        """Shares at least one seed with `by_seed`, with the same score on every shared one."""
        shared = self.by_seed.keys() & by_seed.keys()
        return bool(shared) and all(
            math.isclose(self.by_seed[s][0], by_seed[s][0], rel_tol=1e-9, abs_tol=1e-12) for s in shared
        )


def reference_scores(variants: list[Variant], metric: str, taken: set[str] = frozenset()) -> FinalScores:
    """Per reference policy present in some eval.json, its rows (see the module docstring), seeds in order.

    Args:
        variants: the RL variants; their runs' eval.json files hold the references.
        metric: 'success' or 'return' (eval.json's headline numbers).
        taken: labels already used by variants; a reference whose label collides gets ' (reference)' added.
    """
    finals = FinalScores({}, {}, {})
    for policy in REFERENCE_POLICIES:
        groups: list[_Group] = []
        for variant in variants:
            by_seed = _seed_scores(variant, policy, metric)
            if not by_seed:
                continue
            group = next((g for g in groups if g.agrees_with(by_seed)), None)
            if group is None:
                groups.append(_Group(by_seed, variant.label))
            else:
                group.by_seed.update(by_seed)
                group.variants.append(variant.label)
        for group in groups:
            label = policy if len(groups) == 1 else f"{policy} ({', '.join(group.variants)})"
            label = f"{label} (reference)" if label in taken else label
            seeds = sorted(group.by_seed, key=lambda s: (isinstance(s, str), s))
            finals.seeds[label] = [s if isinstance(s, int) else None for s in seeds]
            finals.scores[label] = [group.by_seed[s][0] for s in seeds]
            finals.episode_cis[label] = [group.by_seed[s][1] for s in seeds]
            finals.sources[label] = [f"eval.json ({policy})"] * len(seeds)
    return finals


def _seed_scores(variant: Variant, policy: str, metric: str) -> dict:
    """seed -> (score, per-episode CI) of `policy` in the variant's runs; a run without a seed is keyed by its
    path, so it never merges with another variant's."""
    found = {}
    for run in variant.runs:
        value, ci = policy_score(run, policy, metric)
        if value is not None:
            found[run.seed if run.seed is not None else str(run.path)] = (value, ci)
    return found

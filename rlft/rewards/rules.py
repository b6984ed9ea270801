"""Rule functions: plain callables that give each turn of an episode a reward.

TRL's reward functions take a batch of completions, `(completions, **kwargs) -> list[float]`, with the
dataset's other columns as keyword arguments. A turn-level rule is the same shape with an episode's actions
as the batch:

    rule(actions: list[str], **fields) -> list[float]        # one value per action (turn), in order

It is called once per episode. `actions[k]` is the text of action k as the env received it (decoded from the
sampled tokens, stripped). The keyword arguments are the episode's fields below plus the component's
`kwargs` from the YAML. A rule names the fields it uses; one that also takes `**kwargs` receives every field
(the built-ins do), one that does not receives only those it names.

Fields (per episode; lists have one entry per turn):

    observations        the observation each action answered (s_k)
    next_observations   the observation that followed each action (s_{k+1}); the last one is the env's final
                        observation
    terminated          the episode ended in a terminal state (not by a time, turn or token limit)
    truncated           it was cut off instead
    invalid_action      the env's `info["invalid_action"]` after each action (None where the env does not say)
    action_tokens       how many tokens the model sampled for each action (its stop token included)
    action_names        the env's action names when it has them (`DiscreteTextEnv.action_names`), else None
    instructions        the env's instructions; prompt: instructions and first observation, as the model read them
    env_rewards         the env's own reward of each turn
    success, seed, task_id

A rule of your own lives in your package and is named in the YAML:

    reward:
      components:
        polite: {kind: rule, function: my_pkg.rules:polite, weight: 0.1}

    # my_pkg/rules.py
    def polite(actions, **kwargs):
        return [0.1 if "please" in a else 0.0 for a in actions]
"""

from __future__ import annotations

import functools
import inspect
import string
from collections.abc import Callable, Sequence
from typing import Any

RuleFunction = Callable[..., Sequence[float]]


def _blank(text: str) -> bool:
    return not text.strip()


def _action_name(text: str) -> str:
    """The text as an exact action name would read: stripped, lower-cased, trailing punctuation removed."""
    return text.strip().lower().rstrip(string.punctuation)


def valid_action(
    actions: list[str],
    invalid_action: Sequence[bool | None] | None = None,
    action_names: Sequence[str] | None = None,
    valid_reward: float = 0.0,
    invalid_reward: float = -1.0,
    exact: bool = True,
    **kwargs,
) -> list[float]:
    """`valid_reward` for an action the env could parse, `invalid_reward` for one it could not.

    The env's own signal (`info["invalid_action"]`, recorded per turn by the rollout) decides, with two
    guards against what a lenient parser lets through: a blank action is never valid, and with `exact` (the
    default) and an env that names its actions, the action must be one of those names and nothing more
    (`DiscreteTextEnv`'s parser accepts "right please" and "right right right" as "right"; this rule does
    not reward them). The defaults make it a penalty, not a bonus: a bonus per valid turn would pay the
    policy for making episodes longer.

    >>> valid_action(["right", "rihgt", ""], invalid_action=[False, True, False])
    [0.0, -1.0, -1.0]
    >>> valid_action(["Right.", "right right"], invalid_action=[False, False], action_names=["left", "right"])
    [0.0, -1.0]
    """
    if invalid_action is None or any(flag is None for flag in invalid_action):
        raise ValueError(
            "valid_action needs the env's per-step info['invalid_action'] (a bool); this env does not "
            "report it. Use a DiscreteTextEnv adapter, or write a rule that parses the action itself"
        )
    names = {name.lower() for name in action_names} if action_names and exact else None
    rewards = []
    for text, invalid in zip(actions, invalid_action, strict=True):
        valid = not invalid and not _blank(text) and (names is None or _action_name(text) in names)
        rewards.append(float(valid_reward if valid else invalid_reward))
    return rewards


def length_penalty(
    actions: list[str],
    budget: int = 16,
    coef: float = 0.01,
    unit: str = "token",
    action_tokens: Sequence[int] | None = None,
    **kwargs,
) -> list[float]:
    """`-coef` per token (or character) beyond `budget`, for each action.

    A blank action (nothing but whitespace) costs `coef` as well: otherwise saying nothing would be the
    cheapest way never to pay the penalty. Characters are counted on the stripped text; tokens are the ones
    the model sampled (stop token included).

    >>> length_penalty(["up", "go up now please", "   "], budget=4, coef=0.5, unit="char")
    [0.0, -6.0, -0.5]
    >>> length_penalty(["up", "up up up"], budget=2, coef=0.25, action_tokens=[2, 5])
    [0.0, -0.75]
    """
    if unit not in ("token", "char"):
        raise ValueError(f"length_penalty: unit = {unit!r}; expected 'token' or 'char'")
    if unit == "token" and action_tokens is None:
        raise ValueError(
            "length_penalty: unit 'token' needs the action_tokens field (pass unit: char otherwise)"
        )
    rewards = []
    for k, text in enumerate(actions):
        length = action_tokens[k] if unit == "token" else len(text.strip())
        over = max(0, int(length) - int(budget))
        units = over if not _blank(text) else max(over, 1)
        rewards.append(-float(coef) * units if units else 0.0)
    return rewards


def potential_shaping(
    actions: list[str],
    observations: Sequence[str],
    next_observations: Sequence[str],
    potential: Callable[[str], float],
    gamma: float = 1.0,
    terminated: bool = False,
    **kwargs,
) -> list[float]:
    """Potential-based shaping, F(s, s') = gamma * Phi(s') - Phi(s), with Phi a function of the observation text.

    Ng, Harada & Russell (1999), "Policy invariance under reward transformations": a shaping reward of this
    form, and only of this form, leaves the optimal policy of the MDP unchanged. Over an episode the
    discounted sum telescopes to gamma^T Phi(s_T) - Phi(s_0). The potential of a terminal state is 0 (their
    condition for episodic tasks; otherwise ending the episode would itself be shaped); a truncated episode's
    last state keeps its potential. Name Phi in the YAML as `potential: my_pkg.shaping:phi`. Use the same
    gamma as the algorithm's discount (PPO's `gamma`; 1 for GRPO's undiscounted return).

    A potential with a `gamma` parameter (an optimal value, say) is called with this gamma.

    Shaping rewards the transition, not the text: an output the env does not act on leaves the state as it
    was and earns (gamma - 1) Phi(s), never a move's progress.

    >>> potential_shaping(["a", "b"], observations=["x", "xx"], next_observations=["xx", "xxx"], potential=len)
    [1.0, 1.0]
    >>> potential_shaping(["a", "b"], observations=["x", "xx"], next_observations=["xx", "xxx"], potential=len,
    ...                   terminated=True)
    [1.0, -2.0]
    """
    phi = functools.partial(potential, gamma=gamma) if _takes_gamma(potential) else potential
    values = [float(phi(s)) for s in observations]
    next_values = [float(phi(s)) for s in next_observations]
    if terminated and next_values:
        next_values[-1] = 0.0
    return [gamma * after - before for before, after in zip(values, next_values, strict=True)]


def _takes_gamma(potential: Callable[..., float]) -> bool:
    """Whether `potential` has a parameter named gamma (a builtin without a signature has none)."""
    try:
        return "gamma" in inspect.signature(potential).parameters
    except (TypeError, ValueError):
        return False


BUILTIN_RULES: dict[str, RuleFunction] = {
    "valid_action": valid_action,
    "length_penalty": length_penalty,
    "potential_shaping": potential_shaping,
}

# Keyword arguments of built-ins given in the YAML as 'module:function' and resolved before any model loads.
ENTRY_POINT_KWARGS: dict[str, tuple[str, ...]] = {"potential_shaping": ("potential",)}

FIELDS = (
    "observations",
    "next_observations",
    "terminated",
    "truncated",
    "invalid_action",
    "action_tokens",
    "action_names",
    "instructions",
    "prompt",
    "env_rewards",
    "success",
    "seed",
    "task_id",
)


def call_rule(
    function: RuleFunction, actions: list[str], fields: dict[str, Any], kwargs: dict[str, Any], name: str
) -> list[float]:
    """Call a rule with the fields it accepts and check that it returned one finite number per action."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_all = not parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    passed = {k: v for k, v in fields.items() if takes_all or k in parameters}
    values = function(actions, **passed, **kwargs)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(
            f"reward component '{name}': the rule returned {values!r}; expected a list of numbers, "
            "one per action"
        ) from None
    if len(values) != len(actions):
        raise ValueError(
            f"reward component '{name}': the rule returned {len(values)} values for "
            f"{len(actions)} actions; expected one per action"
        )
    # A NaN or inf is passed on, not raised: the trainer skips the step as it does for any non-finite reward
    # (rlft/algorithms/checkpointing.py), and the normaliser leaves it out of its statistics.
    return values

"""TRL 1.16's own multi-turn loop, `GRPOTrainer(environment_factory=...)`, on an rlft text env: the baseline of
benchmarks/rollout_vs_trl.py.

TRL's loop is a tool-calling one: the environment is a class whose public methods are tools, `reset` returns the
first observation (appended to the user message) and `get_reward` scores the finished rollout. Each turn, TRL
parses the completion with the tokenizer's `response_template`; a tool call runs the tool, the tool's result is
rendered by the chat template and appended to the token ids (no re-encoding of what was sampled), and one
`model.generate` over every row that made a call samples the next completion from the whole context again (no KV
cache is kept between turns). A row leaves the loop when its completion is not a tool call, after
`max_tool_calling_iterations` tool rounds, or past `max_completion_length`.

To put rlft's env behind that loop with the same tokens rlft's plain format uses, the tokenizer (a copy) gets:

  a chat template  `<s>{user}\\nAction:` for the first turn, `\\n{tool result}\\nAction:` after each action, so the
                   prompt and observation tokens are exactly `rlft.rollout.turn_format.PlainFormat`'s (the
                   assistant's tool call is rendered with its name and argument only for TRL's template checks:
                   TRL concatenates sampled ids and never re-renders an action);
  a response template  everything sampled after `Action:` up to EOS is one call `step(action=<text>)`.

So an action is at most `rollout.max_action_tokens` tokens (`generation_kwargs.max_new_tokens`) ended by EOS,
and an episode is at most `env.max_turns` actions (`max_tool_calling_iterations = max_turns - 1` after the
first), as in rlft. Two differences remain and are reported by the benchmark: a completion that is EOS at once
(empty text) is no tool call, so TRL ends that rollout where rlft steps the env with an invalid action; and TRL
cannot end a rollout when the env terminates (only the model can, by not calling a tool), so `step` after the
end returns the final observation again without stepping, and only real env steps are counted.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import gymnasium as gym
from datasets import Dataset
from trl import GRPOTrainer

# Renders exactly PlainFormat's tokens for the user turn and the tool results (word-level tokenizers ignore the
# whitespace); the assistant turn only has to pass TRL's supports_tool_calling / prefix-preserving checks.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}\nAction:"
    "{% elif m['role'] == 'assistant' %}{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}"
    " {{ c['function']['name'] }}{% for k, v in c['function']['arguments'].items() %} {{ k }} {{ v }}{% endfor %}"
    "{% endfor %}{% else %} {{ m['content'] }}{% endif %}{{ eos_token }}"
    "{% elif m['role'] == 'tool' %}\n{{ m['content'] }}\nAction:{% endif %}{% endfor %}"
)
# transformers' new-style response template (>= 5.13): the text after the last `Action:` up to EOS is the
# argument of one `step` call.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor_pattern": r"Action\s*:",
    "fields": {
        "tool_calls": {
            "close_pattern": r"</s>",
            "content": "text",
            "transform": [
                {"type": "function", "function": {"name": "step", "arguments": {"action": "{content}"}}}
            ],
        }
    },
}


def tool_calling_tokenizer(tokenizer):
    """A copy of `tokenizer` with the chat and response templates above (the original keeps rlft's plain format)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


class EnvSteps:
    """Env steps taken by every `TextEnvTool` since the last `take()` (TRL owns the instances, so they report
    here)."""

    count = 0

    @classmethod
    def take(cls) -> int:
        taken, cls.count = cls.count, 0
        return taken


def make_tool_env_class(env_factory: Callable[[], gym.Env]) -> type:
    """The class TRL's `environment_factory` instantiates: an rlft Gymnasium text env behind one tool, `step`."""

    class TextEnvTool:
        def __init__(self):
            self.env = env_factory()
            self.total_reward = 0.0
            self.done = False
            self.last_observation = ""

        def reset(self, seed: int | None = None, **kwargs) -> str:
            observation, _ = self.env.reset(seed=seed)
            self.total_reward, self.done, self.last_observation = 0.0, False, observation
            instructions = getattr(self.env.unwrapped, "instructions", "")
            return (instructions + "\n" if instructions else "") + observation

        def step(self, action: str) -> str:
            """Take one action in the environment.

            Args:
                action: the action's text, e.g. a direction.

            Returns:
                The next observation.
            """
            if self.done:  # TRL keeps calling tools after the env ended; nothing left to step
                return self.last_observation
            observation, reward, terminated, truncated, _ = self.env.step(action.strip())
            EnvSteps.count += 1
            self.total_reward += float(reward)
            self.done = terminated or truncated
            self.last_observation = observation
            return observation

        def get_reward(self) -> float:
            return self.total_reward

    return TextEnvTool


def trl_args(rlft_args, max_turns: int, max_action_tokens: int, max_steps: int, output_dir: str):
    """rlft's own GRPOConfig for the run (same batch, generations, learning rate, sampling, completion cap) with
    the tool loop's settings: an action of at most `max_action_tokens`, at most `max_turns` actions."""
    return dataclasses.replace(
        rlft_args,
        output_dir=output_dir,
        max_steps=max_steps,
        generation_batch_size=None,  # __post_init__ derived it from steps_per_generation; one may be set
        max_tool_calling_iterations=max_turns - 1,
        generation_kwargs={"max_new_tokens": max_action_tokens},
        top_k=0,  # rlft samples from the full (temperature, top-p) distribution
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )


def build_trl_trainer(model, tokenizer, args, env_factory: Callable[[], gym.Env], seeds: list[int]):
    """TRL's GRPOTrainer with the env as `environment_factory`; its dataset holds the seeds `reset` receives."""
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}]] * len(seeds), "seed": seeds})
    return GRPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tool_calling_tokenizer(tokenizer),
        environment_factory=make_tool_env_class(env_factory),
    )


def act(trainer: GRPOTrainer, seeds: list[int]) -> dict[str, float]:
    """TRL's acting without the optimizer step: `_generate_and_score_completions` on one generation batch (the
    tool loop's generation and env calls, then rewards and advantages; no old-log-prob forward with
    `num_iterations = 1` and `beta = 0`). Returns seconds, env steps and sampled tokens."""
    inputs = [{"prompt": [{"role": "user", "content": ""}], "seed": s} for s in seeds]
    EnvSteps.take()
    start = time.perf_counter()
    out = trainer._generate_and_score_completions(inputs)
    seconds = time.perf_counter() - start
    sampled = int((out["completion_mask"] * out.get("tool_mask", out["completion_mask"])).sum())
    return {"seconds": seconds, "env_steps": EnvSteps.take(), "sampled_tokens": sampled}

"""Bad input, end to end: one table of broken configs, YAML files, JSONL demonstrations and command lines.

Every case runs the real entry point (`rlft.cli.main`) in-process with a command that would load a model if
validation passed (`sft`, `train`, `pipeline`), in a folder that already holds run directories from earlier
runs. Each must

* exit non-zero (2) with one `rlft: error:` message naming the key or `file:line` and what was expected,
* fail before any model or tokenizer is loaded: the loading functions are booby-trapped, and
* leave the existing run directories untouched: names, bytes and modification times of everything under runs/.

`test_the_traps_and_the_snapshot_catch_a_valid_config` proves the traps and the snapshot would catch a case
that got through. Three cases also run through a real `python -m rlft.cli` subprocess. tests/test_config.py and
tests/test_demos_jsonl.py check the same validators one function down, with more variants.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlft import cli

# A small valid experiment (line numbers matter: the YAML cases below name them). Each case breaks one thing.
BASE_YAML = """\
# a small valid experiment for tests/test_bad_input.py
name: exp
output_dir: runs
model:
  tiny: {hidden_size: 32, num_heads: 2, num_layers: 1, intermediate_size: 64, corpus_episodes: 10}
env:
  id: rlft/FrozenLake-v0
  max_turns: 8
tracking:
  wandb: {enabled: false}
"""

ROW = json.dumps({"instructions": "Reach G.", "turns": [{"observation": "cell 0", "action": "right"}]})
DEMOS = ("sft.demos={source: jsonl, path: demos.jsonl}",)


def edit(old: str, new: str) -> str:
    """BASE_YAML with one exact edit (the edit must apply, so a changed BASE_YAML cannot silently void a case)."""
    assert BASE_YAML.count(old) == 1, old
    return BASE_YAML.replace(old, new)


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        kind: which kind of bad input of the issue's list it is (checked for coverage below).
        expect: substrings of stderr: the key or `file:line`, and what was expected or the closest choice.
        command: the rlft command; one that loads a model once validation passes.
        overrides: `key.sub=value` arguments after the config.
        config: the text (or bytes) of exp.yaml; None writes no config file.
        files: other files to write first, (relative path, text or bytes).
        argv: the whole command line instead of `command --config exp.yaml overrides`.
        exit_code: the expected exit status.
    """

    id: str
    kind: str
    expect: tuple[str, ...]
    command: str = "sft"
    overrides: tuple[str, ...] = ()
    config: str | bytes | None = BASE_YAML
    files: tuple[tuple[str, str | bytes], ...] = ()
    argv: tuple[str, ...] | None = None
    exit_code: int = 2

    def command_line(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        return [self.command, "--config", "exp.yaml", *self.overrides]


def demos_case(id: str, kind: str, jsonl: str | bytes, expect: tuple[str, ...], command: str = "sft") -> Case:
    return Case(id, kind, expect, command=command, overrides=DEMOS, files=(("demos.jsonl", jsonl),))


# A user's env written outside rlft (tests/test_validate_plays_env.py has more variants): `rlft validate` and every
# stage command play it a few seeds before any model loads.
USER_ENV = """\
import gymnasium as gym


class Corridor(gym.Env):
    def __init__(self, fault="none"):
        self.fault = fault
        self.observation_space, self.action_space = gym.spaces.Discrete(4), gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0 if self.fault == "reset_obs_only" else (0, {})

    def step(self, action):
        if self.fault == "step_raises":
            raise KeyError("no such cell")
        return (1, 0.0, False, {}) if self.fault == "step_four" else (1, 0.0, False, False, {})


def render(env, obs):
    return f"cell {obs}"


def render_tuple(env, obs):
    return (obs, 3)


def parse_out_of_range(text):
    return 7
"""


def _line(text: str) -> int:
    (line,) = [i for i, row in enumerate(USER_ENV.splitlines(), start=1) if text in row]
    return line


# The `file:line` each message names: a function's `def` line for what it returned, the raising line for a raise.
USER_ENV_LINES = {
    "render_tuple": _line("def render_tuple"),
    "reset": _line("def reset"),
    "step": _line("def step"),
    "parse": _line("def parse_out_of_range"),
    "raise_": _line("raise KeyError"),
}


def user_env_case(id: str, command: str, overrides: tuple[str, ...], expect: tuple[str, ...]) -> Case:
    """A case whose env is the user's, in its own module (`user_<id>.py`, so that no case reuses an import)."""
    module = "user_" + id.replace("-", "_")
    overrides = (f"env.id={module}:Corridor", "rl.init_from=base", *(o.format(m=module) for o in overrides))
    expect = tuple(e.format(m=module, **USER_ENV_LINES) for e in expect)
    return Case(
        id, "user env", expect, command=command, overrides=overrides, files=((f"{module}.py", USER_ENV),)
    )


CASES: list[Case] = [
    # ---------------------------------------------------------------- config: unknown keys
    Case(
        "unknown-top-level-key",
        "unknown key",
        ("exp.yaml: invalid configuration", "unknown key 'trackng'", "did you mean 'tracking'"),
        config=edit("tracking:", "trackng:"),
    ),
    Case(
        "unknown-nested-key",
        "unknown key",
        ("unknown key 'env.max_turn'", "did you mean 'max_turns'"),
        config=edit("  max_turns: 8", "  max_turn: 8"),
    ),
    Case(
        "unknown-trainer-key",
        "unknown key",
        ("unknown key 'rl.trainer.learning_rte' for trl.GRPOConfig", "did you mean 'learning_rate'"),
        command="train",
        overrides=("rl.trainer.learning_rte=1e-3",),
    ),
    Case(
        "trainer-key-set-by-rlft",
        "unknown key",
        ("key 'sft.trainer.output_dir' is set by rlft", "output_dir from the run"),
        overrides=("sft.trainer.output_dir=elsewhere",),
    ),
    # ---------------------------------------------------------------- config: wrong types
    Case(
        "int-is-a-word",
        "wrong type",
        ("key 'rollout.num_envs' = 'many'", "should be a valid integer"),
        overrides=("rollout.num_envs=many",),
    ),
    Case(
        "section-is-a-string",
        "wrong type",
        ("key 'env' = 'rlft/FrozenLake-v0'", "should be a valid dictionary"),
        config=edit("env:\n  id: rlft/FrozenLake-v0\n  max_turns: 8\n", "env: rlft/FrozenLake-v0\n"),
    ),
    Case(
        "bool-is-a-word",
        "wrong type",
        ("key 'model.trust_remote_code' = 'maybe'", "should be a valid boolean"),
        command="pipeline",
        overrides=("model.trust_remote_code=maybe",),
    ),
    Case(
        "trainer-bool-for-int",
        "wrong type",
        ("key 'sft.trainer.per_device_train_batch_size' = True", "expected int, got a boolean"),
        overrides=("sft.trainer.per_device_train_batch_size=true",),
    ),
    Case(
        "trainer-list-for-float",
        "wrong type",
        ("key 'rl.trainer.learning_rate' = [0.001]", "should be a valid number"),
        command="train",
        overrides=("rl.trainer.learning_rate=[1e-3]",),
    ),
    # ---------------------------------------------------------------- config: negative or zero rates and sizes
    Case(
        "negative-learning-rate",
        "bad rate",
        ("key 'rl.trainer.learning_rate' = -0.0001", "expected a value > 0"),
        command="train",
        overrides=("rl.trainer.learning_rate=-1e-4",),
    ),
    Case(
        "zero-learning-rate",
        "bad rate",
        ("key 'sft.trainer.learning_rate' = 0", "expected a value > 0"),
        overrides=("sft.trainer.learning_rate=0",),
    ),
    Case(
        "negative-temperature",
        "bad rate",
        ("key 'rollout.temperature' = -0.5", "greater than 0"),
        command="train",
        overrides=("rollout.temperature=-0.5",),
    ),
    Case(
        "failure-rate-above-1",
        "bad rate",
        ("key 'rollout.max_env_failure_rate' = 1.5", "less than or equal to 1"),
        command="train",
        overrides=("rollout.max_env_failure_rate=1.5",),
    ),
    Case(
        "zero-envs",
        "bad rate",
        ("key 'rollout.num_envs' = 0", "greater than 0"),
        command="pipeline",
        overrides=("rollout.num_envs=0",),
    ),
    Case(
        "zero-batch-size",
        "bad rate",
        ("key 'rl.trainer.per_device_train_batch_size' = 0", "expected a value > 0"),
        command="train",
        overrides=("rl.trainer.per_device_train_batch_size=0",),
    ),
    # ---------------------------------------------------------------- config: batch sizes that do not divide
    Case(
        "batch-not-divisible-by-generations",
        "batch sizes",
        ("key 'rl.trainer'", "generation_batch_size (12) must be divisible by num_generations (8)"),
        command="train",
        overrides=("rl.trainer.per_device_train_batch_size=12", "rl.trainer.num_generations=8"),
    ),
    Case(
        "generation-batch-not-divisible",
        "batch sizes",
        ("key 'rl.trainer'", "generation_batch_size (12) must be divisible by the global batch size (8)"),
        command="train",
        overrides=("rl.trainer.generation_batch_size=12", "rl.trainer.per_device_train_batch_size=8"),
    ),
    Case(
        "heads-do-not-divide-hidden-size",
        "batch sizes",
        (
            "exp.yaml: invalid configuration",
            "model.tiny",
            "hidden_size (32) must be divisible by num_heads (3)",
        ),
        overrides=("model.tiny.num_heads=3",),
    ),
    # ---------------------------------------------------------------- config: no reward source
    # rlft's only reward source today is the env's reward (the episode return); reward designs come later.
    Case(
        "reward-weights-wrong-length",
        "no reward source",
        (
            "key 'rl.trainer.reward_weights' = [1.0, 0.5]",
            "2 weights for 1 reward source(s) (env)",
            "expected a list of 1",
        ),
        command="train",
        overrides=("rl.trainer.reward_weights=[1.0, 0.5]",),
    ),
    Case(
        "reward-weights-all-zero",
        "no reward source",
        (
            "key 'rl.trainer.reward_weights' = [0.0]",
            "no reward to learn from",
            "expected at least one non-zero weight",
        ),
        command="pipeline",
        overrides=("rl.trainer.reward_weights=[0.0]",),
    ),
    Case(
        "env-entry-point-not-an-env",
        "no reward source",
        (
            "key 'env.id' = 'collections:Counter'",
            "made a Counter, not a gymnasium.Env",
            "expected a registered env id or 'module:Class'",
        ),
        command="train",
        overrides=("env.id=collections:Counter",),
    ),
    # ---------------------------------------------------------------- config: unknown algorithm
    Case(
        "unknown-algorithm",
        "unknown algorithm",
        ("key 'rl.algorithm' = 'dqn'", "should be 'grpo', 'ppo' or 'gigpo'"),
        command="train",
        overrides=("rl.algorithm=dqn",),
    ),
    Case(
        "algorithm-wrong-case",
        "unknown algorithm",
        ("key 'rl.algorithm' = 'PPO'", "should be 'grpo', 'ppo' or 'gigpo'"),
        command="pipeline",
        config=BASE_YAML + "rl:\n  algorithm: PPO\n",
    ),
    # ---------------------------------------------------------------- config: env ids and entry points
    Case(
        "unregistered-env-id",
        "unregistered env id",
        (
            "key 'env.id' = 'rlft/FrozenLak-v0': not a registered gymnasium env",
            "did you mean 'rlft/FrozenLake-v0'",
        ),
        config=edit("rlft/FrozenLake-v0", "rlft/FrozenLak-v0"),
    ),
    Case(
        "entry-point-class-missing",
        "module:Class",
        (
            "key 'env.id' = 'envs.frozen_lake:TextFrozenLak'",
            "has no attribute 'TextFrozenLak'",
            "did you mean 'TextFrozenLake'",
        ),
        command="train",
        overrides=("env.id=envs.frozen_lake:TextFrozenLak",),
    ),
    Case(
        "entry-point-module-missing",
        "module:Class",
        ("key 'env.id' = 'no_such_module:Env'", "module 'no_such_module' not found"),
        overrides=("env.id=no_such_module:Env",),
    ),
    Case(
        "adapter-parser-missing",
        "module:Class",
        ("key 'env.adapter.parser'", "has no attribute 'make_parsr'", "did you mean 'make_parser'"),
        overrides=(
            "env.id=FrozenLake-v1",
            "env.kwargs={map_name: 4x4}",
            "env.adapter.parser=envs.text_adapter:make_parsr",
        ),
    ),
    Case(
        "env-kwarg-unknown",
        "module:Class",
        ("key 'env.kwargs'", "unexpected keyword argument 'slippery'"),
        overrides=("env.kwargs.slippery=true",),
    ),
    # ---------------------------------------------------------------- config: model / checkpoint / data paths
    Case(
        "model-path-missing",
        "missing path",
        ("key 'model.name_or_path' = './models/none'", "no such folder"),
        overrides=("model.tiny=null", "model.name_or_path=./models/none"),
    ),
    Case(
        "model-folder-without-config",
        "missing path",
        ("key 'model.name_or_path' = './models/empty'", "folder has no config.json"),
        command="train",
        overrides=("model.tiny=null", "model.name_or_path=./models/empty"),
        files=(("models/empty/weights.txt", "not a model"),),
    ),
    Case(
        "two-model-sources",
        "missing path",
        ("set exactly one of model.name_or_path", "or model.tiny"),
        overrides=("model.name_or_path=org/model",),
    ),
    Case(
        "checkpoint-missing",
        "missing path",
        (
            "key 'rl.init_from' = './ckpt/none'",
            "no such checkpoint folder (expected 'sft', 'base' or a path)",
        ),
        command="train",
        overrides=("rl.init_from=./ckpt/none",),
    ),
    Case(
        "checkpoint-not-saved",
        "missing path",
        ("key 'rl.init_from' = './ckpt/notes'", "not a saved checkpoint (no config.json)"),
        command="train",
        overrides=("rl.init_from=./ckpt/notes",),
        files=(("ckpt/notes/notes.txt", "x"),),
    ),
    Case(
        "train-before-sft",
        "missing path",
        ("rl.init_from = 'sft'", "has no checkpoint", "run `rlft sft` first or set rl.init_from=base"),
        command="train",
    ),
    Case(
        "eval-before-any-stage",
        "missing path",
        ("runs/exp/checkpoints has no checkpoint to evaluate", "run sft or train first"),
        command="eval",
    ),
    Case(
        "critic-path-missing",
        "missing path",
        (
            "key 'rl.trainer.critic_init' = './critic/none'",
            "expected 'policy', a saved critic folder or a reward-model folder",
        ),
        command="train",
        overrides=("rl.algorithm=ppo", "rl.trainer.critic_init=./critic/none"),
    ),
    Case(
        "demos-path-missing",
        "missing path",
        ("key 'sft.demos.path' = 'nope.jsonl'", "file does not exist"),
        overrides=("sft.demos={source: jsonl, path: nope.jsonl}",),
    ),
    Case(
        "demos-path-not-given",
        "missing path",
        ("missing required key 'sft.demos.path'",),
        command="pipeline",
        config=BASE_YAML + "sft:\n  demos: {source: jsonl}\n",
    ),
    Case(
        "env-section-missing",
        "missing path",
        ("exp.yaml: invalid configuration", "missing required key 'env'"),
        config=edit("env:\n  id: rlft/FrozenLake-v0\n  max_turns: 8\n", ""),
    ),
    Case(
        "config-file-missing",
        "missing path",
        ("config file 'nope.yaml' does not exist",),
        argv=("train", "--config", "nope.yaml"),
    ),
    # ---------------------------------------------------------------- a user's env, played before any model loads
    user_env_case(
        "renderer-returns-a-tuple",
        "sft",
        ("env.adapter.renderer={m}:render_tuple",),
        ("your renderer {m}:render_tuple ({m}.py:{render_tuple}) returned a tuple (0, 3)", "expected str"),
    ),
    user_env_case(
        "reset-returns-only-the-observation",
        "train",
        ("env.kwargs.fault=reset_obs_only",),
        (
            "your env {m}:Corridor.reset ({m}.py:{reset}) returned an int 0, expected a tuple (observation, info)",
        ),
    ),
    user_env_case(
        "step-returns-4-values",
        "pipeline",
        ("env.kwargs.fault=step_four",),
        (
            "your env {m}:Corridor.step ({m}.py:{step}) returned a tuple (1, 0.0, False, {{}})",
            "expected a tuple of 5",
        ),
    ),
    user_env_case(
        "parser-returns-an-out-of-range-id",
        "sft",
        ("env.adapter.parser={m}:parse_out_of_range",),
        (
            "your parser {m}:parse_out_of_range ({m}.py:{parse}) returned an int 7",
            "expected an action id in [0, 4)",
        ),
    ),
    user_env_case(
        "env-step-raises",
        "train",
        ("env.kwargs.fault=step_raises",),
        ("your env {m}:Corridor.step ({m}.py:{raise_}) raised KeyError: 'no such cell'",),
    ),
    # ---------------------------------------------------------------- JSONL demonstrations
    demos_case(
        "jsonl-truncated-line",
        "jsonl truncated line",
        f"{ROW}\n{ROW}\n{ROW[:30]}\n",
        ("demos.jsonl:3: invalid JSON", "each line must be one complete JSON object"),
    ),
    demos_case(
        "jsonl-byte-order-mark",
        "jsonl BOM",
        b"\xef\xbb\xbf" + f"{ROW}\n".encode(),
        ("demos.jsonl:1: file starts with a UTF-8 byte-order mark", "save it as UTF-8 without BOM"),
    ),
    demos_case(
        "jsonl-blank-line",
        "jsonl blank lines",
        f"{ROW}\n\n{ROW}\n",
        ("demos.jsonl:2: line 2 is blank", "expected one JSON object per line"),
    ),
    demos_case(
        "jsonl-blank-line-at-end",
        "jsonl blank lines",
        f"{ROW}\n{ROW}\n  \n",
        ("demos.jsonl:3: line 3 is blank", "expected one JSON object per line"),
        command="pipeline",
    ),
    demos_case(
        "jsonl-row-is-a-list",
        "jsonl non-object row",
        f"{ROW}\n[1, 2]\n",
        ("demos.jsonl:2: expected a JSON object, got list",),
    ),
    demos_case(
        "jsonl-row-is-a-string",
        "jsonl non-object row",
        f'"go right"\n{ROW}\n',
        ("demos.jsonl:1: expected a JSON object, got str",),
    ),
    demos_case(
        "jsonl-missing-action",
        "jsonl missing field",
        f'{ROW}\n{ROW}\n{ROW}\n{{"turns": [{{"observation": "cell 0"}}]}}\n',
        ("demos.jsonl:4: turns[0] is missing 'action'",),
    ),
    demos_case(
        "jsonl-no-turns-or-messages",
        "jsonl missing field",
        '{"steps": []}\n',
        ("demos.jsonl:1: expected a 'turns' or 'messages' field", "got keys ['steps']"),
    ),
    demos_case(
        "jsonl-action-wrong-type",
        "jsonl wrong type",
        f'{ROW}\n{{"turns": [{{"observation": "o", "action": 2}}]}}\n',
        ("demos.jsonl:2: turns[0].action must be a string, got int",),
    ),
    demos_case(
        "jsonl-messages-wrong-type",
        "jsonl wrong type",
        '{"messages": {"role": "user"}}\n',
        ("demos.jsonl:1: 'messages' must be a non-empty list of {role, content}",),
    ),
    demos_case(
        "jsonl-not-utf8",
        "jsonl wrong type",
        f"{ROW}\n".encode() + b'{"turns": "\xff"}\n',
        ("demos.jsonl:2: not valid UTF-8",),
    ),
    demos_case(
        "jsonl-empty-file",
        "empty file",
        "",
        ("demos.jsonl: no rows (the file is empty)", "expected one JSON object per line"),
    ),
    # ---------------------------------------------------------------- YAML files
    Case(
        "yaml-unclosed-brace",
        "yaml syntax",
        ("exp.yaml:6: YAML syntax error", "expected ',' or '}'"),
        config=edit("corpus_episodes: 10}", "corpus_episodes: 10"),
    ),
    Case(
        "yaml-tab-indent",
        "yaml syntax",
        ("exp.yaml:8: YAML syntax error", "found character '\\t'"),
        command="train",
        config=edit("  max_turns: 8", "\tmax_turns: 8"),
    ),
    Case(
        "yaml-bad-indent",
        "yaml syntax",
        ("exp.yaml:8: YAML syntax error", "mapping values are not allowed here"),
        config=edit("  max_turns: 8", "    max_turns: 8"),
    ),
    Case(
        "yaml-unclosed-quote",
        "yaml syntax",
        ("exp.yaml:", "YAML syntax error", "found unexpected end of stream"),
        command="pipeline",
        config=edit("name: exp", "name: 'exp"),
    ),
    Case(
        "yaml-duplicate-key",
        "yaml syntax",
        ("exp.yaml:11: YAML syntax error", "duplicate key 'name' (first on line 2); expected each key once"),
        config=BASE_YAML + "name: other\n",
    ),
    Case(
        "yaml-top-level-list",
        "yaml syntax",
        ("exp.yaml: expected a mapping at the top level, got list",),
        config="- name: exp\n- env: rlft/FrozenLake-v0\n",
    ),
    Case(
        "yaml-not-utf8",
        "yaml syntax",
        ("exp.yaml:2: not valid UTF-8", "save the config as UTF-8"),
        config=BASE_YAML.encode().replace(b"name: exp", b"name: exp\xe9"),
    ),
    Case(
        "yaml-empty-file",
        "empty file",
        ("exp.yaml: the file is empty", "expected a mapping with at least 'model' and 'env'"),
        command="train",
        config="",
    ),
    Case(
        "yaml-comments-only",
        "empty file",
        ("exp.yaml: the file is empty", "expected a mapping with at least 'model' and 'env'"),
        config="# nothing here yet\n",
    ),
    # ---------------------------------------------------------------- command line
    Case(
        "override-without-value",
        "cli",
        ("override 'rollout.num_envs' is not of the form key.sub=value",),
        overrides=("rollout.num_envs",),
    ),
    Case(
        "override-value-bad-yaml",
        "cli",
        ("override 'rollout.num_envs=[1,'", "value is not valid YAML"),
        command="train",
        overrides=("rollout.num_envs=[1,",),
    ),
    Case(
        "override-into-a-value",
        "cli",
        ("override 'name.first'", "'name' is a value, not a section"),
        overrides=("name.first=x",),
    ),
    Case("no-config-argument", "cli", ("the following arguments are required: --config",), argv=("sft",)),
    Case(
        "unknown-command",
        "cli",
        ("invalid choice: 'fit'", "choose from"),
        argv=("fit", "--config", "exp.yaml"),
    ),
]

# The kinds of bad input the issue lists; each must have a case.
REQUIRED_KINDS = {
    "unknown key",
    "wrong type",
    "bad rate",
    "batch sizes",
    "no reward source",
    "unknown algorithm",
    "unregistered env id",
    "module:Class",
    "missing path",
    "jsonl truncated line",
    "jsonl BOM",
    "jsonl blank lines",
    "jsonl non-object row",
    "jsonl missing field",
    "jsonl wrong type",
    "yaml syntax",
    "empty file",
    "user env",
}
SUBPROCESS_CASES = ["unknown-top-level-key", "jsonl-byte-order-mark", "yaml-unclosed-brace"]


def test_the_table_covers_the_issue() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"
    assert {c.kind for c in CASES} >= REQUIRED_KINDS
    for case in CASES:
        assert case.command_line()[0] in ("sft", "train", "pipeline", "eval") or case.argv, (
            f"{case.id}: use a command that would load a model"
        )
        assert case.exit_code != 0 and case.expect


# ---------------------------------------------------------------- the folder each case runs in


class ModelLoadAttempted(BaseException):  # noqa: N818  (not an error of rlft's: a signal to this test)
    """Raised by the booby traps. A BaseException, so that no `except Exception` in rlft can swallow it."""


# What loads (or builds) a model or tokenizer: transformers' entry points and rlft's own.
TRAPS = [
    ("transformers", "AutoModelForCausalLM.from_pretrained"),
    ("transformers", "AutoModelForCausalLM.from_config"),
    ("transformers", "AutoModelForSequenceClassification.from_pretrained"),
    ("transformers", "AutoTokenizer.from_pretrained"),
    ("transformers", "PreTrainedModel.from_pretrained"),
    ("transformers", "PreTrainedTokenizerFast.from_pretrained"),
    ("peft", "AutoPeftModelForCausalLM.from_pretrained"),
    ("rlft.models.policy", "load_policy"),
    ("rlft.models.policy", "load_pretrained"),
    ("rlft.models.policy", "load_tokenizer"),
    ("rlft.models.policy", "build_tiny_model"),
    ("rlft.stages.common", "ensure_base_checkpoint"),
    ("rlft.stages.common", "load_checkpoint"),
    ("rlft.stages.common", "load_trainable"),
]


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Booby-trap every way to load a model; the returned list records each attempt (each also raises)."""
    attempts: list[str] = []
    # Import every module first (the stages package imports all its stages): a module first imported while the
    # traps are set would bind a trap by name (`from rlft.models.policy import load_policy`) for the whole session.
    for module_name in [*dict.fromkeys(m for m, _ in TRAPS), "rlft.stages", "rlft.tools.commands"]:
        importlib.import_module(module_name)
    for module_name, dotted in TRAPS:
        owner = importlib.import_module(module_name)
        *parents, name = dotted.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        assert hasattr(owner, name), f"{module_name}.{dotted} moved; update TRAPS"

        def trap(*args, _where=f"{module_name}.{dotted}", **kwargs):
            attempts.append(_where)
            raise ModelLoadAttempted(f"validation passed and rlft called {_where}")

        monkeypatch.setattr(owner, name, trap)
    return attempts


OLD = 1_600_000_000_000_000_000  # mtime (ns) of every file of the earlier runs: a rewrite shows even if same bytes


def make_existing_runs(root: Path) -> None:
    """runs/exp (the run the configs name) and runs/other, left by earlier runs, with files in subfolders."""
    files = {
        "runs/exp/config.yaml": "name: exp\n# from an earlier run\n",
        "runs/exp/metrics.jsonl": json.dumps({"stage": "sft", "step": 1, "loss": 1.5}) + "\n",
        "runs/exp/eval.json": json.dumps({"policies": {}}),
        "runs/exp/notes/todo.txt": "compare with PPO\n",
        "runs/other/config.yaml": "name: other\n",
        "runs/other/checkpoints/rl/config.json": "{}",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path in sorted((root / "runs").rglob("*"), reverse=True) + [root / "runs"]:
        os.utime(path, ns=(OLD, OLD))


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry under runs/: kind, bytes (files) and modification time."""
    runs = root / "runs"
    entries = {".": ("dir", None, runs.stat().st_mtime_ns)}
    for path in sorted(runs.rglob("*")):
        kind = "dir" if path.is_dir() else "file"
        entries[str(path.relative_to(runs))] = (
            kind,
            path.read_bytes() if kind == "file" else None,
            path.stat().st_mtime_ns,
        )
    return entries


def changes(before: dict, after: dict) -> list[str]:
    found = [f"added {name}" for name in after.keys() - before.keys()]
    found += [f"removed {name}" for name in before.keys() - after.keys()]
    found += [f"changed {name}" for name in before.keys() & after.keys() if before[name] != after[name]]
    return sorted(found)


def write_case_files(case: Case, root: Path) -> None:
    if case.config is not None:
        data = case.config if isinstance(case.config, bytes) else case.config.encode("utf-8")
        (root / "exp.yaml").write_bytes(data)
    for relative, content in case.files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_existing_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(tmp_path)  # a case's own modules (a user's env) import from the folder
    return tmp_path


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- the table, in-process


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_fast_and_clearly(
    case: Case, workdir: Path, model_loads: list[str], capsys: pytest.CaptureFixture
) -> None:
    write_case_files(case, workdir)
    before = snapshot(workdir)
    try:
        code, out, err = run_main(case.command_line(), capsys)
    except ModelLoadAttempted as exc:
        pytest.fail(
            f"no error before loading a model: {exc}; run dir changes: {changes(before, snapshot(workdir))}"
        )
    assert code == case.exit_code, err
    assert model_loads == []
    for part in case.expect:
        assert part in err, f"{part!r} not in stderr:\n{err}"
    assert "Traceback" not in err
    if case.kind != "cli" or case.overrides:
        assert err.startswith("rlft: error: "), err
    assert out == ""
    assert changes(before, snapshot(workdir)) == []


def test_the_traps_and_the_snapshot_catch_a_valid_config(
    workdir: Path, model_loads: list[str], capsys: pytest.CaptureFixture
) -> None:
    """A valid config gets past validation: the stage rewrites runs/exp/config.yaml, then reaches a trap."""
    (workdir / "exp.yaml").write_text(BASE_YAML, encoding="utf-8")
    for argv in (
        ["sft", "--config", "exp.yaml"],
        ["train", "--config", "exp.yaml", "rl.init_from=base"],
        ["pipeline", "--config", "exp.yaml"],
    ):
        make_existing_runs(workdir)  # back to the earlier runs' state
        before = snapshot(workdir)
        model_loads.clear()
        with pytest.raises(ModelLoadAttempted):
            run_main(argv, capsys)
        assert model_loads, argv
        assert "changed exp/config.yaml" in changes(before, snapshot(workdir)), argv


def test_the_snapshot_sees_a_rewrite_with_the_same_bytes(workdir: Path) -> None:
    before = snapshot(workdir)
    path = workdir / "runs" / "exp" / "metrics.jsonl"
    path.write_bytes(path.read_bytes())
    assert changes(before, snapshot(workdir)) == ["changed exp/metrics.jsonl"]


# ---------------------------------------------------------------- three cases end to end, in a subprocess


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_exit_code_in_a_subprocess(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    make_existing_runs(tmp_path)
    write_case_files(case, tmp_path)
    before = snapshot(tmp_path)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rlft.cli", *case.command_line()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == case.exit_code, result.stderr
    for part in case.expect:
        assert part in result.stderr
    assert result.stderr.startswith("rlft: error: ") and "Traceback" not in result.stderr
    assert changes(before, snapshot(tmp_path)) == []


def test_yaml_merge_keys_still_override(tmp_path: Path) -> None:
    """The duplicate-key check leaves YAML merges alone: a key given beside `<<: *anchor` overrides it."""
    from rlft.config.schema import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {a: 1, b: 2}\nchild:\n  <<: *base\n  b: 3\n", encoding="utf-8")
    assert read_yaml(path)["child"] == {"a": 1, "b": 3}

"""`rlft validate` plays the user's env, and the user's code failing at run time is one line naming it.

The env here is written as a user would, outside rlft, in a module of its own (`corridor_user.py`, put on the
path for the test): Discrete observations, Discrete(4) actions, a renderer and a parser of the user's. Each bad
variant must fail `rlft validate` with exit 2, a message naming the user's function with its `file:line`, what it
returned or raised and what was expected, and no run folder. tests/test_bad_input.py runs the same kind of case
through `sft`, `train` and `pipeline` with every model loader booby-trapped.

At run time a reward rule that raises ends `rlft train` with exit 6 and one line naming the rule and its
`file:line` (the traceback only with `--debug`).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest

from rlft import cli
from rlft.errors import UserCodeError
from rlft.runtime.user_code import describe_callable, describe_exception, display_path, user_roles
from rlft.tools import commands

MODULE = "corridor_user_validate"
SOURCE = '''\
"""A user's env written outside rlft: a corridor of 4 cells; actions left, right, stay, jump."""

import gymnasium as gym


class Corridor(gym.Env):
    def __init__(self, fault: str = "none"):
        self.fault = fault
        self.observation_space = gym.spaces.Discrete(4)
        self.action_space = gym.spaces.Discrete(4)
        self.cell = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = 0
        if self.fault == "reset_obs_only":
            return self.cell  # reset returns only the observation
        if self.fault == "obs_outside_space":
            return 9, {}
        return self.cell, {}

    def step(self, action):
        if self.fault == "step_raises":
            return {}["missing"]  # step raises
        self.cell = min(3, self.cell + 1) if action == 1 else max(0, self.cell - 1) if action == 0 else self.cell
        done = self.cell == 3
        if self.fault == "step_four":
            return self.cell, float(done), done, {}  # step returns 4 values
        return self.cell, float(done), done, False, {}


def render(env, obs):
    return f"cell {obs} of 4"


def render_tuple(env, obs):
    return (obs, 3)


def render_tab(env, obs):
    return f"cell\\t{obs}"


def render_raises(env, obs):
    return _cell_name(obs)


def _cell_name(obs):
    return ["start", "middle"][obs + 5]  # IndexError


def parse_out_of_range(text):
    return 7


def parse_swapped(text):
    return {"left": 1, "right": 0, "stay": 2, "jump": 3}.get(text.strip().lower())


def boom_rule(actions, **kwargs):
    return [1 / 0 for _ in actions]
'''

CONFIG = {
    "name": "exp",
    "output_dir": "runs",
    "model": {
        "tiny": {
            "hidden_size": 32,
            "num_heads": 2,
            "num_layers": 1,
            "intermediate_size": 64,
            "corpus_episodes": 4,
        }
    },
    "env": {
        "id": f"{MODULE}:Corridor",
        "max_turns": 4,
        "adapter": {"action_names": ["left", "right", "stay", "jump"], "renderer": f"{MODULE}:render"},
    },
    "rl": {"init_from": "base"},
    "tracking": {"wandb": {"enabled": False}},
}


def user_file(folder: Path) -> str:
    return display_path(str(folder / f"{MODULE}.py"))


def line_of(text: str) -> int:
    """The line of SOURCE that holds `text` (1-based): the `file:line` the messages must name."""
    (line,) = [i for i, row in enumerate(SOURCE.splitlines(), start=1) if text in row]
    return line


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user_code")
    (folder / f"{MODULE}.py").write_text(SOURCE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_module: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(
    command: str, overrides: list[str], capsys: pytest.CaptureFixture, *flags: str
) -> tuple[int, str, str]:
    Path("exp.yaml").write_text(json.dumps(CONFIG), encoding="utf-8")  # JSON is YAML
    code = cli.main([command, "--config", "exp.yaml", *flags, *overrides])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FILE = "<file>"  # the user module's path as the messages show it; filled in by `user_file`

# (id, overrides, what stderr must hold): the failures, each named at validate time.
VALIDATE_CASES = [
    (
        "renderer-returns-a-tuple",
        [f"env.adapter.renderer={MODULE}:render_tuple"],
        (
            f"your renderer {MODULE}:render_tuple ({FILE}:{line_of('def render_tuple')})",
            "returned a tuple (0, 3)",
            "expected str",
        ),
    ),
    (
        "reset-returns-only-the-observation",
        ["env.kwargs.fault=reset_obs_only"],
        (
            f"your env {MODULE}:Corridor.reset ({FILE}:{line_of('def reset')})",
            "returned an int 0, expected a tuple (observation, info)",
        ),
    ),
    (
        "step-returns-4-values",
        ["env.kwargs.fault=step_four"],
        (
            f"your env {MODULE}:Corridor.step ({FILE}:{line_of('def step')})",
            "returned a tuple (0, 0.0, False, {})",
            "expected a tuple of 5: (observation, reward, terminated, truncated, info)",
        ),
    ),
    (
        "parser-returns-an-out-of-range-id",
        [f"env.adapter.parser={MODULE}:parse_out_of_range"],
        (
            f"your parser {MODULE}:parse_out_of_range ({FILE}:{line_of('def parse_out_of_range')})",
            "returned an int 7",
            "expected an action id in [0, 4) (0=left, 1=right, 2=stay, 3=jump) or None",
        ),
    ),
    (
        "parser-maps-a-name-to-another-id",
        [f"env.adapter.parser={MODULE}:parse_swapped"],
        (
            f"your parser {MODULE}:parse_swapped ({FILE}:{line_of('def parse_swapped')})",
            "returned an int 1 for the action name 'left', expected 0",
        ),
    ),
    (
        "step-raises",
        ["env.kwargs.fault=step_raises"],
        (f"your env {MODULE}:Corridor.step ({FILE}:{line_of('# step raises')}) raised KeyError: 'missing'",),
    ),
    (
        "renderer-raises-in-a-helper",
        [f"env.adapter.renderer={MODULE}:render_raises"],
        (
            f"your renderer {MODULE}:render_raises ({FILE}:{line_of('return _cell_name(obs)')}) raised "
            f"IndexError: list index out of range in {MODULE}:_cell_name ({FILE}:{line_of('# IndexError')})",
        ),
    ),
    (
        "renderer-emits-a-tab",
        [f"env.adapter.renderer={MODULE}:render_tab"],
        (f"your renderer {MODULE}:render_tab", "characters ['\\t']", "expected printable ASCII and newlines"),
    ),
    (
        "observation-outside-its-space",
        ["env.kwargs.fault=obs_outside_space"],
        (f"gymnasium's check_env on your env {MODULE}:Corridor", "not within the observation space"),
    ),
]


def test_a_user_env_that_plays_well_validates(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run("validate", [], capsys)
    assert code == 0, err
    assert f"exp.yaml: ok (exp, env {MODULE}:Corridor" in out
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "expect"), [c[1:] for c in VALIDATE_CASES], ids=[c[0] for c in VALIDATE_CASES]
)
def test_validate_names_the_user_function_that_failed(
    overrides: list[str],
    expect: tuple[str, ...],
    workdir: Path,
    user_module: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code, out, err = run("validate", overrides, capsys)
    assert code == 2, err
    assert err.startswith("rlft: error: ") and err.count("\n") == 1, err  # one line
    for part in expect:
        part = part.replace(FILE, user_file(user_module))
        assert part in err, f"{part!r} not in stderr:\n{err}"
    assert "Traceback" not in err and out == ""
    assert not (workdir / "runs").exists()


def test_the_renderer_check_holds_at_run_time_too() -> None:
    """The same check guards every reset and step of the made env (a renderer that breaks on a later state)."""
    from rlft.config.schema import EnvConfig
    from rlft.rollout.env_factory import make_env

    cfg = EnvConfig(**{**CONFIG["env"], "adapter": {"renderer": f"{MODULE}:render_tuple"}})
    env = make_env(cfg)
    with pytest.raises(
        UserCodeError, match=r"your renderer .*:render_tuple \(.*:\d+\) returned a tuple \(0, 3\)"
    ):
        env.reset(seed=5)


# ----------------------------------------------------------------------------------------------------- run time


def test_a_reward_rule_that_raises_during_training_is_one_line(
    workdir: Path, user_module: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = [
        "reward.components={env: {kind: env}, boom: {kind: rule, function: "
        + MODULE
        + ":boom_rule, weight: 0.1}}",
        "rl.trainer={max_steps: 1, num_generations: 2, per_device_train_batch_size: 4}",
        "rollout.num_envs=4",
        "rollout.max_action_tokens=2",
    ]
    code, _, err = run("train", overrides, capsys)
    assert code == UserCodeError.exit_code == 6, err
    line = err.strip().splitlines()[-1].split("\r")[-1]  # (after TRL's progress bar)
    assert line.endswith(
        f"rlft: error: your reward rule 'boom' {MODULE}:boom_rule ({user_file(user_module)}:{line_of('return [1 / 0')}) raised "
        "ZeroDivisionError: division by zero (run with --debug for the traceback)"
    ), err
    assert "Traceback" not in err


def user_failure(*args, **kwargs):
    return {}["no such key"]


@pytest.mark.parametrize("debug", [False, True])
def test_debug_shows_the_traceback(
    debug: bool, workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "run_command", user_failure)
    code, _, err = run("train", [], capsys, *(["--debug"] if debug else []))
    assert code == 6, err
    line = f"{__name__}:user_failure ({display_path(__file__)}:{user_failure.__code__.co_firstlineno + 1})"
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"rlft: error: your code {line} raised KeyError: 'no such key'")
    )
    assert ("Traceback (most recent call last)" in err) == debug
    assert ("run with --debug" in err) != debug


def test_an_error_of_rlft_itself_keeps_its_traceback(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No user frame (the error is rlft's or a library's): re-raised, not reported as the user's."""
    monkeypatch.setattr(commands, "run_command", pow)  # a TypeError raised where no Python frame is
    with pytest.raises(TypeError, match=r"pow\(\)"):
        run("sft", [], capsys)


# ------------------------------------------------------------------------------------------ the traceback walk


def raise_in_helper():
    return helper()


def helper():
    raise RuntimeError("first line\nsecond line")


def test_describe_names_the_innermost_user_frame_and_the_role_of_the_function_the_config_names() -> None:
    with pytest.raises(RuntimeError) as info:
        raise_in_helper()
    roles = user_roles({"reward": {"components": {"shape": {"function": f"{__name__}:raise_in_helper"}}}})
    assert roles == {f"{__name__}:raise_in_helper": "reward rule 'shape'"}
    here = display_path(__file__)
    outer = f"{__name__}:raise_in_helper ({here}:{raise_in_helper.__code__.co_firstlineno + 1})"
    inner = f"{__name__}:helper ({here}:{helper.__code__.co_firstlineno + 1})"
    assert describe_exception(info.value, roles) == (
        f"your reward rule 'shape' {outer} raised RuntimeError: first line second line in {inner}"
    )
    assert describe_exception(info.value) == f"your code {inner} raised RuntimeError: first line second line"


def test_describe_finds_the_user_frame_in_the_exception_raised_from() -> None:
    try:
        try:
            helper()
        except RuntimeError as exc:
            raise ValueError("wrapped by a library") from exc
    except ValueError as outer:
        outer.__traceback__ = None  # as if raised where no user frame is
        text = describe_exception(outer)
    assert text is not None and f"{__name__}:helper" in text and "RuntimeError: first line" in text


def test_describe_callable_names_module_function_file_and_line() -> None:
    expected = f"{__name__}:helper ({display_path(__file__)}:{helper.__code__.co_firstlineno})"
    assert describe_callable(helper) == expected
    assert describe_callable(functools.partial(helper)) == expected
    assert describe_exception(ValueError("never raised")) is None

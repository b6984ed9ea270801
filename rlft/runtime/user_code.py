"""The user's code in an error: which of their functions raised (or returned something unusable), and where.

A run calls code that is not rlft's: the env (`env.id`), the adapter's renderer and parser, reward rules, gold
functions. When one of them raises, the traceback's innermost frames are the user's, under many frames of rlft,
TRL, transformers and torch. What the user needs is one line:

    your reward rule 'polite' my_rules:polite (my_rules.py:12) raised ZeroDivisionError: division by zero

`describe_exception` finds that line by walking the traceback (and the exceptions it was raised from) to the
innermost frame that is neither rlft's (rlft/, envs/) nor a library's (the standard library, site-packages).
The role ("reward rule 'polite'") comes from the config: each `module:function` it names is the user's code
for that key (`user_roles`). `describe_callable` names a function the same way before it is called, for the
checks that look at what user code returned rather than what it raised (`rlft.rollout.env_check`).

Nothing here imports torch or gymnasium: the CLI imports this module to report errors.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import reprlib
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# `module:attribute` as the config writes an entry point (an env id such as `pkg:Env-v0` does not match).
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# What a config key's entry point is, in words; other keys are named by the key itself.
ROLE_NAMES = {
    "env.id": "env",
    "env.adapter.renderer": "renderer",
    "env.adapter.parser": "parser",
    "reward.gold": "gold rule",
    "rm.data.gold": "gold function",
}
MAX_MESSAGE_CHARS = 300
_SHOWN = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxtuple, _SHOWN.maxlist, _SHOWN.maxdict = 60, 60, 6, 6, 4


@dataclass(frozen=True)
class UserFrame:
    """One frame of the user's code: `module:qualname` and `file:line`."""

    module: str
    qualname: str
    filename: str
    lineno: int

    @property
    def spec(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def location(self) -> str:
        return f"{display_path(self.filename)}:{self.lineno}"


@functools.lru_cache(maxsize=1)
def _internal_roots() -> tuple[Path, ...]:
    """rlft's own folders (rlft/, envs/) and the standard library's."""
    package = Path(__file__).resolve().parents[1]
    roots = [package, package.parent / "envs"]
    for name in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(name)
        if path:
            roots.append(Path(path).resolve())
    return tuple(roots)


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """True for a source file of the user's: not rlft's, not the standard library's, not an installed package's."""
    if not filename or filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    path = Path(filename).resolve()
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return False
    return not any(path.is_relative_to(root) for root in _internal_roots())


def display_path(filename: str) -> str:
    """The path relative to the working directory when it lies inside it, else as it is."""
    try:
        return os.path.relpath(filename) if Path(filename).resolve().is_relative_to(Path.cwd()) else filename
    except (OSError, ValueError):
        return filename


def _frames(traceback: types.TracebackType | None) -> Iterator[UserFrame]:
    """The user's frames of a traceback, outermost first."""
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if is_user_file(code.co_filename):
            yield UserFrame(
                module=str(traceback.tb_frame.f_globals.get("__name__", "?")),
                qualname=_function_name(getattr(code, "co_qualname", code.co_name)),
                filename=code.co_filename,
                lineno=traceback.tb_lineno,
            )
        traceback = traceback.tb_next


def _function_name(qualname: str) -> str:
    """A comprehension's frame (`rule.<locals>.<listcomp>`, Python < 3.12) is named by its function (`rule`)."""
    head, _, tail = qualname.rpartition(".<locals>.")
    return head if head and tail in ("<listcomp>", "<genexpr>", "<dictcomp>", "<setcomp>") else qualname


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then the exceptions it was raised from or while handling (cycles and repeats skipped)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__


def user_frames(exc: BaseException) -> tuple[BaseException, list[UserFrame]] | None:
    """The first exception of `exc`'s chain whose traceback passes through the user's code, with those frames."""
    for error in _chain(exc):
        frames = list(_frames(error.__traceback__))
        if frames:
            return error, frames
    return None


def _role_of(frame: UserFrame, roles: Mapping[str, str]) -> str | None:
    for spec, role in roles.items():
        module, _, attr = spec.partition(":")
        if frame.module == module and (frame.qualname == attr or frame.qualname.startswith(attr + ".")):
            return role
    return None


def one_line(text: str) -> str:
    """`text` on one line, cut to MAX_MESSAGE_CHARS."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def describe_exception(exc: BaseException, roles: Mapping[str, str] | None = None) -> str | None:
    """One line naming the user's function that raised `exc` and its `file:line`; None when no user code raised.

    Args:
        exc: the exception that reached rlft.
        roles: `module:attribute` -> what it is ("renderer", "reward rule 'polite'"), from `user_roles`.

    Returns:
        e.g. "your renderer my_env:render (my_env.py:42) raised KeyError: 3"; when the innermost user frame is a
        helper of a function the config names, that function is named first and the helper after it.
    """
    found = user_frames(exc)
    if found is None:
        return None
    error, frames = found
    inner = frames[-1]
    raised = one_line(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    for frame in reversed(frames):
        role = _role_of(frame, roles or {})
        if role is None:
            continue
        if frame is inner:
            return f"your {role} {inner.spec} ({inner.location}) raised {raised}"
        return (
            f"your {role} {frame.spec} ({frame.location}) raised {raised} in {inner.spec} ({inner.location})"
        )
    return f"your code {inner.spec} ({inner.location}) raised {raised}"


def where_raised(exc: BaseException) -> str:
    """' in your code module:function (file:line)' when user code raised `exc`, else ''."""
    found = user_frames(exc)
    if found is None:
        return ""
    inner = found[1][-1]
    return f" in your code {inner.spec} ({inner.location})"


def describe_callable(function: Callable[..., Any]) -> str:
    """`module:qualname (file:line)` of a function (its `def` line), for messages about what it returned."""
    target: Any = inspect.unwrap(function) if callable(function) else function
    target = getattr(target, "__func__", target)  # a bound method: the function
    if isinstance(target, functools.partial):
        target = target.func
    if not isinstance(target, (types.FunctionType, type)) and callable(target):
        target = type(target).__call__  # a callable object: its __call__
    name = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"
    code = getattr(target, "__code__", None)
    if code is not None:
        return f"{name} ({display_path(code.co_filename)}:{code.co_firstlineno})"
    try:
        filename = inspect.getsourcefile(target)
        line = inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return name
    return f"{name} ({display_path(filename)}:{line})" if filename else name


def shown(value: Any) -> str:
    """A value as a message shows it: its type and a short repr ("a tuple (0, 3)", "None")."""
    if value is None:
        return "None"
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind} {_SHOWN.repr(value)}"


def user_roles(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`module:attribute` -> role, for every entry point in a config's dump (`Config.model_dump()`).

    Env ids registered with gymnasium (`my_pkg:Grid-v0`, `rlft/FrozenLake-v0`) are resolved to their entry point
    when gymnasium has been imported (it has, if an env was made).
    """
    roles: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            roles.update(user_roles(value, f"{dotted}."))
        elif isinstance(value, str):
            spec = value if _ENTRY_POINT.match(value) else _registered_entry_point(value, dotted)
            if spec is not None:
                roles.setdefault(spec, _role_name(dotted))
    return roles


def _role_name(key: str) -> str:
    if key in ROLE_NAMES:
        return ROLE_NAMES[key]
    parts = key.split(".")
    if parts[:2] == ["reward", "components"] and len(parts) >= 4:
        return (
            f"reward rule '{parts[2]}'" if parts[3] == "function" else f"reward rule '{parts[2]}' {parts[-1]}"
        )
    return f"'{key}'"


def _registered_entry_point(env_id: str, key: str) -> str | None:
    gymnasium = sys.modules.get("gymnasium")
    if key != "env.id" or gymnasium is None:
        return None
    spec = gymnasium.registry.get(env_id.split(":", 1)[-1])
    entry_point = getattr(spec, "entry_point", None)
    return entry_point if isinstance(entry_point, str) and _ENTRY_POINT.match(entry_point) else None

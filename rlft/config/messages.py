"""Pydantic validation errors worded for people: one line per key, naming the key and what was expected.

Shared by configs (`rlft.config.schema.load_config`) and sweep files (`rlft.tools.sweep`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from rlft.errors import closest, did_you_mean


def _is_section(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _union_labels(member: Any) -> list[Any]:
    """The names pydantic gives a union member in an error location: 'str', 'list[str]', a discriminator tag."""
    plain_class = isinstance(member, type) and not get_args(member)  # `list[str]` passes isinstance(.., type)
    labels = [member.__name__ if plain_class else str(member)]
    for tag in ("source", "kind"):  # the discriminators: sft.demos.source, reward.components.<name>.kind
        if _is_section(member) and tag in member.model_fields:
            labels.extend(get_args(member.model_fields[tag].annotation))
    return labels


def _resolve_loc(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """The dotted key of an error location, without pydantic's union-member labels, and the section owning it.

    `('sft', 'demos', 'jsonl', 'pth')` -> `('sft.demos.pth', JsonlDemos)` from the root `Config`, so an unknown
    key is compared with the fields of the section it was written in.
    """
    parts: list[str] = []
    owner: type[BaseModel] | None = None
    node: Any = root
    for part in loc:
        members = [m for m in get_args(node) if m is not type(None)]
        if len(members) == 1 and type(None) in get_args(node):
            node = members[0]  # `X | None`: pydantic puts no label in the location
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        if get_origin(node) is dict and isinstance(
            part, str
        ):  # a mapping's key, e.g. reward.components.<name>
            parts.append(part)
            node = get_args(node)[1]
            continue
        if _is_section(node):
            owner = node
            parts.append(str(part))
            field = node.model_fields.get(part) if isinstance(part, str) else None
            node = field.annotation if field is not None else None
            continue
        member = next((m for m in get_args(node) for label in _union_labels(m) if label == part), None)
        if member is not None:
            node = member
            continue
        parts.append(str(part))
        node = None
    return ".".join(parts) or "<top level>", owner


def validation_error_lines(
    exc: ValidationError, locate, special=None, strip_value_error: bool = False
) -> list[str]:
    """One line per key of a pydantic error, naming the key and what was expected; shared by configs and sweeps.

    `locate(loc)` gives the dotted key and the valid names an unknown key is compared with (or None);
    `special(err, key)` may word an error type of its own (None: the default wording). The alternatives of a
    union (`list[str] | str`) are joined with "or".
    """
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        key, names = locate(tuple(err["loc"]))
        line = special(err, key) if special else None
        if line is not None:
            pass
        elif err["type"] == "extra_forbidden":
            line = f"unknown key '{key}'{did_you_mean(key.rsplit('.', 1)[-1], names) if names else ''}"
        elif err["type"] == "missing":
            line = f"missing required key '{key}'"
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            message = err["msg"].removeprefix("Value error, ") if strip_value_error else err["msg"]
            line = f"key '{key}' = {shown}: {message}"
            if err["type"] == "literal_error":  # a misspelt choice: name the closest valid one
                best = closest(str(value), re.findall(r"'([^']*)'", err["ctx"]["expected"]))
                line += f" (did you mean '{best}'?)" if best else ""
        if problems.get(key) and line.startswith(f"key '{key}' = "):
            problems[key].append(err["msg"])
        else:
            problems.setdefault(key, []).append(line)
    return [" or ".join(parts) for parts in problems.values()]


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    """`<source>: invalid configuration:` and one line per key; `root` is the model that was validated."""

    def locate(loc: tuple[Any, ...]) -> tuple[str, Any]:
        key, owner = _resolve_loc(root, loc)
        return key, owner.model_fields if owner else None

    lines = validation_error_lines(exc, locate)
    return f"{source}: invalid configuration:\n  - " + "\n  - ".join(lines)

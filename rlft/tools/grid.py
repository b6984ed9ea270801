"""The grid file of `rlft launch` and the jobs it expands to, with each job's record of its last launch.

A grid crosses configs with override variants and seeds; each combination is one `Job`, an ordinary run
directory `<output_dir>/<experiment>/<config-stem>[-<variant>]-s<seed>` (the keys are documented in
rlft/tools/launch.py). Reading a grid loads no model: every problem is a ConfigError naming the file and the key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.config.schema import parse_overrides, read_yaml
from rlft.errors import ConfigError, did_you_mean

GRID_KEYS = ("experiment", "configs", "overrides", "seeds", "command", "output_dir")
COMMANDS = ("sft", "train", "eval", "pipeline")
LAUNCH_KEYS = ("name", "output_dir", "seed", "tracking.experiment")  # each job's, set by the launcher
MARKER = "launch.json"  # in a job's run dir: per command, how its last launch ended
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Grid:
    """A checked grid file: configs x override variants x seeds, each job running `command`."""

    path: str
    experiment: str
    configs: list[str]
    variants: list[tuple[str | None, str, list[str]]]  # (name or None, the grid key that wrote it, overrides)
    seeds: list[int]
    command: str
    output_dir: str

    @property
    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment


@dataclass
class Job:
    """One run of the grid: a config, a variant's overrides and a seed, in its own run directory."""

    name: str
    config: str
    config_key: str  # where the grid names it, for error messages: "configs[1]"
    variant_key: str | None  # "overrides.low_lr", "overrides[2]", None for the config as written
    seed: int
    overrides: list[str]  # the variant's, then the launcher's (name, output_dir, seed, tracking.experiment)
    run_dir: Path
    log_path: Path
    steps: list[list[str]] = field(default_factory=list)  # `rlft` argv of each process this launch runs
    status: str = "pending"
    note: str = ""
    exit_code: int | None = None
    seconds: float = 0.0

    def argv(self, command: str) -> list[str]:
        return [command, "--config", self.config, *self.overrides]


def read_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid file; every problem is a ConfigError naming the file and the key."""
    source = str(path)
    if Path(path).is_file() and not Path(path).read_text(encoding="utf-8", errors="replace").strip():
        raise ConfigError(f"{source}: the grid file is empty; expected at least 'experiment' and 'configs'")
    raw = read_yaml(path)
    for key in raw:
        if key not in GRID_KEYS:
            raise ConfigError(
                f"{source}: unknown key '{key}'{did_you_mean(str(key), GRID_KEYS)}; a grid has "
                f"{', '.join(GRID_KEYS)}"
            )
    for key in ("experiment", "configs"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key '{key}'")
    experiment = raw["experiment"]
    if not isinstance(experiment, str) or not _NAME.match(experiment):
        raise ConfigError(
            f"{source}: key 'experiment' = {experiment!r}: expected a folder name (letters, digits, "
            "'.', '_', '-', '+')"
        )
    command = raw.get("command", "pipeline")
    if command not in COMMANDS:
        raise ConfigError(
            f"{source}: key 'command' = {command!r}: expected one of {', '.join(COMMANDS)}"
            f"{did_you_mean(str(command), COMMANDS)}"
        )
    output_dir = raw.get("output_dir", "runs")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"{source}: key 'output_dir' = {output_dir!r}: expected a folder")
    return Grid(
        source,
        experiment,
        _read_configs(source, raw["configs"]),
        _read_variants(source, raw.get("overrides", [[]])),
        _read_seeds(source, raw.get("seeds", [0])),
        command,
        output_dir,
    )


def _read_configs(source: str, configs: Any) -> list[str]:
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"{source}: key 'configs' = {configs!r}: expected a non-empty list of config files")
    for index, config in enumerate(configs):
        if not isinstance(config, str):
            raise ConfigError(f"{source}: key 'configs[{index}]' = {config!r}: expected a path")
        if not Path(config).is_file():
            raise ConfigError(
                f"{source}: key 'configs[{index}]' = '{config}': file does not exist (paths are "
                f"relative to where rlft runs: {Path.cwd()})"
            )
    return list(configs)


def _read_variants(source: str, overrides: Any) -> list[tuple[str | None, str, list[str]]]:
    """`overrides` as a list of lists (names made from the overrides) or a mapping name -> list."""
    if isinstance(overrides, dict):
        named = [(str(name), f"overrides.{name}", items) for name, items in overrides.items()]
        for name, key, _ in named:
            if not _NAME.match(name):
                raise ConfigError(
                    f"{source}: key '{key}': expected a name of letters, digits, '.', '_', '-', '+'"
                )
    elif isinstance(overrides, list) and overrides:
        named = [(None, f"overrides[{index}]", items) for index, items in enumerate(overrides)]
    else:
        raise ConfigError(
            f"{source}: key 'overrides' = {overrides!r}: expected a list of override lists "
            "([[], [rl.trainer.learning_rate=1e-4]]) or a mapping name -> override list"
        )
    variants = []
    for name, key, items in named:
        _check_overrides(source, key, items)
        if name is None and items:
            name = _variant_name(items)
        variants.append((name, key, list(items)))
    names = [name for name, _, _ in variants]
    if len(set(names)) < len(names):  # two list variants that slug alike: number them instead
        variants = [(f"v{i}" if items else None, key, items) for i, (_, key, items) in enumerate(variants)]
    if sum(1 for _, _, items in variants if not items) > 1:
        raise ConfigError(
            f"{source}: key 'overrides': more than one variant without overrides (the same runs twice)"
        )
    return variants


def _check_overrides(source: str, key: str, items: Any) -> None:
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{source}: key '{key}' = {items!r}: expected a list of key.sub=value strings")
    try:
        parsed = parse_overrides(items)
    except ConfigError as exc:
        raise ConfigError(f"{source}: key '{key}': {exc}") from None
    for path, _ in parsed:
        if ".".join(path) in LAUNCH_KEYS:
            raise ConfigError(
                f"{source}: key '{key}': '{'.'.join(path)}' is set by rlft launch for each job "
                "(name, output_dir, seed and tracking.experiment come from the grid)"
            )


def _variant_name(items: list[str]) -> str:
    """A folder-safe name from overrides: `rl.trainer.learning_rate=1e-4` -> `learning_rate-1e-4`."""
    parts = []
    for item in items:
        key, value = item.split("=", 1)
        parts.append(f"{key.rsplit('.', 1)[-1]}-{value}")
    name = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._+-]", "-", "+".join(parts))).strip("-.")
    return name[:60].rstrip("-.") or "variant"


def _read_seeds(source: str, seeds: Any) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"{source}: key 'seeds' = {seeds!r}: expected a non-empty list of integers >= 0")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{source}: key 'seeds' = {seeds!r}: a seed is listed twice")
    return list(seeds)


def _yaml_value(text: str) -> str:
    """`text` as an override value that reads back as this very string (quoted only where YAML needs it)."""
    return text if parse_overrides([f"k={text}"])[0][1] == text else json.dumps(text)


def expand(grid: Grid) -> list[Job]:
    """configs x variants x seeds, in that order, each a Job with its run directory and overrides."""
    jobs: list[Job] = []
    stems: dict[str, int] = {}
    for index, config in enumerate(grid.configs):
        stem = Path(config).stem
        if stem in stems:
            raise ConfigError(
                f"{grid.path}: key 'configs': configs[{stems[stem]}] and configs[{index}] are both "
                f"named '{stem}', so their runs would share folders; rename one"
            )
        stems[stem] = index
        for variant, variant_key, items in grid.variants:
            for seed in grid.seeds:
                name = f"{stem}-{variant}-s{seed}" if variant else f"{stem}-s{seed}"
                launch = [
                    f"name={_yaml_value(name)}",
                    f"output_dir={_yaml_value(str(grid.experiment_dir))}",
                    f"seed={seed}",
                    f"tracking.experiment={_yaml_value(grid.experiment)}",
                ]
                jobs.append(
                    Job(
                        name=name,
                        config=config,
                        config_key=f"configs[{index}]",
                        variant_key=variant_key if items else None,
                        seed=seed,
                        overrides=[*items, *launch],
                        run_dir=grid.experiment_dir / name,
                        log_path=grid.experiment_dir / "logs" / f"{name}.log",
                    )
                )
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# A job's record in its run directory
# ---------------------------------------------------------------------------------------------------------------


def read_marker(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_marker(job: Job, command: str) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **read_marker(job.run_dir),
        command: {
            "status": job.status,
            "exit_code": job.exit_code,
            "seconds": round(job.seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "steps": [shlex.join(["rlft", *step]) for step in job.steps],
        },
    }
    (job.run_dir / MARKER).write_text(json.dumps(record, indent=1), encoding="utf-8")

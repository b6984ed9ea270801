"""The resolved configuration of a stage: what the run actually used, so it can be reproduced from its folder.

`runs/<name>/config.yaml` is the configuration as given. Beside it, each stage that trains writes
`runs/<name>/resolved/<stage>.yaml` (one file per stage, or per reward-model ensemble member, so no stage
rewrites another's record)::

    config:    the full rlft configuration, every default filled in (loads back with load_config)
    trainer:   every argument of the TRL config object the stage trained with (`args.to_dict()`)
    versions:  rlft, torch, transformers, trl, gymnasium, accelerate, datasets

The same record goes into the stage's wandb run config (rlft.runtime.tracking.Tracker.record_resolved).
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from rlft.config.schema import Config, config_to_dict, load_config
from rlft.config.yaml_io import read_yaml

RESOLVED_DIR = "resolved"
PACKAGES = ("rlft", "torch", "transformers", "trl", "gymnasium", "accelerate", "datasets")


def package_versions() -> dict[str, str | None]:
    """The installed version of each package in PACKAGES (None where one is not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def resolved_record(config: Config, trainer_args: Any) -> dict[str, Any]:
    """The config with its defaults, the TRL arguments of `trainer_args` (a TrainingArguments), the versions."""
    # A JSON round trip makes every value plain YAML (enums, paths and dtypes become strings).
    trainer = json.loads(json.dumps(trainer_args.to_dict(), default=str))
    return {"config": config_to_dict(config), "trainer": trainer, "versions": package_versions()}


def resolved_path(run_dir: str | os.PathLike, stage: str) -> Path:
    return Path(run_dir) / RESOLVED_DIR / f"{stage}.yaml"


def write_resolved(run_dir: str | os.PathLike, stage: str, record: dict[str, Any]) -> Path:
    """Write `runs/<name>/resolved/<stage>.yaml` (the caller is the main process)."""
    path = resolved_path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    return path


def read_resolved(path: str | os.PathLike) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """(config, TRL arguments, versions) of a resolved file; the config is validated (keys and types)."""
    record = read_yaml(path)
    return load_config(raw=record.get("config")), record.get("trainer", {}), record.get("versions", {})

"""`rlft sweep`: an Optuna study over any config field, from a sweep file (configs/sweeps/).

    base: ../quickstart.yaml              # the experiment every trial starts from (relative to this file)
    study: quickstart_lr                  # the study's name; trials run in runs/<study>/trial-<n>/
    storage: null                         # default sqlite:///<base output_dir>/<study>/study.db; or any RDB URL
    direction: maximize
    metric: eval/success                  # eval/<key>: held out; anything else: a key the RL stage logs
    n_trials: 16                          # the study's total: every worker stops once the study holds this many
    stages: [sft, rl, eval]               # or pipeline
    sampler: {tpe: {seed: 0, n_startup_trials: 4}}
    pruner: {median: {n_startup_trials: 2, n_warmup_steps: 10}}
    overrides: {eval.every_steps: 10}     # fixed for every trial
    params:
      rl.trainer.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      rl.trainer.num_generations: {type: categorical, choices: [4, 8, 16]}

Each trial is an ordinary run directory (config.yaml, metrics.jsonl, checkpoints/, eval.json) plus trial.json
(its state, params and value), so `rlft compare` reads a study like any other set of runs. The pruner is fed
by the metric as the RL stage logs it (the held-out `eval/*` every `eval.every_steps` steps). A trial that
raises is recorded as FAIL with the message and the sweep goes on. Several `rlft sweep` processes, on one
machine or several, share one study through its storage; a trial left RUNNING by a killed process is failed
(and retried with the same params) once its heartbeat is older than `heartbeat.grace_period_s`.
This module reads and checks the file (`load_sweep`; its keys are modelled in rlft/tools/sweep_schema.py); the study's storage is opened in rlft/tools/sweep_study.py,
the trials are run in rlft/tools/sweep_run.py, and `rlft sweep` itself is rlft/tools/sweep.py.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rlft.config.schema import Config, read_yaml, validation_error_lines
from rlft.errors import ConfigError, did_you_mean
from rlft.rollout.evaluation import summarize
from rlft.stages.checks import load_checked_config
from rlft.tools.sweep_schema import (
    STAGES,
    CategoricalParam,
    FloatParam,
    HeartbeatSettings,
    IntParam,
    SweepFile,
    check_in_space,
    sample_values,
)

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}


@dataclass
class Sweep:
    """A validated sweep: what `run_sweep` needs, nothing loaded yet."""

    path: Path
    file: SweepFile
    base_path: Path
    base_overrides: list[str]  # the file's `overrides`, then the command line's, then tracking.wandb.group
    base_config: Config
    stages: list[str]
    study_dir: Path
    storage_url: str
    n_trials: int

    @property
    def study(self) -> str:
        return self.file.study

    @property
    def metric(self) -> str:
        return self.file.metric


def override(key: str, value: Any) -> str:
    """A `key=value` override whose value reads back as the same YAML scalar (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def trial_config(
    sweep: Sweep, params: dict[str, Any], name: str, output_dir: str | Path | None = None
) -> Config:
    """The base config with the sampled params applied, named `name`, in `runs/<study>/` unless told."""
    output_dir = sweep.study_dir if output_dir is None else output_dir
    overrides = [
        *sweep.base_overrides,
        *(override(k, v) for k, v in params.items()),
        override("name", name),
        override("output_dir", str(output_dir)),
    ]
    return load_checked_config(sweep.base_path, overrides)


# ---------------------------------------------------------------------------------------------------------------
# Validation: everything is checked before a model loads; each error names the key.
# ---------------------------------------------------------------------------------------------------------------


def _key_of(loc: tuple[Any, ...]) -> str:
    """`('params', 'rl.trainer.learning_rate', 'float', 'low')` -> `params[rl.trainer.learning_rate].low`."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) or (i == 1 and loc[0] in ("params", "overrides", "sampler", "pruner")):
            parts[-1] += f"[{part}]"
        elif (i == 2 and loc[0] == "params" and part in ("float", "int", "categorical")) or re.match(
            r"(literal|list|dict|nullable)\[", str(part)
        ):
            continue  # pydantic's label for a union member
        else:
            parts.append(str(part))
    return ".".join(parts) or "<top level>"


def _format_errors(exc: ValidationError, source: Path) -> str:
    def locate(loc: tuple[Any, ...]) -> tuple[str, set[str]]:
        key = _key_of(loc)
        owners = (
            {FloatParam, IntParam, CategoricalParam}
            if key.startswith("params[")
            else {{"heartbeat": HeartbeatSettings}.get(key.split(".")[0], SweepFile)}
        )
        return key, set().union(*(owner.model_fields for owner in owners))

    def missing_type(err: dict[str, Any], key: str) -> str | None:
        if err["type"] == "union_tag_not_found":
            return f"key '{key}': missing 'type' (float, int or categorical)"
        return None

    lines = validation_error_lines(exc, locate, special=missing_type, strip_value_error=True)
    return f"{source}: invalid sweep file:\n  - " + "\n  - ".join(lines)


def build_optuna(kind: str, spec: dict[str, dict[str, Any] | None] | None, source: Path):
    """`{tpe: {seed: 0}}` -> `optuna.samplers.TPESampler(seed=0)`; the name and arguments are checked."""
    names, module = (SAMPLERS, optuna.samplers) if kind == "sampler" else (PRUNERS, optuna.pruners)
    spec = spec or {"none": {}}
    if len(spec) != 1:
        raise ConfigError(
            f"{source}: key '{kind}': expected one entry (name: {{arguments}}), got {sorted(spec)}"
        )
    ((name, kwargs),) = spec.items()
    if name not in names:
        raise ConfigError(f"{source}: key '{kind}': unknown {kind} '{name}'{did_you_mean(name, names)}")
    cls = getattr(module, names[name])
    kwargs = kwargs or {}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
        bad = next((k for k in kwargs if k not in allowed), None)
        hint = did_you_mean(bad, allowed) if bad else ""
        raise ConfigError(
            f"{source}: key '{kind}.{name}': {exc} for optuna.{kind}s.{cls.__name__}{hint}"
        ) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: key '{kind}.{name}': {exc}") from None


def _default_storage(study_dir: Path) -> str:
    return f"sqlite:///{study_dir.resolve()}/study.db"


def _check_storage(url: str, source: Path) -> None:
    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"{source}: key 'storage' = {url!r}: not a database URL ({exc}); expected e.g. "
            "sqlite:///runs/study.db or postgresql://user@host/db"
        ) from None


def redact(url: str) -> str:
    """The storage URL without its password, for messages and summary files."""
    return make_url(url).render_as_string(hide_password=True)


def _check_metric(file: SweepFile, stages: list[str], base: Config, source: Path) -> None:
    """An `eval/<key>` metric must be a key the evaluation reports and must be measured somewhere."""
    if not file.metric.startswith("eval/"):
        return  # a key the RL stage logs (TRL's or rlft's); a typo fails the first trial with the keys it saw
    keys = sorted(summarize([]))
    if file.metric[len("eval/") :] not in keys:
        raise ConfigError(
            f"{source}: key 'metric' = {file.metric!r}: not a held-out metric"
            f"{did_you_mean(file.metric[5:], keys)}; expected eval/<{'|'.join(keys)}>"
        )
    during = base.eval.every_steps is not None or "eval.every_steps" in file.params
    if not during and "eval" not in stages:
        raise ConfigError(
            f"{source}: key 'metric' = {file.metric!r} is never measured: add eval to 'stages' or "
            "set eval.every_steps (under 'overrides')"
        )
    pruning = file.pruner is not None and next(iter(file.pruner)) != "none"
    if pruning and not during:
        raise ConfigError(
            f"{source}: key 'pruner': the pruner needs {file.metric} during RL; set eval.every_steps "
            "under 'overrides' (e.g. {eval.every_steps: 10}), or 'pruner: null' for none"
        )


def load_sweep(
    path: str | Path,
    overrides: list[str] | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
) -> Sweep:
    """Read and check a sweep file; raises `ConfigError` naming the key. Loads no model.

    Args:
        path: the sweep YAML.
        overrides: `key.sub=value` overrides of the base config, for every trial (the command line's).
        n_trials: replaces the file's `n_trials` (`--n-trials`).
        storage: replaces the file's `storage` (`--storage`).
    """
    path = Path(path)
    file = _read_sweep_file(path)
    if n_trials is not None and n_trials <= 0:
        raise ConfigError(f"--n-trials = {n_trials}: expected a number of trials > 0")
    base_path = (path.parent / file.base).resolve()
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: key 'base' = {file.base!r}: no such file ({base_path}); the path is relative "
            "to the sweep file"
        )
    stages = _stages_of(file, path)
    both = sorted(set(file.overrides) & set(file.params))
    if both:
        raise ConfigError(f"{path}: key 'overrides': {', '.join(both)} is also in 'params'; keep it in one")

    base_overrides = [*(override(k, v) for k, v in file.overrides.items()), *(overrides or [])]
    try:
        base = load_checked_config(base_path, base_overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: the base config with the sweep's overrides is invalid:\n{exc}") from None
    if base.tracking.wandb.group is None:  # a study's wandb runs side by side
        base_overrides.append(override("tracking.wandb.group", file.study))
    if "sft" not in stages and base.rl.init_from == "sft":
        raise ConfigError(
            f"{path}: key 'stages' = {file.stages!r} has no sft but the base config's rl.init_from "
            "is 'sft'; add sft, or set rl.init_from (base or a checkpoint) under 'overrides'"
        )
    _check_metric(file, stages, base, path)
    build_optuna("sampler", file.sampler, path)
    build_optuna("pruner", file.pruner, path)
    study_dir = Path(base.output_dir) / file.study
    url = storage or file.storage or _default_storage(study_dir)
    _check_storage(url, path)
    sweep = Sweep(
        path=path,
        file=file,
        base_path=base_path,
        base_overrides=base_overrides,
        base_config=base,
        stages=stages,
        study_dir=study_dir,
        storage_url=url,
        n_trials=n_trials or file.n_trials,
    )
    _check_params(sweep)
    return sweep


def _read_sweep_file(path: Path) -> SweepFile:
    """The YAML at `path` validated as a `SweepFile`; an empty file or a bad key is a `ConfigError`."""
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        if "the file is empty" in str(exc):
            raise ConfigError(
                f"{path}: the sweep file is empty; expected at least 'base', 'study' and 'params'"
            ) from None
        raise
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path)) from None


def _stages_of(file: SweepFile, path: Path) -> list[str]:
    """The stages each trial runs: `pipeline` is all of them; rl must be among them, in pipeline order."""
    stages = list(STAGES) if file.stages == "pipeline" else list(file.stages)
    if "rl" not in stages or stages != [s for s in STAGES if s in stages]:
        raise ConfigError(
            f"{path}: key 'stages' = {file.stages!r}: expected 'pipeline' or stages in the order "
            "sft, rl, eval, with rl among them (the pruner watches the RL stage)"
        )
    return stages


def _check_params(sweep: Sweep) -> None:
    """Each param's path is a config field: both ends of its range (every choice) applied to the base config,
    one at a time, must validate; each enqueued trial's params, together."""
    file, source = sweep.file, sweep.path
    for key, param in file.params.items():
        for value in sample_values(param):
            try:
                load_checked_config(sweep.base_path, [*sweep.base_overrides, override(key, value)])
            except ConfigError as exc:
                raise ConfigError(
                    f"{source}: key 'params[{key}]': {key}={json.dumps(value)} does not make a valid "
                    f"config; expected a config field and values it accepts:\n{exc}"
                ) from None
    for i, params in enumerate(file.enqueue):
        for key, value in params.items():
            if key not in file.params:
                raise ConfigError(
                    f"{source}: key 'enqueue[{i}].{key}': not in 'params'{did_you_mean(key, file.params)}"
                )
            problem = check_in_space(value, file.params[key])
            if problem:
                raise ConfigError(f"{source}: key 'enqueue[{i}].{key}': {problem}")
        try:
            load_checked_config(
                sweep.base_path, [*sweep.base_overrides, *(override(k, v) for k, v in params.items())]
            )
        except ConfigError as exc:
            raise ConfigError(
                f"{source}: key 'enqueue[{i}]': these params do not make a valid config:\n{exc}"
            ) from None

"""Run directories for `rlft compare`: find them, read them, and group them into variants.

A run directory is one with a `config.yaml` (rlft writes it first, in every stage):

    runs/<name>/config.yaml      the resolved configuration: what the run *is*
    runs/<name>/metrics.jsonl    one JSON object per line: {"stage", "step", "time", <metric>: value, ...}
    runs/<name>/eval.json        held-out results per policy (the `rl` one is the final performance)

A *variant* is a set of runs whose resolved configurations agree on every key except the seed (and the
keys that only say where a run lives or how it is tracked: `name`, `output_dir`, `tracking`); its runs are
the seed replicates that the statistics aggregate over.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.config.schema import read_yaml
from rlft.errors import RlftError

# Keys that never make two runs different experiments: the replicate (seed), where the run is written, and
# how it is tracked. A dotted key also drops everything under it.
DEFAULT_IGNORED = ("seed", "name", "output_dir", "tracking")
_SKIP_DIRS = {"checkpoints", "trainer", "wandb", "__pycache__", ".git"}
_MAX_DEPTH = 4


class CompareError(RlftError):
    """Nothing to compare: a path is missing or holds no run directory (exit code 2)."""


@dataclass
class Run:
    """One run directory, as read from disk. `problems` says what could not be read (shown in the report)."""

    path: Path
    name: str
    seed: int | None
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    eval_results: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Variant:
    """Runs whose configurations differ only in ignored keys (the seeds of one experiment)."""

    label: str
    config: dict[str, Any]  # flattened, ignored keys removed
    runs: list[Run]

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


# ------------------------------------------------------------------------------------------------ finding
def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories named by `paths`: each path is a run directory or a folder holding some (any depth up
    to 4, e.g. `runs/exp/*` or a sweep's trial folders). A missing path, or no run at all, is a CompareError.
    """
    if not paths:
        raise CompareError("no paths given; name run directories or folders that hold them")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CompareError(f"'{raw}': no such file or directory")
        if not path.is_dir():
            raise CompareError(f"'{raw}': not a directory (expected a run directory or a folder of runs)")
        mine = _search(path, 0)
        if not mine:
            raise CompareError(f"'{raw}': no run directory (a folder with config.yaml) in or under it")
        found.extend(mine)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _search(path: Path, depth: int) -> list[Path]:
    if is_run_dir(path):
        return [path]  # a run's own subfolders (checkpoints, trainer) hold no further runs
    if depth >= _MAX_DEPTH:
        return []
    found: list[Path] = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and child.name not in _SKIP_DIRS and not child.name.startswith("."):
            found.extend(_search(child, depth + 1))
    return found


# ------------------------------------------------------------------------------------------------ reading
def load_run(path: Path) -> Run:
    """Read one run directory. An unreadable config is a CompareError; a bad metrics line or eval.json is
    recorded in `problems` and skipped, so one damaged run does not stop a comparison."""
    try:
        config = read_yaml(path / "config.yaml")
    except RlftError as exc:
        raise CompareError(f"run '{path}': {exc}") from None
    seed = config.get("seed")
    run = Run(
        path=path,
        name=str(config.get("name") or path.name),
        config=config,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )
    run.records = _read_records(path / "metrics.jsonl", run.problems)
    eval_path = path / "eval.json"
    if eval_path.is_file():
        try:
            run.eval_results = json.loads(eval_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            run.problems.append(f"{eval_path}: unreadable ({exc})")
    return run


def _read_records(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl, tolerant of damage (unlike `rlft.runtime.tracking.read_metrics`, which training uses and which
    should fail loudly): a run killed mid-write can leave a truncated last line, which is skipped and noted."""
    if not path.is_file():
        problems.append(f"{path}: missing (no curves from this run)")
        return []
    records, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        problems.append(f"{path}: {len(bad)} unreadable line(s) skipped (first: line {bad[0]})")
    return records


def as_number(value: Any) -> float | None:
    """A logged value as a finite float, or None (the tracker writes non-finite floats as strings)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return None


# ------------------------------------------------------------------------------------------------ grouping
def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'rl': {'trainer': {'lr': 1}}} -> {'rl.trainer.lr': 1}; lists are values. An empty mapping is a value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == item or key.startswith(item + ".") for item in ignore)


def group_variants(runs: list[Run], ignore: tuple[str, ...] = DEFAULT_IGNORED) -> list[Variant]:
    """Runs grouped by their flattened config minus the `ignore` keys, in the order first seen."""
    groups: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        flat = {k: v for k, v in flatten(run.config).items() if not _ignored(k, ignore)}
        identity = json.dumps(flat, sort_keys=True, default=str)
        groups.setdefault(identity, (flat, []))[1].append(run)
    variants = [
        Variant(label="", config=flat, runs=sorted(members, key=_seed_order))
        for flat, members in groups.values()
    ]
    for variant, label in zip(variants, _labels(variants)):
        variant.label = label
    return variants


def _seed_order(run: Run) -> tuple[int, str]:
    return (run.seed if run.seed is not None else -1, run.name)


def config_differences(variants: list[Variant]) -> list[str]:
    """The flattened keys whose value is not the same in every variant (a key absent in some counts)."""
    keys = list(dict.fromkeys(k for v in variants for k in v.config))
    return [
        k
        for k in keys
        if len({json.dumps(v.config.get(k, _ABSENT), sort_keys=True, default=str) for v in variants}) > 1
    ]


_ABSENT = "(absent)"


def config_value(variant: Variant, key: str) -> str:
    if key not in variant.config:
        return _ABSENT
    value = variant.config[key]
    return value if isinstance(value, str) else json.dumps(value, default=str)


def base_name(run: Run) -> str:
    """The run's name without a trailing seed marker: `ppo_s1`, `ppo-seed1`, `exp/ppo_seed=1` -> `ppo`."""
    if run.seed is None:
        return run.name
    return re.sub(rf"[-_.](?:seed|s)[-_=]?{run.seed}$", "", run.name)


def _labels(variants: list[Variant]) -> list[str]:
    """Short unique labels: the runs' shared name without the seed marker, else the differing keys, else V<i>."""
    names = []
    for variant in variants:
        bases = {base_name(run) for run in variant.runs}
        names.append(bases.pop() if len(bases) == 1 else None)
    if None not in names and len(set(names)) == len(names):
        return names
    differing = config_differences(variants)
    by_keys = [", ".join(f"{k}={config_value(v, k)}" for k in differing) for v in variants]
    if differing and all(len(label) <= 60 for label in by_keys) and len(set(by_keys)) == len(by_keys):
        return by_keys
    return [f"V{i + 1}" for i in range(len(variants))]

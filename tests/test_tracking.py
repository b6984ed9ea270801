"""wandb the way wandb users expect, and TRL's own `report_to` integrations beside it.

* runs grouped by experiment, tagged with algorithm / env / reward design / seed, job_type per stage (read back
  from the offline run's own `.wandb` record file);
* episode transcripts: a sample per log interval as a wandb table (the offline run's media/table json) and the
  same rows in `runs/<name>/transcripts.jsonl`; a table failure never stops training;
* `rl.trainer.report_to: [tensorboard, trackio]` writes tensorboard event files under the run dir and trackio's
  local database; `wandb` and `all` in report_to are refused (rlft logs wandb itself).
"""

from __future__ import annotations

import glob
import json
import os
import random
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlft import stages
from rlft.core.episode import Episode
from rlft.errors import ConfigError
from rlft.runtime.tracking import (
    Tracker,
    TranscriptCallback,
    experiment_group,
    read_metrics,
    run_tags,
    transcript_rows,
)
from tests.conftest import tiny_config

# trackio reads TRACKIO_DIR once, when it is first imported (TRL imports it as soon as a trainer config names it,
# and other test modules may do that first), so tests/conftest.py points it at a temporary folder for the session.
TRACKIO_DIR = Path(os.environ["TRACKIO_DIR"])


def read_wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline run's `run-<id>.wandb` file.

    The file is a 7-byte wandb header (':W&B', magic, version) followed by a LevelDB log: 32 KiB blocks of
    chunks, each `crc32 (4) | length (2) | type (1)` + data, type 1 = a whole record, 2/3/4 = first/middle/last.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block  # a block's tail too short for a chunk header is padding
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        position += 7
        if kind == 0 and length == 0:
            break
        pending += data[position : position + length]
        position += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_wandb_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """The records once the run's `exit` record is on disk: wandb's service writes the file asynchronously, and
    right after `finish()` returns it can still be empty."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.25)


def make_episode(
    seed: int,
    actions: list[str],
    env: list[float],
    shaping: list[float] | None = None,
    failure: str | None = None,
) -> Episode:
    episode = Episode(seed=seed, prompt_ids=[1], first_observation=f"obs{seed}-0")
    for k, action in enumerate(actions):
        episode.add_sampled(5, -0.1)
        rewards = {"env": env[k], **({"shaping": shaping[k]} if shaping else {})}
        episode.end_action(action, rewards)
        if k < len(actions) - 1:
            episode.observations.append(f"obs{seed}-{k + 1}")
    episode.success = bool(env and env[-1] > 0)
    episode.failure = failure
    return episode


# ---------------------------------------------------------------- transcripts: rows


def test_transcript_rows_pair_each_action_with_the_observation_it_answered():
    episodes = [
        make_episode(7, ["left", "down"], [0.0, 1.0], shaping=[0.5, -0.25]),
        make_episode(8, ["up"], [-1.0], shaping=[0.0]),
    ]
    rows = transcript_rows(episodes, 5, random.Random(0))  # more asked than exist: every episode, in order
    assert [(r["episode"], r["seed"], r["turn"], r["observation"], r["action"]) for r in rows] == [
        (0, 7, 0, "obs7-0", "left"),
        (0, 7, 1, "obs7-1", "down"),
        (1, 8, 0, "obs8-0", "up"),
    ]
    assert [(r["reward/env"], r["reward/shaping"], r["reward"]) for r in rows] == [
        (0.0, 0.5, 0.5),
        (1.0, -0.25, 0.75),
        (-1.0, 0.0, -1.0),
    ]
    assert [r["return"] for r in rows] == [1.25, 1.25, -1.0]
    assert [r["success"] for r in rows] == [True, True, False]
    assert len({tuple(r) for r in rows}) == 1  # the same columns on every row


def test_transcript_rows_sample_and_show_failures():
    episodes = [make_episode(s, ["a"], [0.0]) for s in range(10)]
    episodes.append(make_episode(99, [], [], failure="env.reset raised ValueError('boom')"))
    rows = transcript_rows(episodes, 3, random.Random(1))
    assert len({r["episode"] for r in rows}) == 3
    assert rows == transcript_rows(episodes, 3, random.Random(1))  # the sample depends on its own RNG only
    everything = transcript_rows(episodes, 11, random.Random(1))
    failed = [r for r in everything if r["seed"] == 99]
    assert failed == [
        {
            "episode": 10,
            "seed": 99,
            "turn": None,
            "observation": "obs99-0",
            "action": "",
            "reward/env": None,
            "reward": 0.0,
            "return": 0.0,
            "success": False,
            "failure": "env.reset raised ValueError('boom')",
        }
    ]
    assert transcript_rows(episodes, 0, random.Random(1)) == []


class _RecordingTracker:
    def __init__(self):
        self.logged: list[tuple[int, list]] = []

    def log_transcripts(self, rows, step):
        self.logged.append((step, rows))


def test_transcript_callback_logs_every_n_steps_each_batch_once():
    batch = SimpleNamespace(episodes=[make_episode(1, ["a"], [1.0])])  # a RolloutBatch as far as it reads
    tracker = _RecordingTracker()
    callback = TranscriptCallback(tracker, samples=2, every=2)
    callback.on_rollout_batch(batch)
    for step in range(1, 7):
        if step == 3:  # a new rollout batch before step 3 serves steps 3 to 6
            callback.on_rollout_batch(SimpleNamespace(episodes=list(batch.episodes)))
        callback.on_step_end(
            None, SimpleNamespace(global_step=step, is_world_process_zero=True, logging_steps=1), None
        )
    assert [step for step, _ in tracker.logged] == [2, 4]  # step 6 would repeat step 4's batch
    # unset `every`: the trainer's logging_steps; not on other ranks
    tracker = _RecordingTracker()
    callback = TranscriptCallback(tracker, samples=2)
    callback.on_rollout_batch(batch)
    callback.on_step_end(
        None, SimpleNamespace(global_step=3, is_world_process_zero=True, logging_steps=3), None
    )
    callback.on_step_end(
        None, SimpleNamespace(global_step=6, is_world_process_zero=False, logging_steps=3), None
    )
    assert [step for step, _ in tracker.logged] == [3]


def test_a_failing_table_never_stops_tracking(tmp_path, monkeypatch):
    import wandb

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("table service down")

    config = tiny_config(tracking={"wandb": {"enabled": True, "mode": "offline"}})
    tracker = Tracker(config, "rl", tmp_path)
    monkeypatch.setattr(wandb, "Table", Broken)
    rows = transcript_rows([make_episode(3, ["a"], [1.0])], 1, random.Random(0))
    tracker.log_transcripts(rows, step=1)
    tracker.log({"loss": 0.5}, step=1)
    assert tracker._wandb is not None  # scalars still go to wandb; only tables are off
    tracker.log_transcripts(rows, step=2)
    tracker.finish()
    lines = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], r["action"]) for r in lines] == [("rl", 1, "a"), ("rl", 2, "a")]
    assert read_metrics(tmp_path)[0]["loss"] == 0.5


# ---------------------------------------------------------------- group and tags


def test_group_is_the_experiment_and_tags_name_algorithm_env_reward_and_seed():
    config = tiny_config(
        seed=3,
        rl={"algorithm": "ppo"},
        tracking={"experiment": "lr-sweep", "wandb": {"enabled": False, "tags": ["mine"]}},
    )
    assert experiment_group(config) == "lr-sweep"
    assert run_tags(config) == ["mine", "ppo", "rlft/FrozenLakeRandom-v0", "reward:env", "seed:3"]
    assert experiment_group(tiny_config()) == "test"  # no experiment: the run name
    explicit = tiny_config(tracking={"experiment": "x", "wandb": {"enabled": False, "group": "mine"}})
    assert experiment_group(explicit) == "mine"


# ---------------------------------------------------------------- report_to


@pytest.mark.parametrize(
    "value, expected",
    [
        ("wandb", "rlft logs every stage to wandb itself"),
        ("[tensorboard, wandb]", "remove 'wandb' from report_to"),
        ("all", "'all' includes wandb"),
        ("3", "expected an integration name or a list"),
    ],
)
def test_report_to_refuses_wandb_and_all(value, expected):
    from rlft.stages.checks import load_checked_config

    raw = {"model": {"tiny": {"hidden_size": 32, "num_heads": 2}}, "env": {"id": "rlft/FrozenLake-v0"}}
    with pytest.raises(ConfigError, match="key 'rl.trainer.report_to'") as error:
        load_checked_config(raw=raw, overrides=[f"rl.trainer.report_to={value}"])
    assert expected in str(error.value)
    load_checked_config(
        raw=raw, overrides=["rl.trainer.report_to=[tensorboard, trackio]", "sft.trainer.report_to=none"]
    )


# ---------------------------------------------------------------- a real tiny RL run


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """Tiny GRPO, 3 steps, wandb offline, report_to tensorboard + trackio (trackio's local store in tmp)."""
    out = tmp_path_factory.mktemp("tracked")
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        name="tracked",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 4, "train_seeds": {"start": 0, "count": 8}},
        rl={
            "init_from": "base",
            "trainer": {
                "max_steps": 3,
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "logging_steps": 1,
                "report_to": ["tensorboard", "trackio"],
            },
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
        tracking={
            "experiment": "exp-A",
            "transcript_samples": 2,
            "transcripts_every": 2,
            "wandb": {"enabled": True, "mode": "offline"},
        },
    )
    import trackio.utils

    if Path(trackio.utils.TRACKIO_DIR) != TRACKIO_DIR:
        pytest.fail(
            f"trackio was imported before this module set TRACKIO_DIR; it writes to {trackio.utils.TRACKIO_DIR}"
        )
    stages.run_rl(config)
    return config


def test_offline_wandb_run_is_grouped_tagged_and_holds_the_transcript_tables(tracked_run):
    config = tracked_run
    (offline,) = (config.run_dir / "wandb").glob("offline-run-*")
    records = finished_wandb_records(offline)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type, run.display_name) == ("exp-A", "rl", "tracked-rl")
    assert list(run.tags) == ["grpo", "rlft/CliffWalking-v0", "reward:env", "seed:0"]
    resolved = json.loads(next(u.value_json for u in run.config.update if u.key == "tracking"))
    assert resolved["experiment"] == "exp-A"  # the full resolved config is attached
    # transcripts_every 2 over 3 steps: one table, at step 2, in the history and on disk
    table_steps = [
        int(json.loads(next(i.value_json for i in r.history.item if i.nested_key == ["_step"])))
        for r in records
        if r.WhichOneof("record_type") == "history"
        and any(i.nested_key[:1] == ["rl/transcripts"] for i in r.history.item)
    ]
    assert table_steps == [2]
    (table_file,) = (offline / "files" / "media" / "table" / "rl").glob("transcripts_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == [
        "step",
        "episode",
        "seed",
        "turn",
        "observation",
        "action",
        "reward/env",
        "reward",
        "return",
        "success",
        "failure",
    ]
    rows = [json.loads(line) for line in (config.run_dir / "transcripts.jsonl").read_text().splitlines()]
    assert len({r["episode"] for r in rows}) == 2 and {r["step"] for r in rows} == {2}
    assert [[r[c] for c in table["columns"]] for r in rows] == table["data"]  # the same sample in both
    for row in rows:
        assert row["action"] is not None and row["observation"]
        assert row["reward"] == row["reward/env"]


def test_report_to_tensorboard_writes_event_files_under_the_run_dir(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tracked_run
    logdir = config.run_dir / "tensorboard" / "rl"
    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert "train/episode/return" in events.Tags()["scalars"]


def test_report_to_trackio_logs_locally(tracked_run):
    config = tracked_run
    from trackio.sqlite_storage import SQLiteStorage

    assert list(TRACKIO_DIR.glob("*.db")), "trackio keeps its local database in TRACKIO_DIR"
    assert SQLiteStorage.get_runs(config.tracking.wandb.project) == ["tracked-rl"]
    logs = SQLiteStorage.get_logs(config.tracking.wandb.project, "tracked-rl")
    assert [log["train/loss"] for log in logs if "train/loss" in log]

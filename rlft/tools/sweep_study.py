"""The Optuna study of a sweep: its storage opened (shared by every worker), and its trial folders checked."""

from __future__ import annotations

import re
import warnings
from typing import Any

import optuna
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from rlft.errors import ConfigError
from rlft.tools.sweep_file import Sweep, build_optuna, redact


def open_study(sweep: Sweep):
    """Create the study, or load it if another process (or an earlier run of this one) made it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # rlft prints one line per trial itself
    url, beat = sweep.storage_url, sweep.file.heartbeat
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        sweep.study_dir.mkdir(parents=True, exist_ok=True)
        # Several workers write one SQLite file: wait for its lock instead of failing after 5 s.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    heartbeat: dict[str, Any] = {}
    if beat.interval_s:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(beat.max_retry) if beat.max_retry else None
        heartbeat = {
            "heartbeat_interval": beat.interval_s,
            "grace_period": beat.grace_period_s,
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        if url.startswith("sqlite"):
            _serialize_sqlite_transactions(storage.engine)
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study,
            direction=sweep.file.direction,
            sampler=build_optuna("sampler", sweep.file.sampler, sweep.path),
            pruner=build_optuna("pruner", sweep.file.pruner, sweep.path),
            load_if_exists=True,
        )
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigError(
            f"key 'storage' = {redact(url)!r}: cannot open the study's database: {exc}"
        ) from None
    if study.direction.name.lower() != sweep.file.direction:
        raise ConfigError(
            f"{sweep.path}: key 'direction' = {sweep.file.direction!r}, but study '{sweep.study}' in "
            f"{redact(url)} was created to {study.direction.name.lower()}"
        )
    return study


def _serialize_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (SQLAlchemy's pysqlite recipe).

    pysqlite defers BEGIN to the first write, and SQLite ignores `SELECT ... FOR UPDATE`, so two workers could
    both read a queued trial as WAITING and both claim it ("Cannot tell a PRUNED trial" when the second one
    finishes it). With BEGIN IMMEDIATE the second worker waits for the first and then sees it RUNNING.
    """

    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite leaves BEGIN to SQLAlchemy's "begin" event

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are dropped


def check_trial_dirs(sweep: Sweep, study) -> None:
    """Refuse trial-<n> folders the study does not know: another study's (its database was deleted or moved)."""
    # Listed before the study is read: a folder a live worker just made belongs to a trial already stored.
    found = {
        int(m.group(1))
        for p in (sweep.study_dir.iterdir() if sweep.study_dir.is_dir() else [])
        if (m := re.fullmatch(r"trial-(\d+)", p.name))
    }
    stray = sorted(found - {t.number for t in study.get_trials(deepcopy=False)})
    if stray:
        raise ConfigError(
            f"{sweep.study_dir} holds trial folders of runs study '{sweep.study}' in "
            f"{redact(sweep.storage_url)} does not know (trial-{stray[0]}, ...); move them away or "
            "choose another 'study' name"
        )

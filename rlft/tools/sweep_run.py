"""The trials of `rlft sweep` (rlft/tools/sweep.py; the file: sweep_file.py): run each as ordinary stages, prune
it from the metric the RL stage logs, record failures, and write the study's summary and its best config
(the records and the summary: sweep_results.py).

    runs/<study>/study.db              the Optuna study (the default SQLite storage)
    runs/<study>/trial-<n>/            an ordinary run directory, plus trial.json (state, params, value)
    runs/<study>/summary.json, .csv    every trial: number, state, value, params, error
    runs/<study>/best_config.yaml      the best trial's full resolved config, runnable as it is
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import optuna
from transformers import TrainerCallback

from rlft import stages
from rlft.config.schema import Config
from rlft.errors import RlftError
from rlft.runtime.run_lock import run_lock
from rlft.runtime.signals import Interrupted
from rlft.tools.sweep_file import Sweep, trial_config
from rlft.tools.sweep_results import retried_trials, trial_row, write_results, write_trial_record
from rlft.tools.sweep_schema import CategoricalParam, FloatParam
from rlft.tools.sweep_study import check_trial_dirs, open_study

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")  # toward n_trials; a queued (WAITING) trial is not yet


class PruningCallback(TrainerCallback):
    """Reports each value of `metric` the RL stage logs to the Optuna trial and stops training when the
    pruner says so (the stage then saves its checkpoint as usual; the sweep marks the trial PRUNED).

    The values are read back from the run's metrics.jsonl, the record every stage writes, so the pruner sees
    exactly what the run logged: rlft's held-out `eval/*` (HeldOutEvalCallback, every `eval.every_steps`) or
    TRL's training logs. The held-out evaluation of step k runs after this callback's `on_step_end` (the stage
    adds it later), so a value is seen at the first event after it: `on_log` of the same step when step k is a
    logging step, else `on_step_end` of step k + 1.
    """

    def __init__(self, trial, metrics_path: Path, metric: str, stage: str = "rl"):
        self.trial, self.metrics_path, self.metric, self.stage = trial, metrics_path, metric, stage
        self.offset = metrics_path.stat().st_size if metrics_path.is_file() else 0  # earlier stages' records
        self.values: dict[int, float] = {}
        self.pruned_at: int | None = None

    def _read_new(self) -> list[tuple[int, float]]:
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        found = []
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            value = record.get(self.metric)
            if record.get("stage") != self.stage or isinstance(value, bool) or record.get("step") is None:
                continue
            try:
                found.append((int(record["step"]), float(value)))  # non-finite values are logged as strings
            except (TypeError, ValueError):
                continue
        return found

    def report_new(self) -> bool:
        """Report values logged since the last call; True if there was one."""
        new = [(step, value) for step, value in self._read_new() if step not in self.values]
        for step, value in new:
            self.values[step] = value
            self.trial.report(value, step)
        return bool(new)

    def _check(self, state, control) -> None:
        if not state.is_world_process_zero or self.pruned_at is not None:
            return
        if self.report_new() and self.trial.should_prune():
            self.pruned_at = max(self.values)
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._check(state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._check(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.pruned_at is None:
            self.report_new()  # the held-out evaluation after the last step


def final_value(sweep: Sweep, config: Config, pruning: PruningCallback) -> float:
    """The objective: the held-out metric of the trained policy from eval.json when the trial ran `eval`,
    else the last value the RL stage logged."""
    if "eval" in sweep.stages and sweep.metric.startswith("eval/"):
        results = json.loads((config.run_dir / "eval.json").read_text(encoding="utf-8"))
        return float(results["policies"]["rl"][sweep.metric[len("eval/") :]])
    if not pruning.values:
        raise RlftError(
            f"metric '{sweep.metric}' was never logged by the rl stage (see "
            f"{config.run_dir / 'metrics.jsonl'} for the keys it logs); fix 'metric' in {sweep.path}"
        )
    return pruning.values[max(pruning.values)]


def run_stages(sweep: Sweep, config: Config, trial) -> float:
    """One trial's stages; raises optuna.TrialPruned when the pruner stopped its RL stage."""
    rl_path = None
    for stage in sweep.stages:
        if stage == "sft":
            stages.run_sft(config)
        elif stage == "rl":
            pruning = PruningCallback(trial, config.run_dir / "metrics.jsonl", sweep.metric)
            rl_path = stages.run_rl(config, callbacks=[pruning])
            if pruning.pruned_at is not None:
                trial.set_user_attr("pruned_at_step", pruning.pruned_at)
                raise optuna.TrialPruned(
                    f"{sweep.metric} = {pruning.values[pruning.pruned_at]:.4g} at step {pruning.pruned_at}"
                )
        else:  # the trained policy only: the base policy and the expert are the same in every trial
            stages.run_eval(config, policies={"rl": rl_path}, expert=False)
    return final_value(sweep, config, pruning)


class Objective:
    """`study.optimize`'s objective: a trial's config from its sampled params, its stages, its record."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.interrupted: BaseException | None = None

    def suggest(self, trial) -> dict[str, Any]:
        params = {}
        for key, p in self.sweep.file.params.items():
            if isinstance(p, CategoricalParam):
                params[key] = trial.suggest_categorical(key, p.choices)
            elif isinstance(p, FloatParam):
                params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
            else:
                params[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        return params

    def __call__(self, trial) -> float:
        params = self.suggest(trial)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        run_dir = self.sweep.study_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        print(
            f"trial {trial.number}: {', '.join(f'{k}={v}' for k, v in params.items())}  ({run_dir})",
            flush=True,
        )
        try:
            config = trial_config(self.sweep, params, f"trial-{trial.number}")
            write_trial_record(run_dir, trial, "RUNNING", params)
            with run_lock(config.run_dir):  # one process per trial folder, from its first stage to its last
                value = run_stages(self.sweep, config, trial)
        except optuna.TrialPruned:
            write_trial_record(
                run_dir, trial, "PRUNED", params, pruned_at=trial.user_attrs.get("pruned_at_step")
            )
            raise
        except (Exception, KeyboardInterrupt) as exc:
            message = str(exc) if isinstance(exc, RlftError) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message)
            write_trial_record(run_dir, trial, "FAIL", params, error=message)
            if isinstance(exc, (Interrupted, KeyboardInterrupt)):
                self.interrupted = exc  # a signal stops the sweep, not just this trial
                trial.study.stop()
            elif not isinstance(exc, RlftError):
                traceback.print_exc()  # a bug, not a bad hyperparameter: show where
            raise
        write_trial_record(run_dir, trial, "COMPLETE", params, value=value)
        return value


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def _counted(study) -> int:
    """Trials toward n_trials: running or finished, except those a retry replaces (a crash costs no trial)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(t.state.name in COUNTED and t.number not in retried for t in trials)


def run_sweep(sweep: Sweep) -> dict[str, Any]:
    """Run trials until the study holds `n_trials` (every worker counts the same study), or `timeout`.

    Returns the summary (as written to summary.json). A trial that raises is recorded as FAIL and the loop
    goes on; SIGINT / SIGTERM stop it after the trial in flight is recorded (`Interrupted` is raised).
    """
    study = open_study(sweep)
    check_trial_dirs(sweep, study)
    if sweep.file.heartbeat.interval_s:
        # A trial left RUNNING by a killed worker is FAIL (and queued again) once its heartbeat is older than
        # the grace period; optimize does this before each trial, and here it comes before the count.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    for params in sweep.file.enqueue:  # the params of trials to run first, unless the study already has them
        study.enqueue_trial(params, skip_if_exists=True)
    remaining = sweep.n_trials - _counted(study)
    if remaining <= 0:
        print(
            f"study {sweep.study} already holds {_counted(study)} trials (n_trials = {sweep.n_trials}); "
            "raise --n-trials to run more",
            file=sys.stderr,
        )
        return write_results(sweep, study)
    objective = Objective(sweep)

    def after_trial(study, frozen) -> None:
        row = trial_row(frozen)
        shown = "" if row["value"] is None else f" {sweep.metric} = {row['value']:.4g}"
        detail = f": {row['error']}" if row["error"] else ""
        if row["state"] == "PRUNED":
            detail = f" at step {row['pruned_at_step']}"
        print(f"trial {frozen.number}: {row['state']}{shown}{detail}", flush=True)
        write_results(sweep, study)
        if _counted(study) >= sweep.n_trials:  # other workers' running trials count: the study's total
            study.stop()

    start = time.perf_counter()
    try:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=sweep.file.timeout,
            catch=(Exception,),
            callbacks=[after_trial],
        )
    except KeyboardInterrupt as exc:  # outside training (SFT, eval): optuna recorded the trial as FAIL
        objective.interrupted = exc
    summary = write_results(sweep, study)
    print(f"study directory: {sweep.study_dir}  ({time.perf_counter() - start:.0f} s)")
    if objective.interrupted is not None:
        signum = getattr(objective.interrupted, "signum", signal.SIGINT)
        raise Interrupted(
            f"sweep stopped by {signal.Signals(signum).name}; the trial in flight is recorded as FAIL. "
            "Run the same command again to continue the study",
            signum,
        )
    return summary

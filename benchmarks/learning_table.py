"""The learning table (issue 16, "Measured"): held-out success of each method on each env, over seeds.

A cell is env x method x seed (benchmarks/learning_table.yaml lists them). Per (env, seed), one SFT run (`rlft sft`
on the env's config with `seed=<s>`) is the `sft` cell, and every RL method of that seed starts from its checkpoint
(`rl.init_from=<path>`), so methods are paired per seed. Each RL method uses the SAME overrides on every env and
the same budget: `budget_episodes` of the env, the episodes the trainer consumes (optimizer steps x episodes per
step; per step = per_device_train_batch_size x gradient_accumulation_steps / num_iterations, one process), so
`rl.trainer.max_steps` differs per method. Env steps differ with episode lengths (and dynamic sampling plays its
resampled groups on top); each cell records the env steps it played (`episode/env_steps_total`). During RL,
validation seeds are evaluated `curve_points` times (the curve); after it, `rlft eval` plays the test seeds,
greedy and sampled.

Each worker runs one cell at a time, the must-fill cells first (seed-major), writes one JSON per finished cell to
`results_dir`, and skips finished cells when restarted; a cell stopped half way is redone from scratch in a fresh
run folder. A method whose config `rlft validate` refuses (exit 2: a key not there yet) is skipped, its cells
marked missing with the reason. Progress goes to `results_dir/progress.log`, each command's output to a .log beside
its run folder.

    nohup nice -n 15 .venv/bin/python benchmarks/learning_table.py --commit > /dev/null 2>&1 &
    # or two workers, one per core; they share the cells (pid claims) and wait for each other's SFT cells:
    for c in 0 1; do OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup nice -n 15 taskset -c $c \
        .venv/bin/python benchmarks/learning_table.py --commit > /dev/null 2>&1 & done
    .venv/bin/python benchmarks/learning_table.py --table            # markdown tables, missing cells named
    .venv/bin/python benchmarks/learning_table.py --readme           # rewrite README.md's results block
    nice -n 15 .venv/bin/python benchmarks/learning_table.py --smoke  # tiny budgets, a few minutes

Scores are normalised per env: success / optimum (FrozenLake; slippery: the optimum within env.max_turns), or
(R - R_random) / (R_optimal - R_random) (Taxi), with exact expected returns within the turn limit
(rlft.rollout.experts.env_reference_returns). Aggregates are rliable's IQM with
95% stratified-bootstrap CIs across envs x seeds per method (rlft.tools.report.stats, as `rlft compare` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cell_runs import claim, claimed_by_other, code_stamp, commit_id, die_with_parent
from learning_table_curves import plot_validation_curves, validation_curve
from learning_table_decisions import backfill
from learning_table_report import compare_command, readme_block, tables
from learning_table_results import (
    BEGIN,
    END,
    ROOT,
    SFT,
    SPEC,
    Cell,
    as_overrides,
    cell_order,
    episodes_per_step,
    finished,
    is_must_fill,
    load_spec,
    max_steps_for,
    rewrite_block,
    selected_record,
    skipped,
    trainer_of,
)

from envs.experts import NoExpertError
from rlft.config.schema import Config, load_config
from rlft.rollout.evaluation import held_out_seeds
from rlft.rollout.experts import env_reference_returns
from rlft.runtime.run_files import write_text_atomic
from rlft.runtime.tracking import read_metrics
from rlft.stages.common import env_factory

RLFT = [str(Path(sys.executable).with_name("rlft"))]  # the console script of the interpreter running this


def fresh_run_dir(parent: Path, name: str) -> Path:
    """`parent/name`, or `parent/retry2/name`, `parent/retry3/name`, ... when an earlier (stopped) try left its
    folder or log. The run's name stays `<env>_<method>_s<seed>`, so `rlft compare` labels the seeds of a method
    `<env>_<method>` whichever try finished them."""
    path, n = parent / name, 1
    while path.exists() or path.with_suffix(".log").exists():
        n += 1
        path = parent / f"retry{n}" / name
    return path


def reference_returns_on_test_seeds(config: Config) -> dict[str, Any] | None:
    """The optimum's and a uniformly random policy's expected return within the config's turn limit, averaged
    over the tasks of its test seeds (rlft.rollout.experts.env_reference_returns: exact, by backward induction on
    the env's transition table); None for an env without one."""
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)
    try:
        return dataclasses.asdict(env_reference_returns(config.env, seeds))
    except NoExpertError:
        return None


# ------------------------------------------------------------------------------------------------ running
class Runner:
    """Runs the cells one at a time, logging progress; `commit`: git-commit each finished cell's JSON."""

    def __init__(self, spec: dict[str, Any], commit: bool = False):
        self.spec, self.commit = spec, commit
        self.results = ROOT / spec["results_dir"]
        self.runs = ROOT / spec["runs_dir"]
        self.results.mkdir(parents=True, exist_ok=True)
        self.progress = self.results / "progress.log"
        self.code = (
            code_stamp()
        )  # the code this worker runs: it restarts itself between cells when that changes

    def log(self, message: str) -> None:
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}"
        print(line, flush=True)
        with self.progress.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def command(self, args: list[str], log_path: Path) -> tuple[int, float, str]:
        """Run an rlft command, its output appended to `log_path`; (exit code, seconds, last output line)."""
        t0 = time.perf_counter()
        with log_path.open("a", encoding="utf-8") as log:
            log.write("$ " + shlex.join(args) + "\n")
            log.flush()
            proc = subprocess.run(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        lines = [x.strip() for x in log_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        errors = [
            x for x in lines if x.startswith("rlft: error")
        ]  # rlft's one-line message, not a warning after it
        return proc.returncode, time.perf_counter() - t0, (errors or lines or [""])[-1]

    def overrides(self, cell: Cell, run_dir: Path) -> list[str]:
        return [
            f"name={run_dir.name}",
            f"output_dir={run_dir.parent.relative_to(ROOT)}",
            f"seed={cell.seed}",
        ] + as_overrides(self.spec.get("common_overrides"))

    def rl_overrides(self, cell: Cell, sft_checkpoint: str) -> list[str]:
        method, budget = self.spec["methods"][cell.method], self.spec["envs"][cell.env]["budget_episodes"]
        steps = max_steps_for(budget, trainer_of(method))
        every = max(1, steps // self.spec["curve_points"])
        return [f"rl.init_from={sft_checkpoint}", *as_overrides(method.get("overrides"))] + [
            *as_overrides(self.spec.get("rl_overrides")),
            f"rl.trainer.max_steps={steps}",
            f"eval.every_steps={every}",
        ]

    def claim_path(self, cell: Cell) -> Path:
        return self.runs / "claims" / f"{cell.key}.claim"

    def run_all(self, poll_seconds: float = 30.0) -> None:
        """Every unfinished cell once, in `cell_order`. Several workers may run this side by side on one checkout
        (one per core): each takes the first cell no live worker has claimed (a pid file under runs_dir/claims)
        whose SFT cell has finished, and waits while the only cells left hang on an SFT cell another worker runs."""
        order = cell_order(self.spec)
        self.log(f"start: {len(order)} cells, {len(finished(self.results))} finished, commit {commit_id()}")
        settled: set[str] = set()  # tried here, or run (finished or failed) by another worker
        while True:
            if code_stamp() != self.code:  # no claim is held here: re-exec on the new code
                self.log("the code changed since this worker started: it restarts itself on the new code")
                os.execv(sys.executable, [sys.executable, *sys.argv])
            done, waiting, ran = finished(self.results), False, False
            for cell in order:
                if cell.key in done or cell.key in settled:
                    continue
                if claimed_by_other(self.claim_path(cell)):
                    settled.add(cell.key)  # the other worker finishes it, or names why not
                    continue
                sft = Cell(cell.env, SFT, cell.seed)
                if cell.method != SFT and sft.key not in done:
                    if sft.key not in settled or claimed_by_other(self.claim_path(sft)):
                        waiting = True  # its SFT cell is still to run, or running elsewhere
                        continue
                    self.log(f"{cell.key}: missing: the SFT cell of this env and seed did not finish")
                    settled.add(cell.key)
                    continue
                if not claim(self.claim_path(cell)):
                    continue
                settled.add(cell.key)
                try:
                    self.run_claimed(cell)
                finally:
                    self.claim_path(cell).unlink(missing_ok=True)
                ran = True
                break  # back to the top: a finished SFT cell frees its RL cells
            if not ran and not waiting:
                break
            if not ran:
                time.sleep(poll_seconds)
        self.log(f"end: {len(finished(self.results))} of {len(order)} cells finished")

    def run_claimed(self, cell: Cell) -> None:
        try:
            record = self.run_cell(cell, finished(self.results))
        except (KeyboardInterrupt, SystemExit):
            self.log(f"{cell.key}: stopped; a restart redoes it from scratch in a fresh run folder")
            raise
        except Exception as exc:  # one broken cell must not stop the table: named, and retried on restart
            reason = str(exc).replace(f"{ROOT}/", "")  # repo-relative paths in what is committed
            self.log(f"{cell.key}: failed: {type(exc).__name__}: {reason}")
            (self.results / f"{cell.key}.skipped").write_text(f"failed: {reason}\n", encoding="utf-8")
            return
        if record is not None:
            self.save(cell, record)

    def run_cell(self, cell: Cell, done: dict[str, dict]) -> dict[str, Any] | None:
        env_spec = self.spec["envs"][cell.env]
        config = env_spec["config"]
        run_dir = fresh_run_dir(self.runs / cell.env, f"{cell.env}_{cell.method}_s{cell.seed}")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = run_dir.with_suffix(".log")
        base = self.overrides(cell, run_dir)
        if cell.method == SFT:
            stage, sft_checkpoint = [*RLFT, "sft", "--config", config, *base], None
        else:
            sft_checkpoint = done[f"{cell.env}__{SFT}__s{cell.seed}"]["sft_checkpoint"]
            extra = self.rl_overrides(cell, sft_checkpoint)
            check = [*RLFT, "validate", "--config", config, *base, *extra]
            rc, _, last = self.command(check, log_path)
            if rc == 2:
                self.log(f"{cell.key}: missing: rlft validate refused the method's config: {last}")
                (self.results / f"{cell.key}.skipped").write_text(
                    f"rlft validate: {last}\n", encoding="utf-8"
                )
                return None
            stage = [*RLFT, "train", "--config", config, *base, *extra]
        commands, seconds = (
            [stage, [*RLFT, "eval", "--config", str(run_dir.relative_to(ROOT) / "config.yaml")]],
            0.0,
        )
        self.log(f"{cell.key}: running in {run_dir.relative_to(ROOT)}")
        for args in commands:
            rc, took, last = self.command(args, log_path)
            seconds += took
            if rc != 0:
                raise RuntimeError(f"exit {rc} from rlft {args[1]} ({last}); see {log_path}")
        record = self.record(cell, run_dir, sft_checkpoint, commands, seconds)
        self.log(
            f"{cell.key}: done in {seconds / 60:.1f} min, test success greedy "
            f"{record['test']['greedy']['success']:.3f}, sampled {record['test']['sampled']['success']:.3f}"
        )
        return record

    def record(self, cell: Cell, run_dir: Path, sft_checkpoint, commands, seconds) -> dict[str, Any]:
        """What a finished cell keeps: test scores with CIs, references, budget, env steps, curve, provenance."""
        results = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
        policies = results["policies"]
        policy = policies[SFT if cell.method == SFT else "rl"]
        config = load_config(run_dir / "config.yaml")
        rl_rows = [r for r in read_metrics(run_dir) if r.get("stage") == "rl"]
        steps = [r["episode/env_steps_total"] for r in rl_rows if "episode/env_steps_total" in r]
        references = {
            "expert": policies.get("expert", {}).get(
                "greedy", policies.get("expert")
            ),  # measured, for the record
            "exact": reference_returns_on_test_seeds(config),  # what scores are normalised by
        }
        record = {
            "cell": {"env": cell.env, "method": cell.method, "seed": cell.seed},
            "must_fill": is_must_fill(self.spec, cell),
            "env": {"id": config.env.id, "kwargs": config.env.kwargs, "max_turns": config.env.max_turns},
            "run_dir": str(run_dir.relative_to(ROOT)),
            "sft_checkpoint": str((run_dir / "checkpoints" / SFT).relative_to(ROOT))
            if cell.method == SFT
            else sft_checkpoint,
            "test": {
                "seeds": results["seeds"],
                "greedy": policy["greedy"],
                "sampled": policy["sampled"],
                **({"decisions": policy["decisions"]} if "decisions" in policy else {}),  # rlft eval's audit
            },
            **selected_record(policies),
            "references": references,
            "env_steps": int(steps[-1]) if steps else 0,
            "curve": [
                [r["episode/env_steps_total"], r["eval/success"]]
                for r in rl_rows
                if "eval/success" in r and "episode/env_steps_total" in r
            ],
            "validation_curve": validation_curve(rl_rows),
            "wall_seconds": round(seconds, 1),
            "commit": commit_id(),
            "commands": [shlex.join(["rlft", *c[1:]]) for c in commands],
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if cell.method != SFT:
            method = self.spec["methods"][cell.method]
            budget = self.spec["envs"][cell.env]["budget_episodes"]
            record["budget"] = {
                "episodes": budget,
                "episodes_per_step": episodes_per_step(trainer_of(method)),
                "max_steps": max_steps_for(budget, trainer_of(method)),
            }
        return record

    def save(self, cell: Cell, record: dict[str, Any]) -> None:
        path = self.results / f"{cell.key}.json"
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")
        (self.results / f"{cell.key}.skipped").unlink(missing_ok=True)
        if self.commit:
            paths = [str(path.relative_to(ROOT)), str(self.progress.relative_to(ROOT))]
            for _ in range(10):  # others commit in this checkout too: wait out their index.lock
                if (
                    subprocess.run(["git", "add", *paths], cwd=ROOT).returncode == 0
                    and subprocess.run(
                        [
                            "git",
                            "commit",
                            "-q",
                            "-m",
                            f"learning table: cell {cell.key} finished",
                            "--",
                            *paths,
                        ],
                        cwd=ROOT,
                    ).returncode
                    == 0
                ):
                    break
                time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--spec", type=Path, default=SPEC, help="the YAML spec (default: learning_table.yaml)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the spec's smoke subset: tiny budgets, one seed"
    )
    parser.add_argument(
        "--table", action="store_true", help="print the tables of the finished cells, run nothing"
    )
    parser.add_argument(
        "--readme", action="store_true", help="rewrite README.md's results block, run nothing"
    )
    parser.add_argument("--commit", action="store_true", help="git-commit each finished cell's JSON")
    parser.add_argument(
        "--curves", action="store_true", help="plot validation curves (greedy, sampled) as PNGs, run nothing"
    )
    parser.add_argument(
        "--audit", action="store_true", help="audit the decisions of finished cells that lack it, run nothing"
    )
    args = parser.parse_args(argv)
    # SIGTERM (kill PID) raises SystemExit: subprocess.run then kills the running rlft command before exiting.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    spec = load_spec(args.spec, smoke=args.smoke)
    results = ROOT / spec["results_dir"]
    if not (args.table or args.readme or args.curves or args.audit):
        Runner(spec, commit=args.commit).run_all()
    records, reasons = finished(results), skipped(results)
    if args.audit:
        for key in backfill(results, records):
            print(f"audited {key}")
    if args.curves:
        for path in plot_validation_curves(spec, records):
            print(f"wrote {path.relative_to(ROOT)}")
    if args.readme:
        readme = ROOT / "README.md"
        block = readme_block(spec, records, reasons, args.smoke)
        write_text_atomic(readme, rewrite_block(readme.read_text(encoding="utf-8"), block))
        print(f"rewrote the {BEGIN} ... {END} block of {readme}")
    else:
        print(tables(spec, records, reasons))
    print(f"\ncurves: {compare_command(spec, records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

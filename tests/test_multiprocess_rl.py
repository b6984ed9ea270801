"""RL with two processes under `accelerate launch` on CPUs (gloo): FSDP2 training, and exact resume under DDP and FSDP2.

Each launch runs tests/multiprocess_worker.py on both ranks (configs/accelerate/cpu_2proc.yaml for DDP,
cpu_2proc_fsdp.yaml for FSDP2). The checks:

* FSDP2 (fast, one launch: GRPO then PPO, 2 steps each): the ranks were sharded (accelerate's FSDP, not DDP
  replicas); both ranks end with identical whole weights (gathered from the shards), every parameter moved (PPO's
  critic included), the generation copy the engine played with holds exactly the trained weights, and the
  final `checkpoints/rl/model.safetensors` is the gathered full state dict written once, on rank 0.
* Exact resume (slow, PPO: critic, KL controller and a checkpoint in the middle of a rollout batch), DDP and
  FSDP2: a run whose ranks end at step 1 just after its checkpoint (FSDP2: also at the last step, before the
  final save), and one SIGKILLed (the launcher and both ranks at once) at a seeded random point after its
  first checkpoint, each continued with `--resume`, equal the uninterrupted run: its rl rows of metrics.jsonl
  row for row (timings aside) and its final weights bit for bit.
* ZeRO-3 (fast, in process): RL under a DeepSpeed ZeRO-3 launch is refused with exit 2 naming FSDP2 and
  configs/accelerate/fsdp.yaml, before any model loads or anything is written (a pipeline before its SFT).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlft.algorithms.checkpoint_folders import latest_complete
from tests.test_resume import log_rows, weights

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
LAUNCHERS = {"ddp": "cpu_2proc.yaml", "fsdp2": "cpu_2proc_fsdp.yaml"}
LAUNCH_TIMEOUT_S = 480
MAX_STEPS = 4  # tests/multiprocess_worker.py's runs to resume: PPO, 4 steps, a checkpoint after each


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(parallelism: str, *worker_args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / LAUNCHERS[parallelism]),
        "--main_process_port",
        str(free_port()),
        "-m",
        "tests.multiprocess_worker",
        *worker_args,
    ]


def launch_env() -> dict[str, str]:
    # CUDA hidden: both ranks on the CPU (gloo), even on a GPU box.
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }


def launch(parallelism: str, *worker_args: str, expect_failure: bool = False) -> None:
    command = launch_command(parallelism, *worker_args)
    try:
        done = subprocess.run(
            command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"accelerate launch did not finish in {LAUNCH_TIMEOUT_S} s (ranks deadlocked in a collective?):\n"
            f"{(exc.stderr or b'')[-4000:]!r}"
        )
    assert (done.returncode != 0) == expect_failure, (
        f"accelerate launch exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


def rank_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- FSDP2 training
@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    launch("fsdp2", "both", str(out), "both")
    return out


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_fsdp2_ranks_end_identical_and_every_parameter_moves(fsdp2_run, algorithm):
    first, second = rank_records(fsdp2_run / "ranks" / algorithm)
    assert [(r["rank"], r["world_size"]) for r in (first, second)] == [(0, 2), (1, 2)]
    assert first["distributed_type"] == second["distributed_type"] == "DistributedType.FSDP"
    assert first["init"] == second["init"]
    assert first["final"].keys() == first["init"].keys()
    differing = [name for name in first["final"] if first["final"][name] != second["final"][name]]
    assert differing == [], f"parameters that differ between the ranks after training: {differing[:5]}"
    unchanged = [name for name in first["final"] if first["final"][name] == first["init"][name]]
    assert unchanged == [], f"parameters training did not change: {unchanged[:5]}"
    if algorithm == "ppo":  # the critic is sharded with the policy, and trained
        assert any(name.startswith("rlft_critic.") for name in first["final"])


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_fsdp2_generation_copy_holds_the_trained_weights(fsdp2_run, algorithm):
    for record in rank_records(fsdp2_run / "ranks" / algorithm):
        assert record["copy"] == record["final"], (
            "the engine would play with weights other than the trained ones"
        )
        # its memory cost per rank: one whole copy of the tiny policy's fp32 weights (+ PPO's critic)
        assert 0 < record["copy_nbytes"] < 1_000_000


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_fsdp2_saves_the_full_state_dict_in_rlfts_layout(fsdp2_run, algorithm):
    rl = fsdp2_run / algorithm / "checkpoints" / "rl"
    saved = load_file(rl / "model.safetensors")
    final = rank_records(fsdp2_run / "ranks" / algorithm)[0]["final"]
    policy_keys = [k for k in final if not k.startswith("rlft_critic.")]
    assert set(saved) <= set(policy_keys) and len(saved) >= len(policy_keys) - 1  # lm_head may be tied
    for name, tensor in saved.items():
        assert sha256(tensor) == final[name], name
    if algorithm == "ppo":
        assert (rl / "critic" / "value_head.safetensors").is_file()
    checkpoint = fsdp2_run / algorithm / "trainer" / "rl" / "checkpoint-2"
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "MANIFEST.json").is_file()
    assert load_file(checkpoint / "model.safetensors").keys() == saved.keys()


# ------------------------------------------------------------------------------------------- exact resume
_straight: dict[str, Path] = {}


def straight_run(tmp_path_factory, parallelism: str) -> Path:
    """The uninterrupted run (once per parallelism)."""
    if parallelism not in _straight:
        out = tmp_path_factory.mktemp(f"straight_{parallelism}")
        launch(parallelism, "train", str(out), "ppo")
        _straight[parallelism] = out
    return _straight[parallelism]


def assert_same_run(straight: Path, resumed: Path) -> None:
    rows_a, rows_b = log_rows(straight / "ppo", "metrics.jsonl"), log_rows(resumed / "ppo", "metrics.jsonl")
    assert [r["step"] for r in rows_a if "loss" in r] == list(range(1, MAX_STEPS + 1))
    assert len(rows_b) == len(rows_a)
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_b == row_a, f"step {row_a.get('step')}"
    weights_a, weights_b = weights(straight / "ppo"), weights(resumed / "ppo")
    assert weights_b.keys() == weights_a.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parallelism", "stop"),
    [
        ("ddp", 1),  # step 1 ends in the middle of PPO's rollout batch: its unconsumed minibatch is resumed
        ("fsdp2", 1),
        ("fsdp2", MAX_STEPS),  # the last step: the resumed run trains none and saves the final policy
    ],
)
def test_stopped_at_a_step_and_resumed_equals_the_straight_run(tmp_path_factory, parallelism, stop):
    straight = straight_run(tmp_path_factory, parallelism)
    out = tmp_path_factory.mktemp(f"stopped_{parallelism}_{stop}")
    launch(
        parallelism, "stop", str(out), "ppo", str(stop), expect_failure=True
    )  # its ranks end with os._exit
    assert latest_complete(out / "ppo" / "trainer" / "rl").name == f"checkpoint-{stop}"
    assert not (out / "ppo" / "checkpoints" / "rl").exists()
    launch(parallelism, "resume", str(out), "ppo")
    assert_same_run(straight, out)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp2"])
def test_sigkilled_at_a_random_point_and_resumed_equals_the_straight_run(tmp_path_factory, parallelism):
    straight = straight_run(tmp_path_factory, parallelism)
    out = tmp_path_factory.mktemp(f"killed_{parallelism}")
    checkpoints = out / "ppo" / "trainer" / "rl"
    job = subprocess.Popen(
        launch_command(parallelism, "train", str(out), "ppo"),
        cwd=REPO,
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the launcher and both ranks in one process group, killed together
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (checkpoints / "checkpoint-1" / "COMPLETE").is_file():
            assert job.poll() is None, f"the run ended (exit {job.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within the launch timeout"
            time.sleep(0.05)
        # anywhere in the next steps (rollout, update, save; a step takes a few seconds here)
        time.sleep(random.Random(f"kill-{parallelism}").uniform(0.0, 6.0))
        assert job.poll() is None, "the run finished before the kill: nothing was resumed"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert latest_complete(checkpoints) is not None  # (rotation may have removed checkpoint-1 by then)
    launch(parallelism, "resume", str(out), "ppo")
    assert_same_run(straight, out)


# ---------------------------------------------------------------------------------------------------- ZeRO-3
ZERO3_LAUNCH = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_rl_under_zero3_exits_2_naming_fsdp2_before_anything_loads(command, tmp_path, monkeypatch):
    """The command as `rlft.cli` runs it once the config is checked (building the trainer configs under a real
    ZeRO-3 launch needs deepspeed installed, which it is not here)."""
    from rlft.errors import ConfigError
    from rlft.stages import rl as stage_rl
    from rlft.stages import sft as stage_sft
    from rlft.tools.commands import run_command
    from tests.multiprocess_worker import make_config

    config = make_config(tmp_path / "runs", "grpo")

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stage_rl, "load_trainable", trap)
    monkeypatch.setattr(stage_rl, "ensure_base_checkpoint", trap)
    monkeypatch.setattr(stage_sft, "run_sft", trap)
    for name, value in ZERO3_LAUNCH.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        run_command(command, config)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "ZeRO-3" in message and "FSDP2" in message and "configs/accelerate/fsdp.yaml" in message
    assert not config.run_dir.exists()
    with pytest.raises(ConfigError, match="FSDP2"):  # the stage itself, called from Python (a sweep trial)
        stage_rl.run_rl(config)
    assert not config.run_dir.exists()


def test_zero3_is_read_from_the_launch_or_the_deepspeed_json(tmp_path, monkeypatch):
    from rlft.errors import ConfigError
    from rlft.runtime.distributed import deepspeed_zero_stage, refuse_zero3_rl

    assert deepspeed_zero_stage() is None
    refuse_zero3_rl()  # no DeepSpeed: nothing refused
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert deepspeed_zero_stage(str(ds_json)) == 3  # rl.trainer.deepspeed
    with pytest.raises(ConfigError, match="FSDP2"):
        refuse_zero3_rl({"zero_optimization": {"stage": 3}})
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert deepspeed_zero_stage() == 2
    refuse_zero3_rl()  # ZeRO-2 replicates the weights: RL runs
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds_json))  # the launch's JSON wins
    assert deepspeed_zero_stage() == 3


# ------------------------------------------------------------------------------------ the generation copy
def test_generation_copy_runs_the_class_forward_and_syncs_every_weight(frozen_lake_policy):
    import types

    from rlft.algorithms.generation_copy import GenerationCopy

    _, model, _ = frozen_lake_policy
    trained = copy.deepcopy(model)
    original_forward = trained.forward
    # as TRL patches the policy: an instance forward closing over the original module's bound forward
    trained.forward = types.MethodType(lambda self, *a, **k: original_forward(*a, **k), trained)
    generation = GenerationCopy(trained, synced_step=0)
    assert "forward" not in generation.model.__dict__
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert not torch.equal(generation.model(ids).logits, trained(ids).logits)
    generation.sync(trained, step=1)
    assert generation.current(1) and not generation.current(0)
    assert torch.equal(generation.model(ids).logits, trained(ids).logits)
    # its memory cost: the policy's fp32 parameters once (a tied embedding once), plus its small buffers
    parameter_bytes = sum(p.numel() * p.element_size() for p in trained.parameters())
    assert parameter_bytes <= generation.nbytes < 1.1 * parameter_bytes


def test_untied_state_dict_writes_a_tied_weight_once(frozen_lake_policy):
    from rlft.algorithms.generation_copy import untied_state_dict

    _, model, _ = frozen_lake_policy
    assert model.config.tie_word_embeddings
    gathered = {k: v.clone() for k, v in model.state_dict().items()}  # as FSDP2's gather: separate tensors
    assert "lm_head.weight" in gathered
    untied = untied_state_dict(model, gathered)
    assert set(gathered) - set(untied) == {"lm_head.weight"}
    assert untied_state_dict(model, None) is None

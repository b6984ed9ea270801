"""rlft under `accelerate launch`: two CPU processes train GRPO and PPO, and the configs in configs/accelerate/.

One launch (tests/accelerate_worker.py on each rank, about 40 s on 2 cores) runs sft -> GRPO -> eval and PPO
on a tiny policy. The checks: both ranks hold identical parameters before and after several optimizer steps
(PPO's critic included), and every parameter moved; each rank played its own seeds; the metrics in
metrics.jsonl are the whole job's (env steps summed over ranks, TRL's reward the mean over both ranks'
episodes), written once; only the main process writes the run directory and evaluates.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
# The worker's settings (tests/accelerate_worker.py): optimizer steps per algorithm.
MAX_STEPS = {"grpo": 3, "ppo": 4}
LAUNCH_TIMEOUT_S = 480


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("accelerate")
    # CUDA hidden: cpu_2proc.yaml's torchrun launcher then puts both ranks on the CPU (gloo), even on a GPU box.
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / "cpu_2proc.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "tests.accelerate_worker",
        str(out),
    ]
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"accelerate launch did not finish in {LAUNCH_TIMEOUT_S} s (a rank waiting at a barrier the "
            f"other never reaches?):\n{(exc.stderr or b'')[-4000:]!r}"
        )
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


def rank_records(out: Path, name: str) -> list[dict]:
    paths = sorted((out / "ranks" / name).glob("rank*.json"))
    return [json.loads(p.read_text()) for p in paths]


def rl_records(out: Path, algorithm: str) -> list[dict]:
    lines = (out / algorithm / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == "rl"]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_replicas_stay_identical_and_every_parameter_moves(launched, algorithm):
    ranks = rank_records(launched, algorithm)
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    first, second = ranks
    assert first["init"] == second["init"]
    assert first["final"].keys() == first["init"].keys()
    differing = [name for name in first["final"] if first["final"][name] != second["final"][name]]
    assert differing == [], f"parameters that differ between the ranks after training: {differing[:5]}"
    unchanged = [name for name in first["final"] if first["final"][name] == first["init"][name]]
    assert unchanged == [], f"parameters training did not change: {unchanged[:5]}"
    if algorithm == "ppo":  # the critic is part of the replicated module, so DDP keeps it in sync too
        assert any(name.startswith("rlft_critic.") for name in first["final"])


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_each_rank_plays_its_own_seeds(launched, algorithm):
    first, second = rank_records(launched, algorithm)
    assert len(first["rollouts"]) == len(second["rollouts"]) >= 2
    for mine, theirs in zip(first["rollouts"], second["rollouts"]):
        assert mine["seeds"] and theirs["seeds"]
        assert not set(mine["seeds"]) & set(theirs["seeds"]), "TRL's sampler gives each rank its own prompts"


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_logged_metrics_are_gathered_over_both_ranks(launched, algorithm):
    first, second = rank_records(launched, algorithm)
    records = rl_records(launched, algorithm)
    # one record per optimizer step: rank 1 wrote nothing
    assert [r["step"] for r in records if "loss" in r] == list(range(1, MAX_STEPS[algorithm] + 1))
    rollout_logs = [
        r for r in records if "reward" in r
    ]  # TRL logs `reward` at the step that played a rollout
    assert len(rollout_logs) == len(first["rollouts"])
    env_steps = 0
    for log, mine, theirs in zip(rollout_logs, first["rollouts"], second["rollouts"]):
        env_steps += sum(mine["turns"]) + sum(theirs["turns"])
        assert mine["env_steps_total"] == theirs["env_steps_total"] == env_steps
        assert log["episode/env_steps_total"] == env_steps
        returns = mine["returns"] + theirs["returns"]
        assert log["reward"] == pytest.approx(sum(returns) / len(returns), abs=1e-5)


def test_stage_trackers_write_on_the_main_process_only(launched):
    records = [json.loads(line) for line in (launched / "grpo" / "metrics.jsonl").read_text().splitlines()]
    demo_stats = [
        r for r in records if r["stage"] == "sft" and "demos/episodes" in r
    ]  # logged by run_sft itself
    assert len(demo_stats) == 1
    assert [r["step"] for r in records if r["stage"] == "sft" and "loss" in r] == list(range(1, 9))


def test_sft_validates_and_keeps_its_best_step_under_two_processes(launched):
    records = [json.loads(line) for line in (launched / "grpo" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["stage"] == "sft" and "eval_success" in r]
    assert [r["step"] for r in validations] == [4, 8]  # sft.eval_every_steps, logged once (the main process)
    selection = json.loads((launched / "grpo" / "checkpoints" / "sft" / "selection.json").read_text())
    best = max(validations, key=lambda r: r["eval_selection_score"])
    assert selection["step"] == best["step"] and selection["last_step"] == 8


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_main_process_saves_the_trained_replica(launched, algorithm):
    run_dir = launched / algorithm
    assert (run_dir / "config.yaml").is_file()
    rl = run_dir / "checkpoints" / "rl"
    assert not (rl / "training_args.bin").exists()
    saved = load_file(rl / "model.safetensors")
    final = rank_records(launched, algorithm)[0]["final"]
    policy_keys = [k for k in final if not k.startswith("rlft_critic.")]
    assert set(saved) <= set(policy_keys) and len(saved) >= len(policy_keys) - 1  # lm_head may be tied
    for name, tensor in saved.items():
        assert hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest() == final[name], name
    if algorithm == "ppo":
        assert (rl / "critic" / "value_head.safetensors").is_file()


def test_evaluation_runs_on_the_main_process_only(launched):
    main, other = rank_records(launched, "eval")
    assert set(main["policies"]) == {"untrained", "sft", "rl", "expert"}
    assert other["policies"] == {} and "main process" in other["note"]
    saved = json.loads((launched / "grpo" / "eval.json").read_text())
    assert saved["policies"].keys() == main["policies"].keys()
    eval_logs = [r for r in rl_records(launched, "grpo") if "eval/success" in r]
    assert [r["step"] for r in eval_logs] == [
        0,
        2,
    ]  # held-out eval during RL (eval.every_steps = 2), logged once


# ---------------------------------------------------------------------------------------- configs/accelerate
# What each shipped config must be; a new file needs an entry here.
EXPECTED = {
    "single_gpu.yaml": {"distributed_type": "NO", "launcher": "simple"},
    "multi_gpu.yaml": {"distributed_type": "MULTI_GPU", "launcher": "multi_gpu"},
    "fsdp.yaml": {"distributed_type": "FSDP", "launcher": "fsdp"},
    "deepspeed_zero2.yaml": {"distributed_type": "DEEPSPEED", "launcher": "deepspeed", "zero_stage": 2},
    "deepspeed_zero3.yaml": {"distributed_type": "DEEPSPEED", "launcher": "deepspeed", "zero_stage": 3},
    "cpu_2proc.yaml": {"distributed_type": "MULTI_GPU", "launcher": "multi_gpu", "num_processes": 2},
    "cpu_2proc_fsdp.yaml": {"distributed_type": "FSDP", "launcher": "fsdp", "num_processes": 2},
}


def test_accelerate_configs_folder():
    assert {p.name for p in ACCELERATE_CONFIGS.glob("*.y*ml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_is_consistent(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = ACCELERATE_CONFIGS / name
    expected = EXPECTED[name]
    header = path.read_text(encoding="utf-8").split("\ncompute_environment", 1)[0]
    assert header.startswith("# ") and "Hardware:" in header
    command = "sft" if name == "deepspeed_zero3.yaml" else "train"  # RL is refused under ZeRO-3 (use FSDP2)
    assert (
        f"accelerate launch --config_file configs/accelerate/{name} -m rlft.cli {command} --config " in header
    )

    config = load_config_from_file(str(path))  # what `accelerate launch --config_file` reads
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == expected["distributed_type"]
    assert not config.use_cpu  # use_cpu makes `accelerate launch` start a single process
    assert config.num_machines == 1 and config.machine_rank == 0
    assert config.num_processes % config.num_machines == 0
    assert config.mixed_precision in ("no", "bf16")
    if config.distributed_type.value == "NO":
        assert config.num_processes == 1
    else:
        assert config.num_processes == expected.get("num_processes", 8)
    if name.startswith("cpu_2proc"):
        assert config.mixed_precision == "no"

    fsdp, deepspeed = config.fsdp_config, config.deepspeed_config
    assert bool(fsdp) == (expected["distributed_type"] == "FSDP")
    assert bool(deepspeed) == (expected["distributed_type"] == "DEEPSPEED")
    if fsdp:
        assert fsdp["fsdp_version"] == 2
        # the final save gathers one from_pretrained folder; sharded state dicts would not be one
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # rlft loads the policy itself on every rank
    if deepspeed:
        assert deepspeed["zero_stage"] == expected["zero_stage"]
        assert "deepspeed_config_file" not in deepspeed  # the settings are in the file, nothing else to ship
        assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == "none"
        # ZeRO-3 shards the weights: without the 16-bit gather a checkpoint is no from_pretrained folder
        assert deepspeed.get("zero3_save_16bit_model", False) == (expected["zero_stage"] == 3)
        assert deepspeed["zero3_init_flag"] == (expected["zero_stage"] == 3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_reads_the_config_as_intended(name):
    """`accelerate launch`'s own argument resolution: which launcher, how many processes, which precision."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE_CONFIGS / name
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "-m", "rlft.cli", "train", "--config", "c.yaml"])
    args, _, _ = _validate_launch_command(args)
    launcher = (
        "deepspeed"
        if args.use_deepspeed
        else "fsdp"
        if args.use_fsdp
        else "multi_gpu"
        if args.multi_gpu
        else "simple"
    )
    assert launcher == EXPECTED[name]["launcher"]
    assert not args.cpu
    config = json.loads(json.dumps(vars(args), default=str))
    assert int(config["num_processes"]) == (
        1 if launcher == "simple" else EXPECTED[name].get("num_processes", 8)
    )
    assert config["dynamo_backend"].lower() == "no"
    if launcher == "deepspeed":
        assert int(config["zero_stage"]) == EXPECTED[name]["zero_stage"]
    if launcher == "fsdp":
        assert str(config["fsdp_version"]) == "2"

"""The `vllm` generation backend (issue 13): token-exact episodes, weight sync, truncated importance sampling.

Two halves. The first runs everywhere (the main venv has no vLLM): the backend's turn loop against a fake engine
that samples with the HF policy itself, so every context it is sent, every token and log-prob can be checked
exactly; the weight pushes through a real GRPO run (only after optimizer steps that changed the weights); the
importance correction's metrics; `rollout.backend: vllm` without vLLM (exit 2 before any model loads).

The second (`-m vllm`) needs vLLM: `bash scripts/setup_vllm.sh`, then
`.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_backend.py` (.ci/run does both). It checks vLLM's
episodes against an HF forward (1e-5), that its log-probs follow the trainer's weights after a push, GRPO and PPO
smoke runs with `rollout.backend=vllm`, and a resume.
"""

from __future__ import annotations

import copy
import gc
import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlft import cli, stages
from rlft.algorithms import vllm_sync
from rlft.algorithms.checkpoint_folders import latest_complete
from rlft.core.losses import truncated_importance_weights
from rlft.models.critic import ATTRIBUTE as CRITIC_ATTRIBUTE
from rlft.rollout import vllm_backend
from rlft.rollout.engine import RolloutEngine, SamplingSettings
from rlft.rollout.hf_backend import sample_next_tokens
from rlft.rollout.turn_format import PlainFormat
from rlft.rollout.vllm_backend import EngineOptions, VLLMBackend, policy_weights
from rlft.stages.common import env_factory
from tests.conftest import TINY_MODEL, tiny_config
from tests.test_nonfinite import Snapshots, changed, logged
from tests.test_resume import KillAt, Killed, make_config


# ------------------------------------------------------------------------------------------- a fake vLLM engine
class FakeLLM:
    """vLLM's `LLM.generate` in miniature, on a copy of an HF policy: each request's whole context is read with
    an uncached forward per token (so what it is sent must be exactly the episode so far), sampled with the
    request's seed. `logprob_shift` is added to every reported log-prob (a kernel mismatch, for the importance
    correction). `live` is the trainer's model: every generate call records whether the copy equals it."""

    def __init__(self, model, logprob_shift: float = 0.0):
        self.copy = copy.deepcopy(model).eval()
        if hasattr(self.copy, CRITIC_ATTRIBUTE):
            delattr(self.copy, CRITIC_ATTRIBUTE)
        self.live = model
        self.shift = logprob_shift
        self.requests: list[list[list[int]]] = []  # per generate call, the contexts sent
        self.in_sync: list[bool] = []
        self.pushes = 0

    def load(self, weights) -> None:
        self.copy.load_state_dict(dict(weights))
        self.pushes += 1

    def synced(self) -> bool:
        live = dict(policy_weights(self.live))
        return all(torch.equal(live[name], tensor) for name, tensor in self.copy.state_dict().items())

    @torch.no_grad()
    def generate(self, requests, params, use_tqdm=False):
        self.requests.append([list(r["prompt_token_ids"]) for r in requests])
        self.in_sync.append(self.synced())
        outputs = []
        for request, p in zip(requests, params):
            context, tokens, logprobs = list(request["prompt_token_ids"]), [], []
            generator = torch.Generator().manual_seed(p.seed)
            while len(tokens) < p.max_tokens and not (tokens and tokens[-1] in p.stop_token_ids):
                logits = self.copy(torch.tensor([context])).logits[:, -1].float()
                token, logprob = sample_next_tokens(logits, p.sampling, generator)
                tokens.append(int(token))
                logprobs.append({int(token): SimpleNamespace(logprob=float(logprob) + self.shift)})
                context.append(int(token))
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, logprobs=logprobs)]))
        return outputs


def fake_params(sampling, budget, stop_ids, seed):
    return SimpleNamespace(sampling=sampling, max_tokens=budget, stop_token_ids=set(stop_ids), seed=seed)


@pytest.fixture
def fake_vllm(monkeypatch):
    """vLLM replaced by `FakeLLM` wherever rlft builds or feeds an engine. Returns `.built` (the engines, in
    order) and `.shift` (the log-prob shift the next engine gets)."""
    fakes = SimpleNamespace(built=[], shift=0.0)

    def build(model, options):
        fakes.built.append(FakeLLM(model, logprob_shift=fakes.shift))
        return fakes.built[-1]

    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_backend, "build_llm", build)
    monkeypatch.setattr(vllm_backend, "push_weights", lambda llm, weights: llm.load(weights))
    monkeypatch.setattr(vllm_backend, "sampling_params", fake_params)
    monkeypatch.setattr(vllm_backend, "_SHARED", {})
    return fakes


def action_starts(episode, fmt: PlainFormat) -> list[int]:
    """Where each action starts in the completion: 0, then after each action's end and its observation."""
    return [0] + [
        end + 1 + len(fmt.observation_ids(obs)) for end, obs in zip(episode.action_ends, episode.observations)
    ]


def fresh_logprobs(model, episode, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) of every completion token under a forward pass of `model`, (T,)."""
    ids = torch.tensor([episode.prompt_ids + episode.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[len(episode.prompt_ids) - 1 :]


def assert_token_exact(episodes, model, fmt: PlainFormat, max_action_tokens: int, atol: float) -> None:
    """Invariants 1-2: the mask is 1 exactly on each action's tokens, each action ends at a stop id or the budget
    and nowhere earlier, and the behaviour log-probs equal a fresh forward of the same weights."""
    for episode in episodes:
        assert episode.failure is None
        for start, end in zip(action_starts(episode, fmt), episode.action_ends):
            action = episode.completion_ids[start : end + 1]
            assert episode.mask[start : end + 1] == [1] * len(action)
            assert action[-1] in fmt.stop_ids or len(action) == max_action_tokens
            assert not any(t in fmt.stop_ids for t in action[:-1])
        mask = torch.tensor(episode.mask, dtype=torch.bool)
        assert int(mask.sum()) == sum(
            e + 1 - s for s, e in zip(action_starts(episode, fmt), episode.action_ends)
        )
        fresh = fresh_logprobs(model, episode)[mask]
        assert torch.allclose(fresh, torch.tensor(episode.logprobs)[mask], atol=atol, rtol=0.0)


def vllm_engine(config, model, tokenizer, backend, **settings) -> RolloutEngine:
    return RolloutEngine(
        model,
        tokenizer,
        PlainFormat(tokenizer),
        env_factory(config),
        SamplingSettings(**{"max_action_tokens": 3, "max_turns": 5, **settings}),
        backend=backend,
    )


# ------------------------------------------------------------------------------------------- everywhere
def test_the_turn_loop_sends_each_episode_so_far_and_records_what_was_sampled(frozen_lake_policy, fake_vllm):
    """One generate call per turn for every live row; each context sent is exactly the episode's prompt plus its
    completion up to the start of an action (no decode / re-encode), once per action; the episodes keep the token
    invariants with the engine's log-probs."""
    config, model, tokenizer = frozen_lake_policy
    fmt = PlainFormat(tokenizer)
    engine = vllm_engine(config, model, tokenizer, VLLMBackend(EngineOptions(max_model_len=256)))
    episodes = engine.play(list(range(6)), generator=torch.Generator().manual_seed(3), batch_size=4)
    llm = fake_vllm.built[0]
    sent = sorted(tuple(context) for call in llm.requests for context in call)
    expected = sorted(
        tuple(e.prompt_ids + e.completion_ids[:start]) for e in episodes for start in action_starts(e, fmt)
    )
    assert sent == expected
    turns = [max(e.num_turns for e in episodes[:4]), max(e.num_turns for e in episodes[4:])]
    assert engine.stats["rollout/forwards"] == len(llm.requests) == sum(turns)
    assert_token_exact(episodes, model, fmt, max_action_tokens=3, atol=1e-5)
    assert {len(a) for a in [e.action_ends for e in episodes]} != {0}


def test_the_same_generator_state_samples_the_same_episodes(frozen_lake_policy, fake_vllm):
    config, model, tokenizer = frozen_lake_policy
    backend = VLLMBackend(EngineOptions(max_model_len=256))
    play = [
        vllm_engine(config, model, tokenizer, backend).play(
            list(range(4)), generator=torch.Generator().manual_seed(11)
        )
        for _ in range(2)
    ]
    assert [e.completion_ids for e in play[0]] == [e.completion_ids for e in play[1]]


def test_weights_are_pushed_once_then_only_after_a_change_or_for_another_model(frozen_lake_policy, fake_vllm):
    config, model, tokenizer = frozen_lake_policy
    backend = VLLMBackend(EngineOptions(max_model_len=256))
    prompts, sampling = [[1, 2]], SamplingSettings().sampling()
    backend.start(model, prompts, sampling).close()
    backend.start(model, prompts, sampling).close()
    assert backend.pushes == 1  # the first session loads the policy's weights, whatever the folder held
    backend.weights_changed()
    backend.start(model, prompts, sampling).close()
    backend.start(model, prompts, sampling).close()
    assert backend.pushes == 2
    backend.start(copy.deepcopy(model), prompts, sampling).close()
    assert backend.pushes == 3 and len(fake_vllm.built) == 1  # one engine, whatever the model


def test_a_ppo_critic_attached_to_the_policy_is_not_pushed(frozen_lake_policy):
    _, model, _ = frozen_lake_policy
    model = copy.deepcopy(model)
    model.add_module(CRITIC_ATTRIBUTE, torch.nn.Linear(2, 1))
    names = [name for name, _ in policy_weights(model)]
    assert names and not any(name.startswith(CRITIC_ATTRIBUTE) for name in names)
    assert set(names) == set(model.state_dict()) - {f"{CRITIC_ATTRIBUTE}.weight", f"{CRITIC_ATTRIBUTE}.bias"}


def test_truncated_importance_weights_by_hand():
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3], [0.1, 0.6, 0.6, 0.6]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.9, 0.1], [0.4, 0.2, 0.3, 0.6]]))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    weights, metrics = truncated_importance_weights(logprobs, behaviour, mask, cap=2.5)
    # ratios on loss tokens: 2, 0.5, 1 | 0.25, 3 -> truncated at 2.5; off the mask: weight 1 whatever the ratio
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 1.0, 1.0], [0.25, 2.5, 1.0, 1.0]]))
    assert metrics["rollout/is_ratio_mean"].item() == pytest.approx((2 + 0.5 + 1 + 0.25 + 3) / 5)
    assert metrics["rollout/is_clipped_frac"].item() == pytest.approx(1 / 5)


def test_grpo_pushes_weights_after_each_real_step_and_never_after_a_skipped_one(
    tmp_path, monkeypatch, fake_vllm
):
    """A GRPO run on the fake engine: hand-made advantages make step 2 a step without signal (skipped). The
    engine gets the trainer's weights before every rollout (each generate call saw them equal) and is pushed the
    first time and then once per rollout that follows a step that changed them, never for the skipped one.

    The fake engine also reports log-probs 0.1 lower than the trainer's: pi_train / pi_vllm = e^0.1 on every
    token, above the importance correction's cap of 1.05, so every loss token is truncated."""
    from tests.test_learning_signal import HAND_MADE, ResumableTrainerMixin

    fake_vllm.shift = -0.1
    config = make_config(tmp_path, "grpo")
    config.rollout.backend = "vllm"
    config.rollout.vllm.importance_correction.enabled = True
    config.rollout.vllm.importance_correction.cap = 1.05
    config.rl.trainer.update({"max_steps": 3, "save_steps": 100, "beta": 0.0})
    original = ResumableTrainerMixin.on_training_minibatch

    def hand_made(self, inputs):
        inputs["advantages"] = torch.tensor(
            HAND_MADE[self.state.global_step], dtype=inputs["advantages"].dtype
        )
        return original(self, inputs)

    monkeypatch.setattr(ResumableTrainerMixin, "on_training_minibatch", hand_made)
    snapshots = Snapshots()
    stages.run_rl(config, callbacks=[snapshots])
    (llm,) = fake_vllm.built
    moved = [changed(snapshots.params[s - 1], snapshots.params[s]) for s in (1, 2, 3)]
    assert moved == [True, False, True]
    assert all(llm.in_sync) and len(llm.requests) > 0
    # Rollouts before steps 1, 2, 3 (one per step: steps_per_generation 1): pushes before 1 (first), before 2
    # (step 1 moved) and not before 3 (step 2 was skipped).
    assert llm.pushes == 2
    assert logged(config, "signal/skipped_steps_total") == [0.0, 1.0, 1.0]
    assert_truncated_everywhere(config, rollouts=3)


def assert_truncated_everywhere(config, rollouts: int) -> None:
    """Every rollout's ratio is e^0.1 (the fake's shift), truncated on every loss token (logged at its step)."""
    ratios = logged(config, "rollout/is_ratio_mean")
    assert ratios == pytest.approx([torch.e**0.1] * rollouts, rel=1e-4)
    assert logged(config, "rollout/is_clipped_frac") == pytest.approx([1.0] * rollouts)


def test_ppo_with_the_importance_correction_starts_its_ratio_from_the_trainers_log_probs(tmp_path, fake_vllm):
    """The fake engine's log-probs are 0.1 low (as above); with the correction PPO's old log-probs are the
    trainer's own, so its first minibatch has ratio 1 (without it the ratio would be e^0.1)."""
    fake_vllm.shift = -0.1
    config = make_config(tmp_path, "ppo")
    config.rollout.backend = "vllm"
    config.rollout.vllm.importance_correction.enabled = True
    config.rollout.vllm.importance_correction.cap = 1.05
    config.rl.trainer.update({"max_steps": 2, "save_steps": 100})
    stages.run_rl(config)
    assert_truncated_everywhere(config, rollouts=1)  # 2 epochs x 2 minibatches per rollout batch
    assert logged(config, "ppo/ratio_mean")[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("ppo", [False, True])
def test_the_correction_weights_each_tokens_advantage_by_hand(ppo):
    """`vllm_sync.correct_behaviour_mismatch` on a scored batch of 2 rows x 3 completion tokens: the truncated weights
    multiply the advantages token by token (GRPO's per-episode ones spread first); PPO's old log-probs become the
    trainer's. Env tokens (mask 0) keep weight 1."""
    trainer_logps = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.6, 0.6]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.1], [0.1, 0.6, 0.3]]))
    scored = {
        "completion_mask": torch.ones(2, 3),
        "old_per_token_logps": trainer_logps,
        ("env_mask" if ppo else "tool_mask"): torch.tensor([[1, 1, 0], [1, 1, 1]]),
    }
    if ppo:
        scored |= {
            "old_logprobs": behaviour,
            "advantages": torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]),
        }
    else:
        scored |= {"sampling_per_token_logps": behaviour, "advantages": torch.tensor([1.0, -2.0])}
    trainer = SimpleNamespace(
        _metrics={"train": defaultdict(list)},
        accelerator=SimpleNamespace(gather=lambda x: x),
        episode_rollout=SimpleNamespace(engine=SimpleNamespace(backend=SimpleNamespace(importance_cap=2.5))),
    )
    vllm_sync.correct_behaviour_mismatch(trainer, scored)
    # ratios 2, 0.5, (9: env token) | 3 -> 2.5, 1, 2 -> weights 2, 0.5, 1 | 2.5, 1, 2
    expected = torch.tensor([[2.0, 0.5, 1.0], [-5.0, -2.0, -4.0]])
    assert torch.allclose(scored["advantages"], expected)
    if ppo:
        assert torch.equal(scored["old_logprobs"], trainer_logps)
    logged_metrics = trainer._metrics["train"]
    assert logged_metrics["rollout/is_ratio_mean"] == pytest.approx([(2 + 0.5 + 3 + 1 + 2) / 5])
    assert logged_metrics["rollout/is_clipped_frac"] == pytest.approx([1 / 5])


def test_the_vllm_backend_without_vllm_exits_2_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stages.common, "load_policy", trap)
    config = make_config(tmp_path, "grpo")
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    code = cli.main(["train", "--config", str(path), "rollout.backend=vllm"])
    err = capsys.readouterr().err
    assert code == 2, err
    for part in (
        "rollout.backend",
        "vLLM is not installed",
        '.[vllm]"',
        "scripts/setup_vllm.sh",
        "backend: hf",
    ):
        assert part in err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.lora.r=4"], "key 'rollout.backend' = 'vllm' with model.lora"),
        (["rollout.top_p=0.9"], "key 'rollout.top_p' = 0.9 with rollout.backend: vllm"),
    ],
)
def test_what_the_vllm_backend_cannot_do_exits_2(tmp_path, monkeypatch, capsys, overrides, expected):
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    config = make_config(tmp_path, "grpo")
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    code = cli.main(["validate", "--config", str(path), "rollout.backend=vllm", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err


# ------------------------------------------------------------------------------------------- with vLLM
@pytest.fixture(scope="module")
def real_vllm():
    pytest.importorskip("vllm")


# vLLM's CPU attention takes head sizes of 32 and more: the test model's 32 wide, in one head.
VLLM_TINY = {"tiny": {**TINY_MODEL["tiny"], "num_heads": 1}}


@pytest.fixture
def saved_policy(real_vllm, tmp_path):
    """A tiny FrozenLake policy saved and reloaded, so that vLLM can build its engine from its folder."""
    from transformers import AutoModelForCausalLM

    from rlft.models.policy import load_policy, save_policy

    config = tiny_config(model=copy.deepcopy(VLLM_TINY))
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    save_policy(model, tokenizer, tmp_path / "policy")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.float32).eval()
    yield config, loaded, tokenizer
    gc.collect()


@pytest.mark.vllm
def test_vllm_episodes_are_token_exact_against_an_hf_forward(saved_policy):
    config, model, tokenizer = saved_policy
    backend = VLLMBackend(EngineOptions(max_model_len=512))
    engine = vllm_engine(config, model, tokenizer, backend, temperature=1.0)
    episodes = engine.play(list(range(8)), generator=torch.Generator().manual_seed(0))
    assert_token_exact(episodes, model, PlainFormat(tokenizer), max_action_tokens=3, atol=1e-5)
    assert engine.stats["rollout/forwards"] == max(e.num_turns for e in episodes)


@pytest.mark.vllm
def test_vllm_log_probs_follow_the_trainers_weights_after_a_push(saved_policy):
    config, model, tokenizer = saved_policy
    backend = VLLMBackend(EngineOptions(max_model_len=512))
    engine = vllm_engine(config, model, tokenizer, backend)
    engine.play(list(range(2)), generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(model)
    with torch.no_grad():  # an "optimizer step": every weight moves
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    backend.weights_changed()  # what the trainer's optimizer step does (rlft.algorithms.vllm_sync)
    episodes = engine.play(list(range(6)), generator=torch.Generator().manual_seed(1))
    assert backend.pushes == 2
    assert_token_exact(episodes, model, PlainFormat(tokenizer), max_action_tokens=3, atol=1e-5)
    stale = torch.cat([fresh_logprobs(before, e)[torch.tensor(e.mask, dtype=torch.bool)] for e in episodes])
    assert not torch.allclose(
        stale, torch.tensor([lp for e in episodes for lp, m in zip(e.logprobs, e.mask) if m])
    )


def vllm_run_config(tmp_path, algorithm: str):
    config = make_config(tmp_path, algorithm)
    config.rollout.backend = "vllm"
    config.model.tiny.num_heads = VLLM_TINY["tiny"]["num_heads"]
    # PPO: 2 minibatches of one epoch per rollout batch, so 4 steps play 2 rollouts (GRPO: one per step)
    config.rl.trainer.update(
        {"max_steps": 4, "num_iterations": 1} if algorithm == "ppo" else {"max_steps": 3}
    )
    return config


@pytest.mark.vllm
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_training_run_with_the_vllm_backend(tmp_path, real_vllm, monkeypatch, algorithm):
    """GRPO / PPO smoke runs: every trainable parameter moves, the engine's log-probs are those of the weights
    each rollout was played with (the ratio of PPO's first minibatch is 1 within the kernels' tolerance)."""
    monkeypatch.setattr(vllm_backend, "_SHARED", {})
    config = vllm_run_config(tmp_path, algorithm)
    snapshots = Snapshots()
    stages.run_rl(config, callbacks=[snapshots])
    first, last = snapshots.params[0], snapshots.params[max(snapshots.params)]
    moved = [name for name in first if not name.startswith(CRITIC_ATTRIBUTE)]
    assert all(not torch.equal(first[name], last[name]) for name in moved)
    (backend,) = vllm_backend._SHARED.values()
    rollouts = 2 if algorithm == "ppo" else 3
    assert 1 < backend.pushes <= rollouts  # the first rollout's, then one per rollout after a step that moved
    if algorithm == "ppo":
        assert logged(config, "ppo/ratio_mean")[0] == pytest.approx(1.0, abs=1e-4)
    gc.collect()


@pytest.mark.vllm
def test_a_vllm_run_resumes(tmp_path, real_vllm, monkeypatch):
    """Killed after its step-1 checkpoint and resumed in the same process: the run ends at max_steps with every
    step logged once; the resumed engine starts from the checkpoint's weights (first session pushes them)."""
    monkeypatch.setattr(vllm_backend, "_SHARED", {})
    config = vllm_run_config(tmp_path, "grpo")
    with pytest.raises(Killed):
        stages.run_rl(config, callbacks=[KillAt(1, after_save=True)])
    assert latest_complete(config.run_dir / "trainer" / "rl").name == "checkpoint-1"
    monkeypatch.setattr(vllm_backend, "_SHARED", {})
    stages.run_rl(config, resume=True)
    steps = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in steps if r["stage"] == "rl" and "loss" in r]
    assert steps == [1, 2, 3]
    gc.collect()


@pytest.mark.vllm
def test_a_batch_whose_prompts_exceed_one_scheduler_step_plays_token_exact(saved_policy):
    # 96 episodes' first contexts hold more tokens than vLLM's default 2,048 per scheduler step. Chunked prefill
    # would then discard a partial prefill's sampled token and rewind its seeded generator, which vLLM's CPU
    # generators cannot do ("CPU Generator does not use offset"): the engine schedules whole prompts instead.
    config, model, tokenizer = saved_policy
    backend = VLLMBackend(EngineOptions(max_model_len=512))
    engine = vllm_engine(config, model, tokenizer, backend, temperature=1.0)
    episodes = engine.play(list(range(96)), generator=torch.Generator().manual_seed(0))
    assert sum(len(e.prompt_ids) for e in episodes) > 2048
    assert_token_exact(episodes, model, PlainFormat(tokenizer), max_action_tokens=3, atol=1e-5)

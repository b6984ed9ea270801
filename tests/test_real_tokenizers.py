"""The token invariants with production tokenizers (DESIGN.md invariant 8): Mistral's SentencePiece v3 and Tekken BPE,
loaded offline from mistral-common's files (`model.tiny.tokenizer`).

Each invariant of tests/test_rollout.py is re-run through its own test body, with the tiny policy on a real
tokenizer in place of the word-level one: leading-space pieces, digits split from their space piece, newlines as
byte tokens, actions of several tokens and special tokens inside a chat template all meet the token-exact Episode.
"""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.models.policy import load_policy, load_pretrained, save_policy, uses_chat_template
from rlft.models.tokenizers import MISTRAL_V3_FILE, TEKKEN_FILE, load_tiny_tokenizer, mistral_data_file
from rlft.rollout.backend import ActionChunk
from rlft.rollout.engine import RolloutEngine, SamplingSettings
from rlft.rollout.turn_format import ChatFormat, PlainFormat, make_format
from rlft.runtime.tracking import read_metrics
from rlft.stages.checks import load_checked_config
from rlft.stages.common import env_factory
from tests import test_rollout as rollout_tests
from tests.conftest import TINY_MODEL, tiny_config

_biased_policy = rollout_tests._biased_policy  # kept: the re-run below swaps in a calibrated one
REAL_TOKENIZERS = ["mistral_v3", "tekken"]
DATA_FILES = {"mistral_v3": MISTRAL_V3_FILE, "tekken": TEKKEN_FILE}
# The issue's example, and the env's own text: a FrozenLake observation and instructions' words.
ENV_TEXT = [
    "S @ F F\nrow 0 col 1",
    "@ F F H\nrow 0 col 0\nleft wall down F right F up wall\nAction: right",
    "row 12 col 3, passenger at R, destination B\nAction: pickup",
]


def tiny_real_config(tokenizer: str, env_id: str = "rlft/FrozenLakeRandom-v0", **sections):
    """The test-size tiny model (tests.conftest.TINY_MODEL) on a production tokenizer."""
    model = copy.deepcopy(TINY_MODEL)
    model["tiny"]["tokenizer"] = tokenizer
    return tiny_config(env_id, model={**model, **sections.pop("model", {})}, **sections)


@pytest.fixture(scope="module", params=REAL_TOKENIZERS)
def real_policy(request):
    """(config, model, tokenizer) for random 4x4 FrozenLake, random weights, a real tokenizer, plain prompts."""
    config = tiny_real_config(request.param, model={"chat_template": "off"})
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    return config, model, tokenizer


@pytest.fixture(scope="module")
def real_played(real_policy):
    config, model, tokenizer = real_policy
    engine = rollout_tests._engine(config, model, tokenizer)
    episodes = engine.play(list(range(16)), generator=torch.Generator().manual_seed(0), batch_size=8)
    return engine, episodes


def _reference(name: str) -> MistralTokenizer:
    return MistralTokenizer.from_file(str(mistral_data_file(DATA_FILES[name])))


# ------------------------------------------------------------------------------------------- the tokenizers
@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_the_tokenizer_is_mistrals_own_on_env_text(name):
    """The HF tokenizer gives the ids mistral-common's own tokenizer gives, over the env's text."""
    tokenizer = load_tiny_tokenizer(name)
    reference = _reference(name).instruct_tokenizer.tokenizer
    assert len(tokenizer) == {"mistral_v3": 32768, "tekken": 131072}[name]
    for text in ENV_TEXT:
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(
            text, bos=False, eos=False
        )
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert tokenizer.padding_side == "left"


def test_the_key_is_checked_before_any_model_loads():
    """A misspelt choice is a config error naming the key and the closest valid choice (exit 2 from the CLI)."""
    config = load_checked_config("configs/quickstart.yaml", ["model.tiny.tokenizer=tekken"])
    assert config.model.tiny.tokenizer == "tekken"
    assert load_checked_config("configs/quickstart.yaml").model.tiny.tokenizer == "word"  # the default
    with pytest.raises(
        ConfigError, match=r"key 'model\.tiny\.tokenizer' = 'mistral3'.*did you mean 'mistral_v3'"
    ):
        load_checked_config("configs/quickstart.yaml", ["model.tiny.tokenizer=mistral3"])


def test_sentencepiece_pieces_as_the_issue_lists_them():
    tokenizer = load_tiny_tokenizer("mistral_v3")
    ids = tokenizer.encode("[INST] S @ F F\nrow 0 col 1 [/INST] right", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == (
        [
            "[INST]",
            "▁S",
            "▁@",
            "▁F",
            "▁F",
            "<0x0A>",
            "row",
            "▁",
            "0",
            "▁col",
            "▁",
            "1",
            "▁",
            "[/INST]",
            "▁right",
        ]
    )


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_chat_layout_equals_the_template_and_mistral_commons_rendering(name):
    """prompt + action + observation segment + action == the template's rendering of the conversation == what
    mistral-common's instruct tokenizer encodes for it (special tokens [INST] / [/INST] included)."""
    tokenizer = load_tiny_tokenizer(name)
    assert uses_chat_template(tokenizer, "auto")
    fmt = make_format(tokenizer, use_chat=True)
    assert isinstance(fmt, ChatFormat) and fmt.end_of_action == tokenizer.eos_token_id
    laid_out = (
        fmt.prompt_ids("go", "S @ F\nrow 0 col 0")
        + fmt.action_ids("down")
        + fmt.observation_ids("row 1 col 0")
        + fmt.action_ids("pickup")
    )
    conversation = [
        {"role": "user", "content": "go\n\nS @ F\nrow 0 col 0"},
        {"role": "assistant", "content": "down"},
        {"role": "user", "content": "row 1 col 0"},
        {"role": "assistant", "content": "pickup"},
    ]
    rendered = list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False))
    assert laid_out == rendered
    messages = [UserMessage(content="go\n\nS @ F\nrow 0 col 0"), AssistantMessage(content="down")]
    messages += [UserMessage(content="row 1 col 0")]
    reference = _reference(name).encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    assert laid_out[: len(reference)] == reference  # up to the last [/INST]: the prompt of the next action
    assert tokenizer.convert_ids_to_tokens(fmt.observation_ids("row 1 col 0"))[0] == "[INST]"


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_checkpoint_reloads_the_same_tokenizer(tmp_path, name):
    """Saved with the policy, the tokenizer reloads token for token (chat template and pad token too)."""
    config = tiny_real_config(name)
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=4)
    assert model.config.vocab_size == len(tokenizer)  # the vocab size follows the tokenizer
    save_policy(model, tokenizer, tmp_path / "ckpt")
    reloaded, tok2 = load_pretrained(str(tmp_path / "ckpt"))
    for text in ENV_TEXT:
        assert tok2.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert (tok2.chat_template, tok2.pad_token_id) == (tokenizer.chat_template, tokenizer.pad_token_id)
    assert PlainFormat(tok2).stop_ids == PlainFormat(tokenizer).stop_ids


# --------------------------------------------------------------------------- tests/test_rollout.py, re-run
def test_mask_is_one_exactly_on_sampled_tokens(real_played, real_policy):
    rollout_tests.test_mask_is_one_exactly_on_sampled_tokens(real_played, real_policy)


def test_behaviour_logprobs_equal_a_fresh_forward_pass(real_played, real_policy):
    rollout_tests.test_behaviour_logprobs_equal_a_fresh_forward_pass(real_played, real_policy)


def test_temperature_scales_recorded_logprobs(real_policy):
    rollout_tests.test_temperature_scales_recorded_logprobs(real_policy)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_per_turn_rewards_sit_on_each_actions_last_token(name, monkeypatch):
    monkeypatch.setattr(rollout_tests, "tiny_config", functools.partial(tiny_real_config, name))
    rollout_tests.test_per_turn_rewards_sit_on_each_actions_last_token()


def test_episode_token_cap_truncates(real_policy):
    rollout_tests.test_episode_token_cap_truncates(real_policy)


def test_batched_greedy_rollout_equals_one_episode_at_a_time(real_policy):
    rollout_tests.test_batched_greedy_rollout_equals_one_episode_at_a_time(real_policy)


def _calibrated_biased_policy(model, tokenizer):
    """tests/test_rollout.py's biased policy with biases for this vocabulary: its fixed ones suit ~150 words, not
    32,768 or 131,072 tokens (nor Tekken's hundreds of newline-bearing stop tokens). Near-zero random logits and
    these biases give the stop tokens together, the move words together and the rest of the vocabulary
    probabilities of about 0.4, 0.4 and 0.2, as the word-level vocabulary's defaults do."""
    stop_ids = PlainFormat(tokenizer).stop_ids
    word_ids = set(tokenizer.encode(" left right up down", add_special_tokens=False))
    rest = model.lm_head.out_features - len(stop_ids) - len(word_ids)
    return _biased_policy(
        model,
        tokenizer,
        stop_bias=math.log(2.0 * rest / len(stop_ids)),
        word_bias=math.log(2.0 * rest / len(word_ids)),
    )


def test_a_turn_synchronous_backend_keeps_the_token_invariants(real_policy, monkeypatch):
    monkeypatch.setattr(rollout_tests, "_biased_policy", _calibrated_biased_policy)
    rollout_tests.test_a_turn_synchronous_backend_keeps_the_token_invariants(real_policy)


def test_chat_format_episodes_keep_the_token_invariants(real_policy):
    """The same mask and log-prob checks with prompts and env turns through Mistral's instruct template."""
    config, model, tokenizer = real_policy
    engine = rollout_tests._engine(config, model, tokenizer, fmt=ChatFormat(tokenizer))
    played = engine, engine.play(list(range(8)), generator=torch.Generator().manual_seed(1))
    rollout_tests.test_mask_is_one_exactly_on_sampled_tokens(played, real_policy)
    rollout_tests.test_behaviour_logprobs_equal_a_fresh_forward_pass(played, real_policy)


# ----------------------------------------------------------------------- actions of several tokens, stop tokens
class _ScriptedSession:
    """A backend session that 'samples' a fixed token sequence as every action (log-prob 0): what the engine makes
    of an action's tokens is then the only thing under test."""

    def __init__(self, action_ids: list[int], n_rows: int):
        self.action_ids, self.live, self.forwards = action_ids, list(range(n_rows)), 0

    def continue_actions(self, budgets, stop_ids, generator):
        return {row: ActionChunk(list(self.action_ids), [0.0] * len(self.action_ids)) for row in self.live}

    def extend(self, row, token_ids):
        pass

    def drop(self, rows):
        self.live = [row for row in self.live if row not in set(rows)]

    def close(self):
        self.live = []


class _ScriptedBackend:
    name = "scripted"

    def __init__(self, action_ids: list[int]):
        self.action_ids = action_ids

    def start(self, model, prompts, sampling):
        return _ScriptedSession(self.action_ids, len(prompts))


def _play_scripted(config, tokenizer, fmt, action_ids: list[int]):
    settings = SamplingSettings(max_turns=2, max_action_tokens=len(action_ids))
    engine = RolloutEngine(
        None, tokenizer, fmt, env_factory(config), settings, backend=_ScriptedBackend(action_ids)
    )
    return engine.play([0, 1])


@pytest.mark.parametrize("use_chat", [False, True])
@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_multi_token_actions_parse(name, use_chat):
    """Taxi's 'pickup' and 'dropoff' are several tokens (SentencePiece: ▁pick up; Tekken: ▁dro po ff); decoded
    from their tokens they reach the env as the action names: an illegal pickup costs -10, an unparsed action 0."""
    config = tiny_real_config(name, "rlft/Taxi-v0")
    tokenizer = load_tiny_tokenizer(name)
    fmt = make_format(tokenizer, use_chat=use_chat)
    lengths = []
    for action in ("pickup", "dropoff"):
        action_ids = fmt.action_ids(action)
        lengths.append(len(action_ids) - 1)
        for episode in _play_scripted(config, tokenizer, fmt, action_ids):
            assert episode.actions == [action, action]
            assert episode.invalid_action_flags == [False, False]
            assert episode.rewards["env"] == [-10.0, -10.0]
            assert episode.completion_ids[: len(action_ids)] == action_ids
    assert max(lengths) > 1


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_a_newline_token_ends_an_action(name):
    """SentencePiece spells a newline as the byte token <0x0A>, Tekken as 'Ċ': either is a stop token of the plain
    format, ends the action there and is not part of the action's text."""
    config = tiny_real_config(name)
    tokenizer = load_tiny_tokenizer(name)
    fmt = PlainFormat(tokenizer)
    newline = tokenizer.encode("right\n", add_special_tokens=False)[-1]
    assert tokenizer.convert_ids_to_tokens(newline) == {"mistral_v3": "<0x0A>", "tekken": "Ċ"}[name]
    assert {newline, tokenizer.eos_token_id} <= fmt.stop_ids
    action_ids = tokenizer.encode(" right", add_special_tokens=False) + [newline]
    for episode in _play_scripted(config, tokenizer, fmt, action_ids):
        assert episode.actions == ["right", "right"][: episode.num_turns]
        assert (
            episode.action_ends[0] == len(action_ids) - 1
        )  # the action ends at the newline, nowhere earlier
        assert episode.invalid_action_flags == [False] * episode.num_turns


def test_special_tokens_are_decoded_out_of_an_action():
    """An action the model ends with EOS inside a template reads as its text alone."""
    tokenizer = load_tiny_tokenizer("tekken")
    fmt = ChatFormat(tokenizer)
    config = tiny_real_config("tekken")
    (episode, _) = _play_scripted(config, tokenizer, fmt, fmt.action_ids("right"))
    assert episode.actions[0] == "right"
    reference = _reference("tekken").instruct_tokenizer.tokenizer
    assert reference.decode(fmt.action_ids("right"), SpecialTokenPolicy.IGNORE) == "right"


# -------------------------------------------------------------------------------- the pipeline, by one override
# The quickstart at test size: the model of tests.conftest.TINY_MODEL and a few episodes and steps per stage.
QUICKSTART_AT_TEST_SIZE = [
    *(f"model.tiny.{key}={value}" for key, value in TINY_MODEL["tiny"].items() if key != "corpus_episodes"),
    "sft.demos.episodes=8",
    "sft.trainer.num_train_epochs=1",
    "sft.trainer.per_device_train_batch_size=8",
    "rl.trainer.max_steps=2",
    "rl.trainer.num_generations=4",
    "rl.trainer.per_device_train_batch_size=8",
    "rollout.num_envs=8",
    "eval.episodes=8",
    "tracking.wandb.enabled=false",
]


@pytest.mark.slow  # about 2-3 CPU minutes each (Tekken's 131,072-token head in every stage); -m slow runs them
@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_quickstart_pipeline_runs_on_a_real_tokenizer_by_one_override(tmp_path, name):
    """`rlft pipeline --config configs/quickstart.yaml model.tiny.tokenizer=<name>` (at test size): SFT -> GRPO ->
    eval, through Mistral's chat template; every stage's checkpoint carries the tokenizer it trained with."""
    overrides = [f"model.tiny.tokenizer={name}", f"output_dir={tmp_path}", *QUICKSTART_AT_TEST_SIZE]
    assert main(["pipeline", "--config", "configs/quickstart.yaml", *overrides]) == 0
    run_dir = tmp_path / "quickstart"
    saved = json.loads((run_dir / "eval.json").read_text())
    assert {"untrained", "sft", "rl"} <= set(saved["policies"])
    assert {record["stage"] for record in read_metrics(run_dir)} >= {"sft", "rl", "eval"}
    expected = load_tiny_tokenizer(name)
    for stage in ("base", "sft", "rl"):
        model, tokenizer = load_pretrained(str(run_dir / "checkpoints" / stage))
        assert model.config.vocab_size == len(expected)
        assert tokenizer.encode(ENV_TEXT[1], add_special_tokens=False) == expected.encode(
            ENV_TEXT[1], add_special_tokens=False
        )
        assert tokenizer.chat_template == expected.chat_template

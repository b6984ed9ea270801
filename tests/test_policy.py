"""The real loading path, through local saves: from_pretrained of a folder, chat templates, LoRA."""

from __future__ import annotations

import torch

from rlft.config.schema import ModelConfig
from rlft.models.policy import (
    build_word_tokenizer,
    load_policy,
    load_pretrained,
    save_policy,
    uses_chat_template,
)
from rlft.rollout.engine import RolloutEngine, SamplingSettings
from rlft.rollout.turn_format import ChatFormat, PlainFormat, make_format
from rlft.stages.common import env_factory
from tests.conftest import tiny_config


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_checkpoint_reloads_with_identical_outputs(tmp_path, frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    path = save_policy(model, tokenizer, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))  # weights only as safetensors
    reloaded, tok2 = load_pretrained(str(path))
    text = "@ F F H\nrow 0 col 0\nleft wall down F right F up wall\nAction: right"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tok2.encode(text, add_special_tokens=False) == ids  # the word-level tokenizer survives the save
    assert torch.equal(_logits(model, ids), _logits(reloaded, ids))


def test_model_name_or_path_loads_a_local_folder(tmp_path, frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    save_policy(model, tokenizer, tmp_path / "m")
    cfg = ModelConfig(name_or_path=str(tmp_path / "m"))
    loaded, _ = load_policy(cfg, seed=0)
    ids = tokenizer.encode("row 1 col 2", add_special_tokens=False)
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))


def test_chat_template_path_end_to_end(tmp_path):
    """A tiny model whose tokenizer has a chat template: prompts and env turns go through the template."""
    config = tiny_config(model={"chat_template": "on"})
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=4)
    save_policy(model, tokenizer, tmp_path / "chat")
    model, tokenizer = load_pretrained(str(tmp_path / "chat"))
    assert uses_chat_template(tokenizer, "auto")
    fmt = make_format(tokenizer, use_chat=True)
    assert isinstance(fmt, ChatFormat)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in fmt.stop_ids

    # The env segment is exactly what the template puts between an assistant turn and the next one.
    segment = fmt.observation_ids("row 1 col 0")
    assert tokenizer.convert_ids_to_tokens(segment)[:3] == ["<|im_start|>", "user", "row"]
    assert tokenizer.convert_ids_to_tokens(segment)[-2:] == ["<|im_start|>", "assistant"]
    # The whole conversation rendered by the template equals prompt + action + segment + action tokens.
    conversation = [
        {"role": "user", "content": "go\n\nrow 0 col 0"},
        {"role": "assistant", "content": "down"},
        {"role": "user", "content": "row 1 col 0"},
        {"role": "assistant", "content": "right"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    laid_out = (
        fmt.prompt_ids("go", "row 0 col 0") + fmt.action_ids("down") + segment + fmt.action_ids("right")
    )
    assert laid_out == list(rendered)[: len(laid_out)]

    engine = RolloutEngine(
        model, tokenizer, fmt, env_factory(config), SamplingSettings(max_turns=3, max_action_tokens=2)
    )
    episodes = engine.play([0, 1, 2], generator=torch.Generator().manual_seed(0))
    for episode in episodes:
        for turn, end in enumerate(episode.action_ends[:-1]):
            start = end + 1
            seg = fmt.observation_ids(episode.observations[turn])
            assert episode.completion_ids[start : start + len(seg)] == seg
            assert episode.mask[start : start + len(seg)] == [0] * len(seg)


def test_plain_format_when_no_template(frozen_lake_policy):
    _, _, tokenizer = frozen_lake_policy
    assert not uses_chat_template(tokenizer, "auto")
    assert isinstance(make_format(tokenizer, use_chat=False), PlainFormat)


def test_lora_adapter_trains_saves_and_reloads(tmp_path, frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    from rlft.config.schema import LoraSettings
    from rlft.models.policy import apply_lora

    save_policy(model, tokenizer, tmp_path / "base")
    base, _ = load_pretrained(str(tmp_path / "base"))
    peft_model = apply_lora(base, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # move the adapter away from its zero init so the reload check means something
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01)
    path = save_policy(peft_model, tokenizer, tmp_path / "lora")
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    ids = tokenizer.encode("row 0 col 0 Action :", add_special_tokens=False)
    reloaded, _ = load_pretrained(str(path))
    assert torch.allclose(_logits(peft_model, ids), _logits(reloaded, ids), atol=1e-6)
    assert not torch.allclose(_logits(model, ids), _logits(reloaded, ids), atol=1e-4)


def test_word_tokenizer_covers_env_text():
    tokenizer = build_word_tokenizer(["@ F F H\nrow 0 col 0", "left down right up"])
    ids = tokenizer.encode("right row 0", add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "right row 0"

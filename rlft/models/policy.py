"""Loading the policy: any Hugging Face causal LM, or the embedded tiny model with a tokenizer made locally.

The embedded default downloads nothing: a word-level tokenizer is built from the environment's own text
(instructions, observations and action names from a few hundred episodes), or Mistral's SentencePiece / Tekken is
read from mistral-common's files (`model.tiny.tokenizer`, rlft.models.tokenizers), and a small Qwen2 or Llama model
is initialised from a config. The real path (`from_pretrained` of a folder or hub id, chat templates, LoRA)
is the same one a checkpoint reload takes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from rlft.config.schema import LoraSettings, ModelConfig, TinyModelConfig
from rlft.errors import CheckpointError
from rlft.models.tokenizers import load_tiny_tokenizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
# A ChatML template for tiny models that need one (tests of the chat path).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Words every prompt format uses, so they are in the vocabulary whatever the env says.
FORMAT_WORDS = ["Action", ":", "\n", "system", "user", "assistant"] + [str(i) for i in range(100)]


def build_word_tokenizer(texts: Iterable[str], chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word and punctuation run in `texts`.

    Args:
        texts: the environment's text (instructions, observations, action names).
        chat_template: also add ChatML special tokens and template (for testing the chat path).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {}
    specials = list(SPECIAL_TOKENS.values()) + (CHAT_TOKENS if chat_template else [])
    for token in specials:
        vocab.setdefault(token, len(vocab))
    for text in [*FORMAT_WORDS, *texts]:
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    if chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, **extra):
    """The transformers config of the embedded model (Qwen2Config or LlamaConfig), sized by `cfg`.

    One builder for every head on the tiny backbone: the policy's LM head here, a reward model's one-label
    score head in rlft/rewards/models/train.py (`num_labels=1`).
    """
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    return Qwen2Config(**common) if cfg.architecture == "qwen2" else LlamaConfig(**common)


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """A randomly initialised causal LM of the configured architecture, sized by `cfg`."""
    model_config = tiny_model_config(cfg, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def env_corpus(env_factory, episodes: int, max_turns: int, seed: int) -> list[str]:
    """Text an env produces: instructions, observations and action names from expert and random episodes.

    Random episodes cover observations an expert never sees (holes, walls); expert episodes cover the goal.
    """
    import numpy as np

    env = env_factory()
    rng = np.random.default_rng(seed)
    texts = [getattr(env.unwrapped, "instructions", ""), *getattr(env.unwrapped, "action_names", [])]
    try:
        from envs.experts import expert_for

        expert = expert_for(env, epsilon=0.3, seed=seed)
    except Exception:  # an env with no expert still gets random episodes  # noqa: BLE001
        expert = None
    names = list(getattr(env.unwrapped, "action_names", []))
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        texts.append(obs)
        for _ in range(max_turns):
            if expert is not None and episode % 2 == 0:
                action = expert.act(env)
            else:
                action = names[int(rng.integers(len(names)))] if names else env.action_space.sample()
            obs, _, terminated, truncated, _ = env.step(action)
            texts.append(obs)
            if terminated or truncated:
                break
    env.close()
    return texts


def load_policy(cfg: ModelConfig, seed: int, env_factory=None, max_turns: int = 16):
    """Load (or build) the policy model and tokenizer named by the config.

    Returns:
        (model, tokenizer): tokenizer padding side is left; pad token set.
    """
    if cfg.tiny is not None and cfg.tiny.tokenizer != "word":
        tokenizer = load_tiny_tokenizer(cfg.tiny.tokenizer)  # the vocab size follows the production tokenizer
        model = build_tiny_model(cfg.tiny, tokenizer, seed)
    elif cfg.tiny is not None:
        if env_factory is None:
            raise ValueError("model.tiny needs the env to build its vocabulary")
        texts = env_corpus(env_factory, cfg.tiny.corpus_episodes, max_turns, seed)
        tokenizer = build_word_tokenizer(texts, chat_template=cfg.chat_template == "on")
        model = build_tiny_model(cfg.tiny, tokenizer, seed)
    else:
        model, tokenizer = load_pretrained(cfg.name_or_path, cfg)
    return model, tokenizer


def torch_dtype(name: str) -> torch.dtype | str:
    """The torch dtype of `model.dtype`: 'auto' is bfloat16 where the GPU has it, float32 otherwise."""
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return getattr(torch, name)


def load_pretrained(name_or_path: str, cfg: ModelConfig | None = None):
    """`from_pretrained` of a local folder or hub id (also how rlft's own checkpoints reload)."""
    cfg = cfg or ModelConfig(name_or_path=name_or_path)
    path = Path(name_or_path)
    if (
        path.exists()
        and not (path / "config.json").is_file()
        and not (path / "adapter_config.json").is_file()
    ):
        raise CheckpointError(f"'{name_or_path}' has no config.json: not a saved model")
    revision = (
        None if path.exists() else cfg.revision
    )  # a hub id may be pinned; a local folder has no revisions
    try:
        tokenizer = load_tokenizer(name_or_path, cfg.trust_remote_code, revision)
        if (path / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(
                name_or_path,
                dtype=torch_dtype(cfg.dtype),
                trust_remote_code=cfg.trust_remote_code,
                is_trainable=True,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path,
                dtype=torch_dtype(cfg.dtype),
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,
                revision=revision,
            )
    except OSError as exc:
        raise CheckpointError(f"cannot load model '{name_or_path}': {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """AutoTokenizer, except for a generic `tokenizer.json` (rlft's word-level tokenizers among them).

    transformers 5 maps some model types (qwen2, ...) to their own tokenizer class even when the folder's
    tokenizer_config names the generic backend, which would rebuild a different tokenizer from the vocabulary.
    A folder that declares the generic class is loaded exactly as its tokenizer.json says.
    """
    import json

    path = Path(name_or_path)
    config_file = path / "tokenizer_config.json"
    if config_file.is_file() and (path / "tokenizer.json").is_file():
        declared = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(name_or_path, revision=revision)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)


def apply_lora(model: PreTrainedModel, lora: LoraSettings) -> PreTrainedModel:
    """Wrap `model` with a fresh LoRA adapter (a no-op for a model that already has one).

    The adapter records `model.config._name_or_path` as its base, so apply it to a model loaded from a
    folder (rlft saves the base policy under checkpoints/base first) and the adapter reloads on its own.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_policy(model: PreTrainedModel, tokenizer, path: str | Path) -> Path:
    """Save weights as safetensors with the tokenizer (and chat template) beside them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def uses_chat_template(tokenizer, setting: str) -> bool:
    """Whether prompts go through the chat template: 'auto' uses one when the tokenizer has it."""
    if setting == "off":
        return False
    has = getattr(tokenizer, "chat_template", None) is not None
    if setting == "on" and not has:
        raise CheckpointError("model.chat_template = 'on' but the tokenizer has no chat template")
    return has

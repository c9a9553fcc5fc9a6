"""Throughput bookkeeping (tokens/s, TFLOP/s per device, the share of time spent waiting for data),
a TensorBoard writer that is safe to call anywhere, and a run's files: the loss curve (PNG) and
results JSON.

``Throughput`` accumulates tokens, model FLOPs and data-wait seconds between two log points and
turns them into rates; ``MetricsWriter`` writes scalars on rank 0 only and does
nothing when no directory is given; ``plot_losses`` and ``write_json`` write what a
run leaves behind (``loss.png``, ``results.json``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


def batch_tokens(batch) -> int:
    """Tokens in one packed batch: text plus image stream (what attention runs over)."""
    if hasattr(batch, "s_txt") and hasattr(batch, "s_img"):
        return int(batch.s_txt + batch.s_img)
    if hasattr(batch, "numel"):
        return int(batch.shape[0])
    return 0


def model_flops(model, batch) -> float | None:
    """FLOPs of one forward+backward on ``batch`` from ``model.flops_per_step(batch)``, else None.

    Looks through wrappers (DDP, Float16Module) for the method.
    """
    m = model
    while m is not None:
        fn = getattr(type(m), "flops_per_step", None)
        if fn is not None:
            return float(m.flops_per_step(batch))
        m = getattr(m, "module", None)
    return None


@dataclass
class Throughput:
    """Rates over the window since the last ``read()``. Times are wall-clock seconds."""

    tokens: int = 0
    flops: float = 0.0
    steps: int = 0
    has_flops: bool = False
    waited: float = 0.0          # seconds spent in next(stream) this window (skipped steps included)
    _t0: float = field(default_factory=time.perf_counter)

    def update(self, tokens: int, flops: float | None) -> None:
        self.tokens += tokens
        self.steps += 1
        if flops is not None:
            self.flops += flops
            self.has_flops = True

    def data_wait(self, seconds: float) -> None:
        """Count time the loop spent blocked on the batch stream."""
        self.waited += seconds

    def read(self) -> dict:
        """{'tokens_per_s', 'tflops' (per device, or None), 'step_time_s', 'data_wait_pct' (share of the
        window's wall time spent in next(stream), 0-100)} and reset the window."""
        dt = max(time.perf_counter() - self._t0, 1e-9)
        out = {
            "tokens_per_s": self.tokens / dt,
            "tflops": self.flops / dt / 1e12 if self.has_flops else None,
            "step_time_s": dt / max(self.steps, 1),
            "data_wait_pct": 100.0 * min(self.waited / dt, 1.0),
        }
        self.tokens, self.flops, self.steps, self.has_flops, self.waited = 0, 0.0, 0, False, 0.0
        self._t0 = time.perf_counter()
        return out


class MetricsWriter:
    """TensorBoard scalars on rank 0; a no-op when ``log_dir`` is None or on other ranks."""

    def __init__(self, log_dir: str | None, rank: int = 0):
        self._writer = None
        if log_dir is not None and rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, step: int, values: dict, prefix: str = "train/") -> None:
        if self._writer is None:
            return
        for k, v in values.items():
            if v is not None:
                self._writer.add_scalar(prefix + k, float(v), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ----------------------------------------------------------------------------- a run's files

def write_json(path, obj):
    """``obj`` as indented JSON at ``path``, written atomically (parents created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def plot_losses(losses, path, window: int = 20):
    """Loss curve as PNG (raw and a running mean)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.4, label="loss")
    if len(losses) >= window:
        run = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(range(window - 1, len(losses)), run, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

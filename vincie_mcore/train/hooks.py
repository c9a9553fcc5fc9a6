"""Trainer hooks: code that runs inside ``Trainer.train()`` without editing the trainer.

A hook is any object with some of these methods; the trainer calls the ones it has, on every rank,
in the order the hooks were given (``Trainer(..., hooks=[...])`` or ``trainer.hooks.append``):

* ``on_step_end(trainer, metrics)``: after every step, skipped ones included (``metrics["skipped"]``),
  before that step's periodic save; ``trainer.step`` counts the optimizer updates done.
* ``on_save(trainer, path)``: after a checkpoint of ``trainer.step`` is complete at ``path``.
* ``on_train_end(trainer)``: when ``train()`` returns, after its final save (at ``cfg.steps``, at
  ``until`` or on ``max_minutes``); not when it raises (a preemption, too many bad steps).

A hook that runs collectives (the evaluation below, under TP) must run on every rank, and does.
"""
from __future__ import annotations

from pathlib import Path

import torch


class Hook:
    """No-op events, to subclass (a hook need not: the trainer looks the methods up by name)."""

    def on_step_end(self, trainer, metrics: dict) -> None:
        pass

    def on_save(self, trainer, path: str) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass


def unwrap(model):
    """The MegatronModule inside Megatron DDP / Float16Module."""
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module
    while isinstance(model, (DistributedDataParallel, Float16Module)):
        model = model.module
    return model


class EvalHook(Hook):
    """Every ``every`` optimizer steps: ``evaluate(trainer) -> dict`` with the model in eval mode and
    without gradients; rank 0 writes ``{"step": step, **result}`` to ``<out_dir>/eval_<step>.json``.
    ``self.results`` keeps every result of this process."""

    def __init__(self, every: int, evaluate, out_dir):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"EvalHook: every must be an int >= 1, got {every!r}")
        self.every, self.evaluate, self.out_dir = every, evaluate, Path(out_dir)
        self.results: list[dict] = []

    def on_step_end(self, trainer, metrics: dict) -> None:
        if metrics.get("skipped") or trainer.step % self.every:
            return
        self.run(trainer)

    def run(self, trainer) -> dict:
        from .metrics import write_json

        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                result = {"step": trainer.step, **self.evaluate(trainer)}
        finally:
            model.train(was_training)
        self.results.append(result)
        if trainer.rank == 0:
            write_json(self.out_dir / f"eval_{trainer.step}.json", result)
        return result

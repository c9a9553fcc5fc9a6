"""What a launch needs before the ranks start: the resolved layout, the ranks' environment under srun,
and the exit code of a run that saved on a preemption signal.

``slurm/train.sbatch`` asks ``vincie-train --check-layout`` (this module's ``resolve_layout``) to print
the layout for its allocation, or to refuse it in one line, before any rank starts; then it starts one
task per GPU with srun, and each rank maps Slurm's task variables to torch.distributed's
(``env_from_srun``). A rank that saved on SIGUSR1/SIGTERM exits with ``EXIT_PREEMPTED``; the batch
script requeues the job on that code (docs/slurm_training.md, "Preemption and requeue").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import ConfigError

# EX_TEMPFAIL: "a temporary failure; try again". slurm/train.sbatch requeues the job on this code.
EXIT_PREEMPTED = 75


@dataclass(frozen=True)
class Layout:
    """TP x CP x DP over ``nodes`` x ``gpus_per_node`` ranks, and what one optimizer step consumes."""

    tp: int
    cp: int
    dp: int
    nodes: int
    gpus_per_node: int
    token_budget: int            # tokens of one packed sequence (micro_batches per DP replica and step)
    micro_batches: int = 1       # train.micro_batches (gradient accumulation)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def tokens_per_step(self) -> int:
        """Upper bound: every replica's sequence packed to the budget (padding included)."""
        return self.dp * self.micro_batches * self.token_budget

    def describe(self) -> str:
        return (f"layout: {self.nodes} node(s) x {self.gpus_per_node} GPU(s) = {self.world} ranks = "
                f"TP {self.tp} x CP {self.cp} x DP {self.dp}; global batch {self.dp * self.micro_batches} packed "
                f"sequence(s){f' ({self.micro_batches} micro-batches a rank)' if self.micro_batches > 1 else ''} of "
                f"<= {self.token_budget} tokens = <= {self.tokens_per_step} tokens per step")


def _positive(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be a positive int, got {value!r}")
    return value


def resolve_layout(cfg, nodes: int, gpus_per_node: int) -> Layout:
    """The layout of config ``cfg`` (its ``parallel`` and ``data.pack`` groups) on ``nodes`` x
    ``gpus_per_node`` ranks. Raises ConfigError in one line when tp x cp x dp does not fit them."""
    nodes = _positive(nodes, "allocation: nodes")
    gpus = _positive(gpus_per_node, "allocation: gpus per node")
    p = cfg.parallel
    tp, cp = _positive(p.tp, "parallel.tp"), _positive(p.cp, "parallel.cp")
    world = nodes * gpus
    if p.get("dp") is None:
        if world % (tp * cp):
            raise ConfigError(f"parallel: tp*cp = {tp}*{cp} = {tp * cp} does not divide the allocation's "
                              f"{world} GPUs ({nodes} node(s) x {gpus})")
        dp = world // (tp * cp)
    else:
        dp = _positive(p.dp, "parallel.dp")
        if tp * cp * dp != world:
            raise ConfigError(f"parallel: tp*cp*dp = {tp}*{cp}*{dp} = {tp * cp * dp} does not match the "
                              f"allocation's {world} GPUs ({nodes} node(s) x {gpus})")
    budget = _positive(cfg.data.pack.token_budget, "data.pack.token_budget")
    micro = _positive(cfg.train.get("micro_batches", 1), "train.micro_batches")
    return Layout(tp=tp, cp=cp, dp=dp, nodes=nodes, gpus_per_node=gpus, token_budget=budget, micro_batches=micro)


def env_from_srun(environ=None) -> bool:
    """Under ``srun`` with one task per GPU (``VINCIE_LAUNCHER=srun``, set by slurm/train.sbatch): set
    RANK, WORLD_SIZE, LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID where they are unset
    (MASTER_ADDR/MASTER_PORT come from the script). True if it set them."""
    env = os.environ if environ is None else environ
    if env.get("VINCIE_LAUNCHER") != "srun" or "RANK" in env:
        return False
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT")
               if k not in env]
    if missing:
        raise RuntimeError(f"VINCIE_LAUNCHER=srun but {', '.join(missing)} unset: start the ranks with srun "
                           "from slurm/train.sbatch")
    env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = env["SLURM_PROCID"], env["SLURM_NTASKS"], env["SLURM_LOCALID"]
    return True

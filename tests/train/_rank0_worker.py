"""The two gloo processes of test_preemption.py's rank-0 test, in a module of their own: a spawned
child imports only this (and vincie_mcore.build), not the test module's Megatron."""
import os


def rank0_worker(rank, folder):
    import time

    import torch.distributed as dist

    from vincie_mcore.build import _on_rank0

    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    mark = os.path.join(folder, "built")

    def build(fail):
        time.sleep(1.0)                              # slow enough for rank 1 to arrive first
        if fail:
            raise OSError("disk full")
        open(mark, "w").write(f"by rank {dist.get_rank()}")
        return mark

    try:
        got = _on_rank0(lambda: build(False))
        open(os.path.join(folder, f"got{rank}"), "w").write(f"{got} {open(got).read()}")
        try:
            _on_rank0(lambda: build(True))
        except (RuntimeError, OSError) as e:
            open(os.path.join(folder, f"error{rank}"), "w").write(f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def counts_worker(rank, folder):
    """test_trainer.py's source shares: each rank's drawn counts summed over two gloo ranks."""
    import json

    import torch.distributed as dist

    from vincie_mcore.train.trainer import sum_counts

    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        mine = {"mb": 3 + rank, "ip2p": 10 * rank, "videos": 0}
        got = sum_counts(mine, dist.group.WORLD)
        open(os.path.join(folder, f"sum{rank}"), "w").write(json.dumps([mine, got, sum_counts({})]))
    finally:
        dist.destroy_process_group()

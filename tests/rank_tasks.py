"""Tasks the harness tests send to rank processes (module-level, so ranks can import them), and process checks."""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist


def all_reduce_rank(context) -> float:
    value = torch.tensor([float(context.rank)])
    dist.all_reduce(value)
    return value.item()


def raise_on_rank1(context) -> str:
    if context.rank == 1:
        raise ValueError("injected failure on rank 1")
    value = torch.ones(1)
    dist.all_reduce(value)  # rank 0 waits for a peer that already failed
    return "unreachable"


def hang_in_collective(context) -> str:
    if context.rank == 0:
        value = torch.ones(1)
        dist.all_reduce(value)  # rank 1 never joins
    return "done"


def die_on_rank1(context) -> str:
    if context.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return "unreachable"


def grow_on_rank1(context) -> str:
    """Rank 1 holds ever more memory; rank 0 waits for it in a collective."""
    if context.rank == 1:
        held = []
        while True:
            held.append(torch.ones(64 * 1024**2 // 4))
            time.sleep(0.01)
    value = torch.ones(1)
    dist.all_reduce(value)
    return "unreachable"


def skip_everywhere(context) -> None:
    import pytest

    pytest.skip("nothing to do on this machine")


def pid(context) -> int:
    return os.getpid()


def record_pid_and_sleep(context, directory: str) -> None:
    with open(os.path.join(directory, f"rank{context.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def process_gone(pid: int) -> bool:
    """True once no process has this pid (reaped or never existed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def dist_optimizer_parity(context, optimizer: str, layout: str, out_features: int, in_features: int,
                          steps: int) -> list[float]:
    from parabench.cases.optimizer_step import parity_on_ranks

    return parity_on_ranks(context, optimizer, layout, out_features, in_features, steps)


def send_and_receive(context) -> list[tuple[str, tuple[int, ...]]]:
    """Rank 0 sends two activations through ``parabench.strategies.pipeline``; rank 1 reports what arrived."""
    from parabench.strategies.pipeline import recv, send

    if context.rank == 0:
        send(torch.ones(3, 5, 7, dtype=torch.bfloat16), 1)
        send(torch.arange(4, dtype=torch.float32), 1)
        return []
    got = [recv(0, context.device) for _ in range(2)]
    assert torch.equal(got[1], torch.arange(4, dtype=torch.float32)) and bool((got[0] == 1).all())
    return [(str(t.dtype), tuple(t.shape)) for t in got]


def report_progress_between_waits(context, done: int, total: int, wait_s: float) -> None:
    """Rank 0 reports ``done`` of ``total`` steps half-way through; rank 1 other numbers, which must not show."""
    time.sleep(wait_s / 2)
    context.report_progress(done + context.rank, total + context.rank)
    time.sleep(wait_s / 2)


def count_collectives(context) -> tuple[dict, int]:
    """One of each kind of collective under ``parabench.measure.costs``, plus a DDP step of a 2-layer model."""
    from torch.distributed._functional_collectives import all_reduce as functional_all_reduce

    from parabench.measure.costs import CommCounter, step_costs

    alone = [dist.new_group([r]) for r in range(context.world_size)][context.rank]  # every rank makes every group
    counter = CommCounter()
    with counter:
        dist.all_reduce(torch.ones(100))                                          # 400 B
        dist.all_reduce(torch.ones(10), group=alone)                              # a group of one
        dist.all_gather_into_tensor(torch.empty(128), torch.ones(64))             # output 512 B
        dist.reduce_scatter_tensor(torch.empty(32), torch.ones(64))               # input 256 B
        dist.broadcast(torch.ones(10, dtype=torch.bfloat16), 0)                   # 20 B
        functional_all_reduce(torch.ones(8), "sum", dist.group.WORLD).wait()      # 32 B, functional
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4)))
    x = torch.randn(6, 16)
    model(x).sum().backward()  # DDP's first backward rebuilds its buckets
    comm, flops = step_costs(lambda: model(x).sum().backward(), context.device)
    return {"collectives": counter.counts(), "ddp": comm}, flops

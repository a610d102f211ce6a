"""A hand-written DDP training loop, the yardstick the harness's own overhead is measured against.

It shares only the data (same examples, same order) and the device drain around a timed step with the harness,
and nothing of its strategy, step or measurement code.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from parabench.measure.timing import synchronize
from parabench.workloads import WORKLOADS, step_indices


def handwritten_ddp_step_seconds(context, workload_name: str, lr: float, steps: int, seed: int = 0) -> list[float]:
    """Per-step wall times of a plain DDP + SGD loop over ``steps`` steps (the first two discarded)."""
    workload = WORKLOADS.get(workload_name)
    torch.manual_seed(seed)
    device = context.device
    model = workload.build_model().to(device)
    model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    global_batch, n = workload.default_global_batch, workload.num_examples()
    local = global_batch // context.world_size
    seconds = []
    for step in range(steps + 2):
        indices = step_indices(step, global_batch, n, seed)[context.rank * local:(context.rank + 1) * local]
        batch = {key: value.to(device) for key, value in workload.batch(indices).items()}
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = workload.loss(model, batch)
        loss.backward()
        optimizer.step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        dist.all_reduce(loss.detach())  # the harness reduces the loss between steps too
    return seconds[2:]

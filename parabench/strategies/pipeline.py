"""Splitting a workload's layers into stages, and moving activations between stage ranks.

Shared by the strategies that place stages on ranks (``torch-mp``, ``torch-pp-*``) or on devices
inside one rank (``fairscale-pipe``), so that all of them cut a model at the same places.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.distributed as dist

_MAX_DIMS = 8


def balance(layers: Sequence[torch.nn.Module], stages: int) -> list[int]:
    """Layers per stage: contiguous, non-empty, the largest stage's parameter count as small as it can be."""
    if not 1 <= stages <= len(layers):
        raise ValueError(f"{len(layers)} layers cannot make {stages} non-empty stages; "
                         f"choose between 1 and {len(layers)} stages")
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)

    @functools.lru_cache(maxsize=None)
    def best(start: int, parts: int) -> tuple[int, tuple[int, ...]]:
        """(largest stage, stage lengths) for layers[start:] in ``parts`` stages."""
        if parts == 1:
            return prefix[-1] - prefix[start], (len(layers) - start,)
        options = []
        for stop in range(start + 1, len(layers) - parts + 2):
            rest, lengths = best(stop, parts - 1)
            options.append((max(prefix[stop] - prefix[start], rest), (stop - start,) + lengths))
        return min(options)

    return list(best(0, stages)[1])


def stage_slice(lengths: Sequence[int], stage: int) -> slice:
    """The layers of ``stage`` given the stage lengths."""
    start = sum(lengths[:stage])
    return slice(start, start + lengths[stage])


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64)


def send(tensor: torch.Tensor, dst: int) -> None:
    """Send ``tensor`` with its dtype and shape, so that the receiver needs to know neither."""
    if tensor.dim() > _MAX_DIMS or tensor.dtype not in _DTYPES:
        raise ValueError(f"an activation of {tensor.dim()} dimensions in {tensor.dtype}; at most {_MAX_DIMS} "
                         f"dimensions in one of {', '.join(map(str, _DTYPES))} travel between stages")
    header = torch.zeros(_MAX_DIMS + 2, dtype=torch.int64)
    header[0], header[1] = _DTYPES.index(tensor.dtype), tensor.dim()
    header[2:2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    dist.send(header.to(tensor.device), dst)
    dist.send(tensor.contiguous(), dst)


def recv(src: int, device: torch.device) -> torch.Tensor:
    """The next tensor ``send`` sent from ``src``."""
    header = torch.empty(_MAX_DIMS + 2, dtype=torch.int64, device=device)
    dist.recv(header, src)
    dtype, dims = _DTYPES[int(header[0])], int(header[1])
    out = torch.empty(tuple(int(n) for n in header[2:2 + dims]), dtype=dtype, device=device)
    dist.recv(out, src)
    return out

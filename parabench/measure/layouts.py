"""How each framework lays a model's parameters out over N ranks: its rules, reproduced from its source.

The ZeRO paper's formulas (``parabench.measure.formulas``) count Ψ/N a rank; the frameworks hold whole tensors, padded
shards, padded chunks and bucket buffers instead. Each function here reproduces one framework's rule, as its
installed source states it, from the parameters' shapes alone (no process group, no framework import):

- ``zero_redundancy_owners``: torch's ``ZeroRedundancyOptimizer._partition_parameters`` (largest first, each to
  the rank with the fewest elements so far);
- ``oss_owners``: fairscale's ``OSS.partition_parameters`` (in the given order, each to the rank with the fewest);
- ``sdp_bucket_elements``: fairscale ``ShardedDataParallel``'s reduce buckets (``_setup_bucket_strategy``);
- ``dim0_shard_elements``: FSDP2 ``fully_shard``, each parameter chunked on dim 0 and padded to chunk 0's rows;
- ``flat_shard_elements``: a flat buffer split by ``torch.chunk`` and padded to a multiple of N (FSDP1 and
  fairscale FSDP per wrapped unit, DeepSpeed ZeRO-3 per parameter);
- ``fairscale_bucket_output_elements``: fairscale FSDP's ``ReduceScatterBucketer`` output shards;
- ``gemini_chunk_size`` / ``gemini_chunks``: ColossalAI Gemini's ``search_chunk_configuration`` and
  ``ChunkManager.register_tensor``.

The shapes come from ``model_parameters``: the workload's own model built on the meta device (no memory, no
data), so that results stored before any of this existed are predicted too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ParameterShape:
    """One parameter of a model, in ``model.parameters()`` order (tied weights once): its name, shape and the
    FSDP unit it is flattened into (the name of the enclosing workload block, ``""`` for the root)."""

    name: str
    shape: tuple[int, ...]
    unit: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@functools.lru_cache(maxsize=None)
def model_parameters(workload: str) -> tuple[ParameterShape, ...] | None:
    """The parameters of ``workload``'s model, built on the meta device; None where it cannot be built so (a
    model loaded from the hub: ``vit-beans``)."""
    import torch

    from parabench.workloads import WORKLOADS

    if workload not in WORKLOADS:
        return None
    spec = WORKLOADS.get(workload)
    if spec.requires.probes:
        return None  # its model comes from the hub (vit-beans): building it would download, or fail offline
    with torch.device("meta"):
        model = spec.build_model()
    blocks = set(spec.block_types)
    units = [name for name, module in model.named_modules() if type(module).__name__ in blocks]

    def unit_of(name: str) -> str:
        # FSDP wraps each block (the innermost one holding the parameter), then the root takes the rest
        return max((u for u in units if name.startswith(u + ".")), key=len, default="")

    return tuple(ParameterShape(name, tuple(p.shape), unit_of(name)) for name, p in model.named_parameters())


def zero_redundancy_owners(sizes: Sequence[int], shards: int) -> list[int]:
    """The rank that ``torch.distributed.optim.ZeroRedundancyOptimizer`` assigns each parameter to: sorted by size,
    largest first (a stable sort), each to the first rank holding the fewest elements so far."""
    owners, held = [0] * len(sizes), [0] * shards
    for index in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):
        rank = held.index(min(held))
        owners[index] = rank
        held[rank] += sizes[index]
    return owners


def oss_owners(sizes: Sequence[int], shards: int) -> list[int]:
    """The rank that fairscale's ``OSS`` assigns each (trainable) parameter to: in the given order, each to the
    first rank holding the fewest elements so far."""
    owners, held = [], [0] * shards
    for size in sizes:
        rank = held.index(min(held))
        owners.append(rank)
        held[rank] += size
    return owners


def sdp_bucket_elements(sizes: Sequence[int], owners: Sequence[int], shards: int, rank: int,
                        reduce_buffer_size: int) -> tuple[int, int]:
    """(elements in ShardedDataParallel's reduce buckets, elements of this rank's gradients outside them) that a
    rank holds after backward.

    ``ShardedDataParallel`` caps its buckets at min(``reduce_buffer_size``, Ψ) elements (none at N = 1) and keeps
    one per destination rank on every rank; parameters, smallest first, enter their owner's bucket while it has
    room (``GradBucket.can_add_grad_view``: fill + numel < cap), and each bucket is shrunk to what entered. Their
    gradients are views of the buckets, which stay allocated; a gradient outside a bucket is freed on every rank
    but its owner after the reduction."""
    cap = 0 if shards == 1 else min(reduce_buffer_size, sum(sizes))
    fill = [0] * shards
    bucketed = [False] * len(sizes)
    if cap > 0:
        # OSS lists each rank's parameters by size; ShardedDDP sorts them all by size again (both stable sorts)
        order = sorted(sorted(range(len(sizes)), key=lambda i: (owners[i], sizes[i])), key=lambda i: sizes[i])
        for index in order:
            if fill[owners[index]] + sizes[index] < cap:
                fill[owners[index]] += sizes[index]
                bucketed[index] = True
    own = sum(size for size, owner, b in zip(sizes, owners, bucketed) if owner == rank and not b)
    return sum(fill), own


def dim0_shard_elements(shape: Sequence[int], shards: int, rank: int) -> tuple[int, int]:
    """(elements of the padded shard, elements of the real rows) of an FSDP2 ``fully_shard`` parameter on ``rank``.

    FSDP2 chunks dim 0 as ``torch.chunk`` does (ceil(d0 / N) rows a chunk, the last ones shorter or empty) and
    pads every rank's storage to chunk 0's rows; the local tensor (what Adam's state is shaped like) has only the
    real rows."""
    if not shape:
        return 1, 1 if rank == 0 else 0
    rows, rest = shape[0], math.prod(shape[1:])
    per_chunk = -(-rows // shards)
    real = max(0, min(per_chunk, rows - rank * per_chunk))
    return per_chunk * rest, real * rest


def flat_shard_elements(numel: int, shards: int) -> int:
    """Elements of each rank's shard of a flat buffer of ``numel`` elements split by ``torch.chunk`` and padded to
    the first chunk's size (a multiple of N in all): FSDP1's and fairscale FSDP's flat parameters, DeepSpeed
    ZeRO-3's per-parameter partitions."""
    return -(-numel // shards)


def fairscale_bucket_output_elements(shard_sizes: Sequence[int], shards: int, element_bytes: int,
                                     bucket_cap_mb: int = 25) -> int:
    """Elements of the gradient storage fairscale FSDP's ``ReduceScatterBucketer`` leaves a rank after backward.

    Gradient shards up to the bucket's shard size (``bucket_cap_mb`` MiB / element size // N elements) are
    reduced into a bucket; each flush hands its shards out as views of one output shard of that full size and
    allocates a fresh one, so the gradients keep every flushed output shard alive. A larger gradient is reduced
    on its own into a tensor of its size. ``shard_sizes``: the units' gradient shards in reduction order."""
    bucket = int(bucket_cap_mb * 1024 * 1024 / element_bytes // shards) if bucket_cap_mb > 0 else 0
    held, offset, flushed = 0, 0, 0
    for size in shard_sizes:
        if size > bucket:
            held += size
            continue
        if size > bucket - offset:
            flushed, offset = flushed + 1, 0
        offset += size
    flushed += offset > 0  # the flush at the end of backward
    return held + flushed * bucket


def _unused_elements(sizes: Sequence[int], chunk_size: int) -> int:
    """ColossalAI's ``_get_unused_byte``: the space a chunk size leaves unused when ``sizes`` fill chunks in order."""
    waste, left = 0, 0
    for size in sizes:
        if size > left:
            waste += left
            left = chunk_size
        left -= size
    return left + waste


def gemini_chunk_size(sizes: Sequence[int], shards: int, min_chunk_size_m: float, search_range_m: float,
                      search_interval: int = 1024) -> tuple[int, bool]:
    """(chunk size in elements, kept gathered) that ColossalAI's ``search_chunk_configuration`` picks.

    A model under ``min_chunk_size_m`` Mi elements is one chunk kept gathered. Otherwise, from the largest
    parameter (those above mean + 3 σ left out) or the minimum, rounded up to the interval, the search takes the
    first size in ``search_range_m`` Mi with the least unused space, rounded up to a multiple of N."""
    import numpy as np

    total = sum(sizes)
    minimum = round(min_chunk_size_m * 1024**2)
    if total < minimum:
        return total, True
    array = np.array(sizes)
    kept = [s for s in sizes if s <= array.mean() + 3 * array.std()]
    start = math.ceil(max([minimum, *kept]) / search_interval) * search_interval
    best, least = start, math.inf
    for size in range(start, start + round(search_range_m * 1024**2) + 1, search_interval):
        waste = _unused_elements(kept, size)
        if waste < least:
            best, least = size, waste
    return best + (-best % shards), False


def gemini_chunks(sizes: Sequence[int], chunk_size: int, shards: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Gemini's chunks in order: (chunk size, [(begin, end) of each parameter in it]).

    ``ChunkManager.register_tensor`` appends each parameter to the last chunk while it fits, else opens a new
    chunk of the chunk size (of the parameter's size rounded up to a multiple of N where it is larger)."""
    chunks: list[tuple[int, list[tuple[int, int]]]] = []
    used = 0
    for size in sizes:
        if not chunks or used + size > chunks[-1][0]:
            chunks.append((max(chunk_size, size + (-size % shards)), []))
            used = 0
        chunks[-1][1].append((used, used + size))
        used += size
    return chunks


def gemini_rank_elements(chunks: Sequence[tuple[int, list[tuple[int, int]]]], shards: int,
                         rank: int) -> tuple[int, int]:
    """(elements of this rank's chunk shards, padding included; real parameter elements in them): each chunk is
    split into N equal shards, rank r holding [r·size/N, (r+1)·size/N)."""
    held = real = 0
    for size, spans in chunks:
        shard = size // shards
        begin, end = rank * shard, (rank + 1) * shard
        held += shard
        real += sum(max(0, min(end, stop) - max(begin, start)) for start, stop in spans)
    return held, real

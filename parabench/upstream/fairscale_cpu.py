"""What fairscale 0.4.13's FullyShardedDataParallel lacks on a CPU-only machine, patched in the ranks.

fairscale's FSDP orders its all-gathers, casts and gradient reductions on CUDA streams
(``torch.cuda.current_stream``, ``torch.cuda.stream``, ``Tensor.record_stream``) and calls the
``_all_gather_base`` / ``_reduce_scatter_base`` collectives that gloo does not implement. On a CPU
the kernels run in program order, so a stream that orders nothing is exact. ``ensure_cpu_shim(device)``
applies the patches only to a case that runs on the CPU (on a GPU host too, under ``--bench-device=cpu``); the
patches in force are recorded in every result.
"""

from __future__ import annotations

import contextlib
import importlib.metadata

import torch

from parabench.upstream.patches import Patch

WRITTEN_FOR = "0.4.13"
_WHEN = "fairscale's FSDP runs without CUDA streams (it does not in 0.4.13)"


class _NoStream:
    """A CPU stand-in for a CUDA stream: equal to every other, ordering nothing."""

    def wait_stream(self, stream: object) -> None: ...
    def synchronize(self) -> None: ...
    def __eq__(self, other: object) -> bool: return isinstance(other, _NoStream)
    def __hash__(self) -> int: return 0


_STREAM = _NoStream()


def _streams() -> None:
    import fairscale.nn.data_parallel.fully_sharded_data_parallel as fsdp

    torch.cuda.current_stream = lambda *args, **kwargs: _STREAM
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    record_stream = torch.Tensor.record_stream
    torch.Tensor.record_stream = lambda self, stream: (None if isinstance(stream, _NoStream)
                                                        else record_stream(self, stream))
    setup_streams = fsdp.FullyShardedDataParallel._setup_streams

    def _setup_streams(self) -> None:
        setup_streams(self)  # makes no stream without CUDA
        for key in ("fp32_to_fp16", "all_gather", "post_backward"):
            self._streams.setdefault(key, _STREAM)

    fsdp.FullyShardedDataParallel._setup_streams = _setup_streams


def _base_collectives() -> None:
    # The module-level switch that ENABLE_NCCL_BASE_COLLECTIVES=0 sets at import.
    import fairscale.internal.reduce_scatter_bucketer as bucketer
    import fairscale.nn.data_parallel.fully_sharded_data_parallel as fsdp

    fsdp.enable_nccl_base_collectives = False
    bucketer.enable_nccl_base_collectives = False


CPU_PATCHES = (
    Patch("fairscale-fsdp-cpu-streams",
          "fairscale 0.4.13 FullyShardedDataParallel calls torch.cuda.current_stream/stream and "
          "Tensor.record_stream around its all-gathers and reductions", _WHEN, _streams),
    Patch("fairscale-fsdp-gloo-collectives",
          "fairscale 0.4.13 FSDP uses dist._all_gather_base/_reduce_scatter_base, which gloo does not implement "
          "(its own switch: ENABLE_NCCL_BASE_COLLECTIVES=0)", "gloo implements the base collectives", _base_collectives),
)


def shim_unavailable() -> str | None:
    """Why fairscale-fsdp cannot run on the CPU here (None: the shim fits the installed fairscale).

    A CPU-only probe (``Requirements.cpu_probes``): a CUDA case runs without the shim.
    """
    try:
        found = importlib.metadata.version("fairscale")
    except importlib.metadata.PackageNotFoundError:
        return None  # the missing package is reported as such
    if found != WRITTEN_FOR:
        return (f"needs CUDA (fairscale's FSDP orders its work on CUDA streams); the CPU shim in "
                f"parabench/upstream/fairscale_cpu.py is written for fairscale {WRITTEN_FOR}, found {found}")
    return None


def ensure_cpu_shim(device: torch.device | str) -> None:
    """Apply the CPU patches when the case runs on the CPU (``device``: the rank's), whatever devices the host has."""
    if torch.device(device).type == "cpu":
        for patch in CPU_PATCHES:
            patch.ensure()

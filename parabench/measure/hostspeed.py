"""How fast this host computes in bf16, measured once per session in the controller.

Hosts of one machine class differ: with AVX-512 (and its bf16 instructions) torch's CPU bf16 matmul is as
fast as fp32 or faster; with AVX2 only it is emulated, 20-80× slower (a one-process gpt2-text bf16 step
0.4-0.8 s against 0.02 s in fp32). The profile then keeps fewer bf16 cases (``bench/profiles.toml``).
"""

from __future__ import annotations

import functools
import time

MATRIX_SIZE = 128  # fp32 44-52 µs on either kind; bf16 32 µs with AVX-512 bf16, 1.1 ms on AVX2 (one thread)
REPEATS = 15


@functools.lru_cache(maxsize=None)
def bf16_slowdown() -> float:
    """A bf16 matmul's time over the same fp32 matmul's (best of ``REPEATS`` each, one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(MATRIX_SIZE, MATRIX_SIZE, generator=generator)
        b = torch.randn(MATRIX_SIZE, MATRIX_SIZE, generator=generator)
        return _best(a.bfloat16(), b.bfloat16()) / _best(a, b)
    finally:
        torch.set_num_threads(threads)


def _best(a, b) -> float:
    a @ b  # the first call may initialise the kernel
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def describe_bf16(ratio: float, threshold: float) -> str:
    import torch

    kind = "slow" if ratio > threshold else "fast"
    return (f"bf16 is {kind} on this host: a {MATRIX_SIZE}² bf16 matmul takes {ratio:.1f}× the fp32 one "
            f"(torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}; slow above {threshold:g}×)")

"""The case: one benchmark configuration as a frozen, picklable value with a stable id."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Case:
    """Strategy × optimizer × workload × world size × precision, plus the knobs that change results.

    The id is what pytest shows and what baselines are matched by: renaming a field's
    rendering orphans every stored result, so ``id`` changes only deliberately.
    """

    strategy: str
    optimizer: str
    workload: str
    world_size: int
    precision: str = "fp32"
    global_batch: int | None = None  # None: the workload's default
    grad_accum: int = 1
    warmup_steps: int = 2
    steps: int = 20
    seed: int = 0
    # Strategy options as sorted (key, value) pairs, e.g. (("offload", True),).
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.world_size < 1:
            raise ValueError(f"world size must be ≥ 1, got {self.world_size}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be ≥ 1, got {self.grad_accum}")
        if self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"need steps ≥ 1 and warmup_steps ≥ 0, got {self.steps}, {self.warmup_steps}")
        if self.global_batch is not None and self.global_batch < 1:
            raise ValueError(f"global batch must be ≥ 1, got {self.global_batch}")
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    @property
    def id(self) -> str:
        parts = [self.strategy, self.optimizer, self.workload.replace("-", "_"),
                 f"w{self.world_size}", self.precision]
        if self.global_batch is not None:
            parts.append(f"b{self.global_batch}")
        if self.grad_accum != 1:
            parts.append(f"ga{self.grad_accum}")
        for key, value in self.options:
            key = key.replace("-", "_")
            parts.append(key if value is True else f"{key}{value}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    def reference(self) -> "Case":
        """The one-process case on the same global batch, data, seed and precision."""
        return replace(self, strategy="single", world_size=1, grad_accum=1, options=())

    def with_steps(self, steps: int | None = None, warmup_steps: int | None = None) -> "Case":
        return replace(self, steps=self.steps if steps is None else steps,
                       warmup_steps=self.warmup_steps if warmup_steps is None else warmup_steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        data["id"] = self.id
        return data


def split_batch(global_batch: int, data_parallel_size: int, grad_accum: int) -> int:
    """Per-rank micro-batch size; the global batch must split evenly."""
    parts = data_parallel_size * grad_accum
    if global_batch % parts:
        raise ValueError(
            f"global batch {global_batch} does not split into {data_parallel_size} ranks × "
            f"{grad_accum} accumulation steps; choose a global batch divisible by {parts}")
    return global_batch // parts


def shard_bounds(n: int, rank: int, parts: int) -> tuple[int, int]:
    """[start, stop) of part ``rank`` when ``n`` items split into ``parts`` equal contiguous parts."""
    if n % parts:
        raise ValueError(f"{n} items do not split into {parts} equal parts")
    size = n // parts
    return rank * size, (rank + 1) * size

"""The case: one benchmark configuration as a frozen, picklable value with a stable id."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
_OPTION_KEY = re.compile(r"[a-z][a-z0-9_]*")
_OPTION_TEXT = re.compile(r"[A-Za-z0-9_.]+")
# Keys whose rendering ("b16", "ga2", "seed3") would collide with the id's own optional parts.
_RESERVED_KEYS = ("b", "ga", "seed")


@dataclass(frozen=True, eq=False)
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
    # Strategy options as sorted (key, value) pairs, e.g. (("offload", True),); a dict is accepted.
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
        options = dict(self.options)
        for key, value in options.items():
            _check_option(key, value)
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    # Equality follows the id (plus the step counts, which the id leaves out on purpose), so two
    # cases are equal exactly when they would be stored and compared as the same case.
    def _key(self) -> tuple:
        return self.id, self.warmup_steps, self.steps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Case) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def id(self) -> str:
        parts = [self.strategy, self.optimizer, self.workload.replace("-", "_"),
                 f"w{self.world_size}", self.precision]
        if self.global_batch is not None:
            parts.append(f"b{self.global_batch}")
        if self.grad_accum != 1:
            parts.append(f"ga{self.grad_accum}")
        if self.seed != 0:
            parts.append(f"seed{self.seed}")
        for key, value in self.options:
            parts.append(key if value is True else f"no_{key}" if value is False else f"{key}{value}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    def reference(self, optimizer: str | None = None, grad_accum: int = 1, strategy: str = "single") -> "Case":
        """The one-process case on the same global batch, data, seed and precision.

        ``optimizer``: the one-process twin of a distributed optimizer (see ``OptimizerSpec.twin``);
        ``grad_accum``: micro-batches per step of the reference (see ``OptimizerSpec.reference_accumulates``);
        ``strategy``: the one-process strategy (``single-master`` for strategies that keep master weights).
        """
        return replace(self, strategy=strategy, world_size=1, grad_accum=grad_accum, options=(),
                       optimizer=optimizer or self.optimizer)

    def with_steps(self, steps: int | None = None, warmup_steps: int | None = None) -> "Case":
        return replace(self, steps=self.steps if steps is None else steps,
                       warmup_steps=self.warmup_steps if warmup_steps is None else warmup_steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        data["id"] = self.id
        return data


def _check_option(key: str, value: Any) -> None:
    if (not isinstance(key, str) or not _OPTION_KEY.fullmatch(key) or key in _RESERVED_KEYS
            or key.startswith("no_")):
        raise ValueError(f"option key {key!r}: use lower-case letters, digits and '_' (no '-'), "
                         f"not starting with 'no_', not one of {', '.join(_RESERVED_KEYS)}")
    if value is None:
        raise ValueError(f"option {key}=None: leave the option out instead")
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value >= 0):
        return
    if not isinstance(value, str) or not _OPTION_TEXT.fullmatch(value):
        raise ValueError(f"option {key}={value!r}: use True, a non-negative number, or text of letters, "
                         f"digits, '_' and '.'")


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

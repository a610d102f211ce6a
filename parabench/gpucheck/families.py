"""What the GPU check must cover: each framework family's one-rank way of training, in each precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

PRECISIONS = ("bf16", "fp16")


@dataclass(frozen=True)
class Family:
    """A family the check covers: the strategies that stand for it, and the options a case of it must have."""

    label: str
    strategies: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def covers(self, case: Mapping[str, Any]) -> bool:
        options = case.get("options") or {}
        return case.get("strategy") in self.strategies and all(options.get(k) == v for k, v in self.options)


FAMILIES = (
    Family("single", ("single",)),
    Family("torch DDP", ("torch-ddp-amp",)),
    Family("FSDP2", ("torch-fsdp-mp",)),
    Family("DeepSpeed ZeRO-2", ("deepspeed-zero2",)),
    Family("DeepSpeed ZeRO-3", ("deepspeed-zero3",)),
    Family("ColossalAI Gemini (auto placement)", ("colossalai-gemini",), (("placement", "auto"),)),
    Family("ColossalAI LowLevelZero", ("colossalai-lowlevelzero1", "colossalai-lowlevelzero2")),
)


def family_of(case: Mapping[str, Any]) -> str | None:
    """The label of the first family that covers ``case`` (a ``Case.to_dict()``), or None."""
    return next((family.label for family in FAMILIES if family.covers(case)), None)

"""Mixed precision for the torch strategies: autocast, and a gradient scaler for fp16."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(precision: str) -> torch.dtype:
    return _DTYPES[precision]


@dataclass
class Autocast:
    """Runs forward passes under autocast and scales fp16 losses; fp32 is a no-op."""

    precision: str
    device: str

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; use bf16 on CPU")
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def context(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=dtype_of(self.precision))

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

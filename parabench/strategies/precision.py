"""Mixed precision for the torch strategies: autocast, and a gradient scaler for fp16; the fp16 loss scale."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# fp16: one static loss scale for every case and every reference, so both sides of a parity check scale alike.
# Each framework's own dynamic scaler starts at another scale and backs off by its own rule (torch's GradScaler
# halves at once, DeepSpeed's and ColossalAI's after 2 overflows), so after an overflow a case and its reference
# skipped different steps. At a static scale an overflowing step is skipped on both sides and the scale stays:
# torch's GradScaler pinned (``StaticGradScaler``), DeepSpeed's ``fp16.loss_scale``, ColossalAI's scaler with
# its minimum and maximum at the same value. 2**10: the workloads' largest first loss (≈ 10.8, GPT-2 small's
# 50,257-token vocabulary) times the scale stays far below fp16's largest value (65504), and a gradient of
# 1e-7 scaled by it is still a normal fp16 number (≥ 6.1e-5).
FP16_LOSS_SCALE = 2.0**10


def dtype_of(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def disable_tf32(device: torch.device) -> None:
    """On CUDA, compute fp32 matmuls and convolutions in fp32, not TF32 (10-bit mantissa), in this rank.

    cuDNN convolutions use TF32 by default on Ampere and later, and a framework may turn it on for matmuls:
    the fp32 parity rule (|Δloss| ≤ 1e-5) would then compare a case and its reference computed at different
    precisions. Called for every case (and reference) a rank runs, whatever its precision, so that no case's
    arithmetic depends on what an earlier case in the same rank set. On CPU nothing uses TF32: nothing is set.
    """
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class StaticGradScaler(torch.amp.GradScaler):
    """torch's GradScaler held at one scale: a step whose gradients overflow is skipped, and the scale stays."""

    def __init__(self, scale: float = FP16_LOSS_SCALE, device: str = "cuda") -> None:
        # growth_interval: never grow; update() sets the scale back after a backoff.
        super().__init__(device, init_scale=scale, growth_interval=2**31 - 1)
        self.static_scale = scale

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        super().update(self.static_scale)


@dataclass
class Autocast:
    """Runs forward passes under autocast and scales fp16 losses; fp32 is a no-op."""

    precision: str
    device: str

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; use bf16 on CPU")
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        self.scaler = StaticGradScaler() if self.precision == "fp16" else None

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

"""Precision set-up in the ranks: fp32 without TF32 on CUDA; one fp16 loss-scaling policy on both sides of parity."""

from __future__ import annotations

import pytest
import torch

from parabench.cases.case import Case
from parabench.runtime import train
from parabench.strategies.base import RankContext
from parabench.strategies.precision import FP16_LOSS_SCALE, Autocast, StaticGradScaler, disable_tf32


def tf32_flags() -> tuple[bool, bool, str]:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.fixture
def tf32_on():
    """The flags as a framework or an Ampere default may leave them: TF32 on for matmuls and convolutions."""
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def test_a_cuda_rank_computes_fp32_without_tf32(tf32_on):
    disable_tf32(torch.device("cuda", 0))  # sets flags only: no GPU needed
    assert tf32_flags() == (False, False, "highest")


def test_a_cpu_rank_leaves_the_flags_as_they_are(tf32_on):
    disable_tf32(torch.device("cpu"))
    assert tf32_flags() == (True, True, "high")


def test_every_case_a_rank_builds_sets_its_rank_up_for_its_device(monkeypatch):
    seen = []
    monkeypatch.setattr(train, "disable_tf32", seen.append)
    context = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    train.build(context, Case("single", "sgd", "mlp-digits", 1))
    assert seen == [torch.device("cpu")]


def test_the_static_scaler_skips_an_overflowing_step_and_keeps_its_scale():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scaler = StaticGradScaler(device="cpu")  # torch's GradScaler runs on CPU tensors too

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step((weight * torch.tensor([float("inf"), 1.0])).sum())  # an overflowing gradient
    assert torch.equal(weight.detach(), torch.ones(2))  # skipped
    assert scaler.get_scale() == FP16_LOSS_SCALE  # torch's own would have halved it
    for _ in range(3):
        step(weight.sum())  # a gradient of 1, scaled and unscaled
        assert scaler.get_scale() == FP16_LOSS_SCALE
    assert torch.equal(weight.detach(), torch.full((2,), 1 - 3 * 0.5))


def test_fp16_autocast_scales_at_the_static_scale():
    scaler = Autocast("fp16", "cuda").scaler
    assert isinstance(scaler, StaticGradScaler) and scaler.static_scale == FP16_LOSS_SCALE
    assert Autocast("bf16", "cpu").scaler is None

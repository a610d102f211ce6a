"""A workload, a strategy, an optimizer and cases, registered through parabench's entry points (pyproject.toml)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from parabench.cases.case import Case
from parabench.cases.optimizers import OptimizerSpec
from parabench.strategies.torch_native import TorchDDP
from parabench.workloads.base import Batch, TensorWorkload


class ExampleMlp(TensorWorkload):
    """A two-layer perceptron classifying 1024 synthetic 16-feature points into 4 classes (built in code, seeded)."""

    name = "example-mlp"
    default_global_batch = 32
    features, hidden, classes = 16, 64, 4

    def load_tensors(self) -> Batch:
        generator = torch.Generator().manual_seed(0)
        points = torch.randn(1024, self.features, generator=generator)
        teacher = torch.randn(self.features, self.classes, generator=generator)
        return {"points": points, "label": (points @ teacher).argmax(-1)}

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(self.features, self.hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(self.hidden, self.classes))

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["points"]), batch["label"])

    def accuracy(self, model: torch.nn.Module, batch: Batch) -> float:
        with torch.no_grad():
            return (model(batch["points"]).argmax(-1) == batch["label"]).float().mean().item()

    def describe(self) -> dict[str, Any]:
        return {"data": self.data_digest(), "model": [self.features, self.hidden, self.classes]}


class ExampleDDP(TorchDDP):
    """DDP with 1 MiB gradient buckets: a platform's own setting of a built-in strategy."""

    name = "example-ddp"
    family = "example"  # the pytest mark that selects it: pytest bench/ -m example
    formula = "torch-ddp"  # its model states are DDP's: the formulas check its memory as they check torch-ddp's

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model.to(self.context.device), bucket_cap_mb=1)


# RMSprop keeps one fp32 value per parameter (its square average): states=1 gives it a memory formula.
RMSPROP = OptimizerSpec("example-rmsprop", torch.optim.RMSprop, {"lr": 1e-3}, states=1)


def cases() -> list[Case]:
    """Cases beyond the matrix every registered workload gets: accumulation over two micro-batches, and more steps."""
    return [Case("torch-ddp", "sgd", "example-mlp", 2, grad_accum=2),
            Case("example-ddp", "example-rmsprop", "example-mlp", 2, steps=20)]

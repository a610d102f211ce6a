"""The optimizer registry: a class and its hyper-parameters per name.

Wrappers such as ZeroRedundancyOptimizer take the class and keyword arguments apart,
so an entry keeps them apart too instead of hiding them in a closure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from parabench.registry import Registry
from parabench.requirements import Requirements


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer: ``cls(params, **kwargs)``."""

    name: str
    cls: Callable[..., torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    requires: Requirements = Requirements()

    def build(self, params: Iterable[torch.nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
        return self.cls(params, **self.kwargs)


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register(name: str, cls: Callable[..., torch.optim.Optimizer], **kwargs: Any) -> OptimizerSpec:
    return OPTIMIZERS.add(name, OptimizerSpec(name, cls, kwargs))


# SGD with momentum is in the default matrix on purpose: Adam is invariant to the scale of
# the gradient and hides a missing 1/world_size in gradient averaging; SGD does not.
register("sgd", torch.optim.SGD, lr=0.05, momentum=0.9)
register("adam", torch.optim.Adam, lr=1e-3)
register("adamw", torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
register("adafactor", torch.optim.Adafactor, lr=1e-2)


# DeepSpeed's own optimizers, built on first use (their ops compile once per machine and are cached
# under TORCH_EXTENSIONS_DIR). Same hyper-parameters as ``adamw``.
def _deepspeed_cpu_adam(params, **kwargs):
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(params, **kwargs)


def _deepspeed_fused_adam(params, **kwargs):
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(params, **kwargs)


def _compiler() -> str | None:
    import shutil

    return None if shutil.which("c++") else "needs a C++ compiler (c++) to build its op on first use"


OPTIMIZERS.add("ds-cpuadam", OptimizerSpec(
    "ds-cpuadam", _deepspeed_cpu_adam, dict(lr=1e-3, weight_decay=0.01, adamw_mode=True),
    Requirements(packages=("deepspeed",), probes=(_compiler,))))
OPTIMIZERS.add("ds-fusedadam", OptimizerSpec(
    "ds-fusedadam", _deepspeed_fused_adam, dict(lr=1e-3, weight_decay=0.01, adam_w_mode=True),
    Requirements(packages=("deepspeed",), cuda=True, why_cuda=("FusedAdam is a CUDA kernel",))))

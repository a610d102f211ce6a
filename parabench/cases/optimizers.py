"""The optimizer registry: a class and its hyper-parameters per name.

Wrappers such as ZeroRedundancyOptimizer take the class and keyword arguments apart,
so an entry keeps them apart too instead of hiding them in a closure.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import torch

from parabench.cases.registry import PluginError, Registry
from parabench.cases.requirements import Requirements


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer: ``cls(params, **kwargs)``."""

    name: str
    cls: Callable[..., torch.optim.Optimizer]
    kwargs: dict[str, Any] = field(default_factory=dict)
    requires: Requirements = Requirements()
    # A distributed optimizer's one-process twin: the entry that computes the same update on full tensors.
    twin: str | None = None
    # An optimizer that counts a step's micro-batches itself (AdaScale) gets the case's accumulation here.
    accumulation_kwarg: str | None = None
    # Its one-process reference accumulates one micro-batch per replica, as the replicas' gradients are
    # what it measures (AdaScale's gain needs at least two gradients per step).
    reference_accumulates: bool = False
    # fp32 values per parameter of its state, for the model-state formulas (``parabench.measure.formulas``); None:
    # the formulas' own table's, where it names this optimizer (the built-ins), otherwise no formula.
    states: int | None = None

    def for_accumulation(self, grad_accum: int) -> "OptimizerSpec":
        """This entry for a case that accumulates ``grad_accum`` micro-batches per step."""
        if self.accumulation_kwarg is None:
            return self
        return replace(self, kwargs={**self.kwargs, self.accumulation_kwarg: grad_accum})

    def build(self, params: Iterable[torch.nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
        return self.cls(params, **self.kwargs)


def accept_optimizer(name: str, target: Any) -> OptimizerSpec:
    """A package's optimizer: an ``OptimizerSpec`` named ``name`` (as the built-ins below are declared)."""
    if not isinstance(target, OptimizerSpec):
        raise PluginError(f"names {target!r}, which is not a parabench.cases.optimizers.OptimizerSpec; declare "
                          f"OptimizerSpec({name!r}, <optimizer class or factory>, {{<its keyword arguments>}})")
    if target.name != name:
        raise PluginError(f"names optimizer {target.name!r}; the entry point's name must be the optimizer's name")
    if not callable(target.cls):
        raise PluginError(f"optimizer {name!r}: its cls {target.cls!r} is not callable; give the class or a "
                          f"factory taking (params, **kwargs)")
    if target.twin is not None and target.twin not in OPTIMIZERS.names():
        raise PluginError(f"optimizer {name!r}: its twin {target.twin!r} is not a built-in optimizer")
    return target


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", "parabench.optimizers", accept_optimizer)


def register(name: str, cls: Callable[..., torch.optim.Optimizer], **kwargs: Any) -> OptimizerSpec:
    return OPTIMIZERS.add(name, OptimizerSpec(name, cls, kwargs))


# SGD with momentum is in the default matrix on purpose: Adam is invariant to the scale of
# the gradient and hides a missing 1/world_size in gradient averaging; SGD does not.
register("sgd", torch.optim.SGD, lr=0.05, momentum=0.9)
register("adam", torch.optim.Adam, lr=1e-3)
register("adamw", torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
register("adafactor", torch.optim.Adafactor, lr=1e-2)


# fairscale's AdaScale: SGD whose step is scaled by a gain estimated from the replicas' gradient variance.
@functools.cache
def _adascale_class() -> type:
    from fairscale.optim import AdaScale

    class AdaScaleSGD(AdaScale):
        """AdaScale over SGD that takes the training loop's ``zero_grad(set_to_none=...)``."""

        def zero_grad(self, set_to_none: bool = True) -> None:
            super().zero_grad()  # AdaScale's takes no argument and calls SGD's (which sets to None)

    return AdaScaleSGD


def _adascale(params, num_gradients_to_accumulate: int = 1, **sgd):
    # is_scaled_loss: the training loop divides each micro-batch's loss by the accumulation count.
    return _adascale_class()(torch.optim.SGD(params, **sgd), num_gradients_to_accumulate=num_gradients_to_accumulate,
                             is_scaled_loss=True)


OPTIMIZERS.add("adascale", OptimizerSpec(
    "adascale", _adascale, dict(lr=0.05, momentum=0.9), Requirements(packages=("fairscale",)),
    accumulation_kwarg="num_gradients_to_accumulate", reference_accumulates=True))


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


# ColossalAI's optimizers. The plugins that know them (HybridParallel, LowLevelZero) swap Adafactor,
# LAMB and CAME for their distributed forms and set those up on their process groups themselves;
# the ``dist-*`` entries build the distributed form directly.
_COLOSSALAI = Requirements(packages=("colossalai",))


def _colossalai(name: str) -> Callable[..., torch.optim.Optimizer]:
    def build(params, **kwargs):
        import colossalai.nn.optimizer as optimizers

        from parabench.upstream.colossalai_cpu import ensure_cpu_patches

        params = list(params)
        ensure_cpu_patches(device_of(params))  # CPUAdam/HybridAdam's CPU kernel, for a case on the CPU
        galore = {key: kwargs.pop(key) for key in ("rank", "update_proj_gap", "scale", "proj_type") if key in kwargs}
        if galore:
            params = galore_groups(params, **galore)
        return getattr(optimizers, name)(params, **kwargs)

    build.__qualname__ = build.__name__ = f"colossalai.nn.optimizer.{name}"
    return build


def device_of(params: list) -> torch.device:
    """The device of the first of ``params`` (tensors, or param groups of them): the case's, where the strategy
    built its optimizer on the placed model (every strategy with a ColossalAI optimizer, and their references)."""
    for item in params:
        tensors = item["params"] if isinstance(item, dict) else item
        for tensor in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
            return tensor.device
    return torch.device("cpu")


def galore_groups(params: Iterable[torch.nn.Parameter], **projection: Any) -> list[dict]:
    """GaLore's param groups: matrices get the low-rank gradient projection, the rest plain AdamW."""
    params = list(params)
    matrices = [p for p in params if p.dim() == 2]
    return [{"params": matrices, **projection}, {"params": [p for p in params if p.dim() != 2]}]


def _colossalai_entry(name: str, class_name: str, needs: Requirements = Requirements(), twin: str | None = None,
                      **kwargs: Any) -> None:
    OPTIMIZERS.add(name, OptimizerSpec(name, _colossalai(class_name), kwargs, _COLOSSALAI + needs, twin))


# ColossalAI 0.5.0's Adafactor and DistributedAdaFactor set ``lr = None`` first thing in __init__, so only
# their relative step size works: min(1e-2, 1/sqrt(step)) times the parameter's RMS (their defaults).
_ADAFACTOR: dict[str, Any] = {}
_LAMB = dict(lr=1e-2, weight_decay=0.01, bias_correction=True)  # Lamb's default is False, DistributedLamb's True
_ADAM_KERNEL = Requirements(probes=(_compiler,))  # its CPU kernel is JIT-built (~90 s once, cached)
_colossalai_entry("hybrid-adam", "HybridAdam", _ADAM_KERNEL, lr=1e-3, weight_decay=0.01)
_colossalai_entry("cpu-adam", "CPUAdam", _ADAM_KERNEL, lr=1e-3, weight_decay=0.01)
_colossalai_entry("lamb", "Lamb", **_LAMB)
# LARS scales each layer's step by eeta·‖w‖/‖g‖ (eeta 1e-3), so its base rate is large.
_colossalai_entry("lars", "Lars", lr=1.0, momentum=0.9, weight_decay=1e-4)
_colossalai_entry("came", "CAME", lr=1e-3)
_colossalai_entry("colossalai-adafactor", "Adafactor", **_ADAFACTOR)
_colossalai_entry("dist-adafactor", "DistributedAdaFactor", twin="colossalai-adafactor", **_ADAFACTOR)
_colossalai_entry("dist-lamb", "DistributedLamb", twin="lamb", **_LAMB)
_colossalai_entry("dist-came", "DistributedCAME", twin="came", lr=1e-3)
# GaLore's low-rank projection with full-precision AdamW states (galore-torch), and ColossalAI's 8-bit form.
def _bitsandbytes_takes_percentile_clipping() -> str | None:
    """ColossalAI 0.5.0's GaLoreAdamW8bit passes ``percentile_clipping`` to bitsandbytes' Optimizer2State."""
    import importlib.metadata
    import inspect

    try:
        from bitsandbytes.optim.optimizer import Optimizer2State
    except ImportError:
        return "needs the package 'bitsandbytes' (pip install bitsandbytes)"
    if "percentile_clipping" in inspect.signature(Optimizer2State.__init__).parameters:
        return None
    return (f"passes percentile_clipping to bitsandbytes' Optimizer2State, which the installed bitsandbytes "
            f"{importlib.metadata.version('bitsandbytes')} no longer takes (install an older bitsandbytes)")


_GALORE = dict(lr=1e-3, rank=16, update_proj_gap=50, scale=0.25, proj_type="std")
_colossalai_entry("galore-adamw", "GaLoreAdamW", **_GALORE)
_colossalai_entry("galore", "GaLoreAdamW8bit", Requirements(
    cuda=True, why_cuda=("GaLoreAdamW8bit keeps 8-bit states in bitsandbytes' CUDA kernels",),
    probes=(_bitsandbytes_takes_percentile_clipping,)), **_GALORE)

"""The strategy registry. Adding a strategy: a ``Strategy`` subclass and one line below, or, from another package,
an entry point in the group ``parabench.strategies`` naming the subclass (``docs/plugins.md``)."""

from typing import Any

from parabench.cases.registry import PluginError, Registry, require_class
from parabench.strategies.base import RankContext, Strategy
from parabench.strategies.colossalai_booster import (
    ColossalAIGemini,
    ColossalAIHybrid,
    ColossalAILowLevelZero1,
    ColossalAILowLevelZero2,
    ColossalAITorchDDP,
    ColossalAITorchFSDP,
)
from parabench.strategies.deepspeed_zero import (
    DeepSpeedPipe,
    DeepSpeedZero0,
    DeepSpeedZero1,
    DeepSpeedZero2,
    DeepSpeedZero3,
)
from parabench.strategies.fairscale_native import FairscaleFSDP, FairscaleOSS, FairscalePipe, FairscaleSDP
from parabench.strategies.torch_native import (
    Single,
    SingleMaster,
    TorchDDP,
    TorchDDPAmp,
    TorchFSDP,
    TorchFSDP1,
    TorchFSDPMixed,
    TorchZero,
)
from parabench.strategies.torch_parallel import TorchMP, TorchPipe1F1B, TorchPipeGPipe, TorchTP

# What the registry, the matrix and a rank use of a strategy class (the rest has defaults in ``Strategy``).
STRATEGY_MEMBERS = ("name", "family", "setup")


def accept_strategy(name: str, target: Any) -> type[Strategy]:
    """A package's strategy: a ``Strategy`` subclass named ``name``."""
    if not isinstance(target, type):
        raise PluginError(f"names {target!r}, which is not a class; name a parabench.strategies.Strategy subclass")
    require_class(target, Strategy, STRATEGY_MEMBERS, "strategy", target.__qualname__,
                  "parabench.strategies.Strategy subclass")
    if target.name != name:
        raise PluginError(f"names strategy {target.name!r}; the entry point's name must be the strategy's name")
    if not isinstance(target.family, str) or not target.family.isidentifier():
        raise PluginError(f"strategy {name!r} has family {target.family!r}; a family is a pytest mark's name "
                          f"(torch, deepspeed, or the package's own word)")
    return target


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "parabench.strategies", accept_strategy)

for _strategy in (Single, SingleMaster, TorchDDP, TorchDDPAmp, TorchZero, TorchFSDP, TorchFSDPMixed, TorchFSDP1,
                  DeepSpeedZero0, DeepSpeedZero1, DeepSpeedZero2, DeepSpeedZero3, DeepSpeedPipe,
                  ColossalAITorchDDP, ColossalAITorchFSDP, ColossalAILowLevelZero1, ColossalAILowLevelZero2,
                  ColossalAIGemini, ColossalAIHybrid,
                  FairscaleOSS, FairscaleSDP, FairscaleFSDP, FairscalePipe,
                  TorchTP, TorchMP, TorchPipeGPipe, TorchPipe1F1B):
    STRATEGIES.add(_strategy.name, _strategy)

__all__ = ["STRATEGIES", "RankContext", "Strategy", "accept_strategy"]

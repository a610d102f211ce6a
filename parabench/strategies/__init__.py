"""The strategy registry. Adding a strategy: a ``Strategy`` subclass and one line below."""

from parabench.cases.registry import Registry
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

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

for _strategy in (Single, SingleMaster, TorchDDP, TorchDDPAmp, TorchZero, TorchFSDP, TorchFSDPMixed, TorchFSDP1,
                  DeepSpeedZero0, DeepSpeedZero1, DeepSpeedZero2, DeepSpeedZero3, DeepSpeedPipe,
                  ColossalAITorchDDP, ColossalAITorchFSDP, ColossalAILowLevelZero1, ColossalAILowLevelZero2,
                  ColossalAIGemini, ColossalAIHybrid,
                  FairscaleOSS, FairscaleSDP, FairscaleFSDP, FairscalePipe,
                  TorchTP, TorchMP, TorchPipeGPipe, TorchPipe1F1B):
    STRATEGIES.add(_strategy.name, _strategy)

__all__ = ["STRATEGIES", "RankContext", "Strategy"]

"""The strategy registry. Adding a strategy: a ``Strategy`` subclass and one line below."""

from parabench.registry import Registry
from parabench.strategies.base import RankContext, Strategy
from parabench.strategies.colossalai_booster import (ColossalAIGemini, ColossalAIHybrid, ColossalAILowLevelZero1,
                                                     ColossalAILowLevelZero2, ColossalAITorchDDP, ColossalAITorchFSDP)
from parabench.strategies.deepspeed_zero import (DeepSpeedPipe, DeepSpeedZero0, DeepSpeedZero1, DeepSpeedZero2,
                                                 DeepSpeedZero3)
from parabench.strategies.torch_native import Single, TorchDDP, TorchDDPAmp, TorchFSDP, TorchFSDP1, TorchZero

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

for _strategy in (Single, TorchDDP, TorchDDPAmp, TorchZero, TorchFSDP, TorchFSDP1,
                  DeepSpeedZero0, DeepSpeedZero1, DeepSpeedZero2, DeepSpeedZero3, DeepSpeedPipe,
                  ColossalAITorchDDP, ColossalAITorchFSDP, ColossalAILowLevelZero1, ColossalAILowLevelZero2,
                  ColossalAIGemini, ColossalAIHybrid):
    STRATEGIES.add(_strategy.name, _strategy)

__all__ = ["STRATEGIES", "RankContext", "Strategy"]

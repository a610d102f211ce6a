"""The workload registry. Adding a workload: a ``Workload`` subclass and one line below."""

from parabench.cases.registry import Registry
from parabench.workloads.base import Batch, Workload, concatenated, step_indices
from parabench.workloads.beans import VitBeans
from parabench.workloads.digits import MlpDigits, VitBaseDigits, VitDigits
from parabench.workloads.text import Gpt2Text, Gpt2Text3M, Gpt2Text124M

WORKLOADS: Registry[Workload] = Registry("workload")

for _workload in (MlpDigits(), VitDigits(), Gpt2Text(), Gpt2Text3M(), Gpt2Text124M(), VitBaseDigits(), VitBeans()):
    WORKLOADS.add(_workload.name, _workload)

__all__ = ["WORKLOADS", "Batch", "Workload", "concatenated", "step_indices"]

"""The workload registry. Adding a workload: a ``Workload`` subclass and one line below, or, from another package,
an entry point in the group ``parabench.workloads`` naming the subclass or an instance (``docs/plugins.md``)."""

from typing import Any

from parabench.cases.registry import PluginError, Registry, require_class
from parabench.workloads.base import Batch, Workload, concatenated, step_indices
from parabench.workloads.beans import VitBeans
from parabench.workloads.digits import MlpDigits, VitBaseDigits, VitDigits
from parabench.workloads.text import Gpt2Text, Gpt2Text3M, Gpt2Text124M

# What the registry and the training loop use of a workload (the rest has defaults in ``Workload``).
WORKLOAD_MEMBERS = ("name", "build_model", "num_examples", "batch", "loss")


def accept_workload(name: str, target: Any) -> Workload:
    """A package's workload: a ``Workload`` subclass (built with no arguments) or an instance, named ``name``."""
    cls = target if isinstance(target, type) else type(target)
    require_class(cls, Workload, WORKLOAD_MEMBERS, "workload", repr(target),
                  "parabench.workloads.Workload subclass or instance")
    if isinstance(target, type):
        try:
            target = target()
        except Exception as error:
            raise PluginError(f"workload class {cls.__qualname__}() failed: {type(error).__name__}: {error}") from error
    if target.name != name:
        raise PluginError(f"names workload {target.name!r}; the entry point's name must be the workload's name")
    return target


WORKLOADS: Registry[Workload] = Registry("workload", "parabench.workloads", accept_workload)

for _workload in (MlpDigits(), VitDigits(), Gpt2Text(), Gpt2Text3M(), Gpt2Text124M(), VitBaseDigits(), VitBeans()):
    WORKLOADS.add(_workload.name, _workload)

__all__ = ["WORKLOADS", "Batch", "Workload", "accept_workload", "concatenated", "step_indices"]

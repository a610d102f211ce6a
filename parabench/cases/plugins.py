"""The cases of what installed packages register (``docs/plugins.md``): ``bench/test_plugins.py`` runs them.

A package's workloads, strategies and optimizers come in through the entry-point groups of their registries
(``parabench.workloads``, ``parabench.strategies``, ``parabench.optimizers``). Each gets the matrix a built-in
of its kind gets:

* a workload: PyTorch's strategies with ``sgd`` and ``adamw`` (as ``mlp-digits`` in ``bench/test_torch_strategies.py``);
* a strategy: ``sgd`` and ``adamw`` on ``mlp-digits`` and on the packages' workloads;
* an optimizer: ``single`` and ``torch-ddp`` on ``mlp-digits`` and on the packages' workloads.

A package adds cases of its own (more steps, accumulation, options, another world size) through the group
``parabench.cases``: an entry point naming a ``Case``, a list of them, or a function of no arguments returning one.
"""

from __future__ import annotations

from typing import Any, Iterable

from parabench.cases.case import Case
from parabench.cases.matrix import cases
from parabench.cases.optimizers import OPTIMIZERS
from parabench.cases.registry import PluginError, entry_points, origin
from parabench.strategies import STRATEGIES
from parabench.workloads import WORKLOADS

CASES_GROUP = "parabench.cases"
# PyTorch's strategies and the optimizers a workload is run with (bench/test_torch_strategies.py's mlp-digits row)
WORKLOAD_STRATEGIES = ("single", "torch-ddp", "torch-ddp-amp", "torch-zero", "torch-fsdp", "torch-fsdp1")
WORKLOAD_OPTIMIZERS = ("sgd", "adamw")
OPTIMIZER_STRATEGIES = ("single", "torch-ddp")
BUILT_IN_WORKLOAD = "mlp-digits"  # where a package's strategy or optimizer runs beside its own workloads


def load_plugins() -> dict[str, list[str]]:
    """Read every registry's entry points now (the rank server does, before it forks); kind → the names added."""
    return {"workload": WORKLOADS.plugins(), "strategy": STRATEGIES.plugins(), "optimizer": OPTIMIZERS.plugins()}


def matrix_cases() -> list[Case]:
    """The matrix of every workload, strategy and optimizer a package registered."""
    workloads, strategies, optimizers = WORKLOADS.plugins(), STRATEGIES.plugins(), OPTIMIZERS.plugins()
    found = cases(WORKLOAD_STRATEGIES, WORKLOAD_OPTIMIZERS, workloads)
    found += cases(strategies, WORKLOAD_OPTIMIZERS, [BUILT_IN_WORKLOAD, *workloads])
    found += cases(OPTIMIZER_STRATEGIES, optimizers, [BUILT_IN_WORKLOAD, *workloads])
    return found


def declared_cases() -> list[Case]:
    """The cases packages declare in the group ``parabench.cases``."""
    found = []
    for entry_point in entry_points(CASES_GROUP):
        who = origin(entry_point)
        try:
            target = entry_point.load()
        except Exception as error:
            raise PluginError(f"{who}: does not import: {type(error).__name__}: {error}") from error
        try:
            found += checked(target() if callable(target) and not isinstance(target, Case) else target)
        except (PluginError, LookupError, ValueError) as error:
            raise PluginError(f"{who}: {error}") from None
    return found


def checked(declared: Any) -> list[Case]:
    """``declared`` as a list of cases whose names are registered."""
    items = [declared] if isinstance(declared, Case) else declared
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        raise PluginError(f"gives {declared!r}; give a Case or a list of them")
    items = list(items)
    for item in items:
        if not isinstance(item, Case):
            raise PluginError(f"gives {item!r}, which is not a parabench.cases.case.Case")
        # The same checks ``cases`` makes: the names are registered, the strategy takes the options.
        STRATEGIES.get(item.strategy).validate_options(dict(item.options))
        OPTIMIZERS.get(item.optimizer), WORKLOADS.get(item.workload)
    return items


def plugin_cases() -> list[Case]:
    """Every case of what packages registered: the matrix, then the cases they declare, each once."""
    return list(dict.fromkeys(matrix_cases() + declared_cases()))


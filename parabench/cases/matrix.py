"""Cases as pytest parameters: the cross product a benchmark module asks for, with readable ids."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Iterable, Sequence

import pytest

from parabench.cases.case import Case
from parabench.cases.optimizers import OPTIMIZERS
from parabench.cases.requirements import Machine, unmet
from parabench.measure.formulas import formula_of
from parabench.strategies import STRATEGIES
from parabench.workloads import WORKLOADS


def cases(strategies: Sequence[str], optimizers: Sequence[str], workloads: Sequence[str],
          world_sizes: Sequence[int] = (2,), precisions: Sequence[str] | None = None, **fields) -> list[Case]:
    """Every combination; a strategy gets each precision it supports (of ``precisions``, if given).

    Strategies that run in one process (``single``) get world size 1 whatever ``world_sizes`` says.
    """
    found = []
    for strategy, optimizer, workload in itertools.product(strategies, optimizers, workloads):
        cls = STRATEGIES.get(strategy)
        OPTIMIZERS.get(optimizer), WORKLOADS.get(workload)  # unknown names fail at collection
        cls.validate_options(dict(fields.get("options", ())))
        formula_of(strategy)  # a formula a package's strategy declares must exist
        sizes = (1,) if cls.requires.max_world_size == 1 else world_sizes
        for world_size in sizes:
            for precision in (p for p in cls.precisions if precisions is None or p in precisions):
                found.append(Case(strategy, optimizer, workload, world_size, precision, **fields))
    return list(dict.fromkeys(found))


def params(found: Iterable[Case], *marks: pytest.MarkDecorator) -> list:
    """``pytest.param`` per case, id = case id, each marked with its strategy's family."""
    out = []
    for case in found:
        family = STRATEGIES.get(case.strategy).family
        out.append(pytest.param(case, id=case.id, marks=(getattr(pytest.mark, family), *marks)))
    return out


def case_packages(case: Case) -> tuple[str, ...]:
    """The packages a case needs (its strategy's, optimizer's and workload's)."""
    needs = (STRATEGIES.get(case.strategy).requirements(case.precision, dict(case.options))
             + OPTIMIZERS.get(case.optimizer).requires + WORKLOADS.get(case.workload).requires)
    return needs.packages


def skip_reason(case: Case, machine: Machine) -> str | None:
    """Why this machine cannot run ``case``, decided without spawning anything; None if it can."""
    strategy = STRATEGIES.get(case.strategy)
    if not strategy.supports(case.precision):
        return f"{case.strategy} does not run in {case.precision}; it supports {', '.join(strategy.precisions)}"
    checks = [(case.strategy, strategy.requirements(case.precision, dict(case.options))),
              (case.optimizer, OPTIMIZERS.get(case.optimizer).requires),
              (case.workload, WORKLOADS.get(case.workload).requires)]
    for who, requirements in checks:
        reason = unmet(who, requirements, case.world_size, machine)
        if reason:
            return reason
    return None


def reference_of(case: Case) -> Case:
    """The one-process case ``case`` is checked against (a distributed optimizer's twin stands in for it).

    In bf16/fp16 a strategy that trains low-precision weights from fp32 masters is held against
    ``single-master``, which does the same in one process; the others against ``single`` (autocast).
    """
    spec = OPTIMIZERS.get(case.optimizer)
    strategy = STRATEGIES.get(case.strategy)
    one_process = "single-master" if strategy.master_weights and case.precision != "fp32" else "single"
    if spec.reference_accumulates and strategy.requires.max_world_size != 1:
        return case.reference(spec.twin, grad_accum=case.world_size * case.grad_accum, strategy=one_process)
    return case.reference(spec.twin, strategy=one_process)


def equivalents_of(reference: Case) -> list[Case]:
    """One-process runs that compute ``reference``'s updates in exact arithmetic: its global batch split into
    ``checks.SPREAD_SPLITS`` micro-batches. Their gaps to it are its own rounding spread (``checks.SpreadTolerance``)."""
    from parabench.measure.checks import SPREAD_SPLITS

    batch = reference.global_batch or WORKLOADS.get(reference.workload).default_global_batch
    found = [replace(reference, grad_accum=reference.grad_accum * k) for k in SPREAD_SPLITS
             if batch % (reference.grad_accum * k) == 0]
    if not found:
        raise ValueError(f"{reference.id}: global batch {batch} splits into none of {SPREAD_SPLITS} micro-batches; "
                         f"choose a global batch divisible by {min(SPREAD_SPLITS)}")
    return found

"""Faults injected into a case on purpose, so the harness's own tests can prove they are caught.

A fault is a case option (``inject=raise``), so it shows in the case id and can never hide in a
stored result. It fires on the last rank at step ``inject_step`` (default 1).
"""

from __future__ import annotations

import time

from parabench.case import Case

FAULTS = ("raise", "hang")


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def before_step(case: Case, rank: int, world_size: int, step: int) -> None:
    fault = case.option("inject")
    if fault is None:
        return
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if step != case.option("inject_step", 1) or rank != world_size - 1:
        return
    if fault == "raise":
        raise InjectedFault(f"injected failure on rank {rank} at step {step}")
    if fault == "hang":
        # The other ranks go on into the step's gradient all-reduce and wait there for this one.
        time.sleep(10**6)

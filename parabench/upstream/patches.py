"""Workarounds applied to upstream packages at run time, and the record of which are in force.

A patch is applied inside a rank process, once, and stays for that process's life. Every case result
records the patches in force in its ranks (``RankResult.patches``), so a number measured with a
workaround is never mistaken for one measured without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_IN_FORCE: list[str] = []


@dataclass(frozen=True)
class Patch:
    """One workaround: what upstream does, what we do instead, and when the patch can go."""

    name: str
    upstream: str    # the upstream behaviour worked around (package, version, place)
    removable: str   # the condition under which the patch is no longer needed
    apply: Callable[[], None]

    def ensure(self) -> None:
        """Apply once per process."""
        if self.name not in _IN_FORCE:
            self.apply()
            _IN_FORCE.append(self.name)


def in_force() -> tuple[str, ...]:
    """The names of the patches applied in this process, in the order applied."""
    return tuple(_IN_FORCE)

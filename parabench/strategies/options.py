"""Checks of a strategy's case options, shared by the strategies (run at collection)."""

from __future__ import annotations

from typing import Mapping


def check_known(cls: type, options: Mapping[str, object]) -> None:
    """Every option is one of ``cls.option_names``."""
    unknown = set(options) - set(cls.option_names)
    if unknown:
        raise ValueError(f"{cls.name}: unknown option(s) {sorted(unknown)}; known: {', '.join(cls.option_names)}")


def check_integer(cls: type, options: Mapping[str, object], key: str, least: int, what: str) -> None:
    """Option ``key``, when given, is an integer ≥ ``least``."""
    value = options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ValueError(f"{cls.name}: {key} is {what} (an integer ≥ {least}), got {value!r}")

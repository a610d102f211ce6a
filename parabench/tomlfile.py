"""The project's TOML data files (policy, profiles, known deviations, published figures): read, and their keys checked.

Each file's reader raises its own error class; the messages name the file, the key and what it takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def read_toml(path: Path, error: type[Exception], missing: str) -> dict[str, Any]:
    """``path``'s tables; ``error`` naming the file when it is missing (``missing`` says what to do) or malformed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid TOML ({problem}); fix it or restore it from git") from None


def check_keys(path: Path, where: str, table: Any, allowed: set[str], error: type[Exception]) -> None:
    """``table`` (at ``where``, e.g. ``"profile.ci."``) is a table whose keys are all in ``allowed``."""
    if not isinstance(table, dict):
        raise error(f"{path}: {where.rstrip('.')} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise error(f"{path}: unknown key {where}{unknown[0]}; known here: {', '.join(sorted(allowed))}")

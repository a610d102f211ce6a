"""The gate's policy, read from ``baselines/policy.toml``: metric → rule, with per-case overrides.

The policy is data so that a threshold is changed in a reviewed one-line diff, not in code.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parabench.keys import KEY_FIELDS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from parabench.verdict import BytesRule, CurveRule, TimeRule

POLICY_FORMAT = 1
DEVICES = ("cpu", "cuda")
BASES = ("absolute", "normalized")
MEMORY_METRICS = ("state_bytes", "peak_allocated_bytes", "cuda_max_reserved_bytes", "rss_bytes")
RULE_FIELDS = {"time": {"basis", "history", "spread_factor", "threshold", "alpha", "min_samples"},
               "memory": set(MEMORY_METRICS), "loss": set(DEVICES)}


class PolicyError(ValueError):
    """The policy file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Rules:
    """Every rule for one case on one device."""

    time: TimeRule
    time_basis: str
    time_history: int  # newest stored runs of the same key whose step times are pooled as the baseline
    time_spread_factor: float  # the threshold is at least this × the spread of those runs' medians
    memory: dict[str, BytesRule]
    loss: CurveRule


@dataclass(frozen=True)
class Policy:
    path: str
    key_fields: tuple[str, ...]
    ignore_packages: tuple[str, ...]
    rules_table: dict[str, Any]                      # time, memory, loss
    overrides: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]

    def rules(self, case_id: str, device: str) -> Rules:
        """The rules for ``case_id`` on ``device``: the table, then each matching override in file order."""
        table = copy.deepcopy(self.rules_table)
        for patterns, override in self.overrides:
            if any(fnmatch.fnmatchcase(case_id, p) for p in patterns):
                _merge(table, override)
        return _build(table, device, self.path)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no policy file; the gate needs one (see baselines/README.md)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: not valid TOML ({error}); fix it or restore it from git") from None
    _check_keys(path, "", raw, {"format", "key", "time", "memory", "loss", "override"})
    if raw.get("format") != POLICY_FORMAT:
        raise PolicyError(f"{path}: policy format {raw.get('format')!r} is not known; this version reads "
                          f"format = {POLICY_FORMAT}")
    key = raw.get("key", {})
    _check_keys(path, "key.", key, {"fields", "ignore_packages"})
    fields = tuple(key.get("fields", KEY_FIELDS))
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise PolicyError(f"{path}: key.fields has unknown {sorted(unknown)}; known: {', '.join(KEY_FIELDS)}")
    table = {section: raw.get(section, {}) for section in RULE_FIELDS}
    for section, allowed in RULE_FIELDS.items():
        _check_keys(path, f"{section}.", table[section], allowed)
    overrides = []
    for i, entry in enumerate(raw.get("override", [])):
        _check_keys(path, f"override[{i}].", entry, {"cases", *RULE_FIELDS})
        patterns = entry.get("cases")
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns or ())
        if not patterns:
            raise PolicyError(f"{path}: override[{i}] needs cases = \"pattern\" (fnmatch on case ids)")
        for section in RULE_FIELDS:
            _check_keys(path, f"override[{i}].{section}.", entry.get(section, {}), RULE_FIELDS[section])
        overrides.append((patterns, {s: entry[s] for s in RULE_FIELDS if s in entry}))
    policy = Policy(str(path), fields, tuple(key.get("ignore_packages", ())), table, tuple(overrides))
    for patterns, _ in policy.overrides:  # every combination builds, so errors show now, not mid-gate
        for device in DEVICES:
            policy.rules(patterns[0], device)
    for device in DEVICES:
        policy.rules("", device)
    return policy


def _merge(into: dict, update: dict) -> None:
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            _merge(into[name], value)
        else:
            into[name] = copy.deepcopy(value)


def _check_keys(path: Path, where: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise PolicyError(f"{path}: {where.rstrip('.')} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise PolicyError(f"{path}: unknown key {where}{sorted(unknown)[0]}; known here: {', '.join(sorted(allowed))}")


def _build(table: dict[str, Any], device: str, path: str) -> Rules:
    time = dict(table["time"])
    basis = time.pop("basis", "absolute")
    if isinstance(basis, dict):
        basis = basis.get(device, "absolute")
    if basis not in BASES:
        raise PolicyError(f"{path}: time.basis {basis!r} is not known; use one of {', '.join(BASES)}")
    spread_factor = time.pop("spread_factor", 0.0)
    if not isinstance(spread_factor, (int, float)) or spread_factor < 0:
        raise PolicyError(f"{path}: time.spread_factor must be a number ≥ 0, not {spread_factor!r}")
    history = time.pop("history", 1)
    if not isinstance(history, int) or history < 1:
        raise PolicyError(f"{path}: time.history must be a whole number ≥ 1, not {history!r}")
    try:
        memory = {}
        for metric in MEMORY_METRICS:
            rule = table["memory"].get(metric, {})
            _check_keys(Path(path), f"memory.{metric}.", rule, {"rtol", "atol", "informational"})
            memory[metric] = BytesRule(**rule)
        loss = table["loss"].get(device, {})
        _check_keys(Path(path), f"loss.{device}.", loss, {"exact", "atol", "rtol"})
        return Rules(TimeRule(**time), basis, history, float(spread_factor), memory, CurveRule(**loss))
    except (TypeError, ValueError) as error:
        raise PolicyError(f"{path}: {error}") from None

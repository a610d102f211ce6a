"""The gate's policy, read from ``baselines/policy.toml``: metric → rule, with per-case overrides.

The policy is data so that a threshold is changed in a reviewed one-line diff, not in code.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parabench.gate.keys import KEY_FIELDS
from parabench.gate.verdict import BytesRule, CurveRule, PairedRule, TimeRule
from parabench.tomlfile import check_keys, read_toml

POLICY_FORMAT = 1
DEVICES = ("cpu", "cuda")
BASES = ("absolute", "normalized")
MEMORY_METRICS = ("state_bytes", "peak_allocated_bytes", "cuda_max_reserved_bytes", "rss_bytes")
COST_METRICS = ("comm", "flops")  # one step's collectives and matmul FLOPs (parabench/measure/costs.py)
RULE_FIELDS = {"time": {"basis", "history", "spread_factor", "max_threshold", "min_runs", "threshold", "alpha", "min_samples"},
               "memory": set(MEMORY_METRICS), "cost": set(COST_METRICS), "loss": set(DEVICES)}
AB_FIELDS = {"threshold", "alpha", "rounds"}  # the paired same-session verdict (parabench/ab/paired.py)


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
    cost: dict[str, BytesRule] | None = None  # comm, flops: exact unless the policy says otherwise
    # above this effective threshold, step time is not judged against stored runs ("unjudged": use --bench-ab)
    time_max_threshold: float = 0.15
    # fewer stored runs than this say nothing of their own spread: step time is not judged against them
    time_min_runs: int = 1


@dataclass(frozen=True)
class Policy:
    path: str
    key_fields: tuple[str, ...]
    ignore_packages: tuple[str, ...]
    # "compare": a stored run of other library versions is compared, the versions named ("did the upgrade make
    # it slower?"); "equal": only runs of the same versions are (like the other key fields).
    versions: str
    rules_table: dict[str, Any]                      # time, memory, loss
    overrides: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    ab: dict[str, Any]  # the [ab] table: PairedRule's fields

    @property
    def compared_fields(self) -> tuple[str, ...]:
        """The key fields stored runs must match to be compared: all of them, less the library versions where the
        policy compares across them (``versions = "compare"``)."""
        return tuple(f for f in self.key_fields if f != "versions" or self.versions == "equal")

    def ab_rule(self):
        """The paired A/B rule (``parabench.gate.verdict.PairedRule``) of this policy."""
        return PairedRule(**self.ab)

    def rules(self, case_id: str, device: str) -> Rules:
        """The rules for ``case_id`` on ``device``: the table, then each matching override in file order."""
        table = copy.deepcopy(self.rules_table)
        for patterns, override in self.overrides:
            if any(fnmatch.fnmatchcase(case_id, p) for p in patterns):
                _merge(table, override)
        return _build(table, device, self.path)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    raw = read_toml(path, PolicyError, "no policy file; the gate needs one (see baselines/README.md)")
    _check_keys(path, "", raw, {"format", "key", "time", "memory", "cost", "loss", "override", "ab"})
    ab = raw.get("ab", {})
    _check_keys(path, "ab.", ab, AB_FIELDS)
    _check_values(path, "ab", ab, SCHEMA["ab"])
    if raw.get("format") != POLICY_FORMAT:
        raise PolicyError(f"{path}: policy format {raw.get('format')!r} is not known; this version reads "
                          f"format = {POLICY_FORMAT}")
    key = raw.get("key", {})
    _check_keys(path, "key.", key, {"fields", "ignore_packages", "versions"})
    _check_values(path, "key", key, SCHEMA["key"])
    fields = tuple(key.get("fields", KEY_FIELDS))
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise PolicyError(f"{path}: key.fields has unknown {sorted(unknown)}; known: {', '.join(KEY_FIELDS)}")
    table = {section: raw.get(section, {}) for section in RULE_FIELDS}
    for section, allowed in RULE_FIELDS.items():
        _check_keys(path, f"{section}.", table[section], allowed)
    _check_sections(path, "", table)
    overrides = []
    if not isinstance(raw.get("override", []), list):
        raise PolicyError(f"{path}: override must be an array of tables ([[override]] entries)")
    for i, entry in enumerate(raw.get("override", [])):
        _check_keys(path, f"override[{i}].", entry, {"cases", *RULE_FIELDS})
        for section in RULE_FIELDS:
            _check_keys(path, f"override[{i}].{section}.", entry.get(section, {}), RULE_FIELDS[section])
        _check_sections(path, f"override[{i}]", entry)
        if "cases" in entry:
            _check_values(path, f"override[{i}]", entry, {"cases": _PATTERNS})
        patterns = entry.get("cases")
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns or ())
        if not patterns:
            raise PolicyError(f"{path}: override[{i}] needs cases = \"pattern\" (fnmatch on case ids)")
        overrides.append((patterns, {s: entry[s] for s in RULE_FIELDS if s in entry}))
    policy = Policy(str(path), fields, tuple(key.get("ignore_packages", ())), key.get("versions", "compare"), table,
                    tuple(overrides), dict(ab))
    for patterns, _ in policy.overrides:  # every combination builds, so errors show now, not mid-gate
        for device in DEVICES:
            policy.rules(patterns[0], device)
    for device in DEVICES:
        policy.rules("", device)
    return policy


# What each value takes: (check, what it takes). A wrong one is a usage error naming the table, the key,
# what it got and what it takes, before any rule is built.
def _number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False,
            integer: bool = False, note: str = ""):
    kind = "a whole number" if integer else "a number"
    bounds = [f"{'>' if low_open else '≥'} {low:g}"] + ([f"{'<' if high_open else '≤'} {high:g}"]
                                                      if high is not None else [])
    takes = f"{kind} {' and '.join(bounds)}" + (f" ({note})" if note else "")

    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    return check, takes


_BOOLEAN = (lambda value: isinstance(value, bool), "true or false")
_BASIS = (lambda value: value in BASES or (isinstance(value, dict) and set(value) <= set(DEVICES)
                                           and all(v in BASES for v in value.values())),
          f"one of {', '.join(repr(b) for b in BASES)}, or a table of them by device "
          f"({', '.join(DEVICES)}), e.g. {{ cpu = \"absolute\" }}")
_STRINGS = (lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings")
_PATTERNS = (lambda value: isinstance(value, str) or (isinstance(value, list) and value
                                                      and all(isinstance(v, str) for v in value)),
             "a case-id pattern or a list of them (fnmatch), e.g. \"torch-fsdp-*\"")
_TOL = _number(0, note="a fraction: 0.01 is 1 %")
SCHEMA: dict[str, dict[str, tuple]] = {
    "time": {"basis": _BASIS, "history": _number(1, integer=True), "spread_factor": _number(0),
             "max_threshold": _number(0, 1, low_open=True, high_open=True, note="a fraction: 0.15 is 15 %"),
             "min_runs": _number(1, integer=True),
             "threshold": _number(0, 1, high_open=True, note="a fraction: 0.08 is 8 %"),
             "alpha": _number(0, 1, low_open=True, high_open=True), "min_samples": _number(3, integer=True)},
    "memory": {"rtol": _TOL, "atol": _number(0, integer=True, note="bytes"), "informational": _BOOLEAN},
    "loss": {"exact": _BOOLEAN, "atol": _number(0), "rtol": _number(0)},
    "ab": {"threshold": _number(0, 1, high_open=True, note="a fraction: 0.05 is 5 %"),
           "alpha": _number(0, 1, low_open=True, high_open=True, note="per session"),
           "rounds": _number(2, integer=True)},
    "key": {"fields": _STRINGS, "ignore_packages": _STRINGS,
            "versions": (lambda value: value in ("compare", "equal"),
                         "\"compare\" (a stored run of other library versions is compared, naming them) or "
                         "\"equal\" (only runs of the same versions are)")},
}


def _check_values(path: Path, where: str, table: dict[str, Any], schema: dict[str, tuple]) -> None:
    for name, value in table.items():
        if name in schema:
            check, takes = schema[name]
            if not check(value):
                raise PolicyError(f"{path}: [{where}] {name} = {value!r}: takes {takes}")


def _check_sections(path: Path, where: str, sections: dict[str, Any]) -> None:
    """Every value of a time/memory/loss table (the top level's or an override's) against ``SCHEMA``."""
    prefix = f"{where}." if where else ""
    _check_values(path, f"{prefix}time", sections.get("time", {}), SCHEMA["time"])
    for metric, rule in sections.get("memory", {}).items():
        _check_keys(path, f"{prefix}memory.{metric}.", rule, {"rtol", "atol", "informational"})
        _check_values(path, f"{prefix}memory.{metric}", rule, SCHEMA["memory"])
    for metric, rule in sections.get("cost", {}).items():
        _check_keys(path, f"{prefix}cost.{metric}.", rule, {"rtol", "atol", "informational"})
        _check_values(path, f"{prefix}cost.{metric}", rule, SCHEMA["memory"])
    for device, rule in sections.get("loss", {}).items():
        _check_keys(path, f"{prefix}loss.{device}.", rule, {"exact", "atol", "rtol"})
        _check_values(path, f"{prefix}loss.{device}", rule, SCHEMA["loss"])


def _merge(into: dict, update: dict) -> None:
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            _merge(into[name], value)
        else:
            into[name] = copy.deepcopy(value)


def _check_keys(path: Path, where: str, table: Any, allowed: set[str]) -> None:
    check_keys(path, where, table, allowed, PolicyError)


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
    max_threshold = time.pop("max_threshold", 0.15)
    min_runs = time.pop("min_runs", 1)
    history = time.pop("history", 1)
    if not isinstance(history, int) or history < 1:
        raise PolicyError(f"{path}: time.history must be a whole number ≥ 1, not {history!r}")
    try:
        memory = {}
        for metric in MEMORY_METRICS:
            rule = table["memory"].get(metric, {})
            _check_keys(Path(path), f"memory.{metric}.", rule, {"rtol", "atol", "informational"})
            memory[metric] = BytesRule(**rule)
        cost = {metric: BytesRule(**table["cost"].get(metric, {})) for metric in COST_METRICS}
        loss = table["loss"].get(device, {})
        _check_keys(Path(path), f"loss.{device}.", loss, {"exact", "atol", "rtol"})
        return Rules(TimeRule(**time), basis, history, float(spread_factor), memory, CurveRule(**loss), cost,
                     float(max_threshold), int(min_runs))
    except (TypeError, ValueError) as error:
        raise PolicyError(f"{path}: {error}") from None

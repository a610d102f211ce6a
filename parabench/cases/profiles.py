"""Profiles: which of bench/'s cases a session runs (``--bench-profile``), read from ``bench/profiles.toml``.

A profile is data: the marks and case-id patterns it leaves out, optionally on top of another profile's, or
the patterns it keeps alone (``select``: a selection such as the one-GPU check's or one experiment's, not a trimmed matrix).
``slow_bf16`` names the bf16 cases that still run on a host whose bf16 kernels are slow (see
``parabench.measure.hostspeed``); every other bf16 case of the profile is skipped there, with the reason.

Patterns (``exclude``, ``select``, ``bf16_on_slow_hosts``) are fnmatch patterns over node ids, which read
``HEAD[CASE]`` (``bench/test_x.py::test_train[deepspeed-zero1-adamw-gpt2_text-w2-fp32-ga2]``). The first
``[`` of a pattern is the node id's own ``[``: the part before it matches ``HEAD`` and the part after it
matches ``CASE]``, where brackets are fnmatch classes (``deepspeed-zero[01]-*``) and a ``]`` outside a class
is the node id's closing one (``*-offload]`` ends there). A pattern without ``[`` matches the whole node id
(``bench/test_scaling.py::*``, ``*vit_digits*``). ``[[]`` is a literal ``[`` inside the case id.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parabench.tomlfile import check_keys, read_toml

PROFILES_FORMAT = 1
_PROFILE_KEYS = {"description", "extends", "exclude", "exclude_marks", "select", "bf16_on_slow_hosts"}


class ProfileError(ValueError):
    """The profiles file is malformed; the message names the file, the table and the key."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    exclude: tuple[str, ...]        # patterns over test node ids (``bench/test_x.py::test_train[id]``, see ``matches``)
    exclude_marks: tuple[str, ...]
    bf16_on_slow_hosts: tuple[str, ...] | None  # patterns of the bf16 cases kept where bf16 is slow; None: all
    select: tuple[str, ...] = ()   # patterns of the only node ids the profile keeps; empty: every one not excluded

    def excludes(self, nodeid: str, marks: set[str]) -> bool:
        if self.select and not any(matches(nodeid, p) for p in self.select):
            return True
        return bool(marks & set(self.exclude_marks)) or any(matches(nodeid, p) for p in self.exclude)

    def keeps_on_slow_bf16(self, nodeid: str) -> bool:
        return self.bf16_on_slow_hosts is None or any(matches(nodeid, p) for p in self.bf16_on_slow_hosts)


def matches(nodeid: str, pattern: str) -> bool:
    """Whether ``pattern`` matches ``nodeid``: its first ``[`` is the node id's, later brackets are classes.

    ``test_train[deepspeed-zero[01]-*`` matches ``test_train[deepspeed-zero0-…]`` and ``…zero1-…]``, and a
    pattern with ``[`` never matches a node id without one (a test that is not parametrized).
    """
    if "[" not in pattern:
        return fnmatch.fnmatchcase(nodeid, pattern)
    pattern_head, _, pattern_case = pattern.partition("[")
    # The head of a node id (path::test) holds no '[', so its first one opens the case id.
    head, bracket, case = nodeid.partition("[")
    return bool(bracket) and fnmatch.fnmatchcase(head, pattern_head) and fnmatch.fnmatchcase(case, pattern_case)


@dataclass(frozen=True)
class Profiles:
    path: str
    profiles: dict[str, Profile]
    slow_bf16_ratio: float  # a host is slow at bf16 when its bf16 matmul takes more than this × fp32's

    def get(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ProfileError(f"--bench-profile={name}: no such profile in {self.path}; "
                               f"known: {', '.join(self.profiles)}")
        return self.profiles[name]


def load_profiles(path: str | Path) -> Profiles:
    path = Path(path)
    raw = read_toml(path, ProfileError, "no profiles file; restore it from git")
    _keys(path, "", raw, {"format", "slow_bf16", "profile"})
    if raw.get("format") != PROFILES_FORMAT:
        raise ProfileError(f"{path}: format {raw.get('format')!r} is not known; this version reads "
                           f"format = {PROFILES_FORMAT}")
    slow = raw.get("slow_bf16", {})
    _keys(path, "slow_bf16.", slow, {"ratio"})
    ratio = slow.get("ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 1:
        raise ProfileError(f"{path}: [slow_bf16] ratio = {ratio!r}; it takes a number above 1 (bf16 matmul "
                           f"time over fp32's)")
    tables = raw.get("profile", {})
    if not isinstance(tables, dict) or not tables:
        raise ProfileError(f"{path}: no [profile.NAME] table; it needs at least one")
    profiles: dict[str, Profile] = {}

    def build(name: str, seen: tuple[str, ...] = ()) -> Profile:
        if name in profiles:
            return profiles[name]
        if name in seen:
            raise ProfileError(f"{path}: [profile.{name}] extends itself through {' → '.join(seen)}")
        table = tables[name]
        where = f"profile.{name}."
        _keys(path, where, table, _PROFILE_KEYS)
        parent = None
        if "extends" in table:
            if table["extends"] not in tables:
                raise ProfileError(f"{path}: [profile.{name}] extends = {table['extends']!r}, which is not a "
                                   f"profile; known: {', '.join(tables)}")
            parent = build(table["extends"], seen + (name,))
        exclude = _strings(path, where + "exclude", table.get("exclude", []))
        marks = _strings(path, where + "exclude_marks", table.get("exclude_marks", []))
        select = _strings(path, where + "select", table["select"]) if "select" in table else None
        kept = table.get("bf16_on_slow_hosts")
        kept = None if kept is None else _strings(path, where + "bf16_on_slow_hosts", kept)
        if select == ():
            raise ProfileError(f"{path}: {where}select = []; it would keep no test (leave it out to keep every one)")
        description = table.get("description", "")
        if not isinstance(description, str):
            raise ProfileError(f"{path}: {where}description = {description!r}; it takes a string")
        profile = Profile(name, description,
                          (parent.exclude if parent else ()) + exclude,
                          (parent.exclude_marks if parent else ()) + marks,
                          kept if kept is not None or parent is None else parent.bf16_on_slow_hosts,
                          select if select is not None else parent.select if parent else ())
        profiles[name] = profile
        return profile

    for name in tables:
        if not isinstance(tables[name], dict):
            raise ProfileError(f"{path}: profile.{name} must be a table")
        build(name)
    return Profiles(str(path), {name: profiles[name] for name in tables}, float(ratio))


def _strings(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProfileError(f"{path}: {where} = {value!r}; it takes a list of non-empty strings (node id "
                           f"patterns: see parabench/cases/profiles.py)")
    return tuple(value)


def _keys(path: Path, where: str, table: Any, allowed: set[str]) -> None:
    check_keys(path, where, table, allowed, ProfileError)

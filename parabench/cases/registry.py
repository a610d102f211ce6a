"""A name → entry registry shared by strategies, optimizers and workloads.

A registry with an entry-point ``group`` also takes what installed packages declare there (``docs/plugins.md``):
each entry point names one object, which the registry's ``accept`` turns into an entry (or refuses, saying what
is missing). They are read on the first look-up, after the built-ins are registered, so that a package's module
may import the registry it adds to; a name a built-in or another package has already taken is an error naming both.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that no registry entry answers to; the message lists the known names."""


class PluginError(ValueError):
    """An entry point that cannot be registered; the message names its distribution, the entry point and why."""


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed packages' entry points of ``group``, in a stable order."""
    return sorted(importlib.metadata.entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def origin(entry_point: importlib.metadata.EntryPoint) -> str:
    """Who declared ``entry_point``: its distribution and the entry point itself."""
    dist = getattr(entry_point, "dist", None)
    where = f"distribution {dist.name!r}" if dist is not None else "an unknown distribution"
    return f"{where}, entry point {entry_point.name} = {entry_point.value} (group {entry_point.group})"


def spelled(name: str) -> str:
    """``name`` as a case id writes it (``Case.id``: '-' as '_')."""
    return name.replace("-", "_")


def missing_members(cls: type, base: type, required: tuple[str, ...]) -> list[str]:
    """What ``cls`` lacks to be a ``base``: the ``required`` attributes it has none of, and ``base``'s abstract
    methods it leaves abstract."""
    missing = [name for name in required if getattr(cls, name, None) is None]
    if isinstance(cls, type) and issubclass(cls, base):
        missing += [name for name in sorted(getattr(cls, "__abstractmethods__", ())) if name not in missing]
    return missing


def require_class(cls: type, base: type, required: tuple[str, ...], kind: str, named: str, expected: str) -> None:
    """``cls`` is a ``base`` with every ``required`` member, or a PluginError: ``named`` is what the entry point names,
    ``expected`` what it should be (e.g. "parabench.strategies.Strategy subclass")."""
    missing = missing_members(cls, base, required)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        lacks = f"; it lacks {', '.join(missing)}" if missing else ""
        raise PluginError(f"names {named}, which is not a {expected}{lacks}")
    if missing:
        raise PluginError(f"{kind} class {cls.__qualname__} lacks {', '.join(missing)} (a {base.__name__} needs "
                          f"{', '.join(required)})")


class Registry(Generic[T]):
    """Entries registered by name; unknown names raise an error that lists the known ones."""

    def __init__(self, kind: str, group: str | None = None, accept: Callable[[str, Any], T] | None = None) -> None:
        self.kind = kind
        self.group = group  # the entry-point group packages register into; None: built-ins only
        self._accept = accept  # (entry point's name, the object it names) → the entry; raises PluginError
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name → the package that registered it (not for built-ins)
        self._state = "pending" if group else "loaded"

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def _loaded(self) -> dict[str, T]:
        if self._state == "pending":
            self._state = "loading"  # a package's module that looks a name up while it loads sees the built-ins
            try:
                self._load_plugins()
            except BaseException:
                self._state = "pending"  # nothing was added: the next look-up raises the same error
                raise
            self._state = "loaded"
        return self._entries

    def _load_plugins(self) -> None:
        found: dict[str, T] = {}
        origins: dict[str, str] = {}
        # Case ids write names with '_' for '-' (Case.id): two names that read alike there are one name.
        built_in = {spelled(known): known for known in self._entries}
        for entry_point in entry_points(self.group):
            who = origin(entry_point)
            name = entry_point.name
            if spelled(name) in built_in:
                raise PluginError(f"{who}: {self.kind} {name!r} is a built-in {self.kind}'s name "
                                  f"({built_in[spelled(name)]!r} in a case id); register it under another name")
            taken = next((other for other in found if spelled(other) == spelled(name)), None)
            if taken is not None:
                raise PluginError(f"{who}: {self.kind} {name!r} is registered by {origins[taken]} too"
                                  f"{'' if taken == name else f' (as {taken!r})'}; one of them must take another name")
            try:
                target = entry_point.load()
            except Exception as error:
                raise PluginError(f"{who}: does not import: {type(error).__name__}: {error}") from error
            try:
                found[name] = self._accept(name, target) if self._accept else target
            except PluginError as error:
                raise PluginError(f"{who}: {error}") from None
            origins[name] = who
        self._entries.update(found)
        self._origins.update(origins)

    def origin(self, name: str) -> str | None:
        """The package that registered ``name`` (its distribution and entry point); None for a built-in."""
        self._loaded()
        return self._origins.get(name)

    def plugins(self) -> list[str]:
        """The names installed packages registered, in their entry points' order."""
        self._loaded()
        return list(self._origins)

    def get(self, name: str) -> T:
        entries = self._loaded()
        try:
            return entries[name]
        except KeyError:
            known = ", ".join(sorted(entries)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

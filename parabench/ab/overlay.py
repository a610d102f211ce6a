"""``--bench-ab=PACKAGE==VERSION[,…]``: the base side is this environment with those packages at those versions.

"Did DeepSpeed 0.19.8 make ZeRO-3 slower than 0.19.7?" The base runs this checkout under an overlay environment:
a virtual environment of this interpreter whose own site-packages hold only the named packages (and whatever
they need that this environment lacks), and which sees this environment's packages behind them (a ``.pth`` file
adds this interpreter's site directories after its own). That works where the suite itself lives in a virtual
environment too (``python -m venv --system-site-packages`` would give the base interpreter's packages, not the
suite's). The packages install with the project's pins (``constraints.txt``, ``requirements-lock.txt``) less
those of the named packages; ``DS_BUILD_OPS=0`` and ``BUILD_EXT=0`` as in the set-up; a package the set-up installs
without dependencies (those pinned in ``constraints.txt`` only) installs without them here too.

An overlay is made once per spec, interpreter and pins, and kept under ``$PARABENCH_CACHE`` (default
``~/.cache/parabench``)``/ab-overlays/``: a second session with the same spec reuses it. It is built under a
temporary name and renamed when complete, so an interrupted build is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import venv
from dataclasses import dataclass
from pathlib import Path

# A requirement pinned to one version: a distribution name, ``==``, a version.
PIN = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
READY = "overlay.json"  # written last: an overlay without it is not finished
# How long one overlay's install may take (DeepSpeed builds a wheel from its sdist: about a minute here).
INSTALL_TIMEOUT_S = 1800


class OverlayError(ValueError):
    """The overlay cannot be made; the message names the package and pip's reason."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def key(self) -> str:
        """The distribution name as pip compares it (PEP 503)."""
        return re.sub(r"[-_.]+", "-", self.name).lower()


def parse(text: str) -> tuple[Pin, ...] | None:
    """The pins of ``--bench-ab=TEXT``, or None when TEXT names no package (an interpreter or a revision)."""
    if "==" not in text:
        return None
    pins = []
    for part in (p.strip() for p in text.split(",")):
        found = PIN.match(part)
        if not found:
            raise OverlayError(f"--bench-ab={text}: {part!r} is not PACKAGE==VERSION; give one or more, comma-separated "
                               f"(e.g. deepspeed==0.19.7,transformers==4.51.3)")
        pins.append(Pin(found["name"], found["version"]))
    keys = [pin.key for pin in pins]
    if len(set(keys)) != len(keys):
        raise OverlayError(f"--bench-ab={text}: a package is named twice")
    return tuple(sorted(pins, key=lambda pin: pin.key))


def cache_root() -> Path:
    return Path(os.environ.get("PARABENCH_CACHE") or Path.home() / ".cache" / "parabench") / "ab-overlays"


def _requirement_key(line: str) -> str | None:
    found = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[.*\])?\s*[=<>!~]", line)
    return re.sub(r"[-_.]+", "-", found.group(1)).lower() if found else None


def _pins_without(path: Path, pins: tuple[Pin, ...]) -> str:
    """``path``'s lines, less those pinning one of ``pins`` (the overlay's own versions replace them)."""
    if not path.exists():
        return ""
    named = {pin.key for pin in pins}
    return "".join(line for line in path.read_text().splitlines(keepends=True) if _requirement_key(line) not in named)


def _no_deps(root: Path) -> set[str]:
    """The packages the set-up installs without their dependencies: pinned in constraints.txt, not in the lock."""
    constraints, lock = root / "constraints.txt", root / "requirements-lock.txt"
    if not constraints.exists():
        return set()
    locked = {_requirement_key(line) for line in lock.read_text().splitlines()} if lock.exists() else set()
    return {key for line in constraints.read_text().splitlines() if (key := _requirement_key(line)) and key not in locked}


def _fingerprint(pins: tuple[Pin, ...], root: Path) -> str:
    blob = json.dumps({"pins": [str(p) for p in pins], "python": sys.executable, "version": sys.version,
                       "constraints": _pins_without(root / "constraints.txt", pins),
                       "lock": _pins_without(root / "requirements-lock.txt", pins)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Overlay:
    path: Path
    pins: tuple[Pin, ...]
    reused: bool
    seconds: float   # how long making it took (0 when reused)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def describe(self) -> str:
        made = "reused" if self.reused else f"made in {self.seconds:.0f} s"
        return f"{', '.join(map(str, self.pins))} over this environment (overlay {self.path}, {made})"


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def _this_environment() -> list[str]:
    """This interpreter's site directories, in its order (a virtual environment's and, if on, the user's)."""
    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        directories.append(site.getusersitepackages())
    return directories


def _pip_reason(output: str) -> str:
    """pip's own words for a failure: its ERROR lines, else its last lines."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    text = " ".join(errors or [line.strip() for line in output.strip().splitlines()[-3:]])

    def shortened(found: re.Match) -> str:  # pip lists every version there is: the first and last few say enough
        versions = [v.strip() for v in found.group(1).split(",")]
        shown = versions if len(versions) <= 6 else versions[:2] + ["…"] + versions[-3:]
        return f"(from versions: {', '.join(shown)})"

    return re.sub(r"\(from versions: ([^)]*)\)", shortened, text)[-800:]


def ensure(pins: tuple[Pin, ...], root: Path, text: str, say=lambda line: None) -> Overlay:
    """The overlay of ``pins`` over this environment: reused from the cache, or made now (``say`` tells progress)."""
    name = "-".join(f"{p.key}{p.version}" for p in pins)[:80] + "-" + _fingerprint(pins, root)
    path = cache_root() / name
    if (path / READY).exists() and (path / "bin" / "python").exists():
        return Overlay(path, pins, reused=True, seconds=0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.parent / f".building-{name}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    started = time.monotonic()
    say(f"parabench: --bench-ab={text}: making the base environment once ({', '.join(map(str, pins))} over this "
        f"one) under {path}")
    try:
        venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True, clear=True).create(building)
        own = _site_packages(building)
        own.mkdir(parents=True, exist_ok=True)
        # After the overlay's own site-packages (already on sys.path when .pth files run): this environment's.
        (own / "zz_parabench_overlay.pth").write_text(
            "".join(f"import site; site.addsitedir({directory!r})\n" for directory in _this_environment()))
        constraints = building / "pins"
        constraints.mkdir()
        (constraints / "constraints.txt").write_text(_pins_without(root / "constraints.txt", pins))
        (constraints / "lock.txt").write_text(_pins_without(root / "requirements-lock.txt", pins))
        no_deps = _no_deps(root)
        environment = dict(os.environ, DS_BUILD_OPS="0", BUILD_EXT="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
        groups = [[p for p in pins if p.key not in no_deps], [p for p in pins if p.key in no_deps]]
        for group, flags in zip(groups, ([], ["--no-deps"])):
            if not group:
                continue
            command = [sys.executable, "-m", "pip", "--python", str(building / "bin" / "python"), "install",
                       "--no-input", "-c", str(constraints / "constraints.txt"), "-c", str(constraints / "lock.txt"),
                       *flags, *map(str, group)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=environment,
                                      timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise OverlayError(f"--bench-ab={text}: installing {', '.join(map(str, group))} took over "
                                   f"{INSTALL_TIMEOUT_S} s; nothing was run") from None
            if done.returncode != 0:
                raise OverlayError(f"--bench-ab={text}: {', '.join(map(str, group))} cannot be installed over this "
                                   f"environment: {_pip_reason(done.stdout + done.stderr)}; nothing was run")
        seconds = time.monotonic() - started
        (building / READY).write_text(json.dumps({"pins": [str(p) for p in pins], "python": sys.executable,
                                                  "seconds": round(seconds, 1), "made": time.time()}))
        try:
            building.rename(path)
        except OSError:  # another session finished the same overlay first: use that one
            if not (path / READY).exists():
                raise
            shutil.rmtree(building, ignore_errors=True)
            return Overlay(path, pins, reused=True, seconds=0.0)
        return Overlay(path, pins, reused=False, seconds=seconds)
    finally:
        shutil.rmtree(building, ignore_errors=True)

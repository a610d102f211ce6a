"""The locked environment (``requirements-lock.txt``): it pins what results depend on, and what runs is what it pins.

A result is compared with baselines recorded under the same library versions (the machine key's ``versions``,
``parabench.runtime.env``). A fresh install resolves to whatever is newest unless the lock pins it, so the lock must pin
every package the key tracks, the installed versions must be the lock's, and the committed baselines must have been
recorded with the lock's versions; otherwise every comparison is across versions.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Iterable, Mapping

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from parabench.cases.optimizers import OPTIMIZERS
from parabench.gate.baselines import discover
from parabench.runtime.env import TRACKED_PACKAGES
from parabench.strategies import STRATEGIES
from parabench.workloads import WORKLOADS

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-lock.txt"
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
BASELINES = REPO / "baselines"
CI_EXTRAS = ("test", "report", "history", "deepspeed", "colossalai", "fairscale")  # the extras .ci/run installs
INSTALL = ('DS_BUILD_OPS=0 python3 -m pip install -c constraints.txt -c requirements-lock.txt '
           '-e ".[test,report,history,deepspeed,colossalai,fairscale]"')
REFRESH = "README, 'Locked versions'"


def pins(text: str, source: str) -> dict[str, str]:
    """Package (canonical name) → exact version of every requirement line in a pip requirements/constraints text.

    Comments, blank lines and option lines (``--find-links``) are skipped; a line that is not an exact ``==``
    pin is an error, since a range locks nothing.
    """
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"{source}:{number}: {line!r} is not an exact pin (name==version); regenerate the lock "
                             f"({REFRESH})")
        found[canonicalize_name(requirement.name)] = specs[0].version
    return found


def locked(lock_text: str, constraints_text: str) -> dict[str, str]:
    """The versions a locked install gets: the lock's pins, and constraints.txt's for the packages installed
    ``--no-deps`` (ColossalAI, galore-torch, bitsandbytes), which the lock does not hold."""
    lock, constraints = pins(lock_text, LOCK.name), pins(constraints_text, CONSTRAINTS.name)
    for name in lock.keys() & constraints.keys():
        # torch: constraints.txt pins 2.13.0, which the lock's 2.13.0+cpu (the CPU build) satisfies.
        if not SpecifierSet(f"=={constraints[name]}").contains(lock[name], prereleases=True):
            raise ValueError(f"{name}: requirements-lock.txt pins {lock[name]} but constraints.txt pins "
                             f"{constraints[name]}; make them agree and regenerate the lock ({REFRESH})")
    return {**constraints, **lock}


def tracked_packages() -> list[str]:
    """Every package a result's machine key records: the ones every case tracks, and each case's own packages
    (its strategy's, optimizer's and workload's; ``parabench.cases.matrix.case_packages``), as distribution names."""
    names = list(TRACKED_PACKAGES)
    for registry in (STRATEGIES, OPTIMIZERS, WORKLOADS):
        for entry in registry.names():
            names.extend(registry.get(entry).requires.packages)
    # Cases name import names (sklearn, PIL), the lock distributions (scikit-learn, pillow).
    providers = importlib.metadata.packages_distributions()
    return sorted({canonicalize_name(providers[name][0] if len(providers.get(name, ())) == 1 else name)
                   for name in names})


def declared_packages(pyproject_text: str, extras: Iterable[str]) -> list[str]:
    """pyproject.toml's dependencies and those of ``extras`` that apply to this interpreter."""
    project = tomllib.loads(pyproject_text)["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines.extend(project["optional-dependencies"][extra])
    requirements = [Requirement(line) for line in lines]
    return sorted({canonicalize_name(r.name) for r in requirements if r.marker is None or r.marker.evaluate()})


def unpinned(needed: Iterable[str], pinned: Mapping[str, str]) -> list[str]:
    return sorted(set(needed) - set(pinned))


def installed_differences(packages: Iterable[str], pinned: Mapping[str, str]) -> list[str]:
    """One line per package installed at another version than ``pinned``; packages not installed are left out
    (their cases skip, naming the install)."""
    out = []
    for name in packages:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if version != pinned[name]:
            out.append(f"{name} {version} is installed, the lock pins {pinned[name]}")
    return out


def lock_python(lock_text: str) -> str:
    """The Python version (major.minor) the lock was resolved for, from the command in its header."""
    found = re.search(r"--python-version[ =](\d+\.\d+)", lock_text)
    if not found:
        raise ValueError(f"{LOCK.name}'s header names no --python-version; regenerate it ({REFRESH})")
    return found[1]


def baseline_differences(root: Path, pinned: Mapping[str, str], python: str) -> list[str]:
    """One line per package whose version recorded in the newest stored run of each host kind (device, CPU model
    and kernels: ``keys.machine_kind``) differs from ``pinned`` (python: major.minor against the lock's target)."""
    from parabench.gate.keys import machine_kind

    newest: dict[tuple, object] = {}
    for run in discover(root):  # oldest first: the last one of a kind is its newest
        for kind in {machine_kind(bench["extra_info"]) for bench in run.benchmarks}:
            newest[kind] = run
    out = []
    for kind, run in sorted(newest.items(), key=lambda item: str(item[0])):
        recorded: dict[str, set[str]] = {}
        for bench in run.benchmarks:
            for name, version in bench["extra_info"].get("versions", {}).items():
                recorded.setdefault(name, set()).add(version)
        for name, versions in sorted(recorded.items()):
            for version in sorted(versions):
                if name == "python":
                    if ".".join(version.split(".")[:2]) != python:
                        out.append(f"{Path(run.path).relative_to(root)}: python {version}, the lock is for {python}")
                    continue
                want = pinned.get(canonicalize_name(name))
                if want != version:
                    out.append(f"{Path(run.path).relative_to(root)}: {name} {version}, the lock pins "
                               f"{want or 'nothing'}")
    return out


LOCK_TEXT = LOCK.read_text(encoding="utf-8")
CONSTRAINTS_TEXT = CONSTRAINTS.read_text(encoding="utf-8")
PINNED = locked(LOCK_TEXT, CONSTRAINTS_TEXT)
TRACKED = tracked_packages()


def test_the_lock_pins_every_tracked_and_declared_package():
    needed = TRACKED + declared_packages(PYPROJECT.read_text(encoding="utf-8"), CI_EXTRAS)
    missing = unpinned(needed, PINNED)
    assert not missing, (f"requirements-lock.txt pins no version of {', '.join(missing)}: a fresh install would take "
                         f"the newest; regenerate the lock ({REFRESH})")


def test_the_lock_keeps_the_cpu_build_of_torch():
    # The CUDA wheels of torch depend on nvidia-* packages and triton; the CPU build on neither.
    lock = pins(LOCK_TEXT, LOCK.name)
    assert lock["torch"].endswith("+cpu"), f"requirements-lock.txt pins torch {lock['torch']}, not the CPU build"
    cuda = sorted(name for name in lock if name.startswith("nvidia-") or name == "triton")
    assert not cuda, f"requirements-lock.txt pins CUDA packages {cuda}: it was resolved against a CUDA torch"


def test_the_installed_tracked_packages_are_the_locked_versions():
    differences = installed_differences(TRACKED, PINNED)
    assert not differences, ("; ".join(differences) + f". Results would not compare with the baselines: reinstall "
                             f"with the lock: {INSTALL}")


def test_the_newest_baselines_were_recorded_with_the_locked_versions():
    differences = baseline_differences(BASELINES, PINNED, lock_python(LOCK_TEXT))
    assert not differences, ("; ".join(differences) + ". Record new baselines with the locked versions "
                             "(--bench-record), or lock the versions they were recorded with "
                             f"({REFRESH})")


# The checks themselves, on altered copies: each names what is wrong.

def test_a_package_dropped_from_the_lock_is_named():
    text = re.sub(r"^datasets==.*$", "", LOCK_TEXT, flags=re.M)
    assert unpinned(TRACKED, locked(text, CONSTRAINTS_TEXT)) == ["datasets"]


def test_a_range_is_not_a_pin():
    with pytest.raises(ValueError, match=r"requirements-lock.txt:2: 'numpy>=2' is not an exact pin"):
        pins("# header\nnumpy>=2\n", LOCK.name)


def test_a_lock_that_disagrees_with_the_constraints_is_refused():
    text = re.sub(r"^transformers==.*$", "transformers==4.52.0", LOCK_TEXT, flags=re.M)
    with pytest.raises(ValueError, match="transformers: requirements-lock.txt pins 4.52.0 but constraints.txt pins "
                                         "4.51.3"):
        locked(text, CONSTRAINTS_TEXT)


def test_an_installed_version_other_than_the_locked_one_is_named():
    other = {**PINNED, "datasets": "0.0.1"}
    installed = importlib.metadata.version("datasets")
    assert installed_differences(["datasets", "torch"], other) == [
        f"datasets {installed} is installed, the lock pins 0.0.1"]


def test_a_baseline_recorded_with_other_versions_is_named():
    other = {**PINNED, "datasets": "0.0.1"}
    differences = baseline_differences(BASELINES, other, lock_python(LOCK_TEXT))
    assert differences and all(", the lock pins 0.0.1" in line and "datasets" in line for line in differences)
    assert any(line.endswith("python 3.11.7, the lock is for 3.10")
               for line in baseline_differences(BASELINES, PINNED, "3.10"))


def test_a_result_records_the_versions_of_the_distributions_behind_import_names():
    from parabench.runtime.env import versions

    found = versions(("sklearn", "PIL", "datasets", "no-such-package"))
    assert found["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert found["pillow"] == importlib.metadata.version("pillow")
    assert found["datasets"] == importlib.metadata.version("datasets")
    assert not {"sklearn", "PIL", "no-such-package"} & set(found)

"""The wheels the GPU check carries to a machine that lacks its frameworks: which, built how, and installed where.

The check's machine (one NVIDIA H200: CUDA torch, transformers, scikit-learn, no network) has no DeepSpeed,
ColossalAI, fairscale or ``datasets``. ``build`` makes a folder of wheels of those at the versions
``requirements-lock.txt`` and ``constraints.txt`` pin, their compiled ops off (``DS_BUILD_OPS=0``, ``BUILD_EXT=0``:
the ops are JIT-built there by ``python -m parabench.kernels``), plus the dependencies they import that such a
machine lacks; ``install`` puts them into a folder on ``PYTHONPATH`` with ``pip install --no-index --no-deps
--target``. A dependency is installed only where no distribution of its name is installed already, so the
machine's own builds stay in use; the framework packages are always the pinned ones.

Which imports are needed was found by importing every path the check's cases take (ranks' imports, the booster
plugins, the ZeRO stages, HybridAdam, the data pipelines) with each candidate absent. Left out on purpose:

* compiled or large packages the machine's image has: pyarrow, pandas, xxhash (``datasets``); msgpack, ninja,
  psutil, py-cpuinfo, einops (DeepSpeed); peft, accelerate, safetensors, protobuf, click, rich (ColossalAI);
* what ColossalAI declares but no path of the check imports: ray, fabric, fastapi, uvicorn, rpyc, diffusers,
  sentencepiece, pre-commit, google, contexttimer (its legacy modules only);
* bitsandbytes' native libraries (43 MB for every CUDA and ROCm version): galore_torch imports bitsandbytes'
  Python classes at ColossalAI's import, and no case here runs a GaLore 8-bit step, so its wheel is carried
  without them (``slim``), as DeepSpeed's is without its ops.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_TOTAL_BYTES = 64 * 2**20  # what one transfer to the GPU machine carries, the repository included
# The GPU machine's Python (wheels that name a Python version, multiprocess's and pydantic-core's, follow it).
TARGET_PYTHON = "3.12"
TARGET_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64")
# Import names the check expects the GPU machine to have already (its image), checked before anything runs.
ON_THE_MACHINE = ("torch", "transformers", "sklearn", "numpy", "scipy", "pytest", "pytest_benchmark", "psutil",
                  "rich", "tabulate", "pyarrow", "pandas", "xxhash", "peft", "accelerate", "safetensors", "einops",
                  "msgpack", "cpuinfo", "ninja")


@dataclass(frozen=True)
class Wheel:
    """One carried distribution: how its wheel is made, who imports it, and whether it replaces an installed one."""

    name: str                     # distribution name as pinned in requirements-lock.txt / constraints.txt
    imported_by: str
    how: str = "download"         # "build": from its sdist here, ops off; "download": PyPI's wheel; "slim": PyPI's,
                                  # native libraries removed
    always: bool = False          # installed even where the machine has the distribution (the pinned frameworks)
    imports: tuple[str, ...] = ()  # the import names it provides (a case's Requirements.packages name these)


WHEELS = (
    Wheel("deepspeed", "the deepspeed-* strategies", "build", always=True, imports=("deepspeed",)),
    Wheel("colossalai", "the colossalai-* strategies", "build", always=True, imports=("colossalai",)),
    Wheel("fairscale", "the fairscale-* strategies (none of the check's cases)", "build", always=True,
          imports=("fairscale",)),
    Wheel("datasets", "every workload's data pipeline", always=True, imports=("datasets",)),
    Wheel("hjson", "deepspeed (its config)"),
    Wheel("pydantic", "deepspeed and colossalai (their configs)"),
    Wheel("pydantic-core", "pydantic (compiled: the one platform wheel)"),
    Wheel("annotated-types", "pydantic"),
    Wheel("typing-inspection", "pydantic"),
    Wheel("galore-torch", "colossalai.nn.optimizer (imported with HybridAdam)"),
    Wheel("bitsandbytes", "galore_torch (its Python classes only)", "slim"),
    Wheel("dill", "datasets"),
    Wheel("multiprocess", "datasets"),
)
# Build-time switches: DeepSpeed's and ColossalAI's ops are compiled on first use on the GPU machine instead.
BUILD_ENV = {"DS_BUILD_OPS": "0", "BUILD_EXT": "0"}


def pinned_versions(repo: Path = REPO) -> dict[str, str]:
    """Every ``name==version`` of requirements-lock.txt and constraints.txt (names normalised)."""
    found: dict[str, str] = {}
    for file in ("requirements-lock.txt", "constraints.txt"):
        for line in (repo / file).read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
            if match:
                found[normalise(match[1])] = match[2]
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(wheel: Wheel, versions: dict[str, str]) -> str:
    try:
        return f"{wheel.name}=={versions[normalise(wheel.name)]}"
    except KeyError:
        raise ValueError(f"{wheel.name} has no pinned version in requirements-lock.txt or constraints.txt; pin it "
                         f"there (docs/getting-started.md, 'Locked versions')") from None


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file (``pydantic_core-2.46.4-cp312-….whl`` → pydantic-core)."""
    return normalise(path.name.split("-")[0])


def provides(imports: str) -> Wheel | None:
    """The carried wheel that provides the import name ``imports``, or None."""
    return next((w for w in WHEELS if imports in w.imports), None)


def build(folder: Path, python_version: str = TARGET_PYTHON, log=print) -> list[Path]:
    """Make every wheel of ``WHEELS`` in ``folder`` (emptied of wheels first); return them. Raises when one is
    missing or they add up to more than ``MAX_TOTAL_BYTES``."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    versions = pinned_versions()
    pip = [sys.executable, "-m", "pip"]
    built = [requirement(w, versions) for w in WHEELS if w.how == "build"]
    log(f"building {', '.join(built)} from their sources ({' '.join(f'{k}={v}' for k, v in BUILD_ENV.items())}) …")
    # No build isolation: the builds import the torch installed here instead of fetching one.
    _run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", "-w", str(folder), *built],
         {**os.environ, **BUILD_ENV})
    fetched = [requirement(w, versions) for w in WHEELS if w.how in ("download", "slim")]
    log(f"downloading {', '.join(fetched)} for CPython {python_version} …")
    platforms = [arg for platform in TARGET_PLATFORMS + ("any",) for arg in ("--platform", platform)]
    _run(pip + ["download", "--no-deps", "--only-binary=:all:", "-q", "--python-version", python_version,
                "--implementation", "cp", "--abi", "cp" + python_version.replace(".", ""), *platforms,
                "-d", str(folder), *fetched], dict(os.environ))
    for wheel in WHEELS:
        if wheel.how == "slim":
            for path in [p for p in folder.glob("*.whl") if wheel_name(p) == normalise(wheel.name)]:
                slim(path)
    wheels = sorted(folder.glob("*.whl"))
    missing = sorted({normalise(w.name) for w in WHEELS} - {wheel_name(p) for p in wheels})
    if missing:
        raise RuntimeError(f"no wheel was made for {', '.join(missing)} in {folder}")
    total = sum(p.stat().st_size for p in wheels)
    if total > MAX_TOTAL_BYTES:
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f}" for p in wheels)
        raise RuntimeError(f"the wheels add up to {total / 2**20:.1f} MiB, over the {MAX_TOTAL_BYTES / 2**20:.0f} MiB "
                           f"one transfer carries: {sizes}")
    return wheels


def slim(path: Path) -> Path:
    """Rewrite the wheel at ``path`` without its native libraries (``*.so``), as the pure-Python wheel it then is
    (``py3-none-any``; RECORD rewritten). Returns the new file; the old one is removed."""
    with zipfile.ZipFile(path) as source:
        kept = [(info, source.read(info)) for info in source.infolist() if not info.filename.endswith(".so")]
    records, out = [], []
    for info, data in kept:
        if info.filename.endswith(".dist-info/WHEEL"):
            text = data.decode()
            text = re.sub(r"^Root-Is-Purelib: .*$", "Root-Is-Purelib: true", text, flags=re.M)
            text = re.sub(r"^Tag: .*\n?", "", text, flags=re.M).rstrip("\n") + "\nTag: py3-none-any\n"
            data = text.encode()
        if info.filename.endswith(".dist-info/RECORD"):
            record_name = info.filename
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{info.filename},sha256={digest},{len(data)}")
        out.append((info.filename, data))
    records.append(f"{record_name},,")
    name, version = path.name.split("-")[:2]
    target = path.with_name(f"{name}-{version}-py3-none-any.whl")
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as wheel:
        for filename, data in out:
            wheel.writestr(filename, data)
        wheel.writestr(record_name, "\n".join(records) + "\n")
    path.unlink()
    temporary.replace(target)
    return target


def installed(name: str) -> str | None:
    """The version of the distribution ``name`` installed here, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def to_install(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the wheels of ``folder`` to install here, (wheel, installed version) of those the machine has already)."""
    chosen, kept = [], []
    always = {normalise(w.name) for w in WHEELS if w.always}
    for path in sorted(folder.glob("*.whl")):
        name = wheel_name(path)
        version = installed(name)
        if version is not None and name not in always:
            kept.append((path, version))
        else:
            chosen.append(path)
    return chosen, kept


STAMP_FILE = ".carried-wheels.json"  # in the install folder: which wheels it holds


def stamp(wheels: list[Path]) -> str:
    """What identifies an installation of ``wheels``: their names and contents."""
    import json

    return json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(wheels)}, indent=1)


def installed_already(wheels: list[Path], site: Path) -> bool:
    """Whether ``site`` holds exactly these wheels from an earlier run. Reinstalling would rewrite the ops' sources,
    and their JIT builds (ninja, by file times) would then compile every kernel again."""
    path = site / STAMP_FILE
    return path.exists() and path.read_text(encoding="utf-8") == stamp(wheels)


def install(wheels: list[Path], site: Path) -> subprocess.CompletedProcess:
    """``pip install --no-index --no-deps --target site`` of ``wheels`` (``site`` emptied first)."""
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    # Bytecode is compiled here, once, rather than by the first process of each kind that imports the packages.
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--no-deps",
                           "--no-cache-dir", "--disable-pip-version-check", "-q",
                           "--target", str(site), *map(str, wheels)], capture_output=True, text=True)
    if done.returncode == 0:
        (site / STAMP_FILE).write_text(stamp(wheels), encoding="utf-8")
    return done


def describe(wheels: list[Path]) -> list[str]:
    """One line a wheel (file, MiB, who imports it) and the total."""
    by_name = {normalise(w.name): w for w in WHEELS}
    lines = []
    for path in wheels:
        wheel = by_name.get(wheel_name(path))
        lines.append(f"  {path.name:75} {path.stat().st_size / 2**20:6.2f} MiB  {wheel.imported_by if wheel else '?'}")
    total = sum(p.stat().st_size for p in wheels)
    lines.append(f"  {'total':75} {total / 2**20:6.2f} MiB  (limit {MAX_TOTAL_BYTES / 2**20:.0f} MiB)")
    return lines


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command[:6])} … failed (exit {done.returncode}):\n{tail}")

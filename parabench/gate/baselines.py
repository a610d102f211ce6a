"""Stored runs under ``baselines/``: loading with clear errors, choosing like with like, writing atomically.

Files are pytest-benchmark's own JSON (one run each, ``<machine folder>/NNNN_<name>.json``), so its
``--benchmark-compare`` keeps reading them; parabench's measurements live in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from parabench.measure.result import RESULT_FORMAT

SAVE_ATTEMPTS = 20  # run numbers tried when other sessions save into the same folder at the same time
RECORD_HINT = "record one with: python3 -m pytest bench/ --bench-record  (see docs/gate.md, 'Recording baselines')"


class BaselineError(ValueError):
    """A stored file cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class StoredRun:
    """One stored pytest-benchmark run: its file, when it was made, and its parabench benchmarks."""

    path: str
    datetime: str
    benchmarks: tuple[dict[str, Any], ...]   # each has name, fullname, extra_info (parabench's keys)
    others: tuple[dict[str, Any], ...] = ()  # benchmarks without a case: optimizer steps, time to target
    session: dict[str, Any] = field(default_factory=dict)  # the session's settings (its profile, bf16 choice)


def load_run(path: str | Path) -> StoredRun:
    path = Path(path)
    fix = "fix it, or delete it (git restore it if it was committed)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BaselineError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                            f"{fix}") from None
    except UnicodeDecodeError:
        raise BaselineError(f"{path}: not a UTF-8 text file; {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BaselineError(f"{path}: not a pytest-benchmark run (no 'benchmarks' list); {fix}")
    benchmarks, others = [], []
    for i, bench in enumerate(data["benchmarks"]):
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "case" not in info:
            if isinstance(info, dict):
                others.append(bench)  # another kind of result, or another plugin's benchmark
            continue
        found = info.get("format")
        if found != RESULT_FORMAT:
            raise BaselineError(f"{path}: benchmark {i} ({bench.get('name')}) has result format {found!r}; this "
                                f"version reads format {RESULT_FORMAT}. Re-record it: {RECORD_HINT}")
        if info.get("injected"):
            raise BaselineError(f"{path}: benchmark {i} ({bench.get('name')}) was run with --bench-inject="
                                f"{info['injected']} and must not serve as a baseline; delete the file")
        missing = [k for k in ("name", "fullname") if k not in bench]
        if missing:
            raise BaselineError(f"{path}: benchmark {i} lacks {', '.join(missing)}; {fix}")
        benchmarks.append(bench)
    session = data.get("parabench") if isinstance(data.get("parabench"), dict) else {}
    return StoredRun(str(path), str(data.get("datetime", "")), tuple(benchmarks), tuple(others),
                     {key: value for key, value in session.items() if key in ("profile", "bf16", "hardware")})


def discover(root: str | Path) -> list[StoredRun]:
    """Every stored run under ``root`` (all machine folders), oldest first."""
    root = Path(root)
    runs = [load_run(p) for p in sorted(root.glob("**/*.json"))]
    return sorted(runs, key=lambda run: (run.datetime, run.path))


def newest_by_name(runs: Iterable[StoredRun]) -> dict[str, list[tuple[StoredRun, dict[str, Any]]]]:
    """Benchmark name → every stored (run, benchmark) for it, newest first."""
    found: dict[str, list[tuple[StoredRun, dict[str, Any]]]] = {}
    for run in runs:
        for bench in run.benchmarks:
            found.setdefault(bench["name"], []).append((run, bench))
    for entries in found.values():
        entries.reverse()
    return found


def publish_folder(staging: Path, out: Path) -> None:
    """Put a finished folder (a report, a site) at ``out``: renamed into place; a previous one is moved aside first,
    put back if the rename fails, and removed only once the new one is there."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)  # the previous folder back as it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` all at once: a reader sees the old file or the new one, never half.

    Refuses to replace an existing file unless ``overwrite``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails if path exists, atomically
            except FileExistsError:
                raise FileExistsError(f"{path} exists and is not replaced; choose another name, or remove "
                                      f"it first") from None
            os.unlink(temporary)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_storage_class():
    """pytest-benchmark's file storage, saving atomically and never over an existing file."""
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import safe_dumps

    class AtomicFileStorage(FileStorage):
        # FileStorage.save writes in place (a crash leaves half a file) and asserts the name is free.
        def save(self, output_json, save):
            data = safe_dumps(output_json, ensure_ascii=True, indent=4).encode()
            for _ in range(SAVE_ATTEMPTS):
                output_file = self.get(f"{self._next_num}_{save}.json")
                try:
                    atomic_write(output_file, data)
                except FileExistsError:
                    continue  # another session saved under this number since it was counted: take the next
                self.logger.info(f"Saved benchmark data in: {output_file}")
                return
            raise FileExistsError(f"{self.get('')}: {SAVE_ATTEMPTS} run numbers were taken while this run was "
                                  f"saved; is a session saving in a loop? Nothing of this run was written")

    return AtomicFileStorage

"""The other side of an A/B session, as the head (this pytest session) sees it.

``--bench-ab=BASE`` names it:

* ``PYTHON`` — a path to another environment's interpreter (``/opt/venv-ds0197/bin/python``): this checkout,
  that environment's packages (did upgrading a framework change anything?);
* ``REV`` — a git revision of this checkout (``HEAD~1``, ``origin/main``, a sha), checked out into a temporary
  worktree and run with this interpreter (did my change to the suite or its workloads change anything?);
* ``PYTHON@REV`` — both: that revision's tree with that interpreter;
* ``PACKAGE==VERSION[,…]`` — this checkout and this environment with those packages at those versions, in an
  overlay environment made once and cached (``parabench.ab.overlay``): did upgrading a framework change anything?

``resolve`` checks BASE and says what is wrong and how to fix it before anything runs; ``BaseSide`` starts the
base's server (``parabench.ab.server``) under the base interpreter in the base tree, and asks it to run cases
on its own rank pools, which stay warm for the session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parabench.ab import overlay

SERVER = Path(__file__).resolve().with_name("server.py")
# How long the base's server may take to import its frameworks and answer that it is ready.
START_TIMEOUT_S = 180.0
# Beyond a case's own time-out, for the base side's pool start (10–15 s with the frameworks imported).
POOL_START_S = 120.0


class BaseError(ValueError):
    """BASE cannot be used; the message names what to do instead."""


@dataclass(frozen=True)
class BaseSpec:
    text: str                 # as given on the command line
    python: str               # the interpreter the base side runs with
    revision: str | None      # the resolved commit (full sha), or None: this checkout's working tree
    revision_text: str | None = None
    overlay: str | None = None  # PACKAGE==VERSION: what the overlay environment holds, where, made or reused
    pins: tuple[tuple[str, str], ...] = ()  # PACKAGE==VERSION: (package, version) each, to be checked on the base

    def describe(self) -> str:
        parts = [f"interpreter {self.python}" + (f" ({self.overlay})" if self.overlay else "")]
        parts.append(f"revision {self.revision_text} ({self.revision[:12]})" if self.revision
                     else "this checkout's working tree")
        return ", ".join(parts)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def _check_python(path: str, text: str) -> str:
    found = shutil.which(path) if os.sep not in path else path
    if not found or not os.path.exists(found):
        raise BaseError(f"--bench-ab={text}: no such file {path!r}; give the path of the base environment's "
                        f"interpreter (e.g. /opt/venv-base/bin/python) or a git revision of this checkout (e.g. HEAD~1)")
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        raise BaseError(f"--bench-ab={text}: {found} is not an executable file; give the base environment's python")
    try:
        probe = subprocess.run([found, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BaseError(f"--bench-ab={text}: {found} does not run as a Python interpreter ({error})") from None
    words = probe.stdout.split()
    if probe.returncode != 0 or len(words) != 2 or not all(w.isdigit() for w in words):
        raise BaseError(f"--bench-ab={text}: {found} is not a Python interpreter (it printed "
                        f"{(probe.stdout + probe.stderr).strip()[:200]!r}); give the base environment's python")
    if (int(words[0]), int(words[1])) < (3, 10):
        raise BaseError(f"--bench-ab={text}: {found} is Python {words[0]}.{words[1]}; the suite needs 3.10 or later")
    return os.path.abspath(found)


def _check_revision(root: Path, revision: str, text: str) -> str:
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise BaseError(f"--bench-ab={text}: {root} is not a git checkout, so a revision cannot name the base; "
                        "give the base environment's interpreter instead")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if found.returncode != 0:
        raise BaseError(f"--bench-ab={text}: {revision!r} is not a revision of this checkout (git rev-parse found no "
                        f"commit; a shallow clone may lack it: git fetch --deepen=1); e.g. HEAD~1, origin/main or a sha"
                       + ("; a package's version is PACKAGE==VERSION" if "=" in text else ""))
    return found.stdout.strip()


def resolve(text: str, root: Path) -> BaseSpec:
    """BASE as given on the command line, checked: what the base side is, or a BaseError naming the fix."""
    text = text.strip()
    if not text:
        raise BaseError("--bench-ab needs BASE: PACKAGE==VERSION, an interpreter path, a git revision, or PYTHON@REV")
    try:
        pins = overlay.parse(text)
        if pins is not None:
            made = overlay.ensure(pins, root, text, say=lambda line: print(line, file=sys.__stderr__, flush=True))
            return BaseSpec(text=text, python=str(made.python), revision=None, overlay=made.describe(),
                            pins=tuple((pin.name, pin.version) for pin in pins))
    except overlay.OverlayError as error:
        raise BaseError(str(error)) from None
    python, revision = None, None
    if "@" in text and not text.startswith("@"):
        before, after = text.split("@", 1)
        if os.sep in before or os.path.exists(before):
            python, revision = before, after
    if python is None:
        if os.sep in text or os.path.exists(text):
            python = text
        else:
            revision = text
    python = _check_python(python, text) if python else sys.executable
    sha = _check_revision(root, revision, text) if revision else None
    return BaseSpec(text=text, python=python, revision=sha, revision_text=revision)


@dataclass
class Worktree:
    """A detached checkout of ``revision`` under a temporary directory, removed at the end of the session."""

    root: Path
    revision: str
    prefix: str = "parabench-ab-base-"  # the temporary directory's name starts so
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix)) / "tree"
        made = _git(self.root, "worktree", "add", "--detach", "--quiet", str(self.path), self.revision)
        if made.returncode != 0:
            shutil.rmtree(self.path.parent, ignore_errors=True)
            raise BaseError(f"could not check out {self.revision[:12]} into a worktree: {made.stderr.strip()}")

    def remove(self) -> None:
        _git(self.root, "worktree", "remove", "--force", str(self.path))
        shutil.rmtree(self.path.parent, ignore_errors=True)
        _git(self.root, "worktree", "prune")


class BaseSideFailure(RuntimeError):
    """A side's server died or broke its protocol; the message holds the tail of its log."""


class BaseSide:
    """One side's server process and the pipes to it (one request at a time).

    Both sides of a session run through one of these (``name`` "base" or "head"): the same bootstrap, the same
    server, the same kind of fork server for the ranks, so that the sides differ only in what BASE changes."""

    def __init__(self, spec: BaseSpec, tree: Path, settings: dict[str, Any], log_path: Path,
                 name: str = "base") -> None:
        self.spec, self.tree, self.log_path, self.name = spec, tree, log_path, name
        requests_r, self._requests = os.pipe()
        self._answers, answers_w = os.pipe()
        bootstrap = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:]; "
                     f"runpy.run_path({str(SERVER)!r}, run_name='__main__')")
        environment = dict(os.environ, PYTHONPATH=str(tree))
        self.log = open(log_path, "ab")
        settings = dict(settings, tree=str(tree))
        self.process = subprocess.Popen(
            [spec.python, "-c", bootstrap, str(tree), str(requests_r), str(answers_w), json.dumps(settings)],
            cwd=tree, env=environment, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            pass_fds=(requests_r, answers_w), start_new_session=False)
        os.close(requests_r)
        os.close(answers_w)
        self._writer = os.fdopen(self._requests, "w")
        self._reader = os.fdopen(self._answers, "r")
        self._lock = threading.Lock()
        ready = self._receive(START_TIMEOUT_S, "start")
        if "error" in ready:
            self.close()
            raise BaseError(f"the {name} side ({spec.describe()}) could not start: {ready['error']}; "
                            f"its log: {log_path}")
        self.ready = ready

    def _receive(self, timeout_s: float, what: str) -> dict:
        import select

        ready, _, _ = select.select([self._reader], [], [], timeout_s)
        line = self._reader.readline() if ready else ""
        if not line:
            alive = self.process.poll() is None
            if alive and not ready:
                self.process.kill()
            raise BaseSideFailure(
                f"the {self.name} side's server {'timed out' if alive and not ready else 'died'} during {what} "
                f"(exit code {self.process.poll()}); the last lines of its log {self.log_path}:\n{self.log_tail()}")
        return json.loads(line)

    def request(self, message: dict, timeout_s: float) -> dict:
        with self._lock:
            if self.process.poll() is not None:
                raise BaseSideFailure(f"the {self.name} side's server has exited (code {self.process.returncode}); "
                                      f"its log: {self.log_path}:\n{self.log_tail()}")
            self._writer.write(json.dumps(message) + "\n")
            self._writer.flush()
            return self._receive(timeout_s, message["op"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check(self, cases: list[dict]) -> dict:
        return self.request({"op": "check", "cases": cases}, timeout_s=120.0)

    def run(self, case: dict, perturbation: str | None, timeout_s: float, memory: bool = True,
            fresh: bool = False) -> dict:
        return self.request({"op": "run", "case": case, "perturbation": perturbation, "timeout_s": timeout_s,
                             "memory": memory, "fresh": fresh}, timeout_s=timeout_s + POOL_START_S)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                with self._lock:
                    self._writer.write(json.dumps({"op": "close"}) + "\n")
                    self._writer.flush()
            except (OSError, ValueError):
                pass
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self._writer, self._reader, self.log):
            try:
                stream.close()
            except OSError:
                pass

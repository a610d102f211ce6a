"""``python -m parabench bisect GOOD BAD -k CASE``: the first commit between GOOD and BAD that made a case worse.

Each step is an A/B session (``fixtures.ab``) in a detached worktree of the commit under test: head is that commit's
tree with its own bench modules and fixtures, base is GOOD's tree (A/B's own worktree of it). A commit is *bad* when
a row of the chosen metrics is regressed in that session's ``gate.json`` (with ``--changed``: regressed, improved, or
measured another way: unjudged for the reason "remeasured"), *good* when those rows were judged and none is, and
*skipped* (``git bisect skip``) when it cannot be judged: the selected case failed or errored there, nothing was
selected, or none of the chosen metrics was judged. The commits are BAD's first-parent line down to GOOD
(``git rev-list --first-parent --ancestry-path GOOD..BAD``); BAD is judged first, and the search runs only when BAD is
worse than GOOD. The checkout is never touched: no HEAD move, no stash; every worktree is removed at the end, on
failure and on Ctrl-C too. docs/bisect.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

GOOD, BAD, SKIP = "good", "bad", "skip"
# --metric NAME → the gate's row metric it judges (``parabench.gate.judge.judge_case``, ``parabench.ab.paired``).
METRIC_ROWS = {"state_bytes": "state_bytes", "peak_allocated_bytes": "peak_allocated_bytes",
               "comm": "comm bus bytes", "flops": "flops", "loss": "loss curve", "parity": "parity",
               "time": "step time"}
ALIASES = {"state": "state_bytes", "peak": "peak_allocated_bytes", "loss_curve": "loss", "step_time": "time"}
EXACT = ("state_bytes", "peak_allocated_bytes", "comm", "flops", "loss", "parity")
# Exact metrics are measured in full in an A/B session's first round only; two rounds is the least it runs.
EXACT_ROUNDS = 2
# The option every head must know: the A/B session came in with it.
AB_OPTION = "--bench-ab-verdict"
STEP_TIMEOUT_S = 3600.0


class BisectError(Exception):
    """Something the user can fix before anything runs (exit 2)."""


# ---- the search itself: a pure function of the commits and a judge ---------------------------------------------

@dataclass
class Search:
    """The outcome of ``search``: the first bad commit, or the commits it is among when skips hid it."""

    first_bad: str | None
    suspects: list[str]
    verdicts: dict[str, str] = field(default_factory=dict)  # every commit judged, in the order judged


def search(commits: Sequence[str], judge: Callable[[str], str]) -> Search:
    """The first bad commit of ``commits`` (oldest first; the last is known bad, the one before the first is good).

    ``judge(commit)`` says GOOD, BAD or SKIP, and is asked once per commit at most. Each step judges the untested,
    unskipped commit nearest the middle of the range still in doubt (so a skipped midpoint costs one neighbour, as
    in ``git bisect skip``). When skipped commits sit between the last good one and the first bad one, the first
    bad commit is one of them or that bad one: ``first_bad`` is None and ``suspects`` lists them, oldest first."""
    commits = list(commits)
    if not commits:
        raise ValueError("no commit to search")
    good, bad = -1, len(commits) - 1  # indices: the newest known good (-1: GOOD itself), the oldest known bad
    verdicts: dict[str, str] = {}
    skipped: set[int] = set()
    while True:
        open_ = [i for i in range(good + 1, bad) if i not in skipped]
        if not open_:
            break
        middle = (good + bad) / 2
        index = min(open_, key=lambda i: (abs(i - middle), i))
        verdict = judge(commits[index])
        if verdict not in (GOOD, BAD, SKIP):
            raise ValueError(f"judge({commits[index]!r}) said {verdict!r}: expected good, bad or skip")
        verdicts[commits[index]] = verdict
        if verdict == BAD:
            bad = index
        elif verdict == GOOD:
            good = index
        else:
            skipped.add(index)
    suspects = [commits[i] for i in range(good + 1, bad + 1)]
    return Search(suspects[0] if len(suspects) == 1 else None, suspects, verdicts)


# ---- one step: an A/B session of a commit against GOOD ------------------------------------------------------------

@dataclass
class Step:
    commit: str
    verdict: str        # GOOD, BAD or SKIP
    why: str
    seconds: float
    rows: list[dict] = field(default_factory=list)   # the gate.json rows that made it bad
    report: str = ""                                  # gate.md of the session, if it wrote one


def parse_metrics(given: Sequence[str] | None) -> list[str]:
    """``--metric`` values (repeated or comma-separated) as METRIC_ROWS keys; default: every exact metric."""
    names = [name.strip() for text in (given or []) for name in text.split(",") if name.strip()]
    if not names:
        return list(EXACT)
    out = []
    for name in names:
        key = ALIASES.get(name, name)
        if key not in METRIC_ROWS:
            raise BisectError(f"--metric={name}: not a metric; choose among {', '.join(METRIC_ROWS)} "
                              f"(or {', '.join(ALIASES)})")
        if key not in out:
            out.append(key)
    return out


def chosen(row: dict, metrics: Sequence[str]) -> bool:
    label = row.get("metric", "")
    return any(label.startswith(METRIC_ROWS[m]) if m == "time" else label == METRIC_ROWS[m] for m in metrics)


def counts_as_bad(row: dict, changed: bool) -> bool:
    verdict = row.get("verdict")
    if verdict == "regressed":
        return True
    return changed and (verdict == "improved" or (verdict == "unjudged" and row.get("reason") == "remeasured"))


def judge_report(gate: dict, metrics: Sequence[str], changed: bool = False) -> tuple[str, str, list[dict]]:
    """A session's ``gate.json`` judged on ``metrics``: (GOOD/BAD/SKIP, why, the rows that make it bad)."""
    rows = [row for row in gate.get("rows", []) if chosen(row, metrics)]
    guilty = [row for row in rows if counts_as_bad(row, changed)]
    if guilty:
        what = "changed" if changed else "regressed"
        return BAD, f"{len(guilty)} row(s) {what}: " + ", ".join(sorted({r['metric'] for r in guilty})), guilty
    judged = [row for row in rows if row.get("verdict") in ("unchanged", "improved")]
    if not judged:
        seen = sorted({f"{r['metric']} {r['verdict']}" for r in rows})
        return SKIP, ("none of the chosen metrics was judged"
                      + (f" ({'; '.join(seen)})" if seen else " (no row of them in gate.json)")), []
    return GOOD, f"{len(judged)} row(s) judged, none {'changed' if changed else 'regressed'}", []


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def describe(root: Path, commit: str) -> str:
    """``abc1234 subject`` (the subject cut at 72 characters)."""
    line = _git(root, "log", "-1", "--format=%h %s", commit).stdout.strip() or commit[:12]
    return line if len(line) <= 80 else line[:79] + "…"


@dataclass
class Session:
    """What every step shares: the repository, GOOD, the selection and how to judge."""

    root: Path
    good: str
    selection: str
    metrics: list[str]
    changed: bool = False
    rounds: int | None = None          # None: the policy's (step time asked); else --bench-ab-rounds
    pytest_args: list[str] = field(default_factory=list)
    timeout_s: float = STEP_TIMEOUT_S
    keep: Path | None = None           # where each step's gate.json, gate.md and log are kept (None: nowhere)
    python: str = sys.executable

    def command(self, report: Path) -> list[str]:
        return [self.python, "-m", "pytest", "-p", "no:cacheprovider", "bench/", "-k", self.selection,
                f"--bench-ab={self.good}", "--bench-ab-verdict=report", f"--bench-report={report}",
                *([f"--bench-ab-rounds={self.rounds}"] if self.rounds else []), *self.pytest_args]

    def run(self, commit: str) -> Step:
        """``commit`` as head against GOOD in a worktree of its own, removed before this returns or raises."""
        from parabench.ab.side import BaseError, Worktree

        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="parabench-bisect-"))
        worktree = None
        try:
            try:
                worktree = Worktree(self.root, commit, prefix="parabench-bisect-head-")
            except BaseError as error:
                return Step(commit, SKIP, str(error), time.monotonic() - started)
            report = scratch / "report"
            log = scratch / "pytest.log"
            rc = _run_pytest(self.command(report), worktree.path, log, self.timeout_s)
            step = self.judged(commit, rc, report, log)
            step.seconds = time.monotonic() - started
            if self.keep is not None:
                kept = self.keep / f"{commit[:12]}"
                kept.mkdir(parents=True, exist_ok=True)
                for name in ("gate.json", "gate.md"):
                    if (report / name).exists():
                        shutil.copy(report / name, kept / name)
                shutil.copy(log, kept / "pytest.log")
            return step
        finally:
            if worktree is not None:
                worktree.remove()
            shutil.rmtree(scratch, ignore_errors=True)

    def judged(self, commit: str, rc: int | None, report: Path, log: Path) -> Step:
        gate_path = report / "gate.json"
        gate = json.loads(gate_path.read_text()) if gate_path.exists() else None
        markdown = (report / "gate.md").read_text() if (report / "gate.md").exists() else ""
        if gate is not None:
            verdict, why, rows = judge_report(gate, self.metrics, self.changed)
            if verdict == BAD:  # a regression seen is one, whatever else failed in the session
                return Step(commit, BAD, why, 0.0, rows, markdown)
        if rc is None:
            return Step(commit, SKIP, f"the session ran past {self.timeout_s:.0f} s; {_tail(log)}", 0.0)
        if rc == 5:
            return Step(commit, SKIP, f"-k {self.selection!r} selects no case there", 0.0)
        if rc != 0:
            meaning = {1: "the case failed or errored there", 2: "the session was interrupted",
                       3: "pytest failed internally", 4: "pytest refused its command line"}.get(rc, "it failed")
            return Step(commit, SKIP, f"pytest exit {rc}: {meaning}; {_tail(log)}", 0.0, report=markdown)
        if gate is None:
            return Step(commit, SKIP, f"the session wrote no gate.json; {_tail(log)}", 0.0)
        return Step(commit, verdict, why, 0.0, report=markdown)


def _tail(log: Path, lines: int = 6) -> str:
    """The last meaningful lines of a step's log, for the reason a step was skipped."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    wanted = [line.strip() for line in text if line.startswith(("FAILED", "ERROR", "E ", "UsageError", "ERROR:"))]
    picked = wanted[-lines:] or [line.strip() for line in text if line.strip()][-lines:]
    return "last lines: " + " | ".join(line[:300] for line in picked)


def _run_pytest(command: list[str], cwd: Path, log: Path, timeout_s: float) -> int | None:
    """``command`` in ``cwd`` with its output in ``log``: its exit status, None when it ran past ``timeout_s``.

    On Ctrl-C (or SIGTERM, turned into one) the session is asked to stop as pytest is (SIGINT), so that its own
    clean-up removes the base's worktree, and killed only if it has not stopped within a minute."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])])
    with open(log, "wb") as out:
        # Its own session: a Ctrl-C reaches it once, forwarded by _stop, not also from the terminal mid-clean-up;
        # SIGINT at its default (a background job starts with it ignored), so that pytest stops cleanly on it.
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            return None
        except BaseException:
            _stop(process)
            raise


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---- the range and its checks -------------------------------------------------------------------------------------

def resolve_commit(root: Path, text: str, which: str) -> str:
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{text}^{{commit}}")
    if found.returncode != 0:
        raise BisectError(f"{which} {text!r} is not a commit of {root}")
    return found.stdout.strip()


def commits_between(root: Path, good: str, bad: str) -> list[str]:
    """BAD's first-parent line back to GOOD (GOOD excluded, BAD included), oldest first."""
    if good == bad:
        raise BisectError("GOOD and BAD are the same commit: nothing lies between them")
    if _git(root, "merge-base", "--is-ancestor", good, bad).returncode != 0:
        raise BisectError(f"GOOD {good[:12]} is not an ancestor of BAD {bad[:12]}: give GOOD older than BAD, on "
                          "its history")
    listed = _git(root, "rev-list", "--first-parent", "--ancestry-path", "--reverse", f"{good}..{bad}")
    commits = listed.stdout.split()
    if listed.returncode != 0 or not commits:
        raise BisectError(f"no commit between GOOD {good[:12]} and BAD {bad[:12]} on BAD's first-parent line")
    return commits


def has_ab(root: Path, commit: str) -> bool:
    """Whether ``commit``'s tree runs A/B sessions (``pytest --bench-ab``), so that it can be head."""
    return _git(root, "grep", "-q", "-F", "-e", AB_OPTION, commit, "--", "fixtures", "conftest.py").returncode == 0


def check_ab_support(root: Path, commits: Sequence[str]) -> None:
    """Every commit to test must know ``--bench-ab``; the support, once in, stays, so the oldest decides."""
    if has_ab(root, commits[0]):
        return
    if not has_ab(root, commits[-1]):
        raise BisectError(f"BAD {commits[-1][:12]} has no A/B sessions (pytest --bench-ab): no commit of the range "
                          "can be head of one, so none can be judged against GOOD")
    low, high = 0, len(commits) - 1  # the first commit with A/B: commits[high] has it, commits[low] lacks it
    while high - low > 1:
        middle = (low + high) // 2
        if has_ab(root, commits[middle]):
            high = middle
        else:
            low = middle
    raise BisectError(
        f"the range holds {high} commit(s) from before A/B sessions existed ({describe(root, commits[0])} … "
        f"{describe(root, commits[low])}): they cannot be head of `pytest --bench-ab`, which came in "
        f"{describe(root, commits[high])}; give a GOOD at or after {commits[high][:12]}^ (its parent)")


# ---- the command --------------------------------------------------------------------------------------------------

def table(rows: Sequence[dict]) -> str:
    from tabulate import tabulate

    def change(row: dict) -> str:
        return "" if row.get("change") is None else f"{row['change']:+.1%}"

    return tabulate([[r.get("name", ""), r.get("metric", ""), r.get("baseline", ""), r.get("now", ""), change(r),
                      r.get("verdict", ""), r.get("detail", "")] for r in rows],
                    headers=["case", "metric", "GOOD (base)", "commit (head)", "change", "verdict", "why"],
                    tablefmt="simple", disable_numparse=True)


def steps_table(root: Path, steps: Sequence[Step]) -> str:
    from tabulate import tabulate

    return tabulate([[i, describe(root, s.commit), s.verdict, f"{s.seconds:.0f}", s.why[:300]]
                     for i, s in enumerate(steps, 1)],
                    headers=["step", "commit", "verdict", "seconds", "why"], tablefmt="simple", disable_numparse=True)


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def bisect(args, out: Callable[[str], None] = lambda line: print(line, flush=True)) -> int:
    """``python -m parabench bisect``: 0 with the first bad commit found, 2 on a usage error (BAD not worse
    than GOOD included), 1 when something failed or skipped commits left the culprit among several."""
    started = time.monotonic()
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=args.repo, capture_output=True,
                               text=True)
        if found.returncode != 0:
            raise BisectError(f"{Path(args.repo).resolve()} is not in a git checkout")
        root = Path(found.stdout.strip())
        if not args.k.strip():
            raise BisectError("-k needs the case(s) to judge, e.g. -k torch-ddp-adamw-mlp_digits-w2-fp32")
        metrics = parse_metrics(args.metric)
        good = resolve_commit(root, args.good, "GOOD")
        bad = resolve_commit(root, args.bad, "BAD")
        commits = commits_between(root, good, bad)
        check_ab_support(root, commits)
        if args.rounds is not None and args.rounds < 2:
            raise BisectError(f"--rounds={args.rounds}: an A/B session runs 2 rounds or more")
    except BisectError as error:
        out(f"parabench bisect: {error}")
        return 2
    rounds = args.rounds or (None if "time" in metrics else EXACT_ROUNDS)
    keep = Path(args.out).resolve() if args.out else None
    session = Session(root, good, args.k, metrics, changed=args.changed, rounds=rounds,
                      pytest_args=list(args.pytest_args or []), timeout_s=args.timeout, keep=keep)
    what = "changed (regressed, improved or remeasured)" if args.changed else "regressed"
    out(f"parabench bisect: {len(commits)} commit(s) after GOOD {describe(root, good)} up to BAD "
        f"{describe(root, bad)}; -k {args.k!r}; bad = a row of {', '.join(metrics)} {what} against GOOD; "
        f"{'the policy' + chr(39) + 's' if rounds is None else rounds} A/B rounds a step")
    steps: list[Step] = []

    def judge(commit: str) -> str:
        out(f"  testing {describe(root, commit)} …")
        step = session.run(commit)
        steps.append(step)
        out(f"  {step.verdict:4s} {describe(root, commit)} ({step.seconds:.0f} s): {step.why[:300]}")
        return step.verdict

    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        if judge(bad) != BAD:
            last = steps[-1]
            out(steps_table(root, steps))
            if last.verdict == GOOD:
                out(f"BAD is not worse than GOOD on these metrics ({', '.join(metrics)}): {last.why}")
                return 2
            out(f"parabench bisect: BAD {describe(root, bad)} could not be judged against GOOD: {last.why}")
            return 1
        result = search(commits, judge)
    except KeyboardInterrupt:
        out("parabench bisect: interrupted; the worktrees are removed, the checkout is as it was")
        if steps:
            out(steps_table(root, steps))
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.monotonic() - started
    out("")
    out("steps:")
    out(steps_table(root, steps))
    if result.first_bad is None:
        out("parabench bisect: skipped commits hide the first bad commit; it is one of: "
            + "; ".join(describe(root, c) for c in result.suspects) + f" ({wall:.0f} s)")
        return 1
    culprit = next(s for s in steps if s.commit == result.first_bad)
    out("")
    out(f"first bad commit: {culprit.commit} {describe(root, culprit.commit).split(' ', 1)[-1]}")
    if _git(root, "rev-parse", "--verify", "--quiet", f"{culprit.commit}^2").returncode == 0:
        out("  (a merge: the change came in with the branch it merged)")
    out(f"its table against GOOD {good[:12]} ({what}):")
    out(table(culprit.rows))
    out(f"parabench bisect: {len(steps)} A/B session(s), {wall:.0f} s")
    return 0

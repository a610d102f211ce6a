"""``python -m parabench bisect``: the search over a list of commits, the verdict of one step's gate.json, the checks
before anything runs, and one bisect over a repository made here with a regression planted in one commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parabench.ab.bisect import BAD, GOOD, SKIP, BisectError, judge_report, parse_metrics, search

REPO = Path(__file__).resolve().parents[1]
CASE = "torch-ddp-adamw-mlp_digits-w2-fp32"


# ---- the search ---------------------------------------------------------------------------------------------------

class Judge:
    """Says bad from ``first_bad`` on, skip for ``skipped``; records what it was asked."""

    def __init__(self, commits: list[str], first_bad: str, skipped: set[str] = frozenset()) -> None:
        self.index = {c: i for i, c in enumerate(commits)}
        self.first_bad, self.skipped, self.asked = first_bad, set(skipped), []

    def __call__(self, commit: str) -> str:
        assert commit not in self.asked, f"{commit} judged twice"
        self.asked.append(commit)
        if commit in self.skipped:
            return SKIP
        return BAD if self.index[commit] >= self.index[self.first_bad] else GOOD


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16, 33])
def test_the_search_finds_every_first_bad_commit_in_log2_steps(count):
    commits = [f"c{i}" for i in range(count)]
    for first in commits:
        judge = Judge(commits, first)
        result = search(commits, judge)
        assert result.first_bad == first and result.suspects == [first]
        assert len(judge.asked) <= max(1, (count - 1).bit_length())
        assert commits[-1] not in judge.asked  # BAD is known bad: the caller judged it


def test_a_skipped_midpoint_costs_a_neighbour_and_the_culprit_is_still_found():
    commits = [f"c{i}" for i in range(10)]
    judge = Judge(commits, "c6", skipped={"c4"})
    result = search(commits, judge)
    assert result.first_bad == "c6"
    assert judge.asked[0] == "c4" and judge.asked[1] in ("c3", "c5")
    assert result.verdicts["c4"] == SKIP


def test_skips_next_to_the_culprit_leave_it_among_suspects():
    commits = [f"c{i}" for i in range(6)]
    judge = Judge(commits, "c3", skipped={"c2", "c3"})
    result = search(commits, judge)
    assert result.first_bad is None and result.suspects == ["c2", "c3", "c4"]
    assert sorted(judge.asked) == ["c1", "c2", "c3", "c4"]


def test_every_commit_skipped_leaves_all_of_them_suspects_each_asked_once():
    commits = [f"c{i}" for i in range(5)]
    judge = Judge(commits, "c4", skipped={"c0", "c1", "c2", "c3"})
    result = search(commits, judge)
    assert result.first_bad is None and result.suspects == commits
    assert sorted(judge.asked) == ["c0", "c1", "c2", "c3"]


def test_a_judge_saying_something_else_is_an_error():
    with pytest.raises(ValueError, match="expected good, bad or skip"):
        search(["a", "b", "c"], lambda commit: "maybe")


# ---- one step's verdict -------------------------------------------------------------------------------------------

def row(metric: str, verdict: str, reason: str = "") -> dict:
    return {"name": f"test_train[{CASE}]", "metric": metric, "verdict": verdict, "baseline": "1", "now": "2",
            "change": 1.0, "detail": "", "reason": reason}


def test_a_step_is_bad_on_a_regressed_row_of_the_chosen_metrics_only():
    gate = {"rows": [row("step time (paired rounds)", "regressed"), row("comm bus bytes", "unchanged"),
                     row("state_bytes", "regressed")]}
    assert judge_report(gate, ["comm"])[0] == GOOD
    verdict, why, rows = judge_report(gate, ["state_bytes", "comm"])
    assert verdict == BAD and [r["metric"] for r in rows] == ["state_bytes"] and "state_bytes" in why
    assert judge_report(gate, ["time"])[0] == BAD


def test_a_step_whose_metrics_were_not_judged_is_skipped():
    gate = {"rows": [row("state_bytes", "unjudged", "remeasured"), row("loss curve", "unchanged")]}
    verdict, why, _ = judge_report(gate, ["state_bytes"])
    assert verdict == SKIP and "state_bytes unjudged" in why
    assert judge_report({"rows": []}, ["flops"])[0] == SKIP
    # --changed: a metric measured another way, or improved, is a change
    assert judge_report(gate, ["state_bytes"], changed=True)[0] == BAD
    assert judge_report({"rows": [row("flops", "improved")]}, ["flops"], changed=True)[0] == BAD
    assert judge_report({"rows": [row("flops", "improved")]}, ["flops"])[0] == GOOD


def test_metrics_default_to_the_exact_ones_and_unknown_names_are_refused():
    assert parse_metrics(None) == ["state_bytes", "peak_allocated_bytes", "comm", "flops", "loss", "parity"]
    assert parse_metrics(["comm,peak", "comm"]) == ["comm", "peak_allocated_bytes"]
    with pytest.raises(BisectError, match="not a metric"):
        parse_metrics(["speed"])


# ---- the command line: checks before anything runs ----------------------------------------------------------------

def bisect(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    return subprocess.run([sys.executable, "-m", "parabench", "bisect", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=environment)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def make_repository(path: Path) -> Path:
    """This checkout's files (as they are in the working tree, stored runs left out) committed as a new repository."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file() or (name.startswith("baselines/") and name.endswith(".json")):
            continue
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, path / name)
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "bench@example.invalid"],
                 ["config", "user.name", "bench"], ["add", "-A"], ["commit", "-q", "-m", "c1: the suite"]):
        git(path, *args)
    return path


def commit(repo: Path, message: str, edit) -> str:
    edit(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_usage_errors_before_anything_runs(tmp_path):
    repo = make_repository(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, "c2: a note", lambda r: (r / "NOTE").write_text("a note\n"))
    checks = [((second, first, "-k", CASE), "is not an ancestor of BAD"),
              (("nosuch", second, "-k", CASE), "GOOD 'nosuch' is not a commit"),
              ((first, first, "-k", CASE), "the same commit"),
              ((first, second, "-k", CASE, "--metric", "speed"), "not a metric"),
              ((first, second), "required: -k")]
    for args, says in checks:
        result = bisect(*args, cwd=repo)
        assert result.returncode == 2, result.stdout + result.stderr
        assert says in result.stdout + result.stderr
    assert git(repo, "rev-parse", "HEAD") == second and git(repo, "worktree", "list").count("\n") == 0


def test_a_range_from_before_ab_sessions_is_refused_naming_the_commit_that_brought_them(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "bench@example.invalid"],
                 ["config", "user.name", "bench"]):
        git(repo, *args)
    old = commit(repo, "c1: before A/B", lambda r: (r / "fixtures").mkdir() or (r / "fixtures" / "x.py").write_text(""))
    commit(repo, "c2: still before", lambda r: (r / "fixtures" / "y.py").write_text(""))
    commit(repo, "c3: A/B", lambda r: (r / "fixtures" / "ab.py").write_text('"--bench-ab-verdict"\n'))
    bad = commit(repo, "c4: later", lambda r: (r / "NOTE").write_text("n\n"))
    result = bisect(old, bad, "-k", CASE, "--repo", str(repo), cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "before A/B sessions existed" in result.stdout and "c3: A/B" in result.stdout


# ---- a real bisect ------------------------------------------------------------------------------------------------

PLANTED = '''
    def optimizer_step(self) -> None:
        # planted: one more all-reduce a step (4 KiB), a regression of the case's collectives
        torch.distributed.all_reduce(torch.zeros(1024))
        super().optimizer_step()
'''


def plant(repo: Path) -> None:
    path = repo / "parabench" / "strategies" / "torch_native.py"
    text = path.read_text()
    anchor = "        return DistributedDataParallel(model, device_ids=device_ids)\n"
    assert text.count(anchor) == 1  # TorchDDP.wrap's last line
    path.write_text(text.replace(anchor, anchor + PLANTED))


@pytest.mark.slow
def test_bisect_finds_the_commit_that_planted_an_all_reduce(tmp_path):
    """c1 good; c2 a note; c3 one more all-reduce in DDP's step. Two A/B sessions (BAD c3 first, then c2), each
    about two minutes on a loaded 2-core host: the culprit c3 with its comm bus bytes row, and the repository's HEAD,
    status and worktrees as they were."""
    repo = make_repository(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    commit(repo, "c2: a note", lambda r: (r / "NOTE").write_text("a note\n"))
    culprit = commit(repo, "c3: one more all-reduce a step", plant)
    (repo / "untracked.txt").write_text("left alone\n")
    status = git(repo, "status", "--porcelain")
    started = time.monotonic()
    result = bisect(first, culprit, "-k", CASE, "--metric", "comm", cwd=repo, timeout=1200)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"first bad commit: {culprit} c3: one more all-reduce a step" in output
    table = output.split("its table against GOOD", 1)[1]
    assert "comm bus bytes" in table and "regressed" in table
    assert output.count("  testing ") == 2, output
    assert git(repo, "rev-parse", "HEAD") == culprit and git(repo, "status", "--porcelain") == status
    assert git(repo, "worktree", "list").count("\n") == 0  # every worktree removed
    print(f"bisect over 2 commits: {seconds:.0f} s\n{output}")


def test_a_session_that_failed_is_skipped_unless_it_showed_a_regression(tmp_path):
    import json

    from parabench.ab.bisect import Session

    session = Session(REPO, "0" * 40, CASE, ["comm"])
    report, log = tmp_path / "report", tmp_path / "pytest.log"
    report.mkdir()
    log.write_text("FAILED bench/test_torch_strategies.py::test_train[x] - ConvergenceError: loss did not fall\n")
    assert session.judged("c", 5, report, log).verdict == SKIP  # nothing selected there
    assert session.judged("c", None, report, log).why.startswith("the session ran past")
    failed = session.judged("c", 1, report, log)
    assert failed.verdict == SKIP and "ConvergenceError" in failed.why
    (report / "gate.json").write_text(json.dumps({"rows": [row("comm bus bytes", "unchanged")]}))
    assert session.judged("c", 1, report, log).verdict == SKIP
    assert session.judged("c", 0, report, log).verdict == GOOD
    (report / "gate.json").write_text(json.dumps({"rows": [row("comm bus bytes", "regressed")]}))
    bad = session.judged("c", 1, report, log)  # a regression seen is one, whatever else failed
    assert bad.verdict == BAD and bad.rows[0]["metric"] == "comm bus bytes"

"""A/B sessions: what BASE may be, and the table that judges head against base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parabench.ab.paired import PairedRule, compare_sides, rounds_needed
from parabench.ab.side import BaseError, resolve
from parabench.gate.policy import load_policy
from tests.test_end_to_end import outcome, pytest_run

REPO = Path(__file__).resolve().parents[1]
POLICY = load_policy(REPO / "baselines" / "policy.toml")


def test_base_is_an_interpreter_a_revision_or_both():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    python = resolve(sys.executable, REPO)
    assert python.python == os.path.abspath(sys.executable) and python.revision is None
    revision = resolve("HEAD", REPO)
    assert revision.revision == head.stdout.strip() and revision.python == sys.executable
    both = resolve(f"{sys.executable}@HEAD", REPO)
    assert both.python == os.path.abspath(sys.executable) and both.revision == head.stdout.strip()
    assert "revision HEAD" in both.describe()


@pytest.mark.parametrize("base, says", [
    ("/no/such/python", "no such file '/no/such/python'"),
    ("/", "is not an executable file"),
    ("/bin/true", "is not a Python interpreter"),
    ("no-such-revision-xyz", "'no-such-revision-xyz' is not a revision of this checkout"),
    ("", "needs BASE"),
])
def test_a_bad_base_names_the_fix(base, says):
    with pytest.raises(BaseError) as error:
        resolve(base, REPO)
    assert says in str(error.value)


def test_a_revision_outside_a_git_checkout_is_refused(tmp_path):
    with pytest.raises(BaseError, match="is not a git checkout"):
        resolve("HEAD~1", tmp_path)


def test_rounds_grow_with_the_cases_a_session_judges():
    # The smallest one-sided exact p-value, 2^-n, must survive the adjustment over 2K p-values.
    for cases in (1, 3, 10, 40):
        n = rounds_needed(cases, 0.05)
        assert 2.0 ** -(n - 1) * 2 * cases <= 0.05 and n >= 2


def _info(step_ms: float, losses=(2.0, 1.5, 1.0), state=1000, peak=500, versions=None) -> dict:
    return {"case": {"id": "torch-ddp-adamw-gpt2_text-w2-fp32"}, "device": "cpu", "loss": list(losses),
            "step_seconds": [step_ms / 1e3] * 5, "state_bytes": [{"total": state}] * 2,
            "peak_allocated_bytes": [peak] * 2, "versions": versions or {"python": "3.11", "torch": "2.13.0"},
            "hardware": {"cpu": "x"}}


def _bench(name: str, head_rounds, base_rounds, head=None, base=None) -> dict:
    info = head or _info(float(head_rounds[0]))
    return {"name": name, "extra_info": {**info, "ab": {"base": base or _info(float(base_rounds[0])),
                                                        "head_medians": [s / 1e3 for s in head_rounds],
                                                        "base_medians": [s / 1e3 for s in base_rounds],
                                                        "order": "AB BA", "rounds": len(head_rounds)}}}


RULE = PairedRule(threshold=0.05, alpha=0.05, rounds=8)
BASE_ROUNDS = [40.0, 42.0, 39.0, 41.5, 40.5, 43.0, 39.5, 41.0]


def test_identical_sides_are_unchanged_in_every_metric():
    report = compare_sides([_bench("test_train[a]", BASE_ROUNDS, BASE_ROUNDS)], POLICY, RULE, {"base": {}, "head": {}})
    assert not report.regressions and report.judged_cases() == {"test_train[a]"}
    assert report.headers[2:4] == ["base", "head"]


def test_a_slower_head_regresses_and_a_bigger_state_too():
    slower = [s * 1.2 for s in BASE_ROUNDS]
    report = compare_sides([_bench("test_train[a]", slower, BASE_ROUNDS),
                            _bench("test_train[b]", BASE_ROUNDS, BASE_ROUNDS, head=_info(40.0, state=1100))],
                           POLICY, RULE, {"base": {}, "head": {}})
    regressed = {(r.name, r.metric.split(" (")[0]) for r in report.regressions}
    assert regressed == {("test_train[a]", "step time"), ("test_train[b]", "state_bytes")}
    assert json.loads(report.to_json())["columns"] == ["base", "head"]


def test_a_loss_curve_that_differs_across_versions_is_reported_with_its_step_not_judged():
    head = _info(40.0, losses=(2.0, 1.5, 1.1), versions={"python": "3.11", "torch": "2.13.0", "deepspeed": "0.19.8"})
    base = _info(40.0, versions={"python": "3.11", "torch": "2.13.0", "deepspeed": "0.19.7"})
    report = compare_sides([_bench("test_train[a]", BASE_ROUNDS, BASE_ROUNDS, head=head, base=base)], POLICY, RULE,
                           {"base": {}, "head": {}})
    curve = next(r for r in report.rows if r.metric == "loss curve")
    assert curve.verdict.value == "info" and "deepspeed 0.19.7 → 0.19.8" in curve.detail and "step 2" in curve.detail
    assert not report.regressions
    assert any("deepspeed 0.19.7 → 0.19.8" in note for note in report.notes)
    same_versions = compare_sides([_bench("test_train[a]", BASE_ROUNDS, BASE_ROUNDS, head=_info(40.0, losses=(2.0, 1.5, 1.1)))],
                                  POLICY, RULE, {"base": {}, "head": {}})
    assert [r.metric for r in same_versions.regressions] == ["loss curve"]


SELECTION = "torch-ddp-adamw-mlp_digits-w2-fp32 and not colossalai"


def test_a_bad_base_is_a_usage_error_before_any_case_runs(tmp_path):
    result = pytest_run("bench/test_torch_strategies.py", "-k", SELECTION, "--bench-ab=/no/such/python", timeout=120)
    assert result.returncode == 4, outcome(result)
    assert "no such file '/no/such/python'" in outcome(result) and "passed" not in result.stdout


def test_a_base_environment_without_the_suites_packages_is_a_usage_error(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    result = pytest_run("bench/test_torch_strategies.py", "-k", SELECTION, f"--bench-ab={tmp_path}/bare/bin/python",
                        f"--bench-report={tmp_path}/report", timeout=180)
    assert result.returncode == 4, outcome(result)
    assert "the base side" in outcome(result) and "could not start" in outcome(result)
    assert "No module named" in outcome(result)


def test_an_ab_session_runs_both_sides_in_rounds_and_judges_them(tmp_path):
    result = pytest_run("bench/test_torch_strategies.py", "-k", SELECTION, f"--bench-ab={sys.executable}",
                        "--bench-ab-rounds=2", f"--bench-report={tmp_path}", f"--benchmark-json={tmp_path}/run.json",
                        timeout=300)
    assert result.returncode == 0, outcome(result)
    report = json.loads((tmp_path / "gate.json").read_text())
    assert set(report["sides"]) == {"base", "head"} and report["columns"] == ["base", "head"]
    metrics = {r["metric"] for r in report["rows"]}
    assert {"step time (paired rounds)", "state_bytes", "loss curve", "parity"} <= metrics
    curve = next(r for r in report["rows"] if r["metric"] == "loss curve")
    assert curve["verdict"] == "unchanged" and "bit for bit" in curve["detail"]
    assert "parabench A/B: no regression" in result.stdout
    # Head is the session's benchmark as usual; base's result is kept beside it.
    stored = json.loads((tmp_path / "run.json").read_text())["benchmarks"][0]["extra_info"]
    assert len(stored["ab"]["head_medians"]) == len(stored["ab"]["base_medians"]) == 2
    assert stored["ab"]["order"] == "AB BA"  # base first, then head first: ABBA
    # Round 1 measures everything; later rounds are for step times only.
    assert stored["peak_allocated_bytes"][0] is not None and len(stored["ab"]["head_steps"][1]) == 20
    assert stored["ab"]["base"]["loss"] == stored["loss"] and "parity" in stored["ab"]["base"]


# The last revision whose parabench/ was flat modules: a base of that layout must still run under today's server.
FLAT_LAYOUT = "ca3ee5b6fd94"


def test_the_base_server_runs_a_revision_of_the_flat_layout(tmp_path):
    from parabench.ab.side import BaseSide, BaseSpec, Worktree
    from parabench.cases.case import Case

    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{FLAT_LAYOUT}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"{FLAT_LAYOUT} is not in this clone (shallow?): git fetch --unshallow")
    tree = Worktree(REPO, found.stdout.strip())
    try:
        assert not (tree.path / "parabench" / "runtime").exists()  # the flat layout indeed
        settings = {"device": "cpu", "backend": "gloo", "threads": 1, "pin": False, "packages": ["deepspeed"],
                    "memory_limit_bytes": None}
        side = BaseSide(BaseSpec(text="flat", python=sys.executable, revision=tree.revision), tree.path, settings,
                        tmp_path / "base.log")
        try:
            assert side.ready["tree"] == os.path.realpath(tree.path) and "deepspeed" in side.ready["versions"]
            case = Case("torch-ddp", "adamw", "mlp-digits", 2, "fp32").to_dict()
            assert side.check([case]) == {"problems": {}, "unknown": {}}
        finally:
            side.close()
    finally:
        tree.remove()

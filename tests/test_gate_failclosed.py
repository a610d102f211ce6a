"""The gate fails closed in a real session: a case this environment cannot run, with a baseline here, is red."""

from __future__ import annotations

import json
from pathlib import Path

from parabench.gate.baselines import atomic_write, discover, newest_by_name
from parabench.measure.memory import MEASURES
from parabench.runtime.env import hardware
from tests.test_end_to_end import outcome, pytest_run

REPO = Path(__file__).resolve().parents[1]
CASE = "deepspeed-zero3-adamw-gpt2_text-w2-fp32"
SELECTION = ["bench/test_deepspeed.py", "-k", f"test_train and {CASE} and not (ga2 or ckpt or hpz2 or offload)"]
# What a broken install looks like at the point where the suite decides (parabench.cases.requirements), without
# uninstalling anything: the package is not found.
HIDE = """import parabench.cases.requirements as requirements
found = requirements.package_available
requirements.package_available = lambda name: name != "deepspeed" and found(name)
"""


def stored_here(tmp_path: Path, *, measures: dict | None = None, case: str = CASE) -> Path:
    """A store holding the committed result of ``case``, as if recorded on this machine (with ``measures``)."""
    (_, bench), *_ = newest_by_name(discover(REPO / "baselines"))[f"test_train[{case}]"]
    bench = json.loads(json.dumps(bench))
    bench["extra_info"]["hardware"] = hardware("cpu")
    bench["extra_info"]["measures"] = dict(MEASURES) if measures is None else measures
    storage = tmp_path / "store"
    atomic_write(storage / "Linux-CPython-3.11-64bit" / "0001_here.json",
                 json.dumps({"datetime": "2026-12-01T00:00:00", "benchmarks": [bench]}).encode())
    return storage


def test_a_case_skipped_for_a_missing_package_fails_the_gate_unless_excused_by_name(tmp_path):
    storage = stored_here(tmp_path)
    (tmp_path / "hide_deepspeed.py").write_text(HIDE)
    env = {"PYTHONPATH": str(tmp_path)}
    common = [*SELECTION, "-p", "hide_deepspeed", "--bench-profile=ci", "--bench-gate", "--bench-gate-time=report",
              f"--benchmark-storage=file://{storage}", f"--bench-report={tmp_path / 'report'}"]
    red = pytest_run(*common, env=env, timeout=300)
    assert red.returncode == 1, outcome(red)
    rows = json.loads((tmp_path / "report" / "gate.json").read_text())["rows"]
    assert [(r["verdict"], r["reason"]) for r in rows] == [("unjudged", "skipped")], rows
    assert "needs the package 'deepspeed'" in rows[0]["detail"]
    assert "[--bench-gate-allow=skipped excuses it]" in red.stdout, outcome(red)
    excused = pytest_run(*common, "--bench-gate-allow=skipped,nothing-gated", env=env, timeout=300)
    assert excused.returncode == 0, outcome(excused)
    assert "opt-outs used: --bench-gate-allow=nothing-gated (1 excused), --bench-gate-allow=skipped (1 excused)" \
        in excused.stdout, outcome(excused)


# This host's bf16 measured slow, as on a contended or AVX2-only host of an AVX-512 key.
SLOW_BF16 = """import parabench.measure.hostspeed as hostspeed
hostspeed.bf16_slowdown = lambda: 25.0
"""


def test_a_bf16_case_the_profile_trims_on_a_slow_measurement_fails_the_gate_when_it_ran_here_before(tmp_path):
    bf16 = "single-sgd-gpt2_text-w1-bf16"
    storage = stored_here(tmp_path, case=bf16)
    (tmp_path / "slow_bf16.py").write_text(SLOW_BF16)
    # nothing-gated excused: the skip alone must make it red
    red = pytest_run("bench/test_torch_strategies.py", "-k", f"test_train and {bf16}", "-p", "slow_bf16",
                     "--bench-profile=ci", "--bench-gate", "--bench-gate-time=report",
                     "--bench-gate-allow=nothing-gated", f"--benchmark-storage=file://{storage}",
                     f"--bench-report={tmp_path / 'report'}", env={"PYTHONPATH": str(tmp_path)}, timeout=300)
    assert red.returncode == 1, outcome(red)
    rows = json.loads((tmp_path / "report" / "gate.json").read_text())["rows"]
    assert [(r["verdict"], r["reason"]) for r in rows] == [("unjudged", "skipped")], rows
    assert "bf16 is slow on this host" in rows[0]["detail"] and "--bench-bf16=all runs it" in rows[0]["detail"]


def test_host_says_whether_this_kind_has_runs_measured_as_now(tmp_path, capsys):
    from parabench.__main__ import main

    assert main(["host", "--storage", str(tmp_path / "none"), "--device", "cpu"]) == 2  # no store at all
    other = stored_here(tmp_path / "other")
    for path in other.rglob("*.json"):  # a store of another host kind only
        path.write_text(path.read_text().replace('"cpu', '"other-cpu'))
    assert main(["host", "--storage", str(other), "--device", "cpu"]) == 3
    assert main(["host", "--storage", str(stored_here(tmp_path / "old", measures={})), "--device", "cpu"]) == 3
    assert main(["host", "--storage", str(stored_here(tmp_path / "now")), "--device", "cpu"]) == 0
    assert "stored runs of this kind measured as now: 1" in capsys.readouterr().out


def test_the_committed_baselines_hold_runs_measured_as_this_version_measures():
    """A change to a measurement bumps its version (parabench.measure.memory.MEASURES) and must re-record: else CI's
    ``python -m parabench host`` finds no run measured as now and excuses the memory checks of the very change
    that altered them."""
    from parabench.gate.judge import measured_by

    current = [str(run.path).rsplit("/", 1)[-1] for run in discover(REPO / "baselines")
               if any(all(measured_by(b["extra_info"], metric) == version for metric, version in MEASURES.items())
                      for b in run.benchmarks)]
    assert len(current) >= 3, (f"no host kind has three stored runs measured as MEASURES {MEASURES} (found "
                               f"{current}): record this host kind's baselines (tox -e record) and commit them")


def test_a_case_the_stored_run_of_this_profile_measured_and_the_whole_suite_no_longer_collects_is_missing(
        tmp_path, monkeypatch):
    import types

    import fixtures.gate as gate_fixture
    from parabench.gate.judge import compare
    from parabench.gate.keys import this_machine_kind
    from parabench.gate.policy import load_policy

    storage = stored_here(tmp_path)
    path = next(storage.rglob("*.json"))
    data = json.loads(path.read_text())
    gone = json.loads(json.dumps(data["benchmarks"][0]))
    gone["name"] = gone["fullname"] = "test_train[deepspeed-zero3-adamw-gone_text-w2-fp32]"
    data["benchmarks"].append(gone)
    data["parabench"] = {"profile": "ci"}
    path.write_text(json.dumps(data))
    stored = discover(storage)
    monkeypatch.setattr(gate_fixture, "bench_options", lambda config: types.SimpleNamespace(profile="ci"))
    monkeypatch.setattr(gate_fixture, "this_machine", lambda config: this_machine_kind("cpu"))

    def config(*args, keyword=""):
        return types.SimpleNamespace(option=types.SimpleNamespace(keyword=keyword, markexpr="", deselect=None),
                                     args=list(args), rootpath=REPO, invocation_params=types.SimpleNamespace(dir=REPO))

    collected = {f"test_train[{CASE}]"}
    assert gate_fixture.no_longer_collected(config("bench/"), stored, collected) == [gone["name"]]
    assert gate_fixture.no_longer_collected(config("bench"), stored, collected | {gone["name"]}) == []
    assert gate_fixture.no_longer_collected(config("bench/", keyword="zero3"), stored, collected) == []  # a selection
    assert gate_fixture.no_longer_collected(config("bench/test_deepspeed.py"), stored, collected) == []
    monkeypatch.setattr(gate_fixture, "bench_options", lambda config: types.SimpleNamespace(profile="default"))
    assert gate_fixture.no_longer_collected(config("bench/"), stored, collected) == []  # another profile's run
    # and the gate then has it as missing, with its stored run named
    report = compare([], stored, load_policy(REPO / "baselines" / "policy.toml"), expected=[gone["name"]],
                     machine=this_machine_kind("cpu"))
    assert [(r.name, r.reason) for r in report.unjudged] == [(gone["name"], "missing")] and report.failed

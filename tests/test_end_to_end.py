"""The suite as users run it: pytest sessions in subprocesses, from the real bench modules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.rank_tasks import process_gone

REPO = Path(__file__).resolve().parents[1]
PLUGINS = '["fixtures.options", "fixtures.collection", "fixtures.pools", "fixtures.cases"]'


def pytest_run(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def outcome(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-2000:]


def session_dir(tmp_path: Path, test_source: str, plugins: str = PLUGINS) -> Path:
    """A directory with its own test file and a conftest that loads parabench's pytest layer (``plugins``)."""
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\npytest_plugins = {plugins}\n")
    (tmp_path / "test_session.py").write_text(textwrap.dedent(test_source))
    return tmp_path


def test_ids_select_what_they_say():
    def ids(*selection: str) -> list[str]:
        result = pytest_run("bench/", "--collect-only", "-q", *selection)
        assert result.returncode == 0, outcome(result)
        return [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "::" in line]

    everything = ids()
    assert "torch-zero-adamw-gpt2_text-w2-fp32" in everything
    # A case id is unique within its test function (the same case may be timed by two experiments).
    nodes = [line.split("::", 1)[1] for line in pytest_run("bench/", "--collect-only", "-q").stdout.splitlines()
             if "::" in line]
    assert len(nodes) == len(set(nodes)) == len(everything)
    assert {i for i in ids("-k", "ddp")} == {i for i in everything if "ddp" in i}
    assert {i for i in ids("-k", "fsdp")} == {i for i in everything if "fsdp" in i}
    zero_adamw = ids("-k", "torch-zero and adamw")
    assert zero_adamw and all(i.startswith("torch-zero-adamw-") for i in zero_adamw)
    zero3 = ids("-k", "deepspeed and zero3")
    assert zero3 and all(i.startswith("deepspeed-zero3-") for i in zero3)


def test_bench_run_checks_parity_stores_and_compares(tmp_path):
    storage = f"file://{tmp_path}"
    selection = ["bench/test_torch_strategies.py", "-k", "gpt2_text and adam- and fp32", "--bench-steps", "6",
                 f"--benchmark-storage={storage}"]
    first = pytest_run(*selection, "--benchmark-save=first")
    assert first.returncode == 0, outcome(first)
    assert "5 passed" in first.stdout, outcome(first)
    [saved] = list(tmp_path.glob("*/0001_first.json"))
    runs = {b["extra_info"]["case"]["strategy"]: b for b in json.loads(saved.read_text())["benchmarks"]}
    assert set(runs) == {"single", "torch-ddp", "torch-zero", "torch-fsdp", "torch-fsdp1"}
    for name, bench in runs.items():
        info = bench["extra_info"]
        assert len(info["loss"]) == 8 and len(info["step_seconds"]) == 6
        # pytest-benchmark's statistics are those of the slowest rank's step times, exactly.
        assert bench["stats"]["rounds"] == 6
        assert bench["stats"]["min"] == pytest.approx(min(info["step_seconds"]), rel=1e-9)
        assert bench["stats"]["max"] == pytest.approx(max(info["step_seconds"]), rel=1e-9)
        assert len(info["state_bytes"]) == info["world_size"] == (1 if name == "single" else 2)
        assert all(p > 0 for p in info["peak_allocated_bytes"])
        assert {"torch", "transformers"} <= set(info["versions"]) and info["device"] == "cpu"
    ddp, zero, fsdp = (runs[n]["extra_info"]["state_bytes"][0] for n in ("torch-ddp", "torch-zero", "torch-fsdp"))
    assert zero["optimizer"] / ddp["optimizer"] == pytest.approx(0.5, abs=0.02)
    assert zero["params"] == ddp["params"]
    assert fsdp["params"] / ddp["params"] == pytest.approx(0.5, abs=0.02)
    assert fsdp["optimizer"] / ddp["optimizer"] == pytest.approx(0.5, abs=0.02)

    second = pytest_run(*selection, "--benchmark-compare=0001", "--benchmark-compare-fail=min:100000%",
                        f"--bench-report={tmp_path}")
    assert second.returncode == 0, outcome(second)
    assert "0001_first" in second.stdout, outcome(second)
    # The verdict table covers memory and convergence too; both are deterministic here.
    assert "parabench: baseline vs now" in second.stdout and "loss curve" in second.stdout, outcome(second)
    gate = json.loads((tmp_path / "gate.json").read_text())
    for row in gate["rows"]:
        if row["metric"] in ("state_bytes", "loss curve", "parity"):
            assert row["verdict"] == "unchanged", row


def test_failing_cases_fail_with_the_rank_story_and_the_session_goes_on(tmp_path):
    directory = session_dir(tmp_path, """
        import pytest
        from parabench.case import Case

        CASES = [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6, options=(("inject", fault),))
                 for fault in ("raise", "hang", "die", "grow")] + [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6)]

        @pytest.mark.parametrize("case", CASES, ids=str)
        def test_case(case, run_case):
            run_case(case)
    """)
    started = time.monotonic()
    result = pytest_run("test_session.py", "--bench-timeout=20", "--bench-rank-memory=2", cwd=directory)
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 1, outcome(result)
    assert "4 failed, 1 passed" in out, outcome(result)
    assert "rank 1 was killed by SIGKILL" in out
    assert "rank 1 was killed: its resident memory reached" in out and "limit of 2.00 GiB" in out
    assert "rank 1 raised InjectedFault: injected failure on rank 1 at step 1" in out
    assert "parabench/inject.py" in out  # the rank's traceback
    assert "timed out after" in out and "rank 1 still running after 20 s" in out
    assert "in before_step" in out  # rank 1's stack where it hangs
    assert elapsed < 200


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_interrupt_leaves_no_rank_process(tmp_path, how):
    directory = session_dir(tmp_path, f"""
        from tests import rank_tasks

        def test_sleeps(pools):
            pools.run(2, rank_tasks.record_pid_and_sleep, {str(tmp_path)!r}, timeout_s=600)
    """)
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_session.py"],
                               cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_files = [tmp_path / f"rank{r}.pid" for r in range(2)]
    deadline = time.monotonic() + 120
    while not all(f.exists() and f.read_text() for f in pid_files):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    ranks = [int(f.read_text()) for f in pid_files]
    process.send_signal(how)
    output = process.communicate(timeout=60)[0]
    assert "KeyboardInterrupt" in output, output  # reported as an interrupt, with pytest's summary
    time.sleep(0.5)
    alive = [pid for pid in ranks if not process_gone(pid)]
    assert not alive, f"rank processes {alive} outlived the interrupted session"


@pytest.mark.parametrize("option, message", [
    ("--bench-batch-sizes=7", "--bench-batch-sizes: '7': give distinct even sizes"),
    ("--bench-max-ranks=0", "--bench-max-ranks=0: use 1 or more"),
    ("--bench-timeout=-1", "use a positive number of seconds"),
    ("--bench-rank-memory=-1", "use GiB > 0, or 0 for no limit"),
    ("--bench-steps=2", "use at least 4 so convergence can be judged"),
    ("--bench-inject=slow", "unknown perturbation 'slow'; use slowdown=F"),
    ("--bench-launcher=mpirun", "invalid choice: 'mpirun'"),
    ("--bench-device=tpu", "invalid choice: 'tpu'"),
    ("--benchmark-compare=9999", "--benchmark-compare=9999: no stored run matches it under"),
    ("--bench-policy=missing.toml", "missing.toml: no policy file"),
])
def test_bad_input_is_a_usage_error_that_names_the_fix(option, message):
    extra = ("--bench-gate",) if option.startswith("--bench-policy") else ()
    result = pytest_run("bench/", "--collect-only", "-q", option, *extra, timeout=120)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, outcome(result)
    assert message in result.stderr, outcome(result)


def test_a_world_size_the_machine_cannot_provide_is_skipped_naming_the_fix():
    result = pytest_run("bench/test_torch_strategies.py", "-k", "torch-ddp-sgd-gpt2_text-w2-fp32 and not ga2",
                        "--bench-max-ranks=1", "-rs", timeout=120)
    assert result.returncode == 0, outcome(result)
    assert "1 skipped" in result.stdout and "(raise it with --bench-max-ranks)" in result.stdout, outcome(result)

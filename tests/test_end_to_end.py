"""The suite as users run it: pytest sessions in subprocesses, from the real bench modules."""

from __future__ import annotations

import json
import os
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


def pytest_run(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


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
        return [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "::" in line and "[" in line]

    result = pytest_run("bench/", "--collect-only", "-q")
    assert result.returncode == 0, outcome(result)
    nodes = [line.split("::", 1)[1] for line in result.stdout.splitlines() if "::" in line]
    everything = [node.split("[", 1)[1].rstrip("]") for node in nodes if "[" in node]  # cases; not the plain checks
    assert "torch-zero-adamw-gpt2_text-w2-fp32" in everything
    # A case id is unique within its test function (the same case may be timed by two experiments).
    assert len(nodes) == len(set(nodes))
    assert {i for i in ids("-k", "ddp")} == {i for i in everything if "ddp" in i}
    zero_adamw = ids("-k", "torch-zero and adamw")
    assert zero_adamw and all(i.startswith("torch-zero-adamw-") for i in zero_adamw)
    zero3 = ids("-k", "deepspeed and zero3")
    assert zero3 and all(i.startswith("deepspeed-zero3-") for i in zero3)


def test_bench_run_checks_parity_stores_and_compares(tmp_path):
    storage = f"file://{tmp_path}"
    selection = ["bench/test_torch_strategies.py", "-k", "gpt2_text and sgd- and fp32 and not ga2", "--bench-steps", "8",
                 f"--benchmark-storage={storage}"]
    first = pytest_run(*selection, "--benchmark-save=first")
    assert first.returncode == 0, outcome(first)
    assert "5 passed" in first.stdout, outcome(first)
    [saved] = list(tmp_path.glob("*/0001_first.json"))
    runs = {b["extra_info"]["case"]["strategy"]: b for b in json.loads(saved.read_text())["benchmarks"]}
    assert set(runs) == {"single", "torch-ddp", "torch-zero", "torch-fsdp", "torch-fsdp1"}
    for name, bench in runs.items():
        info = bench["extra_info"]
        assert len(info["loss"]) == 10 and len(info["step_seconds"]) == 8
        # pytest-benchmark's statistics are those of the slowest rank's step times, exactly.
        assert bench["stats"]["rounds"] == 8
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

    # Two of them again, each compared with its result in the first run.
    second = pytest_run(*selection, "-k", "gpt2_text and sgd- and fp32 and not ga2 and (single or torch-ddp)",
                        "--benchmark-compare=0001", "--benchmark-compare-fail=min:100000%", f"--bench-report={tmp_path}")
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
        from parabench.cases.case import Case

        CASES = [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6, options=(("inject", fault),))
                 for fault in ("raise", "hang", "die", "grow")] + [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6)]

        @pytest.mark.parametrize("case", CASES, ids=str)
        def test_case(case, run_case):
            run_case(case)
    """)
    started = time.monotonic()
    # 30 s: under pytest -n 2 the grow case was once still below its 2 GiB limit when a 15 s time-out ended it.
    result = pytest_run("test_session.py", "--bench-timeout=30", "--bench-rank-memory=2", cwd=directory)
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 1, outcome(result)
    assert "4 failed, 1 passed" in out, outcome(result)
    assert "rank 1 was killed by SIGKILL" in out, outcome(result)
    grow = out.split("injectgrow] _", 1)[-1][:4000]  # the grow case's own failure, for the message
    assert "rank 1 was killed: its resident memory reached" in out and "limit of 2.00 GiB" in out, grow
    assert "rank 1 raised InjectedFault: injected failure on rank 1 at step 1" in out
    assert "parabench/gate/inject.py" in out  # the rank's traceback
    assert "timed out after" in out and "rank 1 still running after 30 s" in out
    assert "in before_step" in out  # rank 1's stack where it hangs
    assert elapsed < 200


def sleeping_session(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """A pytest session whose 2 ranks are sleeping in a 600 s task: the session's process and the ranks' pids."""
    directory = session_dir(tmp_path, f"""
        from tests import rank_tasks

        def test_sleeps(pools):
            pools.run(2, rank_tasks.record_pid_and_sleep, {str(tmp_path)!r}, timeout_s=600)
    """)
    # A job started in the background by a non-interactive shell (as a CI script may be) inherits SIGINT
    # ignored, and Python then leaves it ignored: the session under test gets Ctrl-C's default, as at a terminal.
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_session.py"],
                               cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid_files = [tmp_path / f"rank{r}.pid" for r in range(2)]
    deadline = time.monotonic() + 120
    while not all(f.exists() and f.read_text() for f in pid_files):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    return process, [int(f.read_text()) for f in pid_files]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_interrupt_leaves_no_rank_process(tmp_path, how):
    process, ranks = sleeping_session(tmp_path)
    process.send_signal(how)
    try:
        output = process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        # pytest's faulthandler prints every thread's stack on SIGABRT: where the controller is stuck.
        process.send_signal(signal.SIGABRT)
        pytest.fail(f"the session did not end within 120 s of {how.name}; its output and stacks:\n"
                    + process.communicate(timeout=30)[0][-6000:])
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


def test_collect_only_prints_every_profiles_case_count_and_expected_time(tmp_path):
    result = pytest_run("bench/", "--collect-only", "-q", f"--benchmark-storage=file://{tmp_path}")
    assert result.returncode == 0, outcome(result)
    collected = sum(1 for line in result.stdout.splitlines() if "::" in line)
    counts = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] in ("full", "default", "ci") and words[2] == "tests,":
            counts[words[0]] = int(words[1])
    assert counts["default"] == collected and counts["full"] > counts["default"] > counts["ci"], result.stdout[-3000:]
    assert "no stored time for this host" in result.stdout  # an empty store: nothing to estimate from
    assert "parabench: profile default (" in result.stdout


# torch's AVX2 kernels (and oneDNN's) on any x86 host: bf16 is slow there, as on an AVX2-only host.
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_where_bf16_is_slow_the_profile_keeps_its_cheap_bf16_cases_and_says_so():
    selection = ["bench/test_torch_strategies.py", "-k", "single-sgd and bf16", "-rs", "--bench-steps=4"]
    result = pytest_run(*selection, "--collect-only", "-q", env=AVX2)
    assert "bf16 is slow on this host" in result.stdout and "(torch CPU kernels: AVX2" in result.stdout, outcome(result)
    assert "1 bf16 case(s) of this profile skip, 1 run (--bench-bf16=all runs every one)" in result.stdout
    skipped = pytest_run(*selection, "-k", "single-sgd-gpt2_text-w1-bf16", env=AVX2)
    assert "1 skipped" in skipped.stdout, outcome(skipped)
    assert "profile default runs only its bf16 cases for such hosts (--bench-bf16=all runs this one)" in skipped.stdout
    everything = pytest_run(*selection, "--collect-only", "-q", "--bench-bf16=all", env=AVX2)
    assert "bf16 case(s) of this profile skip" not in everything.stdout, outcome(everything)


def test_a_controller_killed_outright_takes_its_ranks_with_it(tmp_path):
    """SIGKILL leaves the controller no clean-up: its fork server sees it go and exits, and the ranks die with the
    server (PR_SET_PDEATHSIG), instead of finishing their task (here a 600 s sleep) on their own."""
    process, ranks = sleeping_session(tmp_path)
    process.kill()
    process.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(not process_gone(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in ranks if not process_gone(pid)]
    assert not alive, f"rank processes {alive} outlived their controller, killed with SIGKILL"

"""Launched sessions: reading the launcher's environment, ranks keeping in step, and torchrun itself."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from parabench.cases.requirements import Machine, Requirements, unmet
from parabench.runtime.launch import RANK_VARIABLES, Launch, LaunchError, detect
from parabench.runtime.launcher import agree_on_report
from parabench.runtime.peers import PeerLost, Peers
from tests.test_end_to_end import REPO, session_dir

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
                "MASTER_PORT": "29500"}


def test_torchrun_environment_is_a_launch():
    launch = detect("auto", TORCHRUN_ENV)
    assert launch == Launch("torchrun", rank=1, world_size=4, local_rank=1, local_world_size=2, master_addr="10.0.0.1",
                            master_port=29500)
    assert launch.nodes == 2 and not launch.writes
    assert detect("auto", {}) is None
    assert detect("spawn", TORCHRUN_ENV) is None  # the user asked for spawned ranks


# A spawned session started inside a launcher: its ranks must not take the launcher's place for their own.
LAUNCHER_AROUND = {"RANK": "5", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


def test_a_spawned_rank_takes_its_own_place_not_the_launchers_around_it(monkeypatch):
    from parabench.runtime.worker import WorkerConfig, claim_rank_variables

    for name, value in LAUNCHER_AROUND.items():
        monkeypatch.setenv(name, value)
    config = WorkerConfig(rank=1, world_size=2, device_type="cuda", backend="nccl", init_method="file:///x",
                          stack_path="/dev/null", process_group_timeout_s=60, threads=1)
    assert claim_rank_variables(config) == 1  # its CUDA device: rank 1 of the pool, not the launcher's local rank 3
    assert {name: os.environ.get(name) for name in LAUNCHER_AROUND} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": None,
        "MASTER_PORT": None}  # the pool meets through its file store, not at the launcher's address


def test_deepspeed_reads_the_ranks_own_place_over_a_launchers(monkeypatch):
    pytest.importorskip("deepspeed")
    import deepspeed.comm
    import torch

    from parabench.strategies.base import RankContext
    from parabench.strategies.deepspeed_zero import ensure_deepspeed_comm

    for name, value in LAUNCHER_AROUND.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(deepspeed.comm, "is_initialized", lambda: True)  # wraps the group the rank joined already
    ensure_deepspeed_comm(RankContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend="gloo"))
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")


@pytest.mark.parametrize("change, message", [
    ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
    ({"RANK": "one"}, "RANK='one' is not a whole number"),
    ({"RANK": "4"}, "rank 4 of a world of 4 is impossible"),
    ({"LOCAL_RANK": "2"}, "local rank 2 of 2 ranks on this node"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a port"),
])
def test_a_broken_torchrun_environment_names_the_fix(change, message):
    environ = {k: v for k, v in {**TORCHRUN_ENV, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message) as error:
        detect("auto", environ)
    assert "--bench-launcher=spawn" in str(error.value)  # the way out


def test_env_launcher_requires_the_variables():
    with pytest.raises(LaunchError, match="WORLD_SIZE is not set"):
        detect("env", {})


def test_slurm_tasks_are_a_launch():
    environ = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_NODES": "2",
               "SLURM_JOB_ID": "812", "MASTER_ADDR": "node01"}
    launch = detect("slurm", environ)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (
        "slurm", 3, 4, 1, 2)
    assert launch.master_addr == "node01" and 20000 <= launch.master_port < 40000
    # Another job on the same node meets at another store.
    assert detect("slurm", {**environ, "SLURM_JOB_ID": "813"}).master_port != launch.master_port
    with pytest.raises(LaunchError, match="scontrol show hostnames"):
        detect("slurm", {k: v for k, v in environ.items() if k != "MASTER_ADDR"})
    one_node = {**environ, "SLURM_STEP_NUM_NODES": "1", "SLURM_PROCID": "1"}
    del one_node["MASTER_ADDR"]
    assert detect("slurm", one_node).master_addr == "127.0.0.1"


def test_export_sets_torchruns_variables():
    environ: dict[str, str] = {}
    Launch("slurm", 3, 4, 1, 2, "node01", 29999).export(environ)
    assert environ == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "node01", "MASTER_PORT": "29999"}


def test_a_launch_runs_its_own_world_size_and_one_process_cases_only():
    launched = Machine(cuda_devices=0, max_cpu_world_size=2, launched_world_size=8)
    assert unmet("x", Requirements(), 8, launched) is None  # more than this machine's own limit: the launch has them
    assert unmet("x", Requirements(), 1, launched) is None
    reason = unmet("x", Requirements(), 4, launched)
    assert "needs 4 ranks; this launch has 8" in reason and "torchrun --nnodes" in reason


def _peers(world_size: int, silent_s: float = 20.0) -> list[Peers]:
    store = dist.HashStore()
    return [Peers(store, rank, world_size, silent_s=silent_s) for rank in range(world_size)]


def _together(peers: list[Peers], step) -> list:
    """``step(rank, peers)`` on every rank at once, in threads; each rank's result or exception."""
    results: list = [None] * len(peers)

    def run(rank: int) -> None:
        try:
            results[rank] = step(rank, peers[rank])
        except Exception as error:  # noqa: BLE001 — the test reads it
            results[rank] = error

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(peers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for p in peers:
        p.close()
    return results


def test_peers_exchange_values_step_after_step():
    def steps(rank, peers):
        return [peers.exchange(("step", i), rank * 10 + i) for i in range(5)]

    results = _together(_peers(3), steps)
    for rank_result in results:
        assert [[value for _, value in step] for step in rank_result] == [[i, 10 + i, 20 + i] for i in range(5)]


def test_a_rank_that_never_comes_is_named_and_the_launch_ends():
    peers = _peers(2, silent_s=1.5)
    peers[1].close()  # rank 1's heartbeat stops: it is gone
    started = time.monotonic()
    with pytest.raises(PeerLost, match=r"rank 1 stopped answering \(no heartbeat for 2 s"):
        peers[0].exchange(("step",), None)
    assert time.monotonic() - started < 10
    with pytest.raises(PeerLost):  # nothing more can be agreed
        peers[0].exchange(("next",), None)
    peers[0].close()


def test_a_report_meets_a_task_that_then_does_not_start():
    """Rank 1 failed its test before the task rank 0 goes on to: both end at the same report, in step."""
    from parabench.runtime.launcher import _LaunchedPool, task_tag

    class Pools:  # what _LaunchedPool reads of its LaunchedPools
        def __init__(self, peers):
            self.peers = peers

    def rank0(peers):
        pool = _LaunchedPool(Pools(peers), 2, "torch")
        with pytest.raises(Exception, match="did not start: rank 1 failed its test before it") as error:
            pool.run(len, "a case", timeout_s=5)
        return agree_on_report(peers, "test_x", "call", "failed", str(error.value)), peers.exchange(("after",))

    def rank1(peers):
        return agree_on_report(peers, "test_x", "call", "failed", "AssertionError on rank 1"), peers.exchange(("after",))

    results = _together(_peers(2), lambda rank, peers: (rank0 if rank == 0 else rank1)(peers))
    for reports, after in results:
        assert reports[1] == ("failed", "AssertionError on rank 1")
        assert [tag for tag, _ in after] == [("after",), ("after",)]  # still in step afterwards
    assert task_tag(len, ("a case",), 2)[0] == "task"


def test_ranks_at_different_tests_end_the_launch():
    def step(rank, peers):
        return agree_on_report(peers, f"test_{rank}", "call", "passed", "")

    results = _together(_peers(2), step)
    assert all(isinstance(r, PeerLost) and "ranks are at different tests" in str(r) for r in results), results


# -- torchrun itself: two launches of two "nodes" on this machine (loopback) ---------------------------------------

SESSION = """
    import os
    import pytest
    from parabench.cases.case import Case

    CASES = [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6), Case("single", "sgd", "mlp-digits", 1, steps=6),
             Case("torch-ddp", "sgd", "mlp-digits", 4, steps=6)]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_case(case, run_case, check_parity):
        check_parity(run_case(case))

    def test_skipped_on_one_rank():
        if os.environ["RANK"] == "1":
            pytest.skip("only rank 1 skips")

    def test_fails_on_one_rank():
        assert os.environ["RANK"] != "1", "only rank 1 fails"
"""


def launch_directory(tmp_path: Path, source: str) -> Path:
    """A session directory whose conftest loads the suite's whole pytest layer."""
    import runpy

    return session_dir(tmp_path, source, plugins=repr(runpy.run_path(str(REPO / "conftest.py"))["pytest_plugins"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(directory: Path, *args: str, nodes: int = 2, per_node: int = 1, timeout: float = 420) -> list[tuple[int, str]]:
    """``torchrun … -m pytest ARGS``, once per node (node ranks 0…), all on loopback: each node's (exit code, output)."""
    environ = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    port = str(_free_port())
    processes = [subprocess.Popen(
        TORCHRUN + ["--nnodes", str(nodes), "--nproc-per-node", str(per_node), "--node-rank", str(node),
                    "--master-addr", "127.0.0.1", "--master-port", port,
                    "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA", "test_session.py", *args],
        cwd=directory, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in range(nodes)]
    outputs = []
    try:
        for process in processes:
            outputs.append((process.communicate(timeout=timeout)[0], process.returncode))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return [(code, output) for output, code in outputs]


def outcomes(output: str) -> dict[str, str]:
    """test name → PASSED/FAILED/SKIPPED, from pytest's -v lines (``test_session.py::test_x[id] PASSED [ 50%]``)."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"\S*::(\S+) (PASSED|FAILED|SKIPPED|ERROR)\b", line)
        if match:
            found[match[1]] = match[2]
    return found


def test_two_torchrun_nodes_run_the_same_ids_and_store_one_result_the_gate_reads(tmp_path):
    directory = launch_directory(tmp_path, SESSION)
    store = f"file://{tmp_path / 'store'}"
    common = ("--benchmark-storage", store, "--bench-report", str(tmp_path / "reports"),
              "--bench-policy", str(REPO / "baselines" / "policy.toml"))
    first = torchrun(directory, "-k", "not fails", "--benchmark-save=launch", *common)
    for node, (code, output) in enumerate(first):
        assert code == 0, f"node {node}:\n{output[-6000:]}"
        assert f"rank {node} of 2 (torchrun, 2 node(s), 1 per node)" in output
        assert "2 passed, 2 skipped, 1 deselected" in output, output[-3000:]
        assert "needs 4 ranks; this launch has 2" in output  # the world size this launch cannot provide
        assert "only rank 1 skips" in output  # rank 1's skip is rank 0's too
    ids = outcomes(first[0][1])
    assert ids == outcomes(first[1][1]) and len(ids) == 4, ids  # the same ids, and the same outcome, on both
    saved = list((tmp_path / "store").rglob("*.json"))
    assert [p.name for p in saved] == ["0001_launch.json"]  # rank 0's alone
    benchmarks = {b["name"]: b["extra_info"] for b in json.loads(saved[0].read_text())["benchmarks"]}
    launched = benchmarks["test_case[torch-ddp-sgd-mlp_digits-w2-fp32]"]
    assert launched["launch"] == {"launcher": "torchrun", "world_size": 2, "nodes": 2, "ranks_per_node": 1}
    assert len(launched["step_seconds_per_rank"]) == 2 and launched["parity"]["first_divergence"] is None
    assert "launch" not in benchmarks["test_case[single-sgd-mlp_digits-w1-fp32]"]  # rank 0's own one-process pool

    second = torchrun(directory, "--bench-gate", "--bench-gate-time=report", "--benchmark-compare=0001", *common)
    for node, (code, output) in enumerate(second):
        assert code == 1, f"node {node}:\n{output[-6000:]}"  # the test that fails on rank 1 fails on both
        assert "1 failed, 2 passed, 2 skipped" in output, output[-3000:]
        assert "only rank 1 fails" in output
    gate = json.loads((tmp_path / "reports" / "gate.json").read_text())
    judged = {(row["name"], row["metric"]): row["verdict"] for row in gate["rows"]}
    launched_case = "test_case[torch-ddp-sgd-mlp_digits-w2-fp32]"
    # Read and judged against the launch's stored run: the same numerics, the same memory.
    assert judged[(launched_case, "loss curve")] == judged[(launched_case, "state_bytes")] == "unchanged", judged
    assert gate["counts"] == {"unchanged": 2} and "no regression (2 unchanged" in second[0][1]
    assert len(list((tmp_path / "store").rglob("*.json"))) == 1  # nothing saved without --benchmark-save


FAULTS = """
    import pytest
    from parabench.cases.case import Case

    CASES = [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6, options=(("inject", fault),))
             for fault in ("raise", "grow")] + [Case("torch-ddp", "sgd", "mlp-digits", 2, steps=6)]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_case(case, run_case):
        run_case(case)
"""


def test_faults_under_torchrun_fail_their_case_on_every_rank_and_the_session_goes_on(tmp_path):
    directory = launch_directory(tmp_path, FAULTS)
    (code, output), = torchrun(directory, "--bench-timeout=15", "--bench-rank-memory=2", nodes=1, per_node=2)
    assert code == 1, output[-6000:]
    assert output.count("2 failed, 1 passed") == 2, output[-6000:]  # both ranks' sessions
    assert "rank 1 raised InjectedFault: injected failure on rank 1 at step 1" in output
    assert "rank 1 was stopped: its resident memory reached" in output and "limit of 2.00 GiB" in output


class _XdistConfig:
    """What ``_refuse_xdist`` reads of a pytest config with pytest-xdist installed."""

    def __init__(self, args: list[str], numprocesses: int | None, root: Path = REPO) -> None:
        self.args, self.rootpath = args, root
        self.invocation_params = type("Params", (), {"dir": root})()
        self.options = {"dist": "load" if numprocesses else "no", "numprocesses": numprocesses}

    def getoption(self, name: str, default=None):
        return self.options.get(name, default)


def test_xdist_is_refused_for_benchmarks_only():
    from fixtures.launcher import _refuse_xdist

    for args in (["bench/"], ["bench/test_colossalai.py::test_train"], [str(REPO / "bench")]):
        with pytest.raises(pytest.UsageError, match="pytest-benchmark turns itself off under xdist"):
            _refuse_xdist(_XdistConfig(args, numprocesses=2))
    _refuse_xdist(_XdistConfig(["tests/"], numprocesses=2))  # the harness's own tests may spread
    _refuse_xdist(_XdistConfig(["bench/"], numprocesses=None))  # xdist installed, not used


def test_srun_tasks_run_a_launched_session(tmp_path):
    """srun's task variables, as srun sets them for two tasks on one node (no SLURM here, so set by hand)."""
    directory = launch_directory(tmp_path, SESSION)
    base = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    base.update({"SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "1", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
                 "MASTER_PORT": str(_free_port())})
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "test_session.py", "--bench-launcher=slurm",
         "-k", "w2 or skipped"], cwd=directory, env={**base, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for task in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for task, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, output[-5000:]
        assert f"rank {task} of 2 (slurm, 1 node(s), 2 per node)" in output
        assert "1 passed, 1 skipped" in output, output[-3000:]
    assert outcomes(outputs[0]) == outcomes(outputs[1])


def test_rank_zero_leaves_last():
    peers = _peers(2)
    left = []
    waiter = threading.Thread(target=lambda: (peers[0].depart(timeout_s=10), left.append(time.monotonic())))
    waiter.start()
    time.sleep(0.3)
    assert not left  # rank 0 is still waiting for rank 1
    peers[1].depart()
    waiter.join(5)
    assert left
    for p in peers:
        p.close()


def test_a_rank_that_cannot_reach_the_launch_stops_naming_the_fix(tmp_path):
    directory = launch_directory(tmp_path, "def test_nothing():\n    pass\n")
    environ = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_session.py",
                             "--bench-timeout=3"], cwd=directory, env=environ, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-3000:]
    assert "rank 1 could not join the launch at 127.0.0.1:" in result.stdout
    assert "start every node's command with the same --master-addr and --master-port" in result.stdout

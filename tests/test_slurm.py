"""What a session launched by srun records, read from a real result.

``tests/data/srun_ddp_result.json`` is one benchmark (its name and ``extra_info``) of a run stored by
``.ci/slurm --benchmark-json=FILE``: ``srun --nodes 1 --ntasks 2 python3 -m pytest bench/ --bench-launcher=slurm``
on a one-node SLURM cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

from parabench.gate.keys import key_differences, machine_key
from parabench.runtime.launch import detect

RECORDED = Path(__file__).resolve().parent / "data" / "srun_ddp_result.json"

# srun's task variables for rank 0 of that step: two tasks on one node.
SRUN_RANK_0 = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "1",
               "SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0"}


def recorded_extra_info() -> dict:
    result = json.loads(RECORDED.read_text())
    assert result["name"] == "test_train[torch-ddp-adamw-gpt2_text-w2-fp32]"
    return result["extra_info"]


def test_an_srun_result_records_its_launch_and_the_pinning_it_ran_with():
    info = recorded_extra_info()
    assert info["launch"] == {"launcher": "slurm", "nodes": 1, "ranks_per_node": 2, "world_size": 2}
    assert info["world_size"] == 2 and info["case"]["world_size"] == 2
    # Each launched rank pinned itself to one core; asked afterwards, the one core left to it must not read as
    # "cannot pin" (it once recorded false, and keyed launched runs apart from the spawned ones they equal)
    assert info["pinned"] is True


def test_the_launcher_describes_srun_tasks_as_the_recorded_launch():
    # The fields a stored srun result carries are the ones the launcher records today.
    assert detect("slurm", SRUN_RANK_0).describe() == recorded_extra_info()["launch"]


def test_an_srun_result_has_a_spawned_runs_machine_key():
    info = recorded_extra_info()
    key = machine_key(info)
    assert (key["nodes"], key["world_size"], key["pinned"]) == (1, 2, True)
    # The suite's spawned ranks: the same but for the launch, which the key leaves out, so a run under srun is
    # judged against the stored runs of spawned ranks on this machine
    spawned = {name: value for name, value in info.items() if name != "launch"}
    assert key_differences(machine_key(spawned), key) == []


def test_a_launched_rank_that_pinned_itself_says_so():
    import os

    from parabench.runtime.launch import Launch
    from parabench.runtime.launcher import pin_launched_rank

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        raise AssertionError(f"this test needs 2 CPUs to pin one of two ranks; this process may use {sorted(allowed)}")
    try:
        launch = Launch("slurm", rank=1, world_size=2, local_rank=1, local_world_size=2, master_addr="127.0.0.1",
                        master_port=29500)
        assert pin_launched_rank(launch, threads=1) is True
        assert os.sched_getaffinity(0) == {sorted(allowed)[1]}
        # three ranks a node on two cores: not pinned, and the affinity is left as it was
        os.sched_setaffinity(0, allowed)
        crowded = Launch("slurm", rank=0, world_size=3, local_rank=0, local_world_size=3, master_addr="127.0.0.1",
                         master_port=29500)
        assert pin_launched_rank(crowded, threads=1) is False and os.sched_getaffinity(0) == allowed
    finally:
        os.sched_setaffinity(0, allowed)

"""What a session launched by srun records, read from a real result.

``tests/data/srun_ddp_result.json`` is one benchmark (its name and ``extra_info``) of a run stored by
``.ci/slurm --bench-record``: ``srun --nodes 1 --ntasks 2 python3 -m pytest bench/ --bench-launcher=slurm``
on a one-node SLURM cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

from parabench.keys import key_differences, machine_key
from parabench.launcher import detect

RECORDED = Path(__file__).resolve().parent / "data" / "srun_ddp_result.json"

# srun's task variables for rank 0 of that step: two tasks on one node.
SRUN_RANK_0 = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "1",
               "SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0"}


def recorded_extra_info() -> dict:
    result = json.loads(RECORDED.read_text())
    assert result["name"] == "test_train[torch-ddp-adamw-gpt2_text-w2-fp32]"
    return result["extra_info"]


def test_an_srun_result_records_its_launch():
    info = recorded_extra_info()
    assert info["launch"] == {"launcher": "slurm", "nodes": 1, "ranks_per_node": 2, "world_size": 2}
    assert info["world_size"] == 2 and info["case"]["world_size"] == 2
    assert info["pinned"] is False


def test_the_launcher_describes_srun_tasks_as_the_recorded_launch():
    # The fields a stored srun result carries are the ones the launcher records today.
    assert detect("slurm", SRUN_RANK_0).describe() == recorded_extra_info()["launch"]


def test_an_srun_result_is_keyed_apart_from_a_spawned_one():
    info = recorded_extra_info()
    key = machine_key(info)
    assert (key["nodes"], key["world_size"], key["pinned"]) == (1, 2, False)
    # The suite's spawned ranks record pinned true: otherwise the same, that is another key, so a run under srun
    # is judged against stored runs made under srun.
    spawned = {**{name: value for name, value in info.items() if name != "launch"}, "pinned": True}
    assert key_differences(machine_key(spawned), key) == ["pinned: True (stored) vs False (now)"]

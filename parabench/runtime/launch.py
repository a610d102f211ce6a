"""What a launcher the user already has (torchrun, srun) says about this process: its rank, world and node.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set) or ``srun``
(``--bench-launcher=slurm``: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) every rank runs the same pytest session;
``detect`` reads which, or says what is missing (``LaunchError``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from parabench.runtime.worker import PLACE_VARIABLES, RENDEZVOUS_VARIABLES

LAUNCHERS = ("auto", "spawn", "env", "slurm")
# The variables a launcher sets for every rank (torchrun's, which DeepSpeed and ColossalAI read too).
RANK_VARIABLES = PLACE_VARIABLES + RENDEZVOUS_VARIABLES


class LaunchError(ValueError):
    """The launcher's environment is incomplete or contradictory; the message names the fix."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: its rank, the world, and where the rendezvous store is."""

    launcher: str  # "torchrun" (or any launcher that sets torchrun's variables) or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def writes(self) -> bool:
        """Only rank 0 writes results, reports and the progress file."""
        return self.rank == 0

    def describe(self) -> dict[str, object]:
        return {"launcher": self.launcher, "world_size": self.world_size, "nodes": self.nodes,
                "ranks_per_node": self.local_world_size}

    def export(self, environ: dict[str, str] = os.environ) -> None:  # type: ignore[assignment]
        """Set torchrun's variables, which the frameworks (DeepSpeed, ColossalAI) read."""
        values = (self.rank, self.world_size, self.local_rank, self.local_world_size, self.master_addr,
                  self.master_port)
        environ.update({name: str(value) for name, value in zip(RANK_VARIABLES, values)})


def detect(choice: str = "auto", environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch this process is part of; None when the suite should spawn its own ranks.

    ``auto``: a launch when RANK and WORLD_SIZE are set (torchrun, or ``srun`` exporting them);
    ``spawn``: never; ``env``: torchrun's variables, required; ``slurm``: srun's variables.
    """
    if choice not in LAUNCHERS:
        raise LaunchError(f"--bench-launcher={choice}: use one of {', '.join(LAUNCHERS)}")
    if choice == "spawn":
        return None
    if choice == "slurm":
        return _from_slurm(environ)
    if choice == "auto" and not ("RANK" in environ and "WORLD_SIZE" in environ):
        return None
    return _from_torchrun(environ)


def _integer(environ: Mapping[str, str], name: str, default: int | None = None, *, fix: str) -> int:
    text = environ.get(name)
    if text is None or text == "":
        if default is None:
            raise LaunchError(f"{name} is not set; {fix}")
        return default
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not a whole number; {fix}") from None


def _checked(launch: Launch, fix: str) -> Launch:
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise LaunchError(f"rank {launch.rank} of a world of {launch.world_size} is impossible; {fix}")
    if not 0 <= launch.local_rank < launch.local_world_size or launch.local_world_size > launch.world_size:
        raise LaunchError(f"local rank {launch.local_rank} of {launch.local_world_size} ranks on this node (world "
                          f"{launch.world_size}) is impossible; {fix}")
    if not 0 < launch.master_port < 65536:
        raise LaunchError(f"MASTER_PORT={launch.master_port} is not a port; {fix}")
    return launch


def _from_torchrun(environ: Mapping[str, str]) -> Launch:
    fix = ("start pytest with torchrun (e.g. torchrun --nnodes 2 --nproc-per-node 1 --node-rank N --master-addr HOST "
           "--master-port PORT -m pytest bench/), or pass --bench-launcher=spawn to let the suite spawn its ranks")
    world_size = _integer(environ, "WORLD_SIZE", fix=fix)
    master_addr = environ.get("MASTER_ADDR")
    if not master_addr:
        raise LaunchError(f"MASTER_ADDR is not set; {fix}")
    return _checked(Launch("torchrun", rank=_integer(environ, "RANK", fix=fix), world_size=world_size,
                           local_rank=_integer(environ, "LOCAL_RANK", 0, fix=fix),
                           local_world_size=_integer(environ, "LOCAL_WORLD_SIZE", world_size, fix=fix),
                           master_addr=master_addr, master_port=_integer(environ, "MASTER_PORT", fix=fix)), fix)


def _from_slurm(environ: Mapping[str, str]) -> Launch:
    """srun's task variables; the rendezvous host is MASTER_ADDR (on one node, this node)."""
    fix = ("run pytest as srun's tasks (srun --nodes N --ntasks-per-node K python -m pytest bench/ "
           "--bench-launcher=slurm) with MASTER_ADDR set to the first node's address (docs/launchers.md)")
    world_size = _integer(environ, "SLURM_NTASKS", fix=fix)
    nodes = _integer(environ, "SLURM_STEP_NUM_NODES", _integer(environ, "SLURM_NNODES", 1, fix=fix), fix=fix)
    master_addr = environ.get("MASTER_ADDR") or ("127.0.0.1" if nodes == 1 else "")
    if not master_addr:
        raise LaunchError("MASTER_ADDR is not set and the step spans several nodes; export MASTER_ADDR=$(scontrol "
                          "show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) before srun")
    # One port per job and step, so that two jobs sharing a node do not meet at one store.
    default_port = 20000 + (_integer(environ, "SLURM_JOB_ID", 0, fix=fix) * 7
                            + _integer(environ, "SLURM_STEP_ID", 0, fix=fix)) % 20000
    return _checked(Launch("slurm", rank=_integer(environ, "SLURM_PROCID", fix=fix), world_size=world_size,
                           local_rank=_integer(environ, "SLURM_LOCALID", fix=fix),
                           local_world_size=max(1, world_size // max(1, nodes)), master_addr=master_addr,
                           master_port=_integer(environ, "MASTER_PORT", default_port, fix=fix)), fix)

"""The rank process: joins the process group once, then runs the tasks the controller sends.

A task is ``(function, args)`` with an importable module-level function called as
``function(context, *args)``; its return value goes back to the controller.
"""

from __future__ import annotations

import ctypes
import datetime
import faulthandler
import os
import signal
import traceback
from dataclasses import dataclass
from typing import MutableMapping

STACK_SIGNAL = signal.SIGUSR1  # the controller sends it to a hung rank to get its Python stacks


@dataclass(frozen=True)
class WorkerConfig:
    rank: int
    world_size: int
    device_type: str
    backend: str
    init_method: str
    stack_path: str
    process_group_timeout_s: float
    threads: int
    pin: bool = False


def pinned_cpus(rank: int, world_size: int, threads: int) -> set[int] | None:
    """The cores rank ``rank`` is pinned to, or None where the ranks' threads do not fit one core each.

    Pinning keeps a rank's threads off its peers' cores: on a 2-core machine the between-run
    spread of a case's median step time fell from 3–10 % to 3–5.5 % (docs/gate.md, 'Time on shared CPU runners').
    """
    cpus = sorted(os.sched_getaffinity(0))
    if world_size * threads > len(cpus):
        return None
    return set(cpus[rank * threads:(rank + 1) * threads])


def pin_to_cores(rank: int, world_size: int, threads: int) -> bool:
    """Pin this process to rank ``rank``'s cores (``pinned_cpus``); whether it was. Asked again afterwards,
    ``pinned_cpus`` would see only the cores left to it and answer that the ranks cannot be pinned."""
    cores = pinned_cpus(rank, world_size, threads)
    if cores:
        os.sched_setaffinity(0, cores)
    return bool(cores)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, however it dies.

    The parent is the controller's fork server (``parabench.runtime.pool``), which exits when the controller does:
    multiprocessing hands every process the server forks a copy of the server's keep-alive pipe (so that it
    could fork through the same server), and a server whose ranks hold it outlives a controller killed
    outright, its ranks with it (a SIGKILLed session left both behind). The rank drops its copy first.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass
        server._forkserver_alive_fd = None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request (reparented to init): nothing would signal it
            os._exit(1)
    except OSError:  # not Linux: the controller's own clean-up still applies
        pass


# The variables a launcher sets for every rank (torchrun's, which DeepSpeed and ColossalAI read): its place, and
# where its process group meets.
PLACE_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


def claim_rank_variables(config: WorkerConfig, environ: MutableMapping[str, str] = os.environ) -> int:
    """Write this spawned rank's own place into torchrun's variables; return its local rank (its CUDA device).

    A pool's ranks are one node's, started by this session: rank r of N is local rank r of N. What a launcher
    left in the environment (a session started inside torchrun or an srun step) is another process group's:
    read, it put every rank on the launcher's GPU, and DeepSpeed took the launcher's world size. The pool meets
    through a file store, so the launcher's rendezvous address goes too. Only a launched session
    (``parabench.runtime.launcher``) takes its ranks from the environment.
    """
    values = (config.rank, config.world_size, config.rank, config.world_size)
    environ.update({name: str(value) for name, value in zip(PLACE_VARIABLES, values)})
    for name in RENDEZVOUS_VARIABLES:
        environ.pop(name, None)
    return config.rank


# torch names no public way to ask whether CUDA's driver was initialised; these are the checks it makes itself.
_CUDA_FORK_FIX = ("keep PYTORCH_NVML_BASED_CUDA_CHECK=1 set there (parabench/runtime/rank_imports.py sets it: "
                  "torch.cuda.is_available() and device_count() then ask NVML), or import the module that touches "
                  "CUDA in the ranks instead")


def require_cuda_untouched() -> None:
    """In the process that forks the ranks: fail now, naming the cause, if CUDA was initialised in it."""
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised in the process that forks the ranks (multiprocessing's fork server, "
                           "which imports parabench.runtime.rank_imports), and CUDA fails in every process forked after "
                           f"that; {_CUDA_FORK_FIX}")


def require_cuda_forkable() -> None:
    """In a CUDA rank: fail, naming the cause, if CUDA had been touched in the server it was forked from."""
    import torch

    if torch.cuda._is_in_bad_fork():
        raise RuntimeError("this rank was forked from a process that had initialised CUDA (the fork server, which "
                           "imports parabench.runtime.rank_imports), so CUDA cannot start in it; " + _CUDA_FORK_FIX)


def rank_device(device_type: str, local_rank: int):
    """This rank's ``torch.device``: GPU ``local_rank``, made current, on CUDA (spawned and launched ranks alike)."""
    import torch

    if device_type == "cuda":
        require_cuda_forkable()
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    # DeepSpeed calls torch's renamed collectives on every step; the warning is theirs to fix.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


def main(config: WorkerConfig, conn, progress: ctypes.Array[ctypes.c_longlong] | None = None) -> None:
    """The rank's life: join the process group, then serve tasks (``progress``: see ``RankContext``)."""
    _die_with_parent()
    # Ctrl-C reaches the whole foreground process group; the controller decides how ranks end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stacks = open(config.stack_path, "w", buffering=1)
    faulthandler.enable(file=stacks, all_threads=True)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
    quiet_libraries()

    import torch
    import torch.distributed as dist

    from parabench.strategies.base import RankContext

    torch.set_num_threads(config.threads)
    if config.pin and config.device_type == "cpu":
        pin_to_cores(config.rank, config.world_size, config.threads)
    local_rank = claim_rank_variables(config)
    device = rank_device(config.device_type, local_rank)
    dist.init_process_group(config.backend, init_method=config.init_method, rank=config.rank,
                            world_size=config.world_size,
                            timeout=datetime.timedelta(seconds=config.process_group_timeout_s))
    context = RankContext(rank=config.rank, world_size=config.world_size, local_rank=local_rank,
                          device=device, backend=config.backend, progress=progress)
    dist.barrier()
    conn.send(("ready", os.getpid()))
    try:
        serve(context, conn)
    finally:
        # Skipping this crashed DeepSpeed ranks with SIGABRT at exit in 3 of 6 runs.
        dist.destroy_process_group()


def serve(context, conn) -> None:
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the controller is gone
            return
        if task is None:
            return
        function, args = task
        try:
            answer = ("ok", function(context, *args))
        except BaseException as error:  # noqa: BLE001 — everything goes back to the controller
            skipped = skip_reason(error)
            answer = (("skip", skipped) if skipped is not None
                      else ("error", f"{type(error).__name__}: {error}", traceback.format_exc()))
            del error
        # Before answering: a collection after the answer ran on while the controller started the next task,
        # on another pool's ranks (another framework family, or an A/B session's other side) sharing the cores,
        # and made that run's steps slower (+40–80 % on gpt2-text in an A/A session on 2 cores).
        release_memory(context)
        conn.send(answer)


def skip_reason(error: BaseException) -> str | None:
    """The reason of a ``pytest.skip()`` called inside a task (pytest is not imported in a rank); else None."""
    return str(getattr(error, "msg", error)) if type(error).__name__ == "Skipped" else None


def release_memory(context) -> None:
    """Free what the last task left in reference cycles, so the next one starts from the same memory."""
    import gc

    import torch

    gc.collect()
    if context.device.type == "cuda":
        torch.cuda.empty_cache()

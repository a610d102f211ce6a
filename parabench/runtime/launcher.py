"""Sessions started by a launcher the user already has (torchrun, srun): each pytest process is a rank.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set) or ``srun``
(``--bench-launcher=slurm``: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), every rank runs the same
pytest session. The cases then run in the ranks' own process group, joined once through the
launcher's rendezvous, instead of in spawned pools (``parabench.runtime.launch`` reads which launch this is).
The ranks keep in step through the launcher's key-value store (``parabench.runtime.peers``): they agree on what
they collected, on every task's outcome and on every test's outcome, so that a failure or a skip on one rank is
every rank's, and none is left waiting in a collective its peers will never join.

A task that fails on a rank (it raised, outlived ``--bench-timeout``, or passed the per-rank memory
limit) fails on every rank; the process group is then rebuilt and the session goes on. A rank that
dies takes the launch with it: its peers notice its silence, say which rank was lost, and end the
session (the launcher owns the processes; it cannot add one back).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import signal
import threading
import time
import traceback
from typing import Any, Callable, Iterator

from parabench.runtime.launch import Launch
from parabench.runtime.peers import Peers
from parabench.runtime.pool import (
    CaseTimeout,
    PoolManager,
    ProgressCallback,
    RankFailure,
    RankMemoryLimit,
    RankSkip,
    over_memory_limit,
)

# What a task's peers allow past its time-out.
GRACE_S = 30.0
# A rank stuck where no signal reaches (inside a C++ call that ignores its own time-out) is ended this long
# after its task's time-out: it prints its stacks and exits, and its peers report it lost.
LAST_RESORT_S = 120.0
POOL_START_S = 180.0  # rank 0's own pool for one-process tasks may have to start first


# -- one task on every rank, in this process ---------------------------------------------------------------------


class TaskTimedOut(RuntimeError):
    """Raised in a rank's main thread when its task outlives ``--bench-timeout``."""


class MemoryLimitExceeded(MemoryError):
    """Raised in a rank's main thread when its resident memory passes the per-rank limit."""


@contextlib.contextmanager
def guarded(timeout_s: float, memory_limit_bytes: int | None) -> Iterator[None]:
    """Run the body under a time-out and a resident-memory limit, each raised in this (main) thread.

    The alarm interrupts Python code (a sleep, a loop) and fires as soon as a C++ call returns, and
    the process group's own time-out bounds its collectives. What neither reaches ends the process
    ``LAST_RESORT_S`` later, after printing its stacks (faulthandler).
    """
    main = threading.get_ident()
    stop = threading.Event()
    over: list[int] = []

    def on_alarm(signum, frame):
        raise TaskTimedOut(f"still running after {timeout_s:.0f} s (--bench-timeout); where it was is below")

    def on_memory(signum, frame):
        raise MemoryLimitExceeded(over_memory_limit(over[0], memory_limit_bytes))

    def watch_memory() -> None:
        import psutil

        me = psutil.Process()
        while not stop.wait(0.5):
            resident = me.memory_info().rss
            if resident > memory_limit_bytes:
                over.append(resident)
                signal.pthread_kill(main, MEMORY_SIGNAL)
                return

    previous = {signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm),
                MEMORY_SIGNAL: signal.signal(MEMORY_SIGNAL, on_memory)}
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    faulthandler.dump_traceback_later(timeout_s + LAST_RESORT_S, exit=True)
    watcher = None
    if memory_limit_bytes:
        watcher = threading.Thread(target=watch_memory, name="parabench-memory", daemon=True)
        watcher.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        stop.set()
        if watcher is not None:
            watcher.join()
        for number, handler in previous.items():
            signal.signal(number, handler)


MEMORY_SIGNAL = signal.SIGUSR2


def pin_launched_rank(launch: Launch, threads: int) -> bool:
    """Pin this launched rank to its cores among the node's (``worker.pin_to_cores``); whether it was."""
    from parabench.runtime.worker import pin_to_cores

    return pin_to_cores(launch.local_rank, launch.local_world_size, threads)


class LaunchedPools:
    """``PoolManager``'s interface for a launched session: tasks run in this process, on the launch's group.

    A task of the launch's world size runs on every rank here; a one-process task (a reference) runs
    on rank 0 only, in a spawned pool of one, and its result is shared with the other ranks. Other
    world sizes are skipped at collection (``parabench.cases.requirements``).
    """

    def __init__(self, launch: Launch, device_type: str, backend: str, process_group_timeout_s: float,
                 threads: int = 1, pin: bool = False, memory_limit_bytes: int | None = None,
                 **local_options: Any) -> None:
        import torch
        import torch.distributed as dist

        from parabench.runtime.worker import quiet_libraries, rank_device
        from parabench.strategies.base import RankContext

        self.launch, self.device_type, self.backend = launch, device_type, backend
        self.memory_limit_bytes = memory_limit_bytes
        self.timeout = datetime.timedelta(seconds=process_group_timeout_s)
        self._local: PoolManager | None = None
        self._local_options = dict(local_options, threads=threads, pin=pin,
                                   rank_memory=RankMemoryLimit(per_rank_bytes=memory_limit_bytes),
                                   process_group_timeout_s=process_group_timeout_s)
        quiet_libraries()
        torch.set_num_threads(threads)
        self._pinned = pin_launched_rank(launch, threads) if pin and device_type == "cpu" else False
        device = rank_device(device_type, launch.local_rank)
        launch.export()
        store, rank, world_size = next(dist.rendezvous("env://", timeout=self.timeout))
        self.store = store
        self.peers = Peers(dist.PrefixStore("parabench/peers", store), rank, world_size)
        self.generation = 0
        self._join()
        self.context = RankContext(rank=rank, world_size=world_size, local_rank=launch.local_rank, device=device,
                                   backend=backend)

    def pinned(self, world_size: int) -> bool:
        """Whether a task on ``world_size`` ranks runs pinned: the launch's ranks, or rank 0's own pools."""
        if world_size == 1:
            return self.local().pinned(1)
        return self._pinned

    def _join(self) -> None:
        import torch.distributed as dist

        dist.init_process_group(self.backend, store=dist.PrefixStore(f"parabench/group{self.generation}", self.store),
                                 rank=self.launch.rank, world_size=self.launch.world_size, timeout=self.timeout)
        dist.barrier()

    def _leave(self, abort: bool = False) -> None:
        """Leave the process group; ``abort``: close its connections now, though a failed task still holds it."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if abort:
            # Closes its connections even where something still holds the group: a peer blocked receiving
            # from this rank then fails at once (one blocked sending still waits for the group's time-out).
            try:
                dist.distributed_c10d._abort_process_group()
                return
            except (AttributeError, RuntimeError, ValueError):
                pass
        dist.destroy_process_group()

    def _rebuild(self) -> None:
        """A fresh process group after a failed task: a failed or timed-out collective leaves the old one unusable."""
        self._leave()
        self.generation += 1
        self._join()

    def get(self, world_size: int, family: str = "") -> "_LaunchedPool":
        if world_size not in (1, self.launch.world_size):
            raise ValueError(f"a task on {world_size} ranks cannot run in a launch of {self.launch.world_size}; "
                             f"launch {world_size} ranks, or run without a launcher")
        return _LaunchedPool(self, world_size, family)

    def run(self, world_size: int, function: Callable[..., Any], *args: Any, timeout_s: float,
            on_wait: ProgressCallback | None = None) -> list[Any]:
        return self.get(world_size).run(function, *args, timeout_s=timeout_s, on_wait=on_wait)

    def local(self) -> PoolManager:
        """Rank 0's spawned pools, for one-process tasks."""
        if self._local is None:
            self._local = PoolManager(device_type=self.device_type, backend=self.backend, **self._local_options)
        return self._local

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        self.peers.depart()
        self.peers.close()
        try:
            self._leave()
        except Exception:  # noqa: BLE001 — a broken group at exit has nothing left to say
            pass


def task_tag(function: Callable, args: tuple, world_size: int) -> tuple:
    first = args[0] if args else None
    return ("task", getattr(function, "__name__", "task"), getattr(first, "id", repr(first)[:200]), world_size)


class _LaunchedPool:
    """One task's way onto the launch: every rank (world size W) or rank 0 alone (world size 1)."""

    def __init__(self, pools: LaunchedPools, world_size: int, family: str) -> None:
        self.pools, self.world_size, self.family = pools, world_size, family
        self.broken = False

    def run(self, function: Callable[..., Any], *args: Any, timeout_s: float,
            on_wait: ProgressCallback | None = None) -> list[Any]:
        peers = self.pools.peers
        tag = task_tag(function, args, self.world_size)
        starts = peers.exchange(("start", tag))
        behind = [(rank, value) for rank, (other, value) in enumerate(starts) if other[0] == "report"]
        if behind:
            # A rank finished its test before this task: it failed (or skipped) there. It repeats its report,
            # which meets this rank's own report of the task it did not start.
            rank, (outcome, text) = behind[0]
            raise RankFailure(f"{tag[1]} did not start: rank {rank} {outcome} its test before it:\n{text}")
        peers.require_in_step(starts, ("start", tag), "tasks")
        if self.world_size == 1:
            return self._on_rank_zero(function, args, timeout_s, on_wait, tag)
        return self._on_every_rank(function, args, timeout_s, tag)

    def _on_every_rank(self, function, args, timeout_s: float, tag: tuple) -> list[Any]:
        from parabench.runtime.worker import release_memory

        pools = self.pools
        started = time.monotonic()
        try:
            with guarded(timeout_s, pools.memory_limit_bytes):
                mine = ("ok", function(pools.context, *args))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # noqa: BLE001 — every rank hears of it
            mine = _failed(pools.launch.rank, error)
        release_memory(pools.context)
        if mine[0] == "error":  # a peer waiting in a collective with this rank fails now, not at its time-out
            pools._leave(abort=True)
        waited = time.monotonic() - started
        answers = [value for _, value in pools.peers.exchange(("done", tag), mine,
                                                              max(GRACE_S, timeout_s + GRACE_S - waited))]
        return _agreed(answers, tag[1], timeout_s, rebuild=pools._rebuild)

    def _on_rank_zero(self, function, args, timeout_s: float, on_wait, tag: tuple) -> list[Any]:
        pools = self.pools
        mine: tuple = ("waited", None)
        if pools.launch.rank == 0:
            try:
                mine = ("ok", pools.local().get(1, self.family).run(function, *args, timeout_s=timeout_s,
                                                                     on_wait=on_wait))
            except RankSkip as skip:
                mine = ("skip", str(skip))
            except RankFailure as failure:
                mine = ("error", time.time(), str(failure), isinstance(failure, CaseTimeout))
        answers = [value for _, value in pools.peers.exchange(("done", tag), mine,
                                                              timeout_s + POOL_START_S + GRACE_S)]
        outcome = answers[0]
        if outcome[0] == "error":
            raise (CaseTimeout if outcome[3] else RankFailure)(outcome[2])
        if outcome[0] == "skip":
            raise RankSkip(outcome[1])
        return outcome[1]


def _failed(rank: int, error: BaseException) -> tuple:
    from parabench.runtime.worker import skip_reason

    skipped = skip_reason(error)
    if skipped is not None:
        return ("skip", skipped)
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if isinstance(error, TaskTimedOut):
        story = f"rank {rank} timed out: {error}\n{text}"
    elif isinstance(error, MemoryLimitExceeded):
        story = f"rank {rank} was stopped: {error}"
    else:
        story = f"rank {rank} raised {type(error).__name__}: {error}\n{text}"
    return ("error", time.time(), story, isinstance(error, TaskTimedOut))


def _agreed(answers: list[tuple], what: str, timeout_s: float, rebuild: Callable[[], None]) -> list[Any]:
    """Every rank's value, or the failure or skip every rank agrees on (the process group rebuilt after a failure)."""
    failed = [(rank, answer) for rank, answer in enumerate(answers) if answer[0] == "error"]
    if failed:
        rebuild()
        # The cause first: the earliest failure (peers then fail on their broken collectives).
        failed.sort(key=lambda item: item[1][1])
        lines = [f"{what} failed on {len(answers)} ranks:"] + [answer[2] for _, answer in failed]
        if failed[0][1][3]:  # the first failure was a time-out (others' time-outs are its consequences)
            raise CaseTimeout(f"{what} timed out (limit {timeout_s:.0f} s)\n\n" + "\n\n".join(lines[1:]))
        raise RankFailure("\n\n".join(lines))
    skips = [answer[1] for answer in answers if answer[0] == "skip"]
    if skips:
        raise RankSkip(skips[0])
    return [answer[1] for answer in answers]


def report_tag(nodeid: str, when: str) -> tuple:
    return ("report", nodeid, when)


def agree_on_report(peers: Peers, nodeid: str, when: str, outcome: str, text: str) -> list[tuple[str, str]]:
    """Every rank's (outcome, text) for one phase of one test.

    A peer that met this report at the start of a task (it went on into the test while this rank had
    already finished it) fails that task and then reports; this rank repeats its report to meet it.
    """
    tag = report_tag(nodeid, when)
    answers = peers.exchange(tag, (outcome, text))
    if any(other[0] == "start" for other, _ in answers):
        answers = peers.exchange(tag, (outcome, text))
    peers.require_in_step(answers, tag, "tests")
    return [value for _, value in answers]

"""Long-lived rank processes that run many cases, and their failure handling.

Spawning a process group costs seconds (10–15 s with the frameworks imported), so ranks are
started once per (world size, backend) and reused. Any failure — a rank's exception, its death,
or a time-out — breaks the pool: the caller gets every rank's story and the next case gets a
fresh pool, because a collective that failed or timed out leaves the process group unusable.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from parabench.runtime import worker


class RankFailure(RuntimeError):
    """A task failed on one or more ranks; the message holds each rank's traceback or stacks."""


class CaseTimeout(RankFailure):
    """A task did not finish in time; the message holds the Python stacks of the ranks still running."""


class RankSkip(Exception):
    """Every rank that answered asked to skip (pytest.skip inside a rank)."""


# A rank that failed leaves its peers blocked in a collective; give them this long to fail too.
PEER_GRACE_S = 3.0
# While a task runs, the controller looks at its progress and its ranks' memory this often.
PROGRESS_INTERVAL_S = 0.5
GB = 1024**3


@dataclass(frozen=True)
class RankMemoryLimit:
    """The resident memory a rank may reach: the same for every rank (``per_rank_bytes``), or a budget of the
    machine shared by the ranks that run together (``shared_bytes``, split over a pool's world size); neither: none."""

    per_rank_bytes: int | None = None
    shared_bytes: int | None = None

    def for_world_size(self, world_size: int) -> int | None:
        """Each rank's limit in a pool of ``world_size`` ranks, in bytes; None: no limit."""
        if self.per_rank_bytes is not None:
            return self.per_rank_bytes
        if self.shared_bytes is None:
            return None
        return self.shared_bytes // world_size

    def to_dict(self) -> dict[str, int | None]:
        return {"per_rank_bytes": self.per_rank_bytes, "shared_bytes": self.shared_bytes}


def over_memory_limit(resident: int, limit: int) -> str:
    """Why a rank was stopped for its memory, naming the option that sets the limit."""
    return (f"its resident memory reached {resident / GB:.2f} GiB, over the limit of {limit / GB:.2f} GiB per rank "
            f"(--bench-rank-memory; raise it if the case needs more)")


# ``on_wait(steps done, steps in all, seconds since the task was sent)``; (0, 0) until rank 0 reports.
ProgressCallback = Callable[[int, int, float], None]


# Ranks are forked from one server process per controller that has imported what every rank needs
# (``parabench.runtime.rank_imports``; multiprocessing's "forkserver"): the server has no threads of its own, so its
# forks are as clean as spawned processes, without each paying the imports again.
RANK_IMPORTS = "parabench.runtime.rank_imports"


def rank_context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([RANK_IMPORTS])  # read when the server starts: with the first pool
    return context


class RankPool:
    """``world_size`` rank processes in one process group, fed tasks through pipes."""

    def __init__(self, world_size: int, device_type: str = "cpu", backend: str = "gloo",
                 process_group_timeout_s: float = 300.0, start_timeout_s: float = 180.0, threads: int = 1,
                 pin: bool = False, memory_limit_bytes: int | None = None):
        self.world_size = world_size
        # A rank whose resident memory passes this is killed and its task fails (None: no limit).
        self.memory_limit_bytes = memory_limit_bytes
        self.device_type = device_type
        self.backend = backend
        self.broken = False
        self.directory = tempfile.mkdtemp(prefix=f"parabench-pool-w{world_size}-")
        # A file store needs no free port: no races between sessions or pools.
        init_method = f"file://{os.path.join(self.directory, 'rendezvous')}"
        context = rank_context()
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.connections: list[multiprocessing.connection.Connection] = []
        self.stack_paths: list[str] = []
        # (steps done, steps in all) of the running task: rank 0 writes it (RankContext.report_progress),
        # the controller reads it while it waits. No lock: one writer, and a read between its two
        # stores is at worst one report old.
        self.progress = context.Array("q", 2, lock=False)
        for rank in range(world_size):
            stack_path = os.path.join(self.directory, f"rank{rank}.stacks")
            config = worker.WorkerConfig(rank=rank, world_size=world_size, device_type=device_type,
                                         backend=backend, init_method=init_method, stack_path=stack_path,
                                         process_group_timeout_s=process_group_timeout_s, threads=threads,
                                         pin=pin)
            ours, theirs = context.Pipe()
            process = context.Process(target=worker.main, args=(config, theirs, self.progress),
                                      name=f"parabench-rank{rank}")
            process.start()
            theirs.close()
            self.processes.append(process)
            self.connections.append(ours)
            self.stack_paths.append(stack_path)
        try:
            self._collect(lambda rank, message: message[0] == "ready", start_timeout_s, "start the process group")
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def run(self, function: Callable[..., Any], *args: Any, timeout_s: float,
            on_wait: ProgressCallback | None = None) -> list[Any]:
        """Call ``function(context, *args)`` on every rank; return each rank's value, in rank order.

        ``on_wait(done, total, elapsed_s)``: called about every ``PROGRESS_INTERVAL_S`` while the ranks
        work, with the steps the task reported (``RankContext.report_progress``).
        """
        if self.broken:
            raise RuntimeError("this pool is broken; ask the PoolManager for a fresh one")
        self.broken = True  # until every rank has answered
        self.progress[0] = self.progress[1] = 0  # not the previous task's count
        for connection in self.connections:
            connection.send((function, args))
        answers = self._collect(lambda rank, message: True, timeout_s, getattr(function, "__name__", "task"),
                                on_wait)
        skips = [m[1] for m in answers if m[0] == "skip"]
        self.broken = False
        if skips:
            raise RankSkip(skips[0])
        return [m[1] for m in answers]

    def _collect(self, accept, timeout_s: float, what: str, on_wait: ProgressCallback | None = None) -> list[tuple]:
        """Each rank's next message; raises RankFailure / CaseTimeout with every rank's story."""
        started = time.monotonic()
        deadline = started + timeout_s
        answers: dict[int, tuple] = {}
        failures: dict[int, str] = {}  # in the order they were seen
        deaths: set[int] = set()       # ranks that died or were killed (never a peer's casualty)
        pending = set(range(self.world_size))
        first_failure: float | None = None
        while pending:
            now = time.monotonic()
            if first_failure is not None:
                deadline = min(deadline, first_failure + PEER_GRACE_S)
            if now >= deadline:
                break
            waitables = {}
            for rank in pending:
                waitables[self.connections[rank]] = rank
                waitables[self.processes[rank].sentinel] = rank
            # Never block for long, even with nothing to watch (--bench-rank-memory=0, no progress callback): a
            # signal (Ctrl-C, a CI runner's SIGTERM) that the kernel hands to another of this process's threads
            # (OpenBLAS's server thread) only sets Python's flag, which the main thread reads when it next wakes.
            wait_s = min(deadline - now, PROGRESS_INTERVAL_S)
            for ready in multiprocessing.connection.wait(list(waitables), timeout=wait_s):
                rank = waitables[ready]
                if rank not in pending:
                    continue
                if ready is self.connections[rank] or self.connections[rank].poll():
                    try:
                        message = self.connections[rank].recv()
                    except (EOFError, OSError):
                        message = None
                else:
                    message = None
                pending.discard(rank)
                if message is None:
                    self.processes[rank].join(1)
                    failures[rank] = self._death(rank)
                    deaths.add(rank)
                elif message[0] == "error":
                    failures[rank] = f"rank {rank} raised {message[1]}\n{message[2]}"
                elif accept(rank, message):
                    answers[rank] = message
                else:
                    failures[rank] = f"rank {rank} sent an unexpected message {message!r}"
                if failures and first_failure is None:
                    first_failure = time.monotonic()
            for rank, resident in self._over_memory(pending):
                pending.discard(rank)
                failures[rank] = self._kill_for_memory(rank, resident)
                deaths.add(rank)
                first_failure = first_failure or time.monotonic()
            if on_wait is not None and pending and not failures:
                on_wait(self.progress[0], self.progress[1], time.monotonic() - started)
        if not pending and not failures:
            return [answers[r] for r in range(self.world_size)]
        self.broken = True
        stacks = self._dump_stacks(sorted(pending))
        elapsed = timeout_s - max(0.0, deadline - time.monotonic())
        # The cause first: a rank that died or was killed cannot be a peer's casualty, and otherwise the
        # first failure seen usually caused the rest (peers then fail on their broken collectives).
        seen = list(failures)
        causes = sorted(failures, key=lambda r: (r not in deaths, seen.index(r)))
        lines = [f"{what} failed on {self.world_size} ranks:"] + [failures[r] for r in causes]
        for rank in sorted(pending):
            lines.append(f"rank {rank} still running after {'its peers failed' if failures else f'{timeout_s:.0f} s'}; "
                         f"its Python stacks:\n{stacks[rank]}")
        self.close()
        if failures:
            raise RankFailure("\n\n".join(lines))
        raise CaseTimeout(f"{what} timed out after {elapsed:.1f} s (limit {timeout_s:.0f} s)\n\n"
                          + "\n\n".join(lines[1:]))

    def _over_memory(self, ranks: set[int]) -> list[tuple[int, int]]:
        """(rank, resident bytes) of the ranks among ``ranks`` whose resident memory is above the limit."""
        if self.memory_limit_bytes is None:
            return []
        import psutil

        over = []
        for rank in sorted(ranks):
            try:
                resident = psutil.Process(self.processes[rank].pid).memory_info().rss
            except psutil.Error:  # gone already: its sentinel tells the story
                continue
            if resident > self.memory_limit_bytes:
                over.append((rank, resident))
        return over

    def _kill_for_memory(self, rank: int, resident: int) -> str:
        self.processes[rank].kill()
        self.processes[rank].join(2)
        return f"rank {rank} was killed: {over_memory_limit(resident, self.memory_limit_bytes)}"

    def _death(self, rank: int) -> str:
        code = self.processes[rank].exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        crash = self._read_stacks(rank).strip()
        return f"rank {rank} {how}" + (f"; its last stacks:\n{crash}" if crash else "")

    def _read_stacks(self, rank: int) -> str:
        try:
            with open(self.stack_paths[rank]) as f:
                return f.read()
        except OSError:
            return ""

    def _dump_stacks(self, ranks: list[int]) -> dict[int, str]:
        """Each rank's Python stacks, through the faulthandler signal it registered."""
        before = {rank: len(self._read_stacks(rank)) for rank in ranks}
        for rank in ranks:
            if self.processes[rank].is_alive():
                os.kill(self.processes[rank].pid, worker.STACK_SIGNAL)
        time.sleep(0.5)
        return {rank: self._read_stacks(rank)[before[rank]:].strip() or "(no stacks: the process did not answer)"
                for rank in ranks}

    def close(self, grace_s: float = 5.0) -> None:
        """End every rank: politely when the pool is healthy, by signal otherwise. Idempotent."""
        if not self.broken:
            for connection in self.connections:
                try:
                    connection.send(None)
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + grace_s
            for process in self.processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join(2)
        for connection in self.connections:
            connection.close()
        self.connections = []
        self.broken = True
        shutil.rmtree(self.directory, ignore_errors=True)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.processes)


class PoolManager:
    """One healthy pool per world size and framework family, created on first use, replaced after any failure.

    Families do not share rank processes: a framework's process-wide state (DeepSpeed's groups, patched
    modules, allocator history) measurably changed the next family's cases (a torch bf16 case's CPU
    peak moved by 0.8 % after DeepSpeed cases ran in its ranks). At most ``max_pools`` stay open; the
    least recently used one is closed first.
    """

    def __init__(self, device_type: str = "cpu", backend: str = "gloo", max_pools: int = 4,
                 rank_memory: RankMemoryLimit = RankMemoryLimit(), **pool_options: Any) -> None:
        self.device_type, self.backend, self.pool_options = device_type, backend, pool_options
        # Each pool's ranks get the limit of its own world size: the ranks of one case are what run together.
        self.rank_memory = rank_memory
        self.max_pools = max_pools
        self.pools: dict[tuple[int, str], RankPool] = {}  # in order of last use
        self.started = 0

    def pinned(self, world_size: int) -> bool:
        """Whether the ranks of a ``world_size`` pool are pinned to their own cores (``worker.pinned_cpus``)."""
        return (self.device_type == "cpu" and bool(self.pool_options.get("pin"))
                and bool(worker.pinned_cpus(0, world_size, self.pool_options.get("threads", 1))))

    def get(self, world_size: int, family: str = "") -> RankPool:
        key = (world_size, family)
        pool = self.pools.pop(key, None)
        if pool is None or pool.broken:
            if pool is not None:
                pool.close()
            while len(self.pools) >= self.max_pools:
                self.pools.pop(next(iter(self.pools))).close()
            pool = RankPool(world_size, self.device_type, self.backend,
                            memory_limit_bytes=self.rank_memory.for_world_size(world_size), **self.pool_options)
            self.started += 1
        self.pools[key] = pool
        return pool

    def retire(self, world_size: int, family: str = "") -> None:
        """Close that pool now (if open); the next ``get`` forks fresh ranks, with a fresh memory layout."""
        pool = self.pools.pop((world_size, family), None)
        if pool is not None:
            pool.close()

    def run(self, world_size: int, function: Callable[..., Any], *args: Any, timeout_s: float,
            on_wait: ProgressCallback | None = None) -> list[Any]:
        return self.get(world_size).run(function, *args, timeout_s=timeout_s, on_wait=on_wait)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

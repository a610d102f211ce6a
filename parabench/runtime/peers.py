"""The launched ranks keeping in step through the launcher's key-value store, with a heartbeat each.

They agree on what they collected, on every task's outcome and on every test's outcome, so that a failure or a
skip on one rank is every rank's, and none is left waiting in a collective its peers will never join; a rank
that dies is named by its silence.
"""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

# A rank not heard from for this long is gone (its heartbeat is written every HEARTBEAT_S).
HEARTBEAT_S = 1.0
SILENT_S = 20.0
# How long ranks wait for each other to start the same task.
START_TIMEOUT_S = 300.0


class PeerLost(RuntimeError):
    """A rank stopped answering, or the ranks are no longer at the same point: the launch cannot go on."""


class Peers:
    """The launch's ranks exchanging small values through the launcher's store.

    ``exchange(tag, value)`` is a step every rank takes: it returns each rank's ``(tag, value)``.
    Polling with short store calls (never one long blocking wait) lets a thread keep this rank's
    heartbeat going, so that a rank that died is named within ``SILENT_S`` instead of a time-out.
    """

    def __init__(self, store, rank: int, world_size: int, silent_s: float = SILENT_S) -> None:
        self.store, self.rank, self.world_size, self.silent_s = store, rank, world_size, silent_s
        self.sequence = 0
        self.lock = threading.Lock()  # one store connection, shared with the heartbeat thread
        self.broken: str | None = None
        self._stop = threading.Event()
        self._beat()
        self._heart = threading.Thread(target=self._heartbeat, name="parabench-heartbeat", daemon=True)
        self._heart.start()

    def _beat(self) -> None:
        with self.lock:
            self.store.add(f"alive/{self.rank}", 1)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 — the store is gone: the launch is ending
                return

    def close(self) -> None:
        self._stop.set()

    def depart(self, timeout_s: float = 30.0) -> None:
        """Leave in order: rank 0 (which may host the store, under srun) goes last, so no peer loses it mid-read."""
        if self.broken:
            return
        others = [f"left/{rank}" for rank in range(1, self.world_size)]
        try:
            with self.lock:
                if self.rank:
                    self.store.set(f"left/{self.rank}", b"1")
                    return
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with self.lock:
                    if self.store.check(others):
                        return
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 — the store is gone already: nothing is left to protect
            pass

    def exchange(self, tag: Any, value: Any = None, timeout_s: float = START_TIMEOUT_S) -> list[tuple[Any, Any]]:
        """Every rank's ``(tag, value)`` at this step, in rank order; ``PeerLost`` when one never comes."""
        if self.broken:
            raise PeerLost(self.broken)
        self.sequence += 1
        prefix = f"step/{self.sequence}/"
        keys = [prefix + str(rank) for rank in range(self.world_size)]
        with self.lock:
            if self.sequence > 2:  # every rank has read step n-2 once it has written step n-1
                self.store.delete_key(f"step/{self.sequence - 2}/{self.rank}")
            self.store.set(keys[self.rank], pickle.dumps((tag, value)))
        started = time.monotonic()
        heard = {rank: (-1, started) for rank in range(self.world_size)}  # (beats seen, when they changed)
        pause = 0.001
        while True:
            with self.lock:
                done = self.store.check(keys)
            if done:
                break
            now = time.monotonic()
            if now - started > timeout_s:
                self._fail(f"rank(s) {', '.join(map(str, self._missing(keys)))} did not reach step "
                           f"{tag!r} within {timeout_s:.0f} s")
            for rank in self._missing(keys):
                with self.lock:
                    beats = self.store.add(f"alive/{rank}", 0)
                if beats != heard[rank][0]:
                    heard[rank] = (beats, now)
                elif now - heard[rank][1] > self.silent_s:
                    self._fail(f"rank {rank} stopped answering (no heartbeat for {self.silent_s:.0f} s: it died or "
                               f"was killed) while this rank waited at {tag!r}")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        with self.lock:
            values = self.store.multi_get(keys)
        return [pickle.loads(value) for value in values]

    def _missing(self, keys: list[str]) -> list[int]:
        with self.lock:
            return [rank for rank, key in enumerate(keys) if not self.store.check([key])]

    def _fail(self, why: str) -> None:
        self.broken = f"the launch lost its step: {why}"
        raise PeerLost(self.broken)

    def require_in_step(self, answers: list[tuple[Any, Any]], tag: Any, where: str) -> None:
        """End the launch (``PeerLost``) unless every rank's answer carries ``tag``; ``where``: tasks, tests."""
        if any(other != tag for other, _ in answers):
            self._fail(f"ranks are at different {where}: " + "; ".join(
                f"rank {rank} at {other!r}" for rank, (other, _) in enumerate(answers)))

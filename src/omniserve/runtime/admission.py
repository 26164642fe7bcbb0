"""Admission per stage: how many requests each stage runs, and who waits.

A request needs a slot on every stage of its route. It takes them all at
once or none: it waits in one FIFO line without holding any, so no request
holds slots while it waits for others (the hold-and-wait that deadlocks).
Each stage lets `max_running` requests in and `max_queued` wait; past that a
request for it is refused at once (503). A request only ever waits for the
stages on its own route, so a busy thinker does not hold up embeddings.

When slots free up, the line is scanned in arrival order: a waiter whose
stages all have room goes in; one that does not fit keeps a claim on a slot
of each of its stages, so a later waiter only takes what is left after the
earlier ones' claims. Per stage, the line is first come, first served, and a
request that needs two stages is not starved by a stream of requests for
one of them; yet a later request for a stage with room to spare does not
wait behind an earlier one held up by another stage.

A stage served by several workers (replicas) lets `max_running` in per
worker that is up: one restarting lowers its room, and a stage with none
up lets nobody in; its waiters stay in line until one is back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from omniserve.errors import OmniError, Overloaded


@dataclass(frozen=True)
class StageLimits:
    max_running: int  # per worker that is up
    max_queued: int
    workers: int = 1


@dataclass(eq=False)
class _Waiter:
    stages: frozenset[str]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    def __init__(self, limits: dict[str, StageLimits]):
        self.limits = limits
        self._running = dict.fromkeys(limits, 0)
        self._line: deque[_Waiter] = deque()
        self._up = {stage: limit.workers for stage, limit in limits.items()}  # workers up, per stage

    def running(self, stage: str) -> int:
        return self._running[stage]

    def queued(self, stage: str | None = None) -> int:
        """Waiters for `stage` (None: all of them)."""
        return sum(1 for w in self._line if stage is None or stage in w.stages)

    async def acquire(self, stages: frozenset[str]) -> None:
        """Take a slot on each of `stages`, waiting in line if one is full (or claimed)."""
        if not self._line and self._fits(stages):
            self._take(stages)
            return
        full = next((s for s in sorted(stages) if self.queued(s) >= self.limits[s].max_queued), None)
        if full is not None:
            raise Overloaded(f"the {full!r} stage is at capacity ({self._running[full]} running, "
                             f"{self.queued(full)} queued); retry later")
        waiter = _Waiter(stages)
        self._line.append(waiter)
        self._wake()  # the line may let it in at once
        try:
            result = await waiter.future
        except BaseException:
            if waiter in self._line:
                self._line.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.result() is None:
                self.release(stages)  # we were let in, but our caller has gone: give the slots back
            raise
        if isinstance(result, OmniError):
            raise result

    def release(self, stages: frozenset[str] | set[str]) -> None:
        for stage in stages:
            assert self._running[stage] > 0, f"stage {stage!r} released more slots than it gave"
            self._running[stage] -= 1
        self._wake()

    def capacity(self, stage: str) -> int:
        """How many requests `stage` runs at once now: `max_running` for each of its workers that is up."""
        return self.limits[stage].max_running * self._up[stage]

    def set_workers_up(self, stage: str, up: int) -> None:
        """`stage` has `up` workers that can take requests (one died, or is back)."""
        self._up[stage] = up
        self._wake()

    def fail_waiters(self, stage: str, error: OmniError) -> None:
        """Answer everyone waiting for `stage` with `error` (it will not come back)."""
        for waiter in [w for w in self._line if stage in w.stages]:
            self._line.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_result(error)

    def _fits(self, stages: frozenset[str]) -> bool:
        return all(self._running[s] < self.capacity(s) for s in stages)

    def _take(self, stages: frozenset[str]) -> None:
        for stage in stages:
            self._running[stage] += 1

    def _wake(self) -> None:
        free = {s: self.capacity(s) - self._running[s] for s in self.limits}
        for waiter in list(self._line):
            if waiter.future.done():  # cancelled while waiting
                self._line.remove(waiter)
                continue
            fits = all(free[s] > 0 for s in waiter.stages)
            for stage in waiter.stages:  # taken, or claimed for when it fits
                free[stage] -= 1
            if fits:
                self._line.remove(waiter)
                self._take(waiter.stages)
                waiter.future.set_result(None)

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

A request counts for what it holds: one that runs `n` choices takes `n`
slots of a stage, up to half of them, so sixteen choices are not let in as
one request beside seven others, yet others still get in beside it (and the
LLM stage gives their sequences the next free KV slot, ahead of its
remaining choices).

Requests of different kinds of traffic (lanes: realtime sessions, HTTP) take
turns for the slots that free up, each lane first come, first served, so
fifty realtime answers in line do not hold up a plain chat behind them all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from omniserve.errors import OmniError, Overloaded


@dataclass(frozen=True)
class StageLimits:
    max_running: int  # per worker that is up
    max_queued: int
    workers: int = 1


Weights = Mapping[str, int]  # slots a request takes on a stage (absent: 1)


@dataclass(eq=False)
class _Waiter:
    stages: frozenset[str]
    weights: Weights
    lane: str
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    def __init__(self, limits: dict[str, StageLimits]):
        self.limits = limits
        self._running = dict.fromkeys(limits, 0)
        self._line: deque[_Waiter] = deque()
        self._up = {stage: limit.workers for stage, limit in limits.items()}  # workers up, per stage
        self._last_lane = ""  # the lane of the waiter let in last: the others go first next time

    def running(self, stage: str) -> int:
        return self._running[stage]

    def queued(self, stage: str | None = None) -> int:
        """Waiters for `stage` (None: all of them)."""
        return sum(1 for w in self._line if stage is None or stage in w.stages)

    def weights(self, stages: frozenset[str], holds: int) -> dict[str, int]:
        """The slots a request that holds `holds` sequences takes on each of `stages`: that many, at most half
        of what the stage runs when all its workers are up."""
        return {s: max(1, min(holds, self.limits[s].max_running * self.limits[s].workers // 2)) for s in stages}

    async def acquire(self, stages: frozenset[str], weights: Weights | None = None, lane: str = "") -> None:
        """Take a slot (or `weights[stage]` slots) on each of `stages`, waiting in line if one is full (or
        claimed). `lane`: the kind of traffic, which takes turns with the others."""
        weights = weights or {}
        if not self._line and self._fits(stages, weights):
            self._take(stages, weights)
            return
        full = next((s for s in sorted(stages) if self.queued(s) >= self.limits[s].max_queued), None)
        if full is not None:
            raise Overloaded(f"the {full!r} stage is at capacity ({self._running[full]} running, "
                             f"{self.queued(full)} queued); retry later")
        waiter = _Waiter(stages, weights, lane)
        self._line.append(waiter)
        self._wake()  # the line may let it in at once
        try:
            result = await waiter.future
        except BaseException:
            if waiter in self._line:
                self._line.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.result() is None:
                self.release(stages, weights)  # we were let in, but our caller has gone: give the slots back
            raise
        if isinstance(result, OmniError):
            raise result

    def release(self, stages: frozenset[str] | set[str], weights: Weights | None = None) -> None:
        for stage in stages:
            weight = (weights or {}).get(stage, 1)
            assert self._running[stage] >= weight, f"stage {stage!r} released more slots than it gave"
            self._running[stage] -= weight
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

    def _fits(self, stages: frozenset[str], weights: Weights) -> bool:
        return all(self._running[s] + weights.get(s, 1) <= self.capacity(s) for s in stages)

    def _take(self, stages: frozenset[str], weights: Weights) -> None:
        for stage in stages:
            self._running[stage] += weights.get(stage, 1)

    def _in_turn(self) -> list[_Waiter]:
        """The line in the order slots go to it: the lanes take turns, the one let in last going last, and
        each lane's waiters in their order of arrival."""
        lanes: dict[str, deque[_Waiter]] = {}
        for waiter in self._line:
            lanes.setdefault(waiter.lane, deque()).append(waiter)
        order = sorted(lanes, key=lambda lane: lane == self._last_lane)
        out = []
        while order:
            for lane in list(order):
                out.append(lanes[lane].popleft())
                if not lanes[lane]:
                    order.remove(lane)
        return out

    def _wake(self) -> None:
        free = {s: self.capacity(s) - self._running[s] for s in self.limits}
        for waiter in self._in_turn():
            if waiter.future.done():  # cancelled while waiting
                self._line.remove(waiter)
                continue
            fits = all(free[s] >= waiter.weights.get(s, 1) for s in waiter.stages)
            for stage in waiter.stages:  # taken, or claimed for when it fits
                free[stage] -= waiter.weights.get(stage, 1)
            if fits:
                self._line.remove(waiter)
                self._take(waiter.stages, waiter.weights)
                self._last_lane = waiter.lane
                waiter.future.set_result(None)

"""Per-stage admission: all of a route's slots at once or none, a line per stage, no hold-and-wait."""

from __future__ import annotations

import asyncio

import pytest

from omniserve.errors import Overloaded, Unavailable
from omniserve.runtime.admission import Admission, StageLimits

ROUTE_T = frozenset({"thinker"})
ROUTE_S = frozenset({"talker"})
ROUTE_TS = frozenset({"thinker", "talker"})


def admission(running: int = 1, queued: int = 2) -> Admission:
    return Admission({"thinker": StageLimits(running, queued), "talker": StageLimits(running, queued)})


def run(coro):
    return asyncio.run(coro)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_busy_stage_does_not_hold_up_another():
    async def main():
        a = admission()
        await a.acquire(ROUTE_T)
        waiting = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        assert not waiting.done() and a.queued("thinker") == 1
        await asyncio.wait_for(a.acquire(ROUTE_S), 1)  # the talker is free: no wait behind the thinker's line
        assert a.queued("talker") == 0
        a.release(ROUTE_T)
        await asyncio.wait_for(waiting, 1)
        assert a.running("thinker") == 1

    run(main())


def test_waiters_hold_no_slots():
    """A two-stage request waiting for the thinker holds no talker slot meanwhile: only a claim on one,
    which leaves the rest of the talker's slots to others."""
    async def main():
        a = Admission({"thinker": StageLimits(1, 5), "talker": StageLimits(2, 5)})
        await a.acquire(ROUTE_T)
        both = asyncio.ensure_future(a.acquire(ROUTE_TS))
        await settle()
        assert a.running("talker") == 0
        await asyncio.wait_for(a.acquire(ROUTE_S), 1)
        a.release(ROUTE_T)
        await asyncio.wait_for(both, 1)
        assert (a.running("thinker"), a.running("talker")) == (1, 2)

    run(main())


def test_a_full_line_is_refused_at_once_naming_the_stage():
    async def main():
        a = admission(queued=1)
        await a.acquire(ROUTE_T)
        first = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        with pytest.raises(Overloaded, match="'thinker' stage is at capacity"):
            await a.acquire(ROUTE_TS)
        first.cancel()

    run(main())


def test_a_waiter_that_leaves_frees_its_place_and_a_let_in_one_its_slots():
    async def main():
        a = admission()
        await a.acquire(ROUTE_T)
        gone = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        gone.cancel()
        await settle()
        assert a.queued() == 0
        # let in, then cancelled before it resumed: the slot goes back
        late = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        a.release(ROUTE_T)
        late.cancel()
        await settle()
        assert a.running("thinker") == 0

    run(main())


def test_a_stage_with_no_worker_up_keeps_its_line_until_one_is_back_or_it_fails():
    async def main():
        a = admission()
        a.set_workers_up("thinker", 0)
        waiting = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        assert not waiting.done()
        a.set_workers_up("thinker", 1)
        await asyncio.wait_for(waiting, 1)
        a.set_workers_up("thinker", 0)
        doomed = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        a.fail_waiters("thinker", Unavailable("down"))
        with pytest.raises(Unavailable):
            await doomed

    run(main())


def test_each_replica_up_adds_its_max_running():
    async def main():
        a = Admission({"thinker": StageLimits(2, 5, workers=3)})
        for _ in range(6):
            await asyncio.wait_for(a.acquire(ROUTE_T), 1)
        seventh = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        assert not seventh.done() and a.capacity("thinker") == 6
        a.set_workers_up("thinker", 2)  # one died: its room goes, and frees nothing
        for _ in range(2):
            a.release(ROUTE_T)
        await settle()
        assert not seventh.done() and a.running("thinker") == 4
        a.release(ROUTE_T)
        await asyncio.wait_for(seventh, 1)
        assert a.running("thinker") == 4

    run(main())


def test_line_order_is_kept_for_one_stage():
    async def main():
        a = admission(queued=5)
        await a.acquire(ROUTE_T)
        order: list[int] = []

        async def one(i: int):
            await a.acquire(ROUTE_T)
            order.append(i)

        tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
        await settle()
        for _ in range(4):
            a.release(ROUTE_T)
            await settle()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]

    run(main())


def test_a_two_stage_waiter_is_not_starved_by_one_stage_traffic():
    """Whenever the talker frees, a talker-only request could take it before the thinker frees; the
    earlier two-stage waiter's claim keeps the talker slot for it."""
    async def main():
        a = admission(queued=100)
        await a.acquire(ROUTE_T)
        await a.acquire(ROUTE_S)
        both = asyncio.ensure_future(a.acquire(ROUTE_TS))
        await settle()
        a.release(ROUTE_S)
        later = [asyncio.ensure_future(a.acquire(ROUTE_S)) for _ in range(5)]
        await settle()
        assert not any(t.done() for t in later), "a later talker request took the slot the waiter claims"
        a.release(ROUTE_T)
        await asyncio.wait_for(both, 1)
        assert (a.running("thinker"), a.running("talker")) == (1, 1)
        for t in later:
            t.cancel()

    run(main())


def test_spare_capacity_is_not_held_for_a_waiter_blocked_elsewhere():
    async def main():
        a = Admission({"thinker": StageLimits(1, 5), "talker": StageLimits(3, 5)})
        await a.acquire(ROUTE_T)
        both = asyncio.ensure_future(a.acquire(ROUTE_TS))  # waits for the thinker, claims one talker slot
        await settle()
        await asyncio.wait_for(a.acquire(ROUTE_S), 1)  # two talker slots are left beside the claim
        await asyncio.wait_for(a.acquire(ROUTE_S), 1)
        late = asyncio.ensure_future(a.acquire(ROUTE_S))
        await settle()
        assert not late.done()  # the last one is claimed
        a.release(ROUTE_T)
        await asyncio.wait_for(both, 1)
        late.cancel()

    run(main())


def test_a_request_takes_a_slot_for_each_of_its_choices():
    async def main():
        a = Admission({"thinker": StageLimits(4, 4), "talker": StageLimits(1, 4)})
        assert a.weights(ROUTE_TS, 2) == {"thinker": 2, "talker": 1}
        assert a.weights(ROUTE_T, 16) == {"thinker": 2}  # at most half of what a stage runs: others get in too
        await a.acquire(ROUTE_T, {"thinker": 3})
        assert a.running("thinker") == 3
        await asyncio.wait_for(a.acquire(ROUTE_T), 1)  # one left
        waiting = asyncio.ensure_future(a.acquire(ROUTE_T, {"thinker": 2}))
        await settle()
        assert not waiting.done()  # two do not fit in none
        a.release(ROUTE_T, {"thinker": 3})
        await asyncio.wait_for(waiting, 1)
        assert a.running("thinker") == 3

    run(main())


def test_lanes_take_turns_for_freed_slots():
    """Five realtime answers wait, then one chat: the chat gets the second slot that frees, not the sixth."""
    async def main():
        a = admission(running=1, queued=10)
        await a.acquire(ROUTE_T)
        realtime = [asyncio.ensure_future(a.acquire(ROUTE_T, lane="realtime")) for _ in range(5)]
        await settle()
        chat = asyncio.ensure_future(a.acquire(ROUTE_T))
        await settle()
        a.release(ROUTE_T)
        await settle()
        assert realtime[0].done() and not chat.done()
        a.release(ROUTE_T)
        await settle()
        assert chat.done() and not realtime[1].done()
        for _ in range(4):
            a.release(ROUTE_T)
            await settle()
        assert all(r.done() for r in realtime)

    run(main())

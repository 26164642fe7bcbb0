"""The grammar helper processes: a slow build is cut off, a crash is a 400, a helper that died while
idle is replaced, a caller that leaves strands nothing, and outcomes (refusals too) are kept."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import pytest

from omniserve.errors import InvalidRequest
from omniserve.runtime.grammar import FairSlots, GrammarBuilder


@dataclass(frozen=True)
class Spec:
    what: str
    param: str = "ebnf"


def make(spec: Spec) -> str:
    """Runs in the helper: a grammar, a long wait, a crash, or a refusal."""
    if spec.what == "slow":
        time.sleep(60)
    if spec.what == "crash":
        os._exit(3)
    if spec.what == "bad":
        raise InvalidRequest("ebnf: no", param="ebnf")
    return f'root ::= "{spec.what}"'


def builder(timeout: float = 2) -> GrammarBuilder:
    return GrammarBuilder(make, None, timeout)


def test_builds_and_keeps_outcomes():
    async def main():
        b = builder()
        assert await b.build(Spec("a")) == 'root ::= "a"'
        with pytest.raises(InvalidRequest, match="no"):
            await b.build(Spec("bad"))
        helper = b._idle[0]
        helper.kill()  # a kept outcome needs no helper
        assert await b.build(Spec("a")) == 'root ::= "a"'
        with pytest.raises(InvalidRequest):
            await b.build(Spec("bad"))
        assert await b.build(Spec("b")) == 'root ::= "b"'  # the dead idle helper was replaced
        b.close()

    asyncio.run(main())


def test_slow_and_crashing_builds_are_400s_and_cost_their_helper():
    async def main():
        b = builder(timeout=1)
        t0 = time.monotonic()
        with pytest.raises(InvalidRequest, match="longer than 1 s"):
            await b.build(Spec("slow"))
        assert time.monotonic() - t0 < 10 and not b._idle
        with pytest.raises(InvalidRequest, match="crashed"):
            await b.build(Spec("crash"))
        assert await b.build(Spec("c")) == 'root ::= "c"'
        b.close()

    asyncio.run(main())


def test_a_caller_that_leaves_strands_no_helper():
    async def main():
        b = builder(timeout=30)
        task = asyncio.ensure_future(b.build(Spec("d")))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert await b.build(Spec("d")) == 'root ::= "d"'  # the shielded build finished and was kept
        assert len(b._idle) == 1
        b.close()

    asyncio.run(main())


def test_fair_slots_take_turns_among_owners():
    async def main():
        slots = FairSlots(1)
        order = []

        async def use(owner: str, k: int):
            async with slots.held(owner):
                order.append(f"{owner}{k}")
                await asyncio.sleep(0.01)

        await slots.acquire("first")  # busy: what follows waits
        tasks = [asyncio.ensure_future(use("a", k)) for k in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(use("b", 0)))
        gone = asyncio.ensure_future(use("c", 0))
        await asyncio.sleep(0)
        gone.cancel()  # a waiter that leaves is skipped
        slots.release()
        await asyncio.gather(*tasks)
        assert order == ["a0", "b0", "a1", "a2", "a3"]
        assert slots.free == 1

    asyncio.run(main())


def test_one_owners_slow_grammars_do_not_hold_up_another():
    async def main():
        b = GrammarBuilder(make, None, timeout=1, helpers=1)
        slow = [asyncio.ensure_future(b.build(Spec("slow", param=f"p{k}"), owner="greedy")) for k in range(4)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        assert await b.build(Spec("quick"), owner="other") == 'root ::= "quick"'
        assert time.monotonic() - t0 < 6  # after the slow build that runs, not after all four (4+ s and spawns)
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        b.close()

    asyncio.run(main())


def test_a_build_whose_callers_left_before_it_had_a_helper_is_dropped():
    async def main():
        b = GrammarBuilder(make, None, timeout=2, helpers=1)
        busy = asyncio.ensure_future(b.build(Spec("slow"), owner="a"))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.build(Spec("never"), owner="b"))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        await asyncio.sleep(0)
        assert not any("never" in key for key in b._pending)  # dropped, not run later
        with pytest.raises(InvalidRequest):
            await busy
        assert not any("never" in key for key in b._outcomes)
        b.close()

    asyncio.run(main())

"""The grammar helper processes: a slow build is cut off, a crash is a 400, a helper that died while
idle is replaced, a caller that leaves strands nothing, and outcomes (refusals too) are kept."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import pytest

from omniserve.errors import InvalidRequest
from omniserve.runtime.grammar import GrammarBuilder


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

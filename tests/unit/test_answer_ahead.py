"""An answer begun ahead (`api/realtime/ahead.py`): its outputs are kept until read, read only by the same
request, and dropping it closes its stream (which aborts the pipeline request)."""

from __future__ import annotations

import asyncio

import pytest

from omniserve.api.realtime.ahead import AnswerAhead, Begun, Prefetched
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniOutput


class Source:
    """A pipeline stream that records whether it was read to its end or closed."""

    def __init__(self, n: int, fail: bool = False):
        self.n, self.fail = n, fail
        self.made, self.closed = 0, False

    async def stream(self):
        try:
            for k in range(self.n):
                await asyncio.sleep(0)
                self.made += 1
                yield OmniOutput("r", text=str(k))
            if self.fail:
                raise InvalidRequest("the stage refused it")
            await asyncio.sleep(3600)  # a request that goes on until it is aborted
        finally:
            self.closed = True


def run(coro):
    return asyncio.run(coro)


def test_outputs_are_read_ahead_and_kept_until_read():
    async def main():
        source = Source(3)
        ahead = Prefetched(source.stream())
        for _ in range(10):
            await asyncio.sleep(0)
        assert source.made == 3  # made before anyone read them
        got = [await ahead.__anext__() for _ in range(3)]
        assert [o.text for o in got] == ["0", "1", "2"]
        await ahead.aclose()
        assert source.closed
    run(main())


def test_an_error_in_the_stream_reaches_the_reader():
    async def main():
        ahead = Prefetched(Source(1, fail=True).stream())
        with pytest.raises(InvalidRequest):
            [o async for o in ahead]
    run(main())


def test_only_the_same_request_takes_it_and_a_drop_closes_the_stream():
    async def main():
        counted = []
        sources = [Source(2), Source(2)]

        async def begin(source):
            return Begun("request-a", Prefetched(source.stream()))

        same = AnswerAhead("item", begin(sources[0]), counted.append)
        stream = await same.take("request-a")
        assert stream is not None and (await stream.__anext__()).text == "0"
        await stream.aclose()
        other = AnswerAhead("item", begin(sources[1]), counted.append)
        assert await other.take("request-b") is None
        assert counted == ["taken", "dropped"] and sources[1].closed
    run(main())


def test_dropped_before_it_began_nothing_is_started_or_counted():
    async def main():
        counted, started = [], []
        gate = asyncio.Event()

        async def begin():
            await gate.wait()  # still transcribing
            started.append(True)
            return None

        ahead = AnswerAhead("item", begin(), counted.append)
        await asyncio.sleep(0)
        await ahead.drop()
        gate.set()
        await asyncio.sleep(0)
        assert not started and not counted
        none = AnswerAhead("item", asyncio.sleep(0), counted.append)  # begun nothing (a response was running)
        assert await none.take("request-a") is None and not counted
    run(main())

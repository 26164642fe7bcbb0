"""An answer begun before the turn is over.

With `server_vad`, a turn ends after `silence_duration_ms` of quiet (500 ms by default). By the time the
speaker has paused for a fraction of that (`vad.PAUSE_MS`), what was said is usually the turn: its
transcript, and then the answer, are begun at once, and their pipeline outputs are kept (not sent) until
the turn ends. The response started then takes them if it is the very same request (the same messages,
settings and voice), so its first audio is ready when the silence runs out; otherwise, or if the
speaker goes on, they are dropped and the pipeline request aborted. Nothing the client sees changes:
only when the work was done."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from omniserve.runtime.types import OmniOutput

_END = object()


class Prefetched:
    """A pipeline stream read ahead into a queue: its outputs are kept until they are read (it is an async
    iterator, as the stream is), or the stream is dropped (`aclose`), which aborts its request."""

    def __init__(self, stream: AsyncIterator[OmniOutput]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._pull(stream))

    async def _pull(self, stream: AsyncIterator[OmniOutput]) -> None:
        try:
            async for out in stream:
                self._queue.put_nowait(out)
            self._queue.put_nowait(_END)
        except Exception as exc:  # the reader raises it, as the stream would have
            self._queue.put_nowait(exc)
        finally:
            await stream.aclose()

    def __aiter__(self) -> Prefetched:
        return self

    async def __anext__(self) -> OmniOutput:
        out = await self._queue.get()
        if out is _END:
            raise StopAsyncIteration
        if isinstance(out, Exception):
            raise out
        return out

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


@dataclass
class Begun:
    """What an answer begun ahead is: its request (as a key to compare with) and its outputs so far."""

    key: str
    stream: Prefetched


class AnswerAhead:
    """The answer to the audio buffer that is about to be committed as item `item_id`."""

    def __init__(self, item_id: str, begin: Awaitable[Begun | None], count: Callable[[str], None]):
        """`begin`: transcribes what was said, and starts the answer's pipeline request (None: no answer
        could be begun, e.g. a response is still running). `count("taken" or "dropped")`: an answer begun
        was used, or its work lost."""
        self.item_id = item_id
        self._task = asyncio.ensure_future(begin)
        self._count = count

    async def take(self, key: str) -> Prefetched | None:
        """The outputs, if the answer begun is the request `key`; otherwise it is dropped."""
        await asyncio.wait([self._task])  # not awaited directly: a cancelled response must not cancel it
        begun = self._begun()
        if begun is not None and begun.key == key:
            self._count("taken")
            return begun.stream
        await self.drop()
        return None

    def _begun(self) -> Begun | None:
        if not self._task.done() or self._task.cancelled():
            return None
        with contextlib.suppress(Exception):  # it failed: the response does the work itself, and sees why
            return self._task.result()
        return None

    async def drop(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
        if (begun := self._begun()) is not None:
            self._count("dropped")
            await begun.stream.aclose()

"""One request on its way through the pipeline, as the coordinator tracks it: the stages that still hold it
(and the admission slots it has there), what flows on its edges, and the caller's side of it: the outputs
waiting for the caller, and how long they have waited unread (a caller that does not read is stopped, so
that it holds no slot)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from omniserve.errors import OmniError
from omniserve.runtime.metrics import RequestClock
from omniserve.runtime.types import OmniOutput, OmniRequest

MAX_UNREAD_BYTES = 32 * 1024 * 1024  # output a request may have waiting for a caller that does not read


def _size(output: OmniOutput) -> int:
    return len(output.audio or b"") + len(output.text or "")


@dataclass(eq=False)
class Tracked:
    request: OmniRequest
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # outputs and errors, for the caller
    emit: set[str] = field(default_factory=set)
    stages: set[str] = field(default_factory=set)  # stages still holding this request (and a slot)
    open_terminals: set[str] = field(default_factory=set)
    buffered: dict[tuple[str, str], list[OmniOutput]] = field(default_factory=dict)  # non-streaming edges
    replicas: dict[str, int] = field(default_factory=dict)  # stage -> the worker of it that holds this request
    weights: dict[str, int] = field(default_factory=dict)  # admission slots it holds per stage (its choices)
    unread: int = 0  # bytes of output waiting for the caller
    read_at: float = field(default_factory=time.monotonic)  # when the caller last came for more
    finished: bool = False
    clock: RequestClock = field(default_factory=RequestClock)

    def deliver(self, item: OmniOutput | OmniError) -> bool:
        """Queue `item` for the caller; False (and nothing queued) if that would leave more than
        MAX_UNREAD_BYTES of output unread."""
        if isinstance(item, OmniOutput):
            if self.unread + _size(item) > MAX_UNREAD_BYTES:
                return False
            self.unread += _size(item)
        self.queue.put_nowait(item)
        return True

    async def next(self) -> OmniOutput | OmniError:
        """The caller's next item, when it comes for it."""
        self.read_at = time.monotonic()
        item = await self.queue.get()
        if isinstance(item, OmniOutput):
            self.unread -= _size(item)
        return item

    def unread_for(self, now: float) -> float:
        """How long output has waited for the caller to come for it (0: none waits)."""
        return 0.0 if self.finished or self.queue.empty() else now - self.read_at

    def replace_unread(self, error: OmniError) -> None:
        """Drop what waits for the caller: it gets `error` next."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.unread = 0
        self.queue.put_nowait(error)

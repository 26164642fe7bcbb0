"""Stage administration calls (LoRA adapters): each is sent to one worker and answered once, taking no
slot. Those that change a stage are kept, in order, so that a worker of it that starts later (a restart, a
replica) is given them before it takes requests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from omniserve.errors import OmniError
from omniserve.runtime.launcher import WorkerHandle
from omniserve.runtime.messages import Control, ControlOp
from omniserve.runtime.workers import Replica


class ControlCalls:
    def __init__(self, stages: list[str]):
        self._calls: dict[str, tuple[Replica, asyncio.Future]] = {}  # call id -> (its worker, its answer)
        self.applied: dict[str, list[ControlOp]] = {s: [] for s in stages}  # to replay, in order
        self._ids = itertools.count()

    async def call(self, replica: Replica, handle: WorkerHandle, op: ControlOp,
                   down: Callable[[], OmniError]) -> Any:
        """`op` on one worker: its result, or its error (`down()`: what to say if it cannot be reached)."""
        call_id = f"call-{next(self._ids)}"
        answer = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (replica, answer)
        try:
            if not handle.transport.send(Control(call_id, op)):
                raise down()
            return await answer
        finally:
            self._calls.pop(call_id, None)

    def answered(self, call_id: str, result: Any, error: tuple | None) -> None:
        _, answer = self._calls.pop(call_id, (None, None))
        if answer is not None and not answer.done():
            if error is None:
                answer.set_result(result)
            else:
                answer.set_exception(OmniError.from_wire(error))

    def fail(self, replica: Replica, error: OmniError) -> None:
        """The calls a worker that died had not answered."""
        for called, answer in list(self._calls.values()):
            if called == replica and not answer.done():
                answer.set_exception(error)

"""Start a stage worker process and wait until its model is loaded."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omniserve.config import StageConfig
from omniserve.runtime.transport import PipeTransport
from omniserve.runtime.worker import run_stage_worker

_CTX = mp.get_context("spawn")  # never fork a process that runs an event loop and threads


class StageLoadError(RuntimeError):
    pass


@dataclass
class WorkerHandle:
    process: Any
    transport: PipeTransport
    info: dict[str, Any]
    stalled: str | None = None  # why the watchdog killed it

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.transport.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


async def launch_worker(
    stage: StageConfig,
    log_level: str,
    on_message: Callable[[str, Any], None],
    on_closed: Callable[[str, WorkerHandle], None],
) -> WorkerHandle:
    """Spawn the worker, wait for ("ready", info), then route its messages."""
    loop = asyncio.get_running_loop()
    parent, child = _CTX.Pipe()
    process = _CTX.Process(
        target=run_stage_worker,
        args=(stage.model_dump(), child, log_level),
        name=f"omniserve-{stage.name}",
        daemon=True,
    )
    process.start()
    child.close()
    first: asyncio.Future = loop.create_future()
    handle: WorkerHandle | None = None

    def route(message: Any) -> None:
        if not first.done():
            first.set_result(message)
        else:
            on_message(stage.name, message)

    def closed() -> None:
        if not first.done():
            first.set_result(("load_failed", f"worker exited with code {process.exitcode}"))
        elif handle is not None:
            on_closed(stage.name, handle)

    transport = PipeTransport(parent, loop, route, closed)
    message = await first
    if message[0] != "ready":
        transport.close()
        process.join(timeout=5)
        raise StageLoadError(f"stage {stage.name!r} failed to start: {message[1]}")
    handle = WorkerHandle(process, transport, message[1])
    return handle

"""Start a stage worker process and wait until its model is loaded. `connect_worker` is the part every
backend shares: a Ray actor (runtime/ray_backend.py) connects back and is then handled the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol

from omniserve.config import StageConfig
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.messages import FromWorker, LoadFailed, Ready
from omniserve.runtime.processes import CONTEXT
from omniserve.runtime.transport import PipeTransport, Transport
from omniserve.runtime.worker import run_stage_worker


class StageLoadError(RuntimeError):
    pass


class WorkerProcess(Protocol):
    """What the coordinator needs of a worker: a local process (`multiprocessing.Process`), or a Ray actor."""

    pid: int | None
    exitcode: int | None

    def is_alive(self) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class WorkerSpec:
    """A worker to start: its stages (one, or a process group's), which replica of them it is, and where its
    messages go."""

    stages: list[StageConfig]
    replica: int
    log_level: str
    on_message: Callable[[str, FromWorker], None]
    on_closed: Callable[[str, WorkerHandle], None]

    @property
    def names(self) -> str:
        return "+".join(stage.name for stage in self.stages)


Launcher = Callable[[WorkerSpec], Awaitable[list["WorkerHandle"]]]


@dataclass
class WorkerHandle:
    process: WorkerProcess
    transport: Transport
    facts: StageFacts
    stalled: str | None = None  # why the watchdog killed it

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.transport.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


async def launch_worker(spec: WorkerSpec) -> list[WorkerHandle]:
    """Start a worker as a local process, wait for each of its stages' `Ready`, then route their messages.
    Each stage has its own pipe and handle."""
    pipes = [CONTEXT.Pipe() for _ in spec.stages]
    process = CONTEXT.Process(
        target=run_stage_worker,
        args=([stage.model_dump() for stage in spec.stages], [child for _, child in pipes], spec.log_level),
        name=f"omniserve-{spec.names}-{spec.replica}",
        daemon=True,
    )
    process.start()
    for _, child in pipes:
        child.close()
    return await connect_worker(spec, [parent for parent, _ in pipes], process)


async def connect_worker(spec: WorkerSpec, conns: list[Connection], process: WorkerProcess) -> list[WorkerHandle]:
    """Given a started worker and the coordinator's end of each of its stages' connections: wait for each
    stage's `Ready`, then route their messages. Local processes and Ray actors alike."""
    loop = asyncio.get_running_loop()
    stages, names, on_message, on_closed = spec.stages, spec.names, spec.on_message, spec.on_closed
    handles: dict[str, WorkerHandle] = {}
    firsts: list[asyncio.Future] = []
    transports = []
    for stage, conn in zip(stages, conns, strict=True):
        first: asyncio.Future = loop.create_future()
        firsts.append(first)

        def route(message: FromWorker, first=first, name=stage.name) -> None:
            if not first.done():
                first.set_result(message)
            else:
                on_message(name, message)

        def closed(first=first, name=stage.name) -> None:
            if not first.done():
                first.set_result(LoadFailed(f"worker exited with code {process.exitcode}"))
            elif name in handles:
                on_closed(name, handles[name])

        transports.append(PipeTransport(conn, loop, route, closed))
    messages = await asyncio.gather(*firsts)
    failed = next((m for m in messages if not isinstance(m, Ready)), None)
    if failed is not None:
        for transport in transports:
            transport.close()
        process.join(timeout=5)
        what = f"stage {stages[0].name!r}" if len(stages) == 1 else f"stages {names}"
        reason = failed.reason if isinstance(failed, LoadFailed) else f"it said {type(failed).__name__} first"
        raise StageLoadError(f"{what} failed to start: {reason}")
    if any(transport.closed for transport in transports):  # it died right after saying ready: nobody heard it
        for transport in transports:
            transport.close()
        process.join(timeout=5)
        raise StageLoadError(f"stages {names} exited right after loading (exit code {process.exitcode})")
    for stage, transport, message in zip(stages, transports, messages, strict=True):
        handles[stage.name] = WorkerHandle(process, transport, message.facts)
    return [handles[stage.name] for stage in stages]

"""The Coordinator owns the request lifecycle.

- Admission: at most `max_running` requests run; up to `max_queued` wait in
  FIFO order; beyond that, 503 at once.
- Routing: a request visits the stages of its route (all by default); each
  of them learns of it at once (`add`), so it can check it and hold its
  place. A stage's outputs go to its downstream stages on the route (per
  chunk on streaming edges, all at once when it is done otherwise) and,
  for the stages the request emits from, to the request's output stream.
- Abort: when the consumer goes away the request is aborted at every stage;
  its slot counts as running until the worker confirms the abort.
- Health: a worker whose pipe closes is restarted; meanwhile its in-flight
  requests fail with `WorkerCrashed` and new ones get 503.

It knows stage names and edges, not models and not HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from omniserve.config import PipelineConfig
from omniserve.errors import InvalidRequest, OmniError, Overloaded, Unavailable, WorkerCrashed
from omniserve.runtime.launcher import StageLoadError, WorkerHandle, launch_worker
from omniserve.runtime.types import OmniOutput, OmniRequest

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Tracked:
    request: OmniRequest
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    route: set[str] = field(default_factory=set)
    emit: set[str] = field(default_factory=set)
    stages: set[str] = field(default_factory=set)  # stages still holding this request
    open_terminals: set[str] = field(default_factory=set)
    buffered: dict[tuple[str, str], list[OmniOutput]] = field(default_factory=dict)  # non-streaming edges
    finished: bool = False


class Coordinator:
    def __init__(self, pipeline: PipelineConfig, max_running: int, max_queued: int, log_level: str = "info"):
        self.pipeline = pipeline
        self.max_running = max_running
        self.max_queued = max_queued
        self.log_level = log_level
        self.workers: dict[str, WorkerHandle] = {}
        self.restarting: set[str] = set()
        self.failed: dict[str, str] = {}
        self._running: dict[str, _Tracked] = {}
        self._waiting: deque[asyncio.Future] = deque()
        self._restart_tasks: set[asyncio.Task] = set()
        self.crashes = 0
        self._closing = False

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Load every stage at once; if one fails, the caller shuts the rest down."""
        results = await asyncio.gather(
            *(launch_worker(stage, self.log_level, self._on_message, self._on_worker_closed)
              for stage in self.pipeline.stages),
            return_exceptions=True,
        )
        for stage, result in zip(self.pipeline.stages, results, strict=True):
            if not isinstance(result, BaseException):
                self.workers[stage.name] = result
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        log.info("stages ready: %s", ", ".join(f"{name} (pid {h.pid})" for name, h in self.workers.items()))

    async def shutdown(self) -> None:
        self._closing = True
        for task in self._restart_tasks:
            task.cancel()
        for handle in self.workers.values():
            handle.transport.send(("stop",))
        for handle in self.workers.values():
            await asyncio.to_thread(handle.process.join, 5)
            handle.kill()

    # ---- state ---------------------------------------------------------------------

    def healthy(self) -> bool:
        return not self.restarting and not self.failed and len(self.workers) == len(self.pipeline.stages)

    def unhealthy_reason(self) -> str:
        if self.failed:
            name, why = next(iter(self.failed.items()))
            return f"stage {name!r} is down: {why}"
        if self.restarting:
            return f"stage {sorted(self.restarting)[0]!r} is restarting after a crash; retry shortly"
        return "the runtime is starting"

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_queued(self) -> int:
        return len(self._waiting)

    def stage_info(self) -> list[dict[str, Any]]:
        out = []
        for stage in self.pipeline.stages:
            handle = self.workers.get(stage.name)
            out.append({
                "name": stage.name,
                "executor": stage.executor,
                "pid": handle.pid if handle else None,
                "healthy": stage.name not in self.restarting and stage.name not in self.failed,
                "info": handle.info if handle else {},
                "downstream": [e.dst for e in self.pipeline.downstream(stage.name)],
                "terminal": stage.name in self.pipeline.terminals,
            })
        return out

    # ---- requests ------------------------------------------------------------------

    async def generate(self, request: OmniRequest) -> AsyncIterator[OmniOutput]:
        """Run one request; yield terminal-stage outputs; abort if the consumer leaves."""
        if not self.healthy():
            raise Unavailable(self.unhealthy_reason())
        route, emit = self._plan(request)
        await self._admit()
        tracked = _Tracked(request, route=route, emit=emit, open_terminals=set(emit))
        self._running[request.request_id] = tracked
        try:
            for stage in self.pipeline.stages:
                if stage.name in route:
                    self._add(stage.name, tracked)
            while True:
                item = await tracked.queue.get()
                if isinstance(item, OmniError):
                    raise item
                yield item
                if item.done:
                    tracked.open_terminals.discard(item.stage)
                    if not tracked.open_terminals:
                        tracked.finished = True
                        return
        finally:
            if tracked.stages and not tracked.finished:
                self.abort(request.request_id)
            else:
                self._release(request.request_id)

    def _plan(self, request: OmniRequest) -> tuple[set[str], set[str]]:
        names = [s.name for s in self.pipeline.stages]
        route = set(request.route or names)
        emit = set(request.emit) if request.emit else route & set(self.pipeline.terminals)
        unknown = (route | emit) - set(names)
        if unknown:
            raise InvalidRequest(f"this pipeline has no stage {sorted(unknown)[0]!r}; stages: {', '.join(names)}")
        if not emit or not emit <= route:
            raise InvalidRequest(f"the request's output stages {sorted(emit)} must lie on its route {sorted(route)}")
        return route, emit

    def abort(self, request_id: str) -> None:
        tracked = self._running.get(request_id)
        if tracked is None:
            return
        tracked.finished = True
        for name in list(tracked.stages):
            handle = self.workers.get(name)
            if handle is None or not handle.transport.send(("abort", request_id)):
                tracked.stages.discard(name)
        if not tracked.stages:
            self._release(request_id)

    async def _admit(self) -> None:
        if len(self._running) < self.max_running and not self._waiting:
            return
        if len(self._waiting) >= self.max_queued:
            raise Overloaded(
                f"the server is at capacity ({self.max_running} running, {len(self._waiting)} queued); retry later"
            )
        ticket = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        try:
            await ticket
        except BaseException:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.done() and not ticket.cancelled() and ticket.exception() is None:
                self._wake_next()  # we were handed a slot we will not use
            raise
        if isinstance(ticket.result(), OmniError):
            raise ticket.result()

    def _release(self, request_id: str) -> None:
        if self._running.pop(request_id, None) is not None:
            self._wake_next()

    def _wake_next(self) -> None:
        while self._waiting and len(self._running) < self.max_running:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def _add(self, stage: str, tracked: _Tracked) -> None:
        handle = self.workers.get(stage)
        tracked.stages.add(stage)
        if handle is None or not handle.transport.send(("add", tracked.request)):
            tracked.stages.discard(stage)
            tracked.queue.put_nowait(Unavailable(self.unhealthy_reason()))

    # ---- messages from workers -----------------------------------------------------

    def _on_message(self, stage: str, message: Any) -> None:
        kind = message[0]
        if kind == "outputs":
            for output in message[1]:
                self._route(stage, output)
        elif kind == "error":
            tracked = self._running.get(message[1])
            if tracked is not None:
                tracked.stages.discard(stage)
                tracked.queue.put_nowait(OmniError.from_wire(message[2]))
        elif kind == "aborted":
            tracked = self._running.get(message[1])
            if tracked is not None:
                tracked.stages.discard(stage)
                if not tracked.stages:
                    self._release(message[1])

    def _route(self, stage: str, output: OmniOutput) -> None:
        tracked = self._running.get(output.request_id)
        if tracked is None:
            return
        output.stage = stage
        if output.done:
            tracked.stages.discard(stage)
        if tracked.finished:  # complete or being aborted: nothing flows any more
            if not tracked.stages:
                self._release(output.request_id)
            return
        for edge in self.pipeline.downstream(stage):
            if edge.dst not in tracked.stages:  # off this request's route, or already done with it
                continue
            if edge.streaming:
                self._feed(edge.dst, tracked, [output])
                continue
            buffered = tracked.buffered.setdefault((stage, edge.dst), [])
            buffered.append(output)
            if output.done:
                self._feed(edge.dst, tracked, tracked.buffered.pop((stage, edge.dst)))
        if stage in tracked.emit:
            tracked.queue.put_nowait(output)

    def _feed(self, stage: str, tracked: _Tracked, outputs: list[OmniOutput]) -> None:
        handle = self.workers.get(stage)
        if handle is None or not handle.transport.send(("feed", outputs)):
            tracked.stages.discard(stage)
            tracked.queue.put_nowait(Unavailable(self.unhealthy_reason()))

    # ---- crashes -------------------------------------------------------------------

    def _on_worker_closed(self, stage: str, handle: WorkerHandle) -> None:
        if self.workers.get(stage) is not handle or self._closing:
            return
        self.crashes += 1
        code = handle.process.exitcode
        log.error("stage %s worker (pid %d) died (exit code %s); restarting", stage, handle.pid, code)
        del self.workers[stage]
        self.restarting.add(stage)
        error = WorkerCrashed(
            f"the {stage!r} stage worker crashed while running this request (exit code {code}); "
            "the request was aborted, retry it"
        )
        for request_id, tracked in list(self._running.items()):
            if stage in tracked.stages:
                tracked.stages.discard(stage)
                if tracked.finished:
                    if not tracked.stages:
                        self._release(request_id)
                else:
                    tracked.queue.put_nowait(error)
        task = asyncio.get_running_loop().create_task(self._restart(stage, handle))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, stage: str, dead: WorkerHandle) -> None:
        await asyncio.to_thread(dead.kill)
        config = self.pipeline.stage(stage)
        for attempt in range(1, config.max_restarts + 1):
            try:
                self.workers[stage] = await launch_worker(
                    config, self.log_level, self._on_message, self._on_worker_closed
                )
                self.restarting.discard(stage)
                log.info("stage %s restarted (pid %d)", stage, self.workers[stage].pid)
                return
            except StageLoadError as exc:
                log.error("restart %d of stage %s failed: %s", attempt, stage, exc)
                await asyncio.sleep(min(2**attempt, 30))
        self.restarting.discard(stage)
        self.failed[stage] = f"gave up after {config.max_restarts} restarts"
        # Nobody will serve the queue: answer it now rather than let it wait forever.
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(Unavailable(self.unhealthy_reason()))

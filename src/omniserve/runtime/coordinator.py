"""The Coordinator owns the request lifecycle.

- Admission, per stage (`admission.py`): a request takes a slot on every
  stage of its route at once, or waits in line holding none; a full line
  for one of its stages is a 503 at once. A stage gives its slot back as
  soon as it is done with the request, not when the client has read it all.
- Routing: a request visits the stages of its route, planned from the graph
  (`routing.py`); each of them learns of it at once (`add`), so it can check it and hold its
  place. A stage's outputs go to its downstream stages on the route (per
  chunk on streaming edges, all at once when it is done otherwise) and,
  for the stages the request emits from, to the request's output stream.
- Abort: when the consumer goes away the request is aborted at every stage
  still holding it; each keeps its slot until the worker confirms.
- Control: a stage administration call (LoRA adapters) goes to every worker
  of one stage that is up, and is answered once; it takes no slot. One that
  changes the stage is replayed on a worker of it that starts later (a
  restart), before it takes requests (`control.py`).
- Replicas: a stage may be served by several workers (`placement.replicas`;
  a process group's stages share theirs). A request goes to the least
  loaded worker of each stage when it starts, and stays with it for its
  whole life, so a streaming edge keeps feeding the worker that holds its
  state.
- Health, per worker: a worker whose pipe closes is restarted; meanwhile its
  in-flight requests fail with `WorkerCrashed`, the other workers of its
  stage go on serving, and when a stage has none left, new requests that
  need it get 503 (others go on). A worker whose loop has not turned for
  `stall_timeout` seconds (it sends a heartbeat every second) is stuck: it
  is killed and restarted the same way, so a hang never looks healthy. Each
  worker's state, and each stage's health, is kept in `workers.py`; each
  request's, with the outputs waiting for its caller, in `tracked.py`.

It knows stage names and edges, not models and not HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from omniserve.config import PipelineConfig, StageConfig
from omniserve.errors import OmniError, Unavailable, WorkerCrashed
from omniserve.runtime.admission import Admission, StageLimits
from omniserve.runtime.control import ControlCalls
from omniserve.runtime.launcher import Launcher, StageLoadError, WorkerHandle, WorkerSpec, launch_worker
from omniserve.runtime.messages import (
    Aborted,
    AbortRequest,
    AddRequest,
    Alive,
    ControlDone,
    ControlOp,
    FeedOutputs,
    FromWorker,
    RequestFailed,
    StepOutputs,
    StopWorker,
)
from omniserve.runtime.metrics import RequestClock, StageMetrics
from omniserve.runtime.routing import plan_route, stage_reads
from omniserve.runtime.tracked import Tracked
from omniserve.runtime.types import OmniOutput, OmniRequest
from omniserve.runtime.workers import Replica, Workers

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 1.0
REPLAY_TIMEOUT_S = 120.0  # for each control call replayed on a restarted worker



class Coordinator:
    def __init__(self, pipeline: PipelineConfig, max_running: int, max_queued: int, log_level: str = "info",
                 stall_timeout: float = 0.0, launch: Launcher = launch_worker, reader_timeout: float = 0.0):
        """`launch`: how a worker starts (a local process; `ray_backend.RayLauncher`: a Ray actor).
        `reader_timeout`: a request whose consumer has not come for its waiting output this long is stopped
        (0: never), so a client that does not read holds no slot."""
        self.pipeline = pipeline
        self.reader_timeout = reader_timeout
        self._launch = launch
        self.log_level = log_level
        self.stall_timeout = stall_timeout  # 0: never call a worker stuck
        self.admission = Admission({
            s.name: StageLimits(s.max_running_requests or max_running,
                                max_queued if s.max_queued_requests is None else s.max_queued_requests,
                                s.placement.replicas)
            for s in pipeline.stages
        })
        self._groups = {s.name: group for group in pipeline.process_groups() for s in group}  # who shares a worker
        self.pool = Workers(pipeline)
        self.reads = stage_reads(pipeline)  # what each stage reads, as its model told once it has loaded
        self._running: dict[str, Tracked] = {}
        self._last_seen: dict[Replica, float] = {}  # when each worker last sent anything
        self._tasks: set[asyncio.Task] = set()
        self.calls = ControlCalls([s.name for s in pipeline.stages])
        self.crashes = 0
        self._closing = False
        self.metrics = StageMetrics(s.name for s in pipeline.stages)
        self.metrics.watch(self)

    # ---- lifecycle -----------------------------------------------------------------

    def _group_of(self, stage: str) -> list[StageConfig]:
        return self._groups[stage]

    async def start(self) -> None:
        """Load every worker of every stage at once; if one fails, the caller shuts the rest down."""
        workers = [(group, i) for group in self.pipeline.process_groups()
                   for i in range(group[0].placement.replicas)]
        results = await asyncio.gather(*(self._start_worker(group, i) for group, i in workers),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        self.reads = stage_reads(self.pipeline, self.pool.facts)
        if any(self._stall_timeout(s.name) for s in self.pipeline.stages):
            self._spawn(self._watchdog())
        log.info("stages ready: %s", ", ".join(f"{stage}{f'[{i}]' if len(self.pool.handles[stage]) > 1 else ''} "
                                               f"(pid {h.pid})" for (stage, i), h in self.pool.live()))

    async def _start_worker(self, group: list[StageConfig], replica: int) -> None:
        """Start worker `replica` of a process group (or lone stage), bring it to the state the control calls
        left its stages in, and take it into service."""
        def on_message(stage: str, message: FromWorker) -> None:
            self._on_message((stage, replica), message)

        handles = await self._launch(WorkerSpec(group, replica, self.log_level, on_message, self._on_worker_closed))
        try:
            for stage, handle in zip(group, handles, strict=True):
                for op in self.calls.applied[stage.name]:
                    await asyncio.wait_for(self._control_one((stage.name, replica), handle, op), REPLAY_TIMEOUT_S)
        except (OmniError, asyncio.TimeoutError) as exc:
            for handle in handles:
                await asyncio.to_thread(handle.kill)
            raise StageLoadError(f"stage {'+'.join(s.name for s in group)} could not be given back what was done "
                                 f"to it at run time ({type(exc).__name__}: {exc})") from None
        for stage, handle in zip(group, handles, strict=True):
            self.pool.handles[stage.name][replica] = handle
            self._last_seen[(stage.name, replica)] = time.monotonic()
            self.admission.set_workers_up(stage.name, self.pool.up(stage.name))

    async def shutdown(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        live = [handle for _, handle in self.pool.live()]
        for handle in live:
            handle.transport.send(StopWorker())
        for handle in live:
            await asyncio.to_thread(handle.process.join, 5)
            handle.kill()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- state ---------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_queued(self) -> int:
        return self.admission.queued()

    def stage_info(self) -> list[dict[str, Any]]:
        out = []
        for stage in self.pipeline.stages:
            facts = self.pool.facts(stage.name)
            limits = self.admission.limits[stage.name]
            out.append({
                "name": stage.name,
                "executor": stage.executor,
                "pid": facts.pid,
                "healthy": self.pool.problem(stage.name) is None,
                "running": self.admission.running(stage.name),
                "queued": self.admission.queued(stage.name),
                "max_running_requests": limits.max_running * limits.workers,
                "max_queued_requests": limits.max_queued,
                "info": facts,
                "replicas": [self.pool.replica_info((stage.name, i))
                             for i in range(len(self.pool.handles[stage.name]))],
                "downstream": [e.dst for e in self.pipeline.downstream(stage.name)],
            })
        return out

    # ---- requests ------------------------------------------------------------------

    async def generate(self, request: OmniRequest) -> AsyncIterator[OmniOutput]:
        """Run one request; yield terminal-stage outputs; abort if the consumer leaves."""
        clock = RequestClock()
        planned = plan_route(self.pipeline, request, self.reads)
        route, emit = planned.stages, set(planned.emit)
        request = replace(request, params=planned.params, stage_sampling={})  # what each stage is sent
        if not self.pool.healthy(route):
            raise Unavailable(self.pool.unhealthy_reason(route))
        weights = self.admission.weights(route, max((p.n for p in request.sampling.values()), default=1))
        await self.admission.acquire(route, weights, request.lane)
        self.metrics.admitted(clock, route)
        tracked = Tracked(request, emit=emit, stages=set(route), open_terminals=set(emit), clock=clock,
                           weights=weights)
        self._running[request.request_id] = tracked
        ending = "abort"  # unless it completes or fails: the consumer left
        try:
            for stage in self.pipeline.stages:
                if stage.name in route:
                    self._add(stage.name, tracked)
            while True:
                item = await tracked.next()
                if isinstance(item, OmniError):
                    ending = "error"
                    raise item
                yield item
                if item.done:
                    tracked.open_terminals.discard(item.stage)
                    if not tracked.open_terminals:
                        ending = None
                        return
        finally:
            self.metrics.ended(clock, emit, ending)
            tracked.finished = True
            self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request at every stage still holding it; each frees its slot once its worker
        confirms. Nothing more reaches the consumer."""
        tracked = self._running.get(request_id)
        if tracked is None:
            return
        tracked.finished = True
        for name in list(tracked.stages):
            handle = self._holder(tracked, name)
            if handle is None or not handle.transport.send(AbortRequest(request_id)):
                self._stage_done(tracked, name)
        self._forget_if_done(tracked)

    def _stage_done(self, tracked: Tracked, stage: str) -> None:
        """`stage` no longer holds the request: its slot goes to the next in line."""
        if stage in tracked.stages:
            tracked.stages.discard(stage)
            self.admission.release({stage}, tracked.weights)
            if stage in tracked.replicas:
                self.pool.load[(stage, tracked.replicas[stage])] -= 1
        self._forget_if_done(tracked)

    def _forget_if_done(self, tracked: Tracked) -> None:
        if tracked.finished and not tracked.stages:
            self._running.pop(tracked.request.request_id, None)

    def _holder(self, tracked: Tracked, stage: str) -> WorkerHandle | None:
        """The worker of `stage` that holds the request (None: none does, or it died)."""
        replica = tracked.replicas.get(stage)
        return None if replica is None else self.pool.handles[stage][replica]

    def _assign(self, tracked: Tracked, stage: str) -> WorkerHandle | None:
        """Give the request to a worker of `stage`: the one its process group's other stages hold it in, or
        else the one up that holds the fewest requests on the group's stages this request visits (the first,
        among equals). It stays there for its whole life."""
        group = self._group_of(stage)
        replica = next((tracked.replicas[s.name] for s in group if s.name in tracked.replicas), None)
        if replica is None:
            up = [i for i, handle in enumerate(self.pool.handles[stage]) if handle is not None]
            if not up:
                return None
            visits = [s.name for s in group if s.name in tracked.stages]
            replica = min(up, key=lambda i: sum(self.pool.load[(name, i)] for name in visits))
        tracked.replicas[stage] = replica
        self.pool.load[(stage, replica)] += 1
        return self.pool.handles[stage][replica]

    def _add(self, stage: str, tracked: Tracked) -> None:
        handle = self._assign(tracked, stage)
        if handle is None or not handle.transport.send(AddRequest(tracked.request)):
            self._stage_done(tracked, stage)
            tracked.deliver(self.pool.unavailable(stage))

    # ---- messages from workers -----------------------------------------------------

    def _on_message(self, replica: Replica, message: FromWorker) -> None:
        self._last_seen[replica] = time.monotonic()
        stage = replica[0]
        match message:
            case StepOutputs(outputs, batches):
                self.metrics.steps(stage, batches)
                for output in outputs:
                    self._route(stage, output)
            case Alive(batches):
                self.metrics.steps(stage, batches)
            case RequestFailed(request_id, error):
                tracked = self._running.get(request_id)
                if tracked is not None:
                    self._stage_done(tracked, stage)
                    tracked.deliver(OmniError.from_wire(error))
            case Aborted(request_id):
                tracked = self._running.get(request_id)
                if tracked is not None:
                    self._stage_done(tracked, stage)
            case ControlDone(call_id, result, error):
                self.calls.answered(call_id, result, error)

    # ---- control calls -------------------------------------------------------------

    async def control(self, stage: str, op: ControlOp) -> Any:
        """Run a control operation on every worker of one stage that is up, between their steps; the first one's
        result, or the first error (the others may have applied it). A worker that starts later has not."""
        problem = self.pool.problem(stage)
        if problem is not None:
            raise Unavailable(problem)
        calls = [self._control_one((stage, i), handle, op) for i, handle in enumerate(self.pool.handles[stage])
                 if handle is not None]
        results = await asyncio.gather(*calls, return_exceptions=True)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            raise error
        if op.changes_state:
            self.calls.applied[stage].append(op)
        return results[0]

    def _control_one(self, replica: Replica, handle: WorkerHandle, op: ControlOp) -> Any:
        return self.calls.call(replica, handle, op, lambda: self.pool.unavailable(replica[0]))

    def _route(self, stage: str, output: OmniOutput) -> None:
        tracked = self._running.get(output.request_id)
        if tracked is None:
            return
        output.stage = stage
        self.metrics.output(tracked.clock, stage, output)
        if output.done:
            self._stage_done(tracked, stage)
        if tracked.finished:  # complete or being aborted: nothing flows any more
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
            if not tracked.deliver(replace(output, payload=None) if output.payload is not None else output):
                self._stop_unread(tracked, f"{tracked.unread // 2**20} MiB of its output waited unread")

    def _stop_unread(self, tracked: Tracked, why: str) -> None:
        """The consumer does not read: drop what waits for it, tell it why (if it ever reads again) and stop
        the request at every stage, so that it holds no slot."""
        log.warning("request %s stopped: %s", tracked.request.request_id, why)
        tracked.replace_unread(OmniError(f"the request was stopped: {why} (the client read its answer too "
                                         "slowly)", code="client_too_slow"))
        self.abort(tracked.request.request_id)

    def _feed(self, stage: str, tracked: Tracked, outputs: list[OmniOutput]) -> None:
        handle = self._holder(tracked, stage)
        if handle is None or not handle.transport.send(FeedOutputs(outputs)):
            self._stage_done(tracked, stage)
            tracked.deliver(self.pool.unavailable(stage))

    # ---- crashes and hangs ---------------------------------------------------------

    def _stall_timeout(self, stage: str) -> float:
        own = self.pipeline.stage(stage).stall_timeout
        return self.stall_timeout if own is None else own

    async def _watchdog(self) -> None:
        """Kill a worker whose loop has not turned for its stall timeout; the pipe closing then
        restarts it like any crash. A round the event loop itself was late for is skipped: the
        workers' messages were late to be read, not late to be sent."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            late, last = now - last > 5 * WATCHDOG_INTERVAL_S, now
            if late:
                continue
            if self.reader_timeout:
                for tracked in list(self._running.values()):
                    if (idle := tracked.unread_for(now)) > self.reader_timeout:
                        self._stop_unread(tracked, f"its output waited {idle:.0f} s for the client to read it")
            for (stage, i), handle in self.pool.live():
                silent = now - self._last_seen.get((stage, i), now)
                timeout = self._stall_timeout(stage)
                if timeout and silent > timeout and handle.stalled is None:
                    log.error("stage %s worker %d (pid %d) sent nothing for %.0f s; killing it", stage, i,
                              handle.pid, silent)
                    handle.stalled = f"it made no progress for {silent:.0f} s"
                    handle.process.kill()

    def _on_worker_closed(self, stage: str, handle: WorkerHandle) -> None:
        """A worker died: every stage it ran fails the requests it held there and waits for the restart
        (the stage's other workers go on)."""
        replica = next((i for i, h in enumerate(self.pool.handles.get(stage, [])) if h is handle), None)
        if replica is None or self._closing:
            return
        code = handle.process.exitcode
        why = handle.stalled or (f"exit code {code}" if code is not None else "its connection closed")
        group = [s.name for s in self._group_of(stage)]
        which = f" {replica}" if len(self.pool.handles[stage]) > 1 else ""
        log.error("stage %s worker%s (pid %d) died (%s); restarting", "+".join(group), which, handle.pid, why)
        for name in group:
            current = self.pool.handles[name][replica]
            if current is None or current.process is not handle.process:
                continue
            self.crashes += 1
            self.metrics.restarted(name)
            self.pool.handles[name][replica] = None
            self.pool.restarting[(name, replica)] = f"its worker died: {why}"
            self.admission.set_workers_up(name, self.pool.up(name))
            error = WorkerCrashed(
                f"the {name!r} stage worker {'was stuck' if handle.stalled else 'crashed'} while running this "
                f"request ({why}); the request was aborted, retry it"
            )
            for tracked in list(self._running.values()):
                if name in tracked.stages and tracked.replicas.get(name) == replica:
                    if not tracked.finished:
                        tracked.deliver(error)
                    self._stage_done(tracked, name)
            self.calls.fail((name, replica), error)
        self._spawn(self._restart(group, replica, handle))

    async def _restart(self, group: list[str], replica: int, dead: WorkerHandle) -> None:
        await asyncio.to_thread(dead.kill)
        configs = [self.pipeline.stage(name) for name in group]
        tries = max(c.max_restarts for c in configs)
        for attempt in range(1, tries + 1):
            try:
                await self._start_worker(configs, replica)
                for name in group:
                    del self.pool.restarting[(name, replica)]
                log.info("stage %s worker %d restarted (pid %d)", "+".join(group), replica,
                         self.pool.handles[group[0]][replica].pid)
                return
            except StageLoadError as exc:
                log.error("restart %d of stage %s worker %d failed: %s", attempt, "+".join(group), replica, exc)
                await asyncio.sleep(min(2**attempt, 30))
        for name in group:
            del self.pool.restarting[(name, replica)]
            self.pool.failed[(name, replica)] = f"gave up after {tries} restarts"
            if self.pool.problem(name) is not None:
                # Nobody will serve this stage's line: answer it now rather than let it wait forever.
                self.admission.fail_waiters(name, self.pool.unavailable(name))

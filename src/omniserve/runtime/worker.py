"""The stage worker: a process that runs one executor in a batching loop (or, for a process group such as
`--colocate`, the executors of several stages in turn, each behind its own pipe).

It owns the model, so a crash here (segfault, OOM kill) takes down only this
stage; the coordinator sees the pipe close, fails this stage's in-flight
requests and starts a new worker. An exception while admitting a request
(`add`, `feed`) fails that request only, as does one in `step` that the
executor pins on a request (its `failed` list); one the executor cannot pin
fails the requests this stage holds, and the stage goes on.

It speaks the typed messages of `messages.py`. The loop sends something at least
every `HEARTBEAT_S` while it turns (`Alive` when it has nothing else), so the
coordinator can tell a busy worker from a stuck one. `StepOutputs` and `Alive`
carry the batch size of each step since the last of them (`StepResult.batch_size`),
for the metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from omniserve.errors import OmniError
from omniserve.executors import create_executor
from omniserve.executors.base import Executor
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.messages import (
    Aborted,
    AbortRequest,
    AddRequest,
    Alive,
    Control,
    ControlDone,
    FeedOutputs,
    FromWorker,
    LoadFailed,
    Ready,
    RequestFailed,
    StepOutputs,
    StopWorker,
    ToWorker,
)
from omniserve.runtime.types import OmniOutput

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class PayloadCarrier(Protocol):
    """How payloads reach the stages that read them when they do not ride the messages themselves (on Ray, large
    ones go through the object store: `ray_backend.ObjectStoreCarrier`)."""

    def outgoing(self, stage: str, outputs: list[OmniOutput]) -> list[OmniOutput]: ...

    def incoming(self, outputs: list[OmniOutput]) -> list[OmniOutput]: ...


def run_stage_worker(stages: list[dict[str, Any]], conns: list[Connection], log_level: str,
                     carrier: PayloadCarrier | None = None) -> None:
    """Process entry point (must stay importable for the `spawn` start method). One stage, or the
    stages of one process group (`--colocate`), each with its own pipe to the coordinator."""
    names = "+".join(stage["name"] for stage in stages)
    logging.basicConfig(level=log_level.upper() if log_level != "trace" else "DEBUG",
                        format=f"%(asctime)s %(levelname)s [{names}] %(name)s: %(message)s")
    if log_level not in ("debug", "trace"):
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per request otherwise
    # Ctrl+C or a SIGTERM to the process group reaches us too; the parent decides when
    # we stop (a StopWorker message, or the pipe closing when it exits).
    if threading.current_thread() is threading.main_thread():  # a Ray actor may run us in another thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        lanes = []
        for stage, conn in zip(stages, conns, strict=True):
            try:
                executor = create_executor(stage["executor"], stage["args"], stage["name"])
                facts = executor.load()
                if not isinstance(facts, StageFacts):  # a custom executor's, say
                    raise TypeError(f"{type(executor).__name__}.load() returned {type(facts).__name__}, "
                                    "not StageFacts (omniserve.runtime.facts)")
            except Exception as exc:
                # The parent reports the reason in one line; the traceback is for --log-level debug.
                log.debug("stage %s failed to load", stage["name"], exc_info=True)
                for other in conns:
                    other.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
                return
            lanes.append(_Lane(executor, conn, stage["name"], facts.model_copy(update={"pid": os.getpid()}), carrier))
        for lane in lanes:
            lane.send(Ready(lane.facts))
        _Loop(lanes).run()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the server went away (shut down or killed): nobody is left to tell


class _Lane:
    """One stage in this process: its executor and its pipe."""

    def __init__(self, executor: Executor, conn: Connection, stage: str, facts: StageFacts,
                 carrier: PayloadCarrier | None = None):
        self.executor = executor
        self.conn = conn
        self.stage = stage
        self.facts = facts
        self.carrier = carrier
        self.last_sent = time.monotonic()
        self.batches: list[int] = []  # batch sizes of the steps not yet reported
        self.live: set[str] = set()  # requests added here and not finished, failed or aborted

    def send(self, message: FromWorker) -> None:
        self.conn.send(message)
        self.last_sent = time.monotonic()

    def handle(self, message: ToWorker) -> list[OmniOutput]:
        match message:
            case AbortRequest(request_id):
                self.live.discard(request_id)
                self.executor.abort(request_id)
                self.send(Aborted(request_id))
            case Control(call_id, op):
                self.send(self._control(call_id, op))
            case AddRequest(request):
                self.live.add(request.request_id)
                return self._guarded(request.request_id, self.executor.add, request)
            case FeedOutputs(outputs):  # upstream stage outputs on a graph edge
                return self._guarded(outputs[0].request_id, self._feed, outputs)
        return []

    def _feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        return self.executor.feed(self.carrier.incoming(outputs) if self.carrier else outputs)

    def send_outputs(self, outputs: list[OmniOutput]) -> None:
        """What the last steps made (its large payloads left with the carrier), and their batch sizes."""
        if self.carrier is not None:
            outputs = self.carrier.outgoing(self.stage, outputs)
        self.send(StepOutputs(outputs, self.batches))
        self.batches = []

    def _guarded(self, request_id: str, call, argument) -> list[OmniOutput]:
        try:
            return call(argument)
        except Exception as exc:
            self.fail(request_id, exc)
            return []

    def _control(self, call_id: str, op) -> ControlDone:
        try:
            return ControlDone(call_id, self.executor.control(op))
        except Exception as exc:
            return ControlDone(call_id, error=self._as_omni_error(exc).to_wire())

    def _as_omni_error(self, exc: Exception) -> OmniError:
        if isinstance(exc, OmniError):
            return exc
        log.error("stage %s failed", self.stage, exc_info=exc)  # a bug, or the model failing on this input
        return OmniError(f"the {self.stage!r} stage failed on this request ({type(exc).__name__}: {exc})")

    def fail(self, request_id: str, exc: Exception) -> None:
        """This request failed here, and this request alone: its error goes out, the stage goes on."""
        error = self._as_omni_error(exc)
        self.live.discard(request_id)
        self.executor.abort(request_id)  # whatever it holds of the request goes
        self.send(RequestFailed(request_id, error.to_wire()))

    def step(self) -> list[OmniOutput]:
        """One step, then the requests the step failed: an executor that knows which request an exception
        belongs to lists it in its result instead of raising. An exception it raises fails every request it
        holds; the stage goes on."""
        try:
            result = self.executor.step()
        except Exception as exc:
            log.error("stage %s failed in a step; its %d requests fail", self.stage, len(self.live), exc_info=exc)
            self.executor.result([])  # (what it failed before it raised fails with the rest)
            for request_id in list(self.live):
                self.fail(request_id, exc)
            self.batches.append(1)
            return []
        for request_id, exc in result.failed:
            self.fail(request_id, exc)
        self.batches.append(result.batch_size)
        return result.outputs


class _Loop:
    def __init__(self, lanes: list[_Lane]):
        self.lanes = lanes

    def run(self) -> None:
        conns = [lane.conn for lane in self.lanes]
        while True:
            # Block only when idle (waking to say we are alive); otherwise drain what
            # arrived during the last steps.
            if not any(lane.executor.has_work() for lane in self.lanes):
                wait(conns, HEARTBEAT_S)
            for lane in self.lanes:
                outputs: list[OmniOutput] = []
                while lane.conn.poll(0):
                    message = lane.conn.recv()
                    if isinstance(message, StopWorker):
                        for each in self.lanes:
                            each.executor.close()
                        return
                    outputs.extend(lane.handle(message))
                if lane.executor.has_work():
                    outputs.extend(lane.step())
                if outputs:
                    lane.live.difference_update(out.request_id for out in outputs if out.done)
                    lane.send_outputs(outputs)
                elif time.monotonic() - lane.last_sent >= HEARTBEAT_S:
                    lane.send(Alive(lane.batches))
                    lane.batches = []

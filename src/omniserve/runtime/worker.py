"""The stage worker: a process that runs one executor in a batching loop.

It owns the model, so a crash here (segfault, OOM kill) takes down only this
stage; the coordinator sees the pipe close, fails this stage's in-flight
requests and starts a new worker. An exception while admitting a request
(`add`, `feed`) fails that request only.

Wire protocol (tuples over a multiprocessing pipe):
  in:  ("add", OmniRequest) | ("feed", [OmniOutput]) | ("abort", request_id) | ("stop",)
  out: ("ready", info) | ("outputs", [OmniOutput], [batch size]) | ("error", request_id, wire_error)
       | ("aborted", request_id) | ("load_failed", message) | ("alive", [batch size])
The loop sends something at least every `HEARTBEAT_S` while it turns ("alive" when
it has nothing else), so the coordinator can tell a busy worker from a stuck one.
"outputs" and "alive" carry the batch size of each step since the last of them (the
executor's `batch_size`, or 1), for the metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from omniserve.errors import OmniError
from omniserve.executors import create_executor

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


def run_stage_worker(stage: dict[str, Any], conn: Connection, log_level: str) -> None:
    """Process entry point (must stay importable for the `spawn` start method)."""
    logging.basicConfig(level=log_level.upper() if log_level != "trace" else "DEBUG",
                        format=f"%(asctime)s %(levelname)s [{stage['name']}] %(name)s: %(message)s")
    if log_level not in ("debug", "trace"):
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per request otherwise
    # Ctrl+C or a SIGTERM to the process group reaches us too; the parent decides when
    # we stop (a "stop" message, or the pipe closing when it exits).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        try:
            executor = create_executor(stage["executor"], stage["args"], stage["name"])
            info = executor.load()
        except Exception as exc:
            # The parent reports the reason in one line; the traceback is for --log-level debug.
            log.debug("stage %s failed to load", stage["name"], exc_info=True)
            conn.send(("load_failed", f"{type(exc).__name__}: {exc}"))
            return
        info["pid"] = os.getpid()
        conn.send(("ready", info))
        _Loop(executor, conn, stage["name"]).run()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the server went away (shut down or killed): nobody is left to tell


class _Loop:
    def __init__(self, executor, conn: Connection, stage: str):
        self.executor = executor
        self.conn = conn
        self.stage = stage
        self.last_sent = time.monotonic()
        self.batches: list[int] = []  # batch sizes of the steps not yet reported

    def send(self, message: tuple) -> None:
        self.conn.send(message)
        self.last_sent = time.monotonic()

    def run(self) -> None:
        executor, conn = self.executor, self.conn
        while True:
            # Block only when idle (waking to say we are alive); otherwise drain what
            # arrived during the last step.
            if not executor.has_work():
                conn.poll(HEARTBEAT_S)
            outputs: list = []
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "stop":
                    executor.close()
                    return
                outputs.extend(self.handle(message))
            if executor.has_work():
                outputs.extend(executor.step())
                self.batches.append(getattr(executor, "batch_size", 1))
            if outputs:
                self.send(("outputs", outputs, self.batches))
                self.batches = []
            elif time.monotonic() - self.last_sent >= HEARTBEAT_S:
                self.send(("alive", self.batches))
                self.batches = []

    def handle(self, message: tuple) -> list:
        kind = message[0]
        if kind == "abort":
            self.executor.abort(message[1])
            self.send(("aborted", message[1]))
            return []
        request_id = message[1].request_id if kind == "add" else message[1][0].request_id
        try:
            if kind == "add":
                return self.executor.add(message[1])
            return self.executor.feed(message[1])  # upstream stage outputs on a graph edge
        except Exception as exc:
            if not isinstance(exc, OmniError):  # a bug, but this request's alone: the stage goes on
                log.exception("stage %s failed on request %s", self.stage, request_id)
                exc = OmniError(f"the {self.stage!r} stage failed on this request ({type(exc).__name__}: {exc})")
            self.executor.abort(request_id)  # whatever it holds of the request goes
            self.send(("error", request_id, exc.to_wire()))
            return []

"""The stage worker: a process that runs one executor in a batching loop.

It owns the model, so a crash here (segfault, OOM kill) takes down only this
stage; the coordinator sees the pipe close, fails this stage's in-flight
requests and starts a new worker.

Wire protocol (tuples over a multiprocessing pipe):
  in:  ("add", OmniRequest) | ("feed", [OmniOutput]) | ("abort", request_id) | ("stop",)
  out: ("ready", info) | ("outputs", [OmniOutput]) | ("error", request_id, wire_error)
       | ("aborted", request_id) | ("load_failed", message)
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from omniserve.errors import OmniError
from omniserve.executors import create_executor

log = logging.getLogger(__name__)


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
        executor = create_executor(stage["executor"], stage["args"], stage["name"])
        info = executor.load()
    except Exception as exc:
        # The parent reports the reason in one line; the traceback is for --log-level debug.
        log.debug("stage %s failed to load", stage["name"], exc_info=True)
        conn.send(("load_failed", f"{type(exc).__name__}: {exc}"))
        return
    info["pid"] = os.getpid()
    conn.send(("ready", info))
    _loop(executor, conn)


def _loop(executor, conn: Connection) -> None:
    while True:
        # Block only when idle; otherwise drain what arrived during the last step.
        if not executor.has_work():
            try:
                conn.poll(None)
            except (EOFError, OSError):
                return
        outputs = []
        while conn.poll(0):
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "stop":
                executor.close()
                return
            if kind == "add":
                request = message[1]
                try:
                    outputs.extend(executor.add(request))
                except OmniError as exc:
                    conn.send(("error", request.request_id, exc.to_wire()))
            elif kind == "feed":  # upstream stage outputs on a graph edge
                try:
                    outputs.extend(executor.feed(message[1]))
                except OmniError as exc:
                    executor.abort(message[1][0].request_id)
                    conn.send(("error", message[1][0].request_id, exc.to_wire()))
            elif kind == "abort":
                executor.abort(message[1])
                conn.send(("aborted", message[1]))
        if executor.has_work():
            outputs.extend(executor.step())
        if outputs:
            conn.send(("outputs", outputs))

"""A `Launcher` for unit tests of the coordinator: the real worker loop (`run_stage_worker`) in a thread of the test
process, over real pipes, connected with the real `connect_worker`, so the coordinator cannot tell it from a worker
process. A stage names its executor by import path (`executor: tests.unit.some_module:Class`), as any pipeline may.

A thread cannot be killed, so `kill` shuts the worker's ends of its pipes down instead: the coordinator sees them
close as it would a dead process's, and the loop, which finds them closed at its next turn, returns. An executor
crashes its worker by raising `WorkerCrash`, which the loop does not catch: the thread ends, as a crashed process
would, and its pipes close with it."""

from __future__ import annotations

import itertools
import socket
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from omniserve.runtime.launcher import WorkerHandle, WorkerSpec, connect_worker
from omniserve.runtime.worker import run_stage_worker

KILLED = -9  # the exit code of a killed worker, as a process killed by SIGKILL has
_pids = itertools.count(1_000_000)  # not a real process's: a thread has none of its own
_running = threading.local()


def worker_pid() -> int:
    """The pid of the worker running the calling thread: a test's executor tells which worker it is in."""
    return _running.pid


class WorkerCrash(BaseException):
    """Raised by an executor, it crashes its worker: the loop does not catch it, and the thread dies with it."""


class ThreadWorker:
    """A worker in a thread; it keeps `launcher.WorkerProcess`'s contract."""

    def __init__(self, stages: list[dict[str, Any]], conns: list[Connection], log_level: str):
        self.pid: int | None = next(_pids)
        self.exitcode: int | None = None
        self._conns = conns
        self._killed = False
        self._lock = threading.Lock()  # a pipe is not shut down while the thread closes it
        self._thread = threading.Thread(target=self._run, args=(stages, conns, log_level), daemon=True,
                                        name=f"worker-{self.pid}")

    def start(self) -> None:
        self._thread.start()

    def _run(self, stages: list[dict[str, Any]], conns: list[Connection], log_level: str) -> None:
        code = 1  # unless the loop returns
        _running.pid = self.pid
        try:
            run_stage_worker(stages, conns, log_level)
            code = 0
        except WorkerCrash:
            pass
        except OSError:
            if not self._killed:
                raise
        finally:
            self.exitcode = KILLED if self._killed else code
            with self._lock:
                self._hang_up()
                for conn in conns:
                    conn.close()

    def _hang_up(self) -> None:
        """Shut the worker's ends of its pipes down (they are socket pairs): the coordinator reads their end, and
        the loop, blocked on them or not, finds them closed. The descriptors stay open until the thread ends, so
        none is reused while it may still touch them."""
        for conn in self._conns:
            if conn.closed:
                continue
            with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # the other end is gone already
                    pass

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        self._killed = True
        with self._lock:
            self._hang_up()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


async def launch_in_thread(spec: WorkerSpec) -> list[WorkerHandle]:
    """The `Launcher`: a worker thread for the spec's stages, each stage with its own pipe, like `launch_worker`."""
    pipes = [Pipe() for _ in spec.stages]
    worker = ThreadWorker([stage.model_dump() for stage in spec.stages], [child for _, child in pipes],
                          spec.log_level)
    worker.start()
    return await connect_worker(spec, [parent for parent, _ in pipes], worker)

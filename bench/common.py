"""What the benchmarks share: start a server process, wait until it answers, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

# One client with kept-alive connections for every request a benchmark sends: a new httpx
# client per request builds an SSL context each time, which costs more than some requests.
http = httpx.Client(timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_time(fn, repeats: int) -> float:
    """The median wall time of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def running(name: str, cmd: list[str], base: str, timeout: float = 180):
    """Run `cmd` until the block ends; yield once `base`/v1/models answers 200. Its output goes to a log file that
    is kept only if something failed."""
    log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    failed = True
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/v1/models", timeout=1).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.3)
        yield base
        failed = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        if not failed:
            os.unlink(log.name)

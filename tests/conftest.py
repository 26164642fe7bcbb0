"""Start the real server as a subprocess with the real default model."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Models the server builds on first use (the ONNX image classifier, assembled GGUFs) are
# kept here across test runs, so each test server does not build them again.
MODEL_DATA = ROOT / "build" / "test-data"


def shared_models() -> Path:
    """Weights no registry has (`../shared/models` beside the checkout; never committed)."""
    for folder in (os.environ.get("OMNISERVE_SHARED_MODELS"), ROOT.parent / "shared" / "models",
                   Path("/work/shared/models")):
        if folder and Path(folder).is_dir():
            return Path(folder)
    raise AssertionError("the shared model folder is missing: set OMNISERVE_SHARED_MODELS to ../shared/models")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    api_key: str | None = None

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def openai(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=self.api_key or "unused", max_retries=0, **kw)

    def http(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_server(*args: str, tmp_path: Path, api_key: str | None = None, timeout: float = 120,
               env: dict[str, str] | None = None):
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", "2", *args]
    if "--data-dir" not in args:
        cmd += ["--data-dir", str(MODEL_DATA)]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")} | (env or {})
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, api_key)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.base_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not become healthy:\n{server.log()}")
            time.sleep(0.25)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The default server shared by tests that do not change its state."""
    with run_server(tmp_path=tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.openai()


@pytest.fixture(scope="session")
def http(server):
    with server.http() as c:
        yield c


def idle(http) -> bool:
    """Nothing running or queued, in all and at every stage."""
    load = http.get("/get_load").json()
    return (load["running"], load["queued"]) == (0, 0) and all(
        (s["running"], s["queued"]) == (0, 0) for s in load["stages"].values())


def rss_mb(pid: int) -> float:
    """A process's resident memory."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def wait_until(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")

"""A dead worker is detected and replaced; a client that leaves frees its slot."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT, idle, run_server, wait_until
from tests.fixtures.failing_llamacpp import FAILURE, POISON

LONG = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 2000,
        "ignore_eos": True, "temperature": 0}


@pytest.fixture()
def own_server(tmp_path):
    with run_server(tmp_path=tmp_path) as s:
        yield s


def worker_pid(http) -> int:
    stages = http.get("/get_model_info").json()["stages"]
    return next(s["pid"] for s in stages if s["name"] == "thinker")


def test_worker_crash_fails_in_flight_then_recovers(own_server):
    s = own_server
    with s.http() as http:
        pid = worker_pid(http)
        nonstream: dict = {}

        def blocking_request():
            with s.http() as h:
                nonstream["response"] = h.post("/v1/chat/completions", json=LONG)

        t = threading.Thread(target=blocking_request)
        t.start()
        events = []
        with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {") and '"content":"' in line and len(events) < 3:
                    events.append(line)
                    if len(events) == 3:
                        wait_until(lambda: http.get("/get_load").json()["running"] == 2)
                        os.kill(pid, signal.SIGKILL)
                        break
            rest = [line for line in lines if line]
        saw_503 = False
        deadline = time.time() + 60
        while time.time() < deadline:
            r = http.get("/health")
            if r.status_code == 503:
                saw_503 = True
                assert r.json()["status"] == "unhealthy"
            elif saw_503 or r.status_code == 200:
                if r.status_code == 200:
                    break
            time.sleep(0.02)
        t.join(30)

        # The stream ends with an error event, then [DONE].
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][6:])["error"]
        assert error["code"] == "worker_crashed" and "crashed" in error["message"]
        # The non-streaming request gets a clear 500 in the envelope.
        resp = nonstream["response"]
        assert resp.status_code == 500
        assert resp.json()["error"]["code"] == "worker_crashed"
        assert saw_503, "/health must answer 503 while the worker restarts"

        wait_until(lambda: http.get("/health").status_code == 200, timeout=60)
        assert worker_pid(http) != pid
        assert idle(http)
        ok = s.openai().chat.completions.create(model="smollm2-135m", messages=LONG["messages"], max_tokens=5)
        assert ok.choices[0].message.content
        metrics = http.get("/metrics").text
        assert "omniserve_worker_crashes_total 1.0" in metrics
        assert 'omniserve_worker_restarts_total{model="smollm2-135m",stage="thinker"} 1.0' in metrics


def test_stream_disconnect_aborts_and_frees_slot(server):
    with server.http() as http:
        wait_until(lambda: http.get("/get_load").json()["running"] == 0)
        for _ in range(3):
            with httpx.Client(base_url=server.base_url, timeout=60) as c:
                with c.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
                    seen = 0
                    for line in r.iter_lines():
                        seen += line.startswith("data: ")
                        if seen >= 4:
                            break
                assert http.get("/get_load").json()["running"] >= 0
        t0 = time.time()
        wait_until(lambda: http.get("/get_load").json()["running"] == 0, timeout=10, interval=0.02)
        # 2000 tokens would take ~20 s; the slot must come back long before.
        assert time.time() - t0 < 3


def test_non_streaming_disconnect_aborts(server):
    with server.http() as http:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + "/v1/chat/completions", json=LONG, timeout=1.0)
        wait_until(lambda: http.get("/get_load").json()["running"] == 0, timeout=5, interval=0.05)


def test_a_request_failing_in_a_decode_step_fails_alone(tmp_path):
    """A request that fails while the thinker decodes it (made to by a test executor the config names by import
    path) gets a clear error, streamed or not; the requests decoding in the same steps finish, and the stage is
    not restarted."""
    config = tmp_path / "fail.yaml"
    config.write_text("stages:\n  thinker:\n    executor: tests.fixtures.failing_llamacpp:FailingLlamaCppExecutor\n")
    poisoned = {"messages": [{"role": "user", "content": f"{POISON}, then a story"}], "max_tokens": 20}
    # the server and its workers import the test executor from this checkout
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with run_server("--config", str(config), tmp_path=tmp_path, env=env) as s, s.http() as http:
        pid = worker_pid(http)
        long: dict = {}

        def story():
            with s.http() as h:
                long["response"] = h.post("/v1/chat/completions", json={**LONG, "max_tokens": 150})

        t = threading.Thread(target=story)
        t.start()
        wait_until(lambda: http.get("/get_load").json()["running"] == 1)
        bad = http.post("/v1/chat/completions", json=poisoned)
        assert bad.status_code == 500
        assert FAILURE in bad.json()["error"]["message"] and "'thinker' stage" in bad.json()["error"]["message"]
        with http.stream("POST", "/v1/chat/completions", json={**poisoned, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
        if r.status_code == 200:  # the error as the stream's last event
            assert lines[-1] == "data: [DONE]" and FAILURE in json.loads(lines[-2][6:])["error"]["message"]
        else:  # the error came before the stream's first token: an error response
            assert r.status_code == 500 and FAILURE in json.loads(lines[0])["error"]["message"]
        t.join(60)
        assert long["response"].status_code == 200
        assert long["response"].json()["usage"]["completion_tokens"] == 150
        assert worker_pid(http) == pid and http.get("/health").status_code == 200
        assert idle(http)
        assert "omniserve_worker_crashes_total 0.0" in http.get("/metrics").text

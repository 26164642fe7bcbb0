"""The core of serving, on both worker backends (`--worker-backend mp`: local processes; `ray`: Ray actors, on a
local Ray the server starts itself), with the thinker served by two replicas: chat, streamed and not; a spoken
answer (thinker ⇢ talker); concurrent requests spread over both replicas; a replica killed mid-request fails only
the request it held while the other replica serves on and the dead one is replaced; a client that leaves frees
its slot."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time

import httpx
import pytest
import yaml

from tests.conftest import idle, run_server, wait_until

STORY = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 200,
         "ignore_eos": True, "temperature": 0, "stream": True}


@pytest.fixture(scope="module", params=["mp", "ray"])
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"backend-{request.param}")
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"stages": {"thinker": {"placement": {"replicas": 2}}}}))
    with run_server("--worker-backend", request.param, "--config", str(config), "--asr-model", "none",
                    "--embedding-model", "none", "--vision-model", "none", tmp_path=folder, timeout=300) as s:
        yield s


def thinker(http) -> dict:
    return next(s for s in http.get("/get_model_info").json()["stages"] if s["name"] == "thinker")


def test_the_thinker_has_two_replicas_each_its_own_process(server):
    with server.http() as http:
        replicas = thinker(http)["replicas"]
    assert [r["replica"] for r in replicas] == [0, 1] and all(r["state"] == "up" for r in replicas)
    assert len({r["pid"] for r in replicas}) == 2 and server.process.pid not in {r["pid"] for r in replicas}


def test_chat_streamed_and_not_and_a_spoken_answer(server):
    client = server.openai()
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat.completions.create(model="smollm2-135m", max_tokens=12, temperature=0, messages=messages)
    streamed = client.chat.completions.create(model="smollm2-135m", max_tokens=12, temperature=0, messages=messages,
                                              stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == answer.choices[0].message.content and text.strip()  # either replica: the same greedy answer
    spoken = client.chat.completions.create(model="smollm2-135m", max_tokens=16, modalities=["text", "audio"],
                                            audio={"voice": "alloy", "format": "wav"}, messages=messages)
    assert spoken.choices[0].message.audio.transcript
    assert len(base64.b64decode(spoken.choices[0].message.audio.data)) > 4000


def stream_story(server, into: dict, key: str) -> None:
    """Read a streamed story to its end: its text, and the error event it ended with, if any."""
    text, error = [], None
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=STORY) as response:
            if response.status_code != 200:  # it failed before its first token
                into[key] = ("", json.loads(response.read())["error"])
                return
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                elif event["choices"]:
                    text.append(event["choices"][0]["delta"].get("content") or "")
    into[key] = ("".join(text), error)


def test_concurrent_requests_use_both_replicas_and_a_killed_one_fails_only_its_own(server):
    with server.http() as http:
        wait_until(lambda: idle(http))
        results: dict = {}
        readers = [threading.Thread(target=stream_story, args=(server, results, key)) for key in ("a", "b")]
        for reader in readers:
            reader.start()
        # least loaded first: the second request goes to the replica the first left free
        wait_until(lambda: [r["running"] for r in thinker(http)["replicas"]] == [1, 1], timeout=30, interval=0.02)
        victim = thinker(http)["replicas"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: thinker(http)["replicas"][0]["state"] != "up", interval=0.02)
        # the stage still serves, on its other replica
        assert http.get("/health").status_code == 200
        during = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 4})
        assert during.status_code == 200, during.text
        for reader in readers:
            reader.join(120)
        errors = [error for _, error in results.values() if error is not None]
        assert len(errors) == 1 and errors[0]["code"] == "worker_crashed", results
        survivor = next(text for text, error in results.values() if error is None)
        assert len(survivor) > 200  # 200 tokens, to the end
        wait_until(lambda: all(r["state"] == "up" for r in thinker(http)["replicas"]), timeout=90)
        assert thinker(http)["replicas"][0]["pid"] != victim
        assert idle(http)


def test_a_client_that_leaves_frees_its_slot(server):
    with server.http() as http:
        wait_until(lambda: idle(http))
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json={**STORY, "max_tokens": 2000}) as r:
                seen = 0
                for line in r.iter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 4:
                        break
        started = time.time()
        wait_until(lambda: idle(http), timeout=10, interval=0.02)
        assert time.time() - started < 3  # 2000 tokens would take 20 s

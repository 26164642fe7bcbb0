"""Regression tests for what fuzzing and pathological input found: a deadlock, crashes, 500s,
an event loop held up, and one stage's load or crash spilling onto the others."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import idle, run_server, wait_until
from tests.integration.test_errors import assert_envelope
from tests.media_helpers import data_url, png_bytes

MSG = [{"role": "user", "content": "hi"}]
LONG = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 400,
        "ignore_eos": True, "temperature": 0}


def stage_pid(http, name: str) -> int:
    return next(s["pid"] for s in http.get("/get_model_info").json()["stages"] if s["name"] == name)


# ---- 1: more prompts than slots ---------------------------------------------------------------

def test_more_prompts_than_running_slots_completes(server, http):
    """9 and 20 prompts against 8 slots: the prompts that wait hold no slot, so all finish."""
    for count in (9, 20):
        r = http.post("/v1/completions", json={"prompt": [str(i) for i in range(count)], "max_tokens": 5},
                      timeout=60)
        assert r.status_code == 200, r.text
        assert sorted(c["index"] for c in r.json()["choices"]) == list(range(count))
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 5, "n": 12}, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 12
    wait_until(lambda: idle(http), timeout=10)


def test_leaving_a_streamed_multi_prompt_completion_is_quiet(server, http):
    """The client goes mid-stream: every prompt is aborted and nothing lands in the log as a traceback."""
    before = server.log().count("Traceback")
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": [f"Story {i}:" for i in range(10)],
                                                       "max_tokens": 300, "ignore_eos": True,
                                                       "stream": True}) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: {")
                if seen > 12:
                    break
    wait_until(lambda: idle(http), timeout=10)
    time.sleep(0.5)
    assert server.log().count("Traceback") == before, server.log()[-3000:]


# ---- 2, 3: input that crashed workers ---------------------------------------------------------

def test_nul_in_speech_input_is_a_400_and_the_talker_lives(http):
    pid = stage_pid(http, "talker")
    assert_envelope(http.post("/v1/audio/speech", json={"input": "hi\u0000there"}), 400, "input", "nul")
    assert stage_pid(http, "talker") == pid and http.get("/health").status_code == 200


NUL_TOKEN = 190  # SmolLM2's byte token for 0x00


def test_control_characters_streamed_to_the_talker_are_not_spoken(http):
    """The thinker is made to write NULs (by a logit bias) while the talker speaks its text."""
    pid = stage_pid(http, "talker")
    r = http.post("/v1/chat/completions", json={"messages": MSG, "modalities": ["text", "audio"], "max_tokens": 4,
                                                "logit_bias": {str(NUL_TOKEN): 100}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "\x00" * 4
    assert stage_pid(http, "talker") == pid


@pytest.mark.parametrize("grammar,says", [
    ("root ::= " + "(" * 20000 + '"a"' + ")" * 20000, "nest deeper"),
    ("root ::= [^\\x00-\\U0010FFFF]", "matches no character"),
    ('root ::= "a" [z-a]', "matches no character"),
    ('root ::= "Hi" [\\x00] " there."', "matches no character"),
    ('root ::= "Hi\\x00"', "nul"),
    ("root ::= undefined-rule", "does not parse"),
    ('root ::= "a"{100000}', "does not parse"),
    ("root ::= " + '"a" ' * 40000, "limit is"),
])
def test_grammars_llama_cpp_cannot_take_are_a_400(http, grammar, says):
    pid = stage_pid(http, "thinker")
    assert_envelope(http.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "ebnf": grammar}),
                    400, "ebnf", says)
    assert stage_pid(http, "thinker") == pid and http.get("/health").status_code == 200


# ---- 4: a regex that explodes is built off the event loop, within a bound ---------------------

def test_exploding_regex_is_a_400_and_the_server_stays_responsive(server, http):
    result = {}

    def post():
        with server.http() as h:
            t0 = time.time()
            result["r"] = h.post("/v1/completions", json={"prompt": "x", "max_tokens": 3,
                                                          "regex": "[ab]*a[ab]{14}"})
            result["s"] = time.time() - t0

    thread = threading.Thread(target=post)
    thread.start()
    time.sleep(0.5)
    slowest = 0.0
    while thread.is_alive():
        t0 = time.time()
        assert http.get("/health").status_code == 200
        slowest = max(slowest, time.time() - t0)
        time.sleep(0.2)
    assert slowest < 1.0, f"/health took {slowest:.2f} s while the regex compiled"
    assert_envelope(result["r"], 400, "regex", "longer than")
    assert result["s"] < 15
    ok = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 30, "regex": "[ab]{0,8}a[ab]{4}"})
    assert ok.status_code == 200 and re.fullmatch("[ab]{0,8}a[ab]{4}", ok.json()["choices"][0]["text"]), ok.text


# ---- 5: what used to be a 500 --------------------------------------------------------------------

def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": [{"type": ["text"]}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": 7}]}]}, "messages[0].content[0].type"),
    ({"messages": MSG, "logit_bias": {"²": 1}}, "logit_bias"),
    ({"messages": MSG, "logit_bias": {"99999999999999999999": 1}}, "logit_bias"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]}, "messages[0].tool_calls[0].function"),
    ({"messages": MSG, "response_format": {"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": deep_schema(300)}}}, None),
])
def test_former_500s_are_400s(http, body, param):
    assert_envelope(http.post("/v1/chat/completions", json={"max_tokens": 3, **body}), 400, param)


def test_deep_body_and_lone_surrogates_are_400s(http):
    deep = b"[" * 10000 + b"]" * 10000
    assert_envelope(http.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"}),
                    400, says="levels deep")
    lone = b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'
    assert_envelope(http.post("/v1/chat/completions", content=lone, headers={"content-type": "application/json"}),
                    400, says="surrogate")


# ---- 6: a huge prompt is refused before it is tokenized ---------------------------------------

def test_huge_prompt_is_refused_at_once_and_holds_nobody_up(server, http):
    result = {}

    def post():
        with server.http() as h:
            t0 = time.time()
            result["r"] = h.post("/v1/completions", json={"prompt": "hello world " * 2_500_000, "max_tokens": 3})
            result["s"] = time.time() - t0

    thread = threading.Thread(target=post)
    thread.start()
    t0 = time.time()
    assert http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}).status_code == 200
    other = time.time() - t0
    thread.join()
    err = assert_envelope(result["r"], 400, "prompt", "maximum context length")
    assert err["code"] == "context_length_exceeded"
    assert result["s"] < 5 and other < 5, (result["s"], other)


# ---- 7: admission and health per stage -----------------------------------------------------------

@pytest.fixture(scope="module")
def narrow_server(tmp_path_factory):
    """Two thinker slots and a long line: easy to fill."""
    with run_server("--max-running-requests", "2", "--max-queued-requests", "64",
                    tmp_path=tmp_path_factory.mktemp("narrow")) as s:
        yield s


def test_idle_stages_do_not_wait_behind_a_busy_one(narrow_server):
    s = narrow_server
    stop = threading.Event()

    def chat():
        with httpx.Client(base_url=s.base_url, timeout=120) as c:
            with c.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
                for _ in r.iter_lines():
                    if stop.is_set():
                        return

    threads = [threading.Thread(target=chat) for _ in range(16)]
    for t in threads:
        t.start()
    with s.http() as h:
        try:
            wait_until(lambda: h.get("/get_load").json()["stages"]["thinker"]["queued"] >= 10)
            t0 = time.time()
            assert h.post("/v1/embeddings", json={"input": "a sentence"}).status_code == 200
            embed_s = time.time() - t0
            t0 = time.time()
            assert h.post("/v1/audio/speech", json={"input": "Hello.", "response_format": "wav"}).status_code == 200
            speech_s = time.time() - t0
            load = h.get("/get_load").json()
            assert load["stages"]["thinker"]["running"] == 2 and load["stages"]["embedder"]["queued"] == 0
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert embed_s < 3 and speech_s < 5, (embed_s, speech_s)
        wait_until(lambda: idle(h), timeout=20)


def test_a_talker_crash_leaves_other_routes_serving(narrow_server):
    with narrow_server.http() as h:
        pid = stage_pid(h, "talker")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: h.get("/health").status_code == 503, timeout=10, interval=0.02)
        health = h.get("/health").json()
        if health["status"] == "unhealthy":  # it may already be back
            assert "talker" in health["reason"] and health["stages"]["thinker"] == "healthy"
        r = h.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert h.post("/v1/embeddings", json={"input": "x"}).status_code == 200
        wait_until(lambda: h.get("/health").status_code == 200, timeout=60)
        assert stage_pid(h, "talker") != pid
        assert h.post("/v1/audio/speech", json={"input": "Back.", "response_format": "wav"}).status_code == 200


def test_a_stuck_worker_is_unhealthy_then_restarted(tmp_path):
    with run_server("--stall-timeout", "3", "--asr-model", "none", "--vision-model", "none", "--tts-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path) as s, s.http() as h:
        pid = stage_pid(h, "thinker")
        os.kill(pid, signal.SIGSTOP)  # alive, but its loop no longer turns
        try:
            t0 = time.time()
            r = h.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5})
            err = assert_envelope(r, 500, says="stuck")
            assert err["code"] == "worker_crashed" and time.time() - t0 < 15
        finally:
            if stage_pid(h, "thinker") == pid:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: h.get("/health").status_code == 200, timeout=60)
        assert stage_pid(h, "thinker") != pid
        assert h.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
        assert "omniserve_worker_crashes_total 1.0" in h.get("/metrics").text
    assert "BrokenPipeError" not in s.log(), "workers must leave quietly when the server stops"


# ---- 8: media fetches have a deadline -----------------------------------------------------------

class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends a PNG header, then one byte every second: each read is quick, the whole never ends."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(120):
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_trickling_media_source_hits_the_deadline(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with run_server("--allow-private-media-urls", "--media-fetch-timeout", "3", "--asr-model", "none",
                        "--tts-model", "none", "--embedding-model", "none", tmp_path=tmp_path) as s, s.http() as h:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/slow.png"
            t0 = time.time()
            r = h.post("/v1/chat/completions", json={"max_tokens": 3, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})
            err = assert_envelope(r, 400, "messages[0].content[0]", "longer than 3 s")
            assert err["code"] == "media_fetch_timeout" and time.time() - t0 < 8
    finally:
        httpd.shutdown()


# ---- 10: smaller things ---------------------------------------------------------------------------

def test_decompression_bomb_names_the_pixel_limit(http):
    bomb = png_bytes((50000, 50000), mode="1")  # 2.5 G pixels, past Pillow's own guard
    r = http.post("/v1/chat/completions", json={"max_tokens": 3, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(bomb, "image/png")}}]}]})
    assert_envelope(r, 400, "messages[0].content[0]", "--max-image-pixels")


def test_method_not_allowed_says_what_is(http):
    r = http.get("/v1/chat/completions")
    assert_envelope(r, 405)
    assert r.headers["allow"] == "POST"
    assert http.head("/health").status_code == 200


def test_metrics_are_declared_as_text(http):
    spec = http.get("/openapi.json").json()
    content = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert len(content) == 1 and next(iter(content)).startswith("text/plain")
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")
    assert json.dumps(spec)  # the whole spec is JSON

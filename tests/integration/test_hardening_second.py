"""Regression tests for the second outside probe (issue 24) that need the default server: a huge
embeddings input refused before it is tokenized, bad values refused where the request is parsed
(negative image seeds, NUL in paths), a client's grammar kept out of the server log, and the
operator's cap on answers that name no max_tokens. The realtime, storage and cross-site findings have
their own modules (test_realtime_limits, test_storage, test_cross_site)."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import string
import threading
import time

import httpx
import pytest

from tests.conftest import rss_mb, run_server, shared_models, wait_until
from tests.integration.test_errors import assert_envelope
from tests.integration.test_hardening import stage_pid
from tests.realtime_helpers import next_of, open_session, receive, send

MSG = [{"role": "user", "content": "hi"}]


# ---- 5: a huge embeddings input is refused by its size --------------------------------------------

def test_a_huge_embeddings_input_is_refused_at_once(server, http):
    embedder = stage_pid(http, "embedder")
    before = rss_mb(embedder)
    result = {}

    def post():
        with server.http() as h:
            t0 = time.time()
            result["r"] = h.post("/v1/embeddings", json={"input": "hello world " * 2_500_000})
            result["s"] = time.time() - t0

    thread = threading.Thread(target=post)
    thread.start()
    t0 = time.time()
    small = http.post("/v1/embeddings", json={"input": "a small one"})
    other = time.time() - t0
    thread.join()
    assert small.status_code == 200, small.text
    err = assert_envelope(result["r"], 400, "input", "characters")
    assert "truncate_prompt_tokens" in err["message"]
    assert result["s"] < 5 and other < 5, (result["s"], other)  # tokenizing it all took 20 s
    assert rss_mb(embedder) < before + 150, (before, rss_mb(embedder))  # it grew by 2.5 GB
    # with truncation the end is kept, and only the end is tokenized
    r = http.post("/v1/embeddings", json={"input": "hello world " * 2_500_000, "truncate_prompt_tokens": 8})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 8, r.text
    same = http.post("/v1/embeddings", json={"input": "hello world " * 20, "truncate_prompt_tokens": 8})
    assert same.json()["data"][0]["embedding"] == r.json()["data"][0]["embedding"]


# ---- 9: bad values are refused where the request is parsed --------------------------------------

@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--image-model", f"sketch-rnn:{sketches}", "--asr-model", "none", "--tts-model", "none",
                    "--vision-model", "none", "--embedding-model", "none",
                    tmp_path=tmp_path_factory.mktemp("seeds")) as s:
        yield s


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_an_image_seed_out_of_range_is_a_400(image_server, seed):
    with image_server.http() as http:
        image = stage_pid(http, "image")
        for path, body in (("/v1/images/generations", {"prompt": "a cat", "size": "64x64", "seed": seed}),
                           ("/v1/videos", {"prompt": "a cat", "size": "64x64", "seed": seed})):
            assert_envelope(http.post(path, json=body), 400, "seed", "seed")
        form = {"prompt": "a cat", "size": "64x64", "seed": str(seed)}
        r = http.post("/v1/videos", files={k: (None, v) for k, v in form.items()})  # multipart
        assert_envelope(r, 400, "seed")
        assert http.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64", "seed": 2**32 - 1}
                         ).status_code == 200
        assert stage_pid(http, "image") == image
    assert "Traceback" not in image_server.log()


def test_a_nul_in_a_lora_path_is_a_400(image_server):
    """(/v1/set_lora resolves its paths with the same helper; its model is in test_diffusers.)"""
    with image_server.http() as http:
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "a\u0000b.gguf"})
        assert_envelope(r, 400, "lora_path")
    assert "Traceback" not in image_server.log()


def test_a_nul_in_a_local_media_path_is_a_400(tmp_path):
    with run_server("--allowed-local-media-path", str(tmp_path), "--asr-model", "none", "--tts-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path) as s, s.http() as http:
        for url in (f"file://{tmp_path}/a%00b.png", f"{tmp_path}/a\u0000b.png"):
            body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
                    "max_tokens": 2}
            assert_envelope(http.post("/v1/chat/completions", json=body), 400)
    assert "Traceback" not in s.log()


# ---- 11: a client's text never writes lines into the log ----------------------------------------

def test_a_grammar_that_does_not_parse_is_not_echoed_into_the_log(server, http):
    forged = "ERROR omniserve.runtime.coordinator: worker thinker died (forged)"
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2,
                                                "ebnf": f'root ::= "a"\n{forged}\nx ::= (('})
    assert_envelope(r, 400, "ebnf", "does not parse")
    time.sleep(0.5)
    assert forged not in server.log()


# ---- 14: the operator's cap on answers that name no max_tokens -----------------------------------

def test_default_max_tokens_caps_answers_that_name_none(tmp_path):
    with run_server("--default-max-tokens", "5", "--asr-model", "none", "--tts-model", "none", "--vision-model",
                    "none", "--embedding-model", "none", tmp_path=tmp_path) as s, s.http() as http:
        story = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "ignore_eos": True}
        r = http.post("/v1/chat/completions", json=story)
        assert r.json()["usage"]["completion_tokens"] == 5 and r.json()["choices"][0]["finish_reason"] == "length"
        r = http.post("/v1/chat/completions", json=story | {"max_tokens": 9})  # a request's own wins
        assert r.json()["usage"]["completion_tokens"] == 9


# ---- 6: clients share the grammar helpers, and a grammar's cost per step is bounded ----------------

def test_one_clients_slow_grammars_do_not_hold_up_another(tmp_path):
    """Six regexes that each run out the grammar timeout, from 127.0.0.2, then a small schema from 127.0.0.1:
    the schema waits for at most one slow build per helper, not for all six (the outside probe: 37 s). Told by
    order, not by seconds (a helper's start takes longer on a loaded machine): in one line the schema would be
    answered after all six; taking turns, most of them are still waiting when it is."""
    # 8 s builds: the schema's answer (its own build, then 12 tokens) has 8 s before the next slow ones end, which
    # a loaded machine needs (with 2 s, and then with 4 s on a machine busy with other work, runs saw only two
    # still waiting)
    with run_server("--grammar-timeout", "8", "--asr-model", "none", "--tts-model", "none", "--vision-model",
                    "none", "--embedding-model", "none", tmp_path=tmp_path) as s:
        slow = []

        def post_slow(k: int):
            transport = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(base_url=s.base_url, transport=transport, timeout=120) as c:
                slow.append((c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2,
                                                             "regex": f"[ab]*a[ab]{{{14 + k}}}"}), time.time()))

        threads = [threading.Thread(target=post_slow, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
            "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
        with s.http() as http:
            r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 12,
                                                        "response_format": schema})
            answered = time.time()
        for t in threads:
            t.join()
        assert r.status_code == 200, r.text
        later = sum(done > answered for _, done in slow)
        assert later >= 3, later  # one slow build on each of the two helpers went first, at most (and one more
        # may end while the schema's own build runs)
        assert all(x.status_code == 400 and "longer than" in x.json()["error"]["message"] for x, _ in slow)


def test_a_grammar_too_costly_to_apply_at_each_step_is_a_400(http):
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(8000)]  # about 0.7 s a step
    schema = {"type": "json_schema", "json_schema": {"name": "e", "schema": {"type": "string", "enum": words}}}
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, "response_format": schema})
    err = assert_envelope(r, 400, "response_format", "ms to apply")
    assert "long enums" in err["message"]
    small = {"type": "json_schema", "json_schema": {"name": "e", "schema": {"type": "string", "enum": words[:20]}}}
    # room for any of the words (a letter may be a token of its own: 8 tokens once cut "xzvxisxr" short)
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 24, "response_format": small})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip('"') in words[:20], r.text


# ---- 7: what a request holds counts, and a client that does not read holds nothing for long --------

def test_a_streamed_answer_that_is_not_read_frees_its_slots(tmp_path):
    """A spoken, streamed chat whose client reads nothing (a 4 KB receive window): once its output has
    waited --slow-reader-timeout, the request is stopped at the thinker and the talker (the probe: 141 s)."""
    with run_server("--slow-reader-timeout", "3", "--asr-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path) as s, s.http() as http:
        body = json.dumps({"messages": [{"role": "user", "content": "Tell me a very long story."}],
                           "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"},
                           "stream": True, "max_tokens": 1500, "ignore_eos": True}).encode()
        host, port = s.base_url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        try:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_until(lambda: http.get("/get_load").json()["running"] == 1, timeout=30)
            t0 = time.time()
            wait_until(lambda: http.get("/get_load").json()["running"] == 0, timeout=120)
            assert time.time() - t0 < 90
            assert "client read its answer too slowly" in s.log() or "waited" in s.log(), s.log()[-2000:]
        finally:
            sock.close()
        r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3})
        assert r.status_code == 200


def test_many_choices_count_for_what_they_hold_and_do_not_hold_up_a_small_chat(server, http):
    result = {}

    def wide():
        with server.http() as h:
            result["wide"] = h.post("/v1/chat/completions", json={
                "messages": MSG, "n": 16, "max_tokens": 120, "ignore_eos": True, "temperature": 1})

    thread = threading.Thread(target=wide)
    thread.start()
    wait_until(lambda: http.get("/get_load").json()["stages"]["thinker"]["running"] >= 4, timeout=30)
    assert http.get("/get_load").json()["stages"]["thinker"]["running"] == 4  # half of the 8 slots, not 1
    t0 = time.time()
    small = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 5})
    took = time.time() - t0
    thread.join()
    assert small.status_code == 200 and result["wide"].status_code == 200
    assert len(result["wide"].json()["choices"]) == 16
    assert not thread.is_alive() and took < 30


def test_realtime_answers_in_line_do_not_hold_up_a_plain_chat(tmp_path):
    """One slot; six realtime sessions ask for long answers, then a chat comes: realtime and HTTP take turns,
    so the chat is answered while most of the sessions still wait (in one line it came seventh)."""
    with run_server("--max-running-requests", "1", "--asr-model", "none", "--tts-model", "none", "--vision-model",
                    "none", "--embedding-model", "none", tmp_path=tmp_path) as s, contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(open_session(s.base_url)) for _ in range(6)]
        for ws in sessions:
            receive(ws)
            send(ws, {"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell a story."}]}})
            send(ws, {"type": "response.create", "response": {"output_modalities": ["text"],
                                                              "max_output_tokens": 150}})
        with s.http() as http:
            wait_until(lambda: http.get("/get_load").json()["queued"] >= 5, timeout=30)
            r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3})
            assert r.status_code == 200, r.text
            done = http.get("/get_load").json()
        assert done["queued"] >= 3, done  # the chat went in after one or two of them, not after all six
        for ws in sessions:
            assert next_of(ws, "response.done", timeout=120)["response"]["status"] in ("completed", "incomplete")


def test_an_idle_kept_alive_connection_outlives_the_clients_expiry(server):
    """httpx and the openai SDK drop an idle connection after 5 s. The server keeps it longer, so a request sent
    on it just then is answered, not met by a close (a full run saw the openai client's request die with "Server
    disconnected without sending a response" when both sides used 5 s)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the kept-alive connection"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
            length = int(next(line.split(b":")[1] for line in reply.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(reply.split(b"\r\n\r\n", 1)[1]) < length:
                reply += sock.recv(65536)
            time.sleep(6)

"""Every failure is a 4xx/5xx in the OpenAI envelope, never a traceback."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.conftest import run_server, wait_until

MSG = [{"role": "user", "content": "hi"}]


def assert_envelope(r, status: int, param: str | None = None, says: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] is None or isinstance(err["code"], str)
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param, err
    if says is not None:
        assert says in err["message"].lower(), err
    return err


@pytest.mark.parametrize(
    "patch,param",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, None),
        ({"n": 0}, "n"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
        ({"stop": [""]}, None),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_chat_400(http, patch, param):
    body = {"messages": MSG, "max_tokens": 4, **patch}
    err = assert_envelope(http.post("/v1/chat/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"
    if param:
        assert param.split("[")[0] in err["message"]


def test_missing_messages_names_the_parameter(http):
    assert_envelope(http.post("/v1/chat/completions", json={"model": "smollm2-135m"}), 400, "messages")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"null", b"{not json", b""])
def test_non_object_or_malformed_body(http, raw):
    r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_envelope(r, 400)


def test_prompt_longer_than_context(http):
    long = "word " * 5000
    err = assert_envelope(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]}),
                          400, "messages", "context length")
    assert err["code"] == "context_length_exceeded"
    err = assert_envelope(http.post("/v1/completions", json={"prompt": long}), 400, "prompt")
    stream = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}], "stream": True})
    assert_envelope(stream, 400, "messages")


def test_max_tokens_beyond_context(http):
    assert_envelope(http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 100000}), 400,
                    "max_tokens")


def test_completions_400(http):
    assert_envelope(http.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400, "suffix")
    assert_envelope(http.post("/v1/completions", json={}), 400, "prompt")
    assert_envelope(http.post("/v1/completions", json={"prompt": "x", "logprobs": 9}), 400, "logprobs")
    assert_envelope(http.post("/v1/completions", json={"prompt": [1], "echo": True}), 400, "echo")
    assert_envelope(http.post("/v1/completions", json={"prompt": [99999999]}), 400, "prompt")


def test_unknown_model_and_route_404(http, client):
    err = assert_envelope(http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}), 404, "model")
    assert "model" in err["message"]
    assert_envelope(http.get("/v1/models/gpt-9"), 404, "model")
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.delete("/v1/chat/completions"), 405)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=MSG)


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-135m", messages=MSG, temperature=-1)
    assert "temperature" in str(info.value)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API key and a small body limit."""
    with run_server("--max-request-bytes", "4096", tmp_path=tmp_path_factory.mktemp("guarded"),
                    api_key="s3cret-key") as s:
        yield s


def test_api_key(guarded):
    import httpx

    bare = httpx.Client(base_url=guarded.base_url)
    assert bare.get("/health").status_code == 200  # open, for load balancers
    assert_envelope(bare.get("/v1/models"), 401)
    assert_envelope(bare.post("/v1/chat/completions", json={"messages": MSG}), 401)
    assert_envelope(bare.get("/get_model_info"), 401)
    assert_envelope(bare.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.v1, api_key="wrong", max_retries=0).models.list()
    good = guarded.openai()
    assert good.chat.completions.create(model="smollm2-135m", messages=MSG, max_tokens=2).choices


def test_body_too_large_413(guarded):
    with guarded.http() as http:
        big = {"messages": [{"role": "user", "content": "x" * 10000}]}
        err = assert_envelope(http.post("/v1/chat/completions", json=big), 413)
        assert "4096" in err["message"]

        def chunks():
            for _ in range(10):
                yield b"x" * 1000

        # No Content-Length: the limit is enforced while the body streams in.
        assert_envelope(http.post("/v1/chat/completions", content=chunks()), 413)


def test_queue_full_503_and_queueing(tmp_path):
    with run_server("--max-running-requests", "1", "--max-queued-requests", "1", tmp_path=tmp_path) as s:
        long = {"messages": MSG, "max_tokens": 150, "ignore_eos": True, "temperature": 0}
        results = {}

        def go(name):
            with s.http() as h:
                results[name] = h.post("/v1/chat/completions", json=long)

        first = threading.Thread(target=go, args=("running",))
        first.start()
        with s.http() as h:
            wait_until(lambda: h.get("/get_load").json()["running"] == 1)
            second = threading.Thread(target=go, args=("queued",))
            second.start()
            wait_until(lambda: h.get("/get_load").json()["queued"] == 1)
            t0 = time.time()
            err = assert_envelope(h.post("/v1/chat/completions", json=long), 503)
            assert time.time() - t0 < 2, "a full queue must answer at once"
            assert "capacity" in err["message"]
        first.join()
        second.join()
        assert results["running"].status_code == 200
        assert results["queued"].status_code == 200, "a queued request runs once a slot frees"

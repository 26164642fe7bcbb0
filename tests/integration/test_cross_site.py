"""A web page the user opens must not drive a server on their machine: JSON only as application/json,
requests that change something and the realtime upgrade refused from another site's Origin (the
server's own pages and --allowed-origins pass, with CORS for the latter), and links that never take
the client's Host header."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import run_server, shared_models
from tests.realtime_helpers import open_session, receive

CHAT = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
APP = "http://app.example:3000"


def serve(tmp_path, *args):
    sketches = shared_models() / "sketch-rnn-quickdraw"
    return run_server("--image-model", f"sketch-rnn:{sketches}", "--asr-model", "none", "--tts-model", "none",
                      "--vision-model", "none", "--embedding-model", "none", *args, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("xsite")) as s:
        yield s


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/jsonp"])
def test_json_comes_only_as_application_json(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        r = http.post("/v1/chat/completions", content=CHAT, headers=headers)
        assert r.status_code == 415, r.text
        error = r.json()["error"]
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"], error
        r = http.post("/v1/chat/completions", content=CHAT, headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 200, r.text


def test_another_sites_page_cannot_post_or_open_a_realtime_session(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        json = {"Content-Type": "application/json"}
        for origin in ("http://evil.example", "null", server.base_url.replace("127.0.0.1", "localhost")):
            r = http.post("/v1/chat/completions", content=CHAT, headers=json | {"Origin": origin})
            assert r.status_code == 403, (origin, r.text)
            assert r.json()["error"]["code"] == "cross_origin_forbidden"
        r = http.post("/v1/videos", data={"prompt": "a bird", "size": "64x64"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403, r.text  # a form a page could submit
        r = http.post("/v1/chat/completions", content=CHAT, headers=json | {"Origin": server.base_url})
        assert r.status_code == 200, r.text  # the server's own page (the playground)
        assert http.get("/v1/models", headers={"Origin": "http://evil.example"}).status_code == 200  # reads pass
    with pytest.raises(InvalidStatus) as refused:
        open_session(server.base_url, headers={"Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403
    with open_session(server.base_url, headers={"Origin": server.base_url}) as ws:
        assert receive(ws)["type"] == "session.created"
    with open_session(server.base_url) as ws:  # not a browser: no Origin
        assert receive(ws)["type"] == "session.created"


def test_image_links_ignore_the_host_header(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        r = http.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64", "response_format": "url"},
                      headers={"Host": "evil.example:666"})
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        assert url.startswith(server.base_url + "/v1/images/img_"), url
        assert http.get(url).status_code == 200


def test_allowed_origins_get_cors_and_a_public_base_url_makes_the_links(tmp_path):
    with serve(tmp_path, "--allowed-origins", APP + "/", "--public-base-url", "https://omni.example/api") as s, \
            httpx.Client(base_url=s.base_url, timeout=60) as http:
        preflight = http.options("/v1/chat/completions", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == APP
        r = http.post("/v1/chat/completions", content=CHAT, headers={"Content-Type": "application/json",
                                                                      "Origin": APP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP, r.text
        r = http.post("/v1/chat/completions", content=CHAT, headers={"Content-Type": "application/json",
                                                                      "Origin": "http://evil.example"})
        assert r.status_code == 403
        with open_session(s.base_url, headers={"Origin": APP}) as ws:
            assert receive(ws)["type"] == "session.created"
        r = http.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64", "response_format": "url"})
        assert r.json()["data"][0]["url"].startswith("https://omni.example/api/v1/images/img_"), r.text

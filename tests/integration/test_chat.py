"""Chat completions against the real server and SmolLM2, through the openai client."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_server

MSG = [{"role": "user", "content": "Write one sentence about the sea."}]


def stream_text(client, **kw) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_basic_chat(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "smollm2-135m"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_model_field_may_be_omitted(http):
    r = http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smollm2-135m"


def test_stream_equals_non_stream_at_temperature_zero(client):
    kw = dict(model="smollm2-135m", messages=MSG, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kw)
    text, chunks = stream_text(client, **kw)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]


def test_stream_shape_role_finish_usage_done(http):
    body = {"messages": MSG, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    finish = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8
    assert all("usage" not in e for e in events[:-1])  # a chunk without usage leaves the key out (the spec)
    assert all(e["system_fingerprint"].startswith("fp_") for e in events)


def test_stop_string_across_tokens_is_not_leaked(client):
    kw = dict(model="smollm2-135m", messages=MSG, max_tokens=40, temperature=0)
    base = client.chat.completions.create(**kw).choices[0].message.content
    assert len(base) > 20, base
    # A stop that starts mid-word and spans several tokens.
    stop = base[10:17]
    cut = base.index(stop)
    r = client.chat.completions.create(stop=[stop], **kw)
    assert r.choices[0].message.content == base[:cut]
    assert r.choices[0].finish_reason == "stop"
    text, _ = stream_text(client, stop=stop, **kw)
    assert text == base[:cut] and stop not in text


def test_n_two_choices(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=MSG, max_tokens=10, n=2,
                                       temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert 2 <= r.usage.completion_tokens <= 20  # summed over both choices
    streamed = list(client.chat.completions.create(model="smollm2-135m", messages=MSG, max_tokens=5, n=2,
                                                   stream=True))
    finished = {c.choices[0].index for c in streamed if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_seed_is_reproducible(tmp_path):
    """Bit for bit without the prefix cache: with it, a kept prompt moves the next request's KV cells,
    which moves its logits by float noise (enough to change a sampled token; docs/chat.md)."""
    with run_server("--disable-radix-cache", "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path) as s:
        _seeded_runs_agree(s.openai())


def _seeded_runs_agree(client) -> None:
    kw = dict(model="smollm2-135m", messages=MSG, max_tokens=20, temperature=1.2, top_p=0.95)
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all give the same text"


def test_sampling_parameters_are_accepted(client):
    r = client.chat.completions.create(
        model="smollm2-135m", messages=MSG, max_tokens=10, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, seed=3, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.choices[0].message.content


def test_repetition_penalty_changes_greedy_output(client):
    kw = dict(model="smollm2-135m", messages=[{"role": "user", "content": "Repeat the word cat many times."}],
              max_tokens=30, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    penalised = client.chat.completions.create(frequency_penalty=2.0, **kw).choices[0].message.content
    assert plain != penalised


def test_logprobs_shape(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=MSG, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert item.token == item.top_logprobs[0].token
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    assert "".join(i.token for i in content) == r.choices[0].message.content


def test_max_completion_tokens_and_length(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=MSG, max_completion_tokens=4,
                                       temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_roles_and_text_parts(client):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"},
                                     {"type": "text", "text": " Answer with a number."}]},
        {"role": "assistant", "content": "4"},
        {"role": "tool", "tool_call_id": "call_1", "content": "calculator says 4"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "And 3+3?"},
    ]
    r = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, temperature=0)
    assert r.choices[0].message.content is not None


def test_concurrent_requests_batch_together(server):
    """Several streams at once all finish, and run concurrently (not one by one)."""
    import concurrent.futures
    import time

    client = server.openai()

    def one(i: int) -> tuple[float, float]:
        t0 = time.time()
        first = None
        for chunk in client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": f"Tell a story number {i}."}],
            max_tokens=24, temperature=0, stream=True, extra_body={"ignore_eos": True},
        ):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.time()
        return first - t0, time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    ttfts = [r[0] for r in results]
    totals = [r[1] for r in results]
    # Serialized, the last stream would only start after three whole others finished.
    assert max(ttfts) < min(totals), (ttfts, totals)


@pytest.mark.parametrize("path", ["/v1/models", "/get_model_info", "/get_load", "/metrics", "/health"])
def test_info_routes(http, path):
    assert http.get(path).status_code == 200


def test_logit_bias_bans_and_forces_tokens(client):
    kw = dict(model="smollm2-135m", messages=MSG, max_tokens=8, temperature=0, logprobs=True)
    base = client.chat.completions.create(**kw)
    # A +100 bias on one token id makes every generated token that token.
    forced = client.chat.completions.create(logit_bias={"42": 100}, **kw)
    assert len({t.token for t in forced.choices[0].logprobs.content}) == 1
    assert forced.choices[0].message.content != base.choices[0].message.content

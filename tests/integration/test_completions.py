"""Text completions and model listing against the real server."""

from __future__ import annotations


def test_completion_string_prompt(client):
    r = client.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8


def test_completion_default_max_tokens_is_16(client):
    r = client.completions.create(model="smollm2-135m", prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_completion_list_prompt_and_n(client):
    r = client.completions.create(model="smollm2-135m", prompt=["One, two,", "Red, green,"], n=2, max_tokens=4,
                                  temperature=0.8, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.text for c in r.choices)


def test_completion_token_prompt(client):
    text = client.completions.create(model="smollm2-135m", prompt="Hello world", max_tokens=5, temperature=0)
    tokens = client.completions.create(model="smollm2-135m", prompt=[19556, 905], max_tokens=5, temperature=0)
    assert tokens.usage.prompt_tokens == 2
    assert tokens.choices[0].text
    assert text.choices[0].text


def test_completion_stream_equals_non_stream(client):
    kw = dict(model="smollm2-135m", prompt="def fibonacci(n):", max_tokens=25, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == full


def test_completion_echo(client):
    r = client.completions.create(model="smollm2-135m", prompt="Roses are red,", max_tokens=5, temperature=0,
                                  echo=True)
    assert r.choices[0].text.startswith("Roses are red,")


def test_completion_logprobs(client):
    r = client.completions.create(model="smollm2-135m", prompt="1, 2, 3,", max_tokens=5, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0


def test_completion_stop(client):
    kw = dict(model="smollm2-135m", prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0)
    base = client.completions.create(**kw).choices[0].text
    stop = base[4:7]
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == base[: base.index(stop)]


def test_models(client, http):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smollm2-135m", "whisper-tiny.en", "imagenet-ocr", "piper-joe-medium", "kokoro-82m",
                   "resemblyzer-ge2e", "all-MiniLM-L6-v2"]
    card = http.get("/v1/models/smollm2-135m").json()
    assert card["max_model_len"] == 4096
    assert client.models.retrieve("smollm2-135m").id == "smollm2-135m"


def test_model_info_names_stages(http):
    info = http.get("/get_model_info").json()
    assert info["model_path"].endswith(".gguf")
    assert info["context_length"] == 4096
    stages = {s["name"]: s for s in info["stages"]}
    assert [s["executor"] for s in info["stages"]] == ["whisper", "describer", "llamacpp", "piper", "kokoro",
                                                       "speaker_encoder", "embedder"]
    assert stages["thinker"]["pid"] and stages["asr"]["downstream"] == ["thinker"]
    assert stages["thinker"]["downstream"] == ["talker", "talker_kokoro"] and stages["talker"]["downstream"] == []

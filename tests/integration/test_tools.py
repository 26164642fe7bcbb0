"""Tool calling on the default server (SmolLM2-135M, whose chat template has no tool support):
`required` and a named function are enforced by a grammar, so the calls' arguments validate
against the tools' schemas; `auto` and `none`; streamed calls in OpenAI's incremental format;
and a follow-up turn with the tool's result."""

from __future__ import annotations

import json

import jsonschema
import pytest

MODEL = "smollm2-135m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "required": ["zone"],
                   "properties": {"zone": {"type": "string", "maxLength": 30}}}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def create(client, **kw):
    """Room for four calls (parallel_tool_calls allows up to four) with their longest arguments."""
    return client.chat.completions.create(model=MODEL, messages=kw.pop("messages", ASK), tools=TOOLS,
                                          max_tokens=kw.pop("max_tokens", 400), **kw)


def check_calls(calls):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(4))
def test_required_calls_validate(client, seed):
    r = create(client, tool_choice="required", seed=seed, temperature=1.0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls)


def test_named_function_and_one_call_without_parallel(client):
    for seed in range(3):
        r = create(client, tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=seed,
                   parallel_tool_calls=False, temperature=1.0)
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1 and calls[0].function.name == "get_time"
        check_calls(calls)


def test_streamed_calls(client):
    chunks = list(create(client, tool_choice="required", seed=2, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.id:
                assert delta.function.name and delta.type == "function"
                call["name"] = delta.function.name
            call["arguments"] += delta.function.arguments or ""
    assert calls and chunks[-1].choices[0].finish_reason == "tool_calls"
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_follow_up_turn_with_the_result(client):
    first = create(client, tool_choice="required", seed=1)
    call = first.choices[0].message.tool_calls[0]
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})}]
    r = create(client, messages=turn, tool_choice="none", temperature=0, max_tokens=30)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
    bare = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 30  # the call and its result are in the prompt


def test_auto_and_none(client):
    r = create(client, tool_choice="auto", seed=1, temperature=0)
    message = r.choices[0].message
    if message.tool_calls:
        check_calls(message.tool_calls)
    else:
        assert message.content and r.choices[0].finish_reason in ("stop", "length")
    r = create(client, tool_choice="none", max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.mark.parametrize("patch, param, words", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no tool is named 'nope'"),
    ({"tool_choice": "sometimes"}, "tool_choice", "required"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "give tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "pattern"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}]},
     "tools[0].function.parameters", "'minimum'"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "cannot be combined"),
])
def test_bad_tool_requests_are_400(http, patch, param, words):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **patch}
    r = http.post("/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
Tools: {% for t in tools %}{{ t.function.name }} {% endfor %}<|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}\
{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
"""


def test_a_template_that_renders_tools_gets_them(client, tmp_path):
    """A chat template that knows `tools` renders them itself (here: their names only), and gets
    earlier calls with their arguments as objects."""
    import yaml

    from tests.conftest import run_server

    config = tmp_path / "tools.yaml"
    config.write_text(yaml.safe_dump({"stages": {"thinker": {"args": {"chat_template": TOOLS_TEMPLATE}}}}))
    with run_server("--config", str(config), "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path) as server:
        native = server.openai()
        bare = native.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1).usage.prompt_tokens
        r = create(native, tool_choice="required", seed=1)
        assert r.usage.prompt_tokens - bare < 20  # "Tools: get_weather get_time", not the Hermes system prompt
        check_calls(r.choices[0].message.tool_calls)
        call = r.choices[0].message.tool_calls[0]
        turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                      {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]
        assert create(native, messages=turn, max_tokens=5).choices[0].finish_reason in ("stop", "length")
    hermes = create(client, tool_choice="required", seed=1).usage.prompt_tokens
    assert hermes - client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1).usage.prompt_tokens > 80


def test_a_spoken_answer_never_reads_its_calls_aloud(client):
    """With audio out, the talker leaves the calls out of what it speaks: a forced call is not spoken; an
    answer with words around a call speaks only the words."""
    r = create(client, tool_choice="required", seed=1, modalities=["text", "audio"],
               audio={"voice": "alloy", "format": "wav"})
    choice = r.choices[0]
    check_calls(choice.message.tool_calls)
    spoken = choice.message.audio.transcript if choice.message.audio else ""
    assert "tool_call" not in spoken and "get_" not in spoken and "{" not in spoken, spoken

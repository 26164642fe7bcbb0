"""Pure logic of tool calling: parsing calls out of text, and messages for templates with and
without tool support."""

from __future__ import annotations

import json

from omniserve.api.protocol.tools import Tool, native_messages, parse_calls, plain_messages

TOOLS = [Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})]


def test_parse_calls():
    text = ('Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>{"name": "g"}</tool_call>')
    content, calls = parse_calls(text, TOOLS)
    assert [c["function"]["name"] for c in calls] == ["f"] and json.loads(calls[0]["function"]["arguments"]) == {"a": 1}
    assert content == 'Sure.\n\n<tool_call>{"name": "g"}</tool_call>'  # an unknown function stays text
    assert parse_calls("<tool_call>not json</tool_call>", TOOLS) == ("<tool_call>not json</tool_call>", [])
    assert parse_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>', TOOLS)[0] is None


def test_plain_messages_write_calls_and_results_into_the_turns():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    out = plain_messages(messages, TOOLS)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "f"' in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}
    assert plain_messages(messages[1:2], [])[0] == {"role": "user", "content": "hi"}  # tool_choice none: no prompt


def test_native_messages_give_arguments_as_objects():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    out = native_messages([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}

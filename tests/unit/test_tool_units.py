"""Pure logic of tool calling: parsing calls out of text, and messages for templates with and
without tool support."""

from __future__ import annotations

import json

import pytest

from omniserve.api.protocol.tools import Tool, malformed_call, native_messages, parse_calls, plain_messages
from omniserve.calls import CallFilter
from omniserve.executors.sentence_speech import SentenceSpeaker
from omniserve.runtime.types import OmniOutput, OmniRequest

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


# ---- a call is never spoken: CallFilter, and the voices' text intake ------------------------------------

CALL_TEXT = 'Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call> Done.'


@pytest.mark.parametrize("size", [1, 2, 5, 11, 1000])
def test_call_blocks_are_cut_from_streamed_text_in_any_pieces(size):
    f = CallFilter()
    out = "".join(f.push(CALL_TEXT[i:i + size]) for i in range(0, len(CALL_TEXT), size))
    assert out == "Let me look.  Done." and f.calls == 1


def test_text_comes_out_as_soon_as_it_cannot_start_a_call_and_an_open_call_is_dropped():
    f = CallFilter()
    assert f.push("Hello <") == "Hello "  # "<" may begin a call: held
    assert f.push("b>") == "<b>"  # it did not
    assert f.push(" <tool_c") == " "
    assert f.push('all>{"name": "x"') == ""  # cut short inside the call: nothing of it
    f = CallFilter()
    assert f.push("Sure. <tool_") == "Sure. "  # cut short in its opening tag: not spoken


class Reader(SentenceSpeaker):
    """A voice that 'speaks' a sentence as one sample per character, to see what it was given."""

    sample_rate = 16000

    def _settings(self, params):
        return None

    def _speak(self, text, settings):
        return b"\0\0" * len(text)


def spoken(unspoken_calls: bool) -> str:
    voice = Reader(None)
    voice.add(OmniRequest("r", entry="talker", params={"talker": {"unspoken_calls": unspoken_calls}}))
    said = []
    for i in range(0, len(CALL_TEXT), 7):
        piece = CALL_TEXT[i:i + 7]
        outs = voice.feed([OmniOutput("r", text=piece, finish_reason="stop" if i + 7 >= len(CALL_TEXT) else None)])
        while voice.has_work() or outs:
            said += [o.text for o in outs if o.text]
            outs = voice.step().outputs
    return " ".join(said)


def test_a_voice_leaves_the_calls_in_its_text_unspoken_when_asked():
    assert "tool_call" not in spoken(True) and "Paris" not in spoken(True)
    assert "Let me look." in spoken(True) and "Done." in spoken(True)
    assert "Paris" in spoken(False)  # as before, for an answer that may not hold calls


def test_a_call_block_that_is_no_call_is_found():
    good = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    for text, bad in [(good, None), ("no call here", None),
                      (good + ' <tool_call>{"name": "g"}</tool_call>', '<tool_call>{"name": "g"}</tool_call>'),
                      ('<tool_call>{"name": "f", "argu', '<tool_call>{"name": "f", "argu'),
                      ("<tool_call>not json</tool_call>" + good, "<tool_call>not json</tool_call>")]:
        _, calls = parse_calls(text, TOOLS)
        found = malformed_call(text, calls)
        assert (found[:len(bad)] if found else None) == bad, text


def test_a_call_cut_off_by_the_token_limit_is_not_malformed():
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "f", "arguments": {}}</tool'
    _, calls = parse_calls(text, TOOLS)
    assert len(calls) == 1 and malformed_call(text, calls, cut_short=True) is None
    assert malformed_call(text, calls).startswith("<tool_call>")  # had the answer ended by itself, it would be

"""A realtime conversation's pure logic: items in order, the chat messages they become, and cutting an answer
back to what was heard."""

from __future__ import annotations

import numpy as np
import pytest

from omniserve.api.realtime.conversation import Conversation, SpokenTrack, item_from_spec
from omniserve.api.realtime.events import ContentPart, Item
from omniserve.api.realtime.protocol import ItemSpec, RealtimeError


def user(item_id: str, text: str) -> Item:
    return Item(id=item_id, type="message", role="user", content=[ContentPart(type="input_text", text=text)])


def test_items_go_where_they_are_put():
    c = Conversation()
    assert c.add(user("a", "1")) is None
    assert c.add(user("b", "2")) == "a"
    assert c.add(user("c", "0"), "root") is None
    assert c.add(user("d", "1.5"), "a") == "a"
    assert [i.id for i in c.items] == ["c", "a", "d", "b"]
    with pytest.raises(RealtimeError) as caught:
        c.add(user("a", "again"))
    assert caught.value.param == "item.id"
    with pytest.raises(RealtimeError) as caught:
        c.add(user("e", "x"), "nope", event_id="ev")
    assert caught.value.code == "item_not_found" and caught.value.event_id == "ev"
    c.delete("d")
    assert [i.id for i in c.items] == ["c", "a", "b"]


def test_the_conversation_as_chat_messages():
    c = Conversation()
    c.add(Item(id="s", type="message", role="system", content=[ContentPart(type="input_text", text="Be kind.")]))
    c.add(Item(id="u", type="message", role="user", content=[ContentPart(type="input_audio", transcript="hi there")]),
          audio=np.zeros(1600, np.float32))
    c.add(Item(id="f1", type="function_call", call_id="c1", name="weather", arguments='{"city": "Oslo"}'))
    c.add(Item(id="f2", type="function_call", call_id="c2", name="time", arguments="{}"))
    c.add(Item(id="o1", type="function_call_output", call_id="c1", output="rain"))
    c.add(Item(id="a", type="message", role="assistant", content=[ContentPart(type="output_audio",
                                                                             transcript="It rains.")]))
    c.add(Item(id="silent", type="message", role="user", content=[ContentPart(type="input_audio")]))
    messages = c.chat_messages(c.items, hears_audio=False)
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
        {"role": "assistant", "content": None, "tool_calls": [  # calls in a row are one assistant turn
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "assistant", "content": "It rains."},
    ]  # audio not transcribed (yet) says nothing to a cascade
    heard = c.chat_messages(c.items, hears_audio=True)[1]["content"][0]
    assert heard["type"] == "input_audio" and heard["input_audio"]["format"] == "wav"  # a thinker that hears


def test_an_answer_is_cut_to_what_was_heard():
    track = SpokenTrack()
    track.add(1000, "One two three four.")
    track.add(2000, "Five six seven eight.")
    assert track.ms == 3000
    assert track.heard(3000) == "One two three four. Five six seven eight."
    assert track.heard(1000) == "One two three four."
    assert track.heard(2000) == "One two three four. Five six"  # half of the second piece's time, half its words
    assert track.heard(0) == ""
    c = Conversation()
    c.add(Item(id="a", type="message", role="assistant", content=[ContentPart(type="output_audio",
                                                                             transcript="all of it")]))
    c.spoken["a"] = track
    c.truncate("a", 0, 1500)
    assert c.get("a").content[0].transcript == "One two three four. Five"
    with pytest.raises(RealtimeError) as caught:
        c.truncate("a", 0, 5000)
    assert caught.value.param == "audio_end_ms"
    with pytest.raises(RealtimeError):
        c.truncate("a", 1, 0)  # no such part


def test_client_items_are_checked():
    def decode(audio, param, event_id=None):
        return np.zeros(160, np.float32)

    item, audio = item_from_spec(ItemSpec(type="message", role="user", content=[
        {"type": "input_audio", "audio": "AAAA"}, {"type": "text", "text": "and this"}]), decode)
    assert [p.type for p in item.content] == ["input_audio", "input_text"] and audio is not None
    call, _ = item_from_spec(ItemSpec(type="function_call", name="f"), decode)
    assert call.call_id.startswith("call_") and call.arguments == "{}"
    for spec, param in [(ItemSpec(type="message", role="system", content=[{"type": "input_audio", "audio": "AA"}]),
                         "item.content[0]"),
                        (ItemSpec(type="message", role="user", content=[{"type": "input_image"}]),
                         "item.content[0].image_url"),
                        (ItemSpec(type="function_call"), "item.name")]:
        with pytest.raises(RealtimeError) as caught:
            item_from_spec(spec, decode, "ev")
        assert caught.value.param == param and caught.value.event_id == "ev"

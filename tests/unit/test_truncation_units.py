"""Which of a realtime conversation's oldest items a response leaves out (`api/realtime/truncation.py`)."""

from __future__ import annotations

from omniserve.api.realtime.events import Item
from omniserve.api.realtime.protocol import RetentionRatio
from omniserve.api.realtime.truncation import message_text, oldest_to_drop


def items(*kinds: str) -> list[Item]:
    return [Item(id=f"item_{k}", type=kind) for k, kind in enumerate(kinds)]


def test_nothing_is_dropped_while_it_fits_or_when_truncation_is_off():
    five = items(*["message"] * 5)
    assert oldest_to_drop(five, [10] * 5, 50, "auto") == 0
    assert oldest_to_drop(five, [10] * 5, 20, "disabled") == 0


def test_auto_drops_the_oldest_until_the_rest_fits_and_a_ratio_drops_further():
    five = items(*["message"] * 5)
    assert oldest_to_drop(five, [10] * 5, 45, "auto") == 1
    assert oldest_to_drop(five, [10] * 5, 45, RetentionRatio(type="retention_ratio", retention_ratio=0.5)) == 3
    assert oldest_to_drop(five, [10] * 5, 0, RetentionRatio(type="retention_ratio", retention_ratio=0.0)) == 4


def test_the_last_item_stays_and_no_tool_output_is_left_without_its_call():
    assert oldest_to_drop(items("message", "message"), [100, 100], 10, "auto") == 1
    calls = items("message", "function_call", "function_call_output", "message")
    assert oldest_to_drop(calls, [10, 10, 10, 10], 25, "auto") == 3  # the call went: its output goes too


def test_a_message_is_counted_by_its_words_and_calls():
    assert message_text({"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}) == "hi"
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert message_text(call) == " f {}"

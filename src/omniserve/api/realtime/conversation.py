"""A realtime session's conversation: its items in order, the user's audio behind them, and what the
assistant said aloud (to cut an answer back to what was heard). It becomes the chat messages of the next
response: user audio as its transcript for a cascade (ASR -> thinker), or as audio for a chat model that
hears it natively (an omni thinker)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniserve.api.realtime.events import ContentPart, Item
from omniserve.api.realtime.protocol import ItemSpec, RealtimeError
from omniserve.media.audio import encode_audio
from omniserve.media.pcm import ASR_RATE

ROOT = "root"  # previous_item_id that puts an item first
_USER_PARTS = {"input_text", "input_audio", "input_image"}
_ASSISTANT_PARTS = {"output_text": "output_text", "text": "output_text", "output_audio": "output_audio",
                    "audio": "output_audio"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class SpokenTrack:
    """An assistant answer's audio as it went out: each piece's end (ms) and the words it spoke."""

    pieces: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return self.pieces[-1][0] if self.pieces else 0.0

    def add(self, ms: float, text: str) -> None:
        self.pieces.append((self.ms + ms, text))

    def heard(self, end_ms: float) -> str:
        """The words spoken in the first `end_ms`: whole pieces, and the share of the words of the piece
        that was cut (as far as the audio goes, words take equal time)."""
        said, start = [], 0.0
        for end, text in self.pieces:
            if end <= end_ms:
                said.append(text)
            elif start < end_ms:
                words = text.split()
                said.append(" ".join(words[:int(len(words) * (end_ms - start) / (end - start))]))
            start = end
        return " ".join(t.strip() for t in said if t.strip())


class Conversation:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.user_audio: dict[str, np.ndarray] = {}  # item id -> mono float32 at 16 kHz
        self.spoken: dict[str, SpokenTrack] = {}  # assistant item id -> its audio
        self.token_counts: dict[str, int] = {}  # an item's words -> its tokens to the chat model (see truncation)

    # ---- items ---------------------------------------------------------------------------------------

    def add(self, item: Item, previous_item_id: str | None = None, audio: np.ndarray | None = None,
            event_id: str | None = None) -> str | None:
        """Insert `item` after `previous_item_id` (None: last; "root": first); its predecessor's id."""
        if any(i.id == item.id for i in self.items):
            raise RealtimeError(f"an item with id {item.id!r} is already in the conversation", param="item.id",
                                event_id=event_id)
        if previous_item_id is None:
            at = len(self.items)
        elif previous_item_id == ROOT:
            at = 0
        else:
            at = self._index(previous_item_id, "previous_item_id", event_id) + 1
        self.items.insert(at, item)
        if audio is not None:
            self.user_audio[item.id] = audio
        return self.items[at - 1].id if at else None

    def held_bytes(self) -> int:
        """About what the conversation keeps in memory: its items' text (and image URLs) and the user's audio."""
        return sum(map(self.item_bytes, self.items)) + sum(audio.nbytes for audio in self.user_audio.values())

    @staticmethod
    def item_bytes(item: Item) -> int:
        """An item's text, transcripts, arguments and image URLs, in characters."""
        parts = item.content or []
        return sum(len(value or "") for value in (item.arguments, item.output,
                                                  *(v for p in parts for v in (p.text, p.transcript, p.image_url))))

    def get(self, item_id: str, event_id: str | None = None) -> Item:
        return self.items[self._index(item_id, "item_id", event_id)]

    def delete(self, item_id: str, event_id: str | None = None) -> None:
        del self.items[self._index(item_id, "item_id", event_id)]
        self.user_audio.pop(item_id, None)
        self.spoken.pop(item_id, None)

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int, event_id: str | None = None) -> None:
        """Cut an assistant answer's audio at `audio_end_ms`: its transcript keeps only what was heard."""
        item = self.get(item_id, event_id)
        parts = item.content or []
        if item.role != "assistant" or content_index >= len(parts) or parts[content_index].type != "output_audio":
            raise RealtimeError(f"conversation.item.truncate: item {item_id!r} has no assistant audio at "
                                f"content_index {content_index}", param="content_index", event_id=event_id)
        track = self.spoken.get(item_id, SpokenTrack())
        if audio_end_ms > track.ms + 1:
            raise RealtimeError(f"conversation.item.truncate: audio_end_ms {audio_end_ms} is past the end of the "
                                f"audio ({round(track.ms)} ms)", param="audio_end_ms", event_id=event_id)
        parts[content_index].transcript = track.heard(audio_end_ms)
        self.spoken[item_id] = SpokenTrack([p for p in track.pieces if p[0] <= audio_end_ms])

    def _index(self, item_id: str, param: str, event_id: str | None) -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise RealtimeError(f"{param}: there is no item {item_id!r} in the conversation", code="item_not_found",
                            param=param, event_id=event_id)

    # ---- as chat messages ----------------------------------------------------------------------------

    def chat_messages(self, items: list[Item], hears_audio: bool) -> list[dict[str, Any]]:
        """`items` as OpenAI chat messages. `hears_audio`: user audio goes in as audio, not its transcript."""
        messages: list[dict[str, Any]] = []
        for item in items:
            if item.type == "function_call":
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments or "{}"}}
                last = messages[-1] if messages else None
                if last and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif item.type == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output or ""})
            elif item.role == "assistant":
                text = " ".join((p.text if p.type == "output_text" else p.transcript) or "" for p in item.content or [])
                if text.strip():
                    messages.append({"role": "assistant", "content": text.strip()})
            else:
                parts = [part for p in item.content or [] if (part := self._user_part(item, p, hears_audio))]
                if parts:
                    messages.append({"role": item.role, "content": parts})
        return messages

    def _user_part(self, item: Item, part: ContentPart, hears_audio: bool) -> dict[str, Any] | None:
        if part.type == "input_text":
            return {"type": "text", "text": part.text or ""}
        if part.type == "input_image":
            return {"type": "image_url", "image_url": {"url": part.image_url}}
        audio = self.user_audio.get(item.id)
        if hears_audio and audio is not None:
            pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
            return {"type": "input_audio", "input_audio": {"data": base64.b64encode(
                encode_audio(pcm, ASR_RATE, "wav")).decode(), "format": "wav"}}
        return {"type": "text", "text": part.transcript} if part.transcript else None


def item_from_spec(spec: ItemSpec, decode_audio: Any, event_id: str | None = None) -> tuple[Item, np.ndarray | None]:
    """A client's item, checked, and the user audio it carries (decoded by `decode_audio`)."""
    def bad(message: str, param: str) -> RealtimeError:
        return RealtimeError(f"conversation.item.create: {message}", param=param, event_id=event_id)

    item_id = spec.id or new_id("item")
    if spec.type == "function_call":
        if not spec.name:
            raise bad("a function_call item needs `name`", "item.name")
        return Item(id=item_id, type="function_call", call_id=spec.call_id or new_id("call"), name=spec.name,
                    arguments=spec.arguments or "{}"), None
    if spec.type == "function_call_output":
        if not spec.call_id or spec.output is None:
            raise bad("a function_call_output item needs `call_id` and `output`", "item.call_id")
        return Item(id=item_id, type="function_call_output", call_id=spec.call_id, output=spec.output), None
    if spec.role is None or not spec.content:
        raise bad("a message item needs `role` and `content`", "item.content")
    parts, audio = [], None
    for k, c in enumerate(spec.content):
        where = f"item.content[{k}]"
        if spec.role == "assistant":
            if c.type not in _ASSISTANT_PARTS:
                raise bad(f"an assistant message holds output_text or output_audio parts, not {c.type}", where)
            kind = _ASSISTANT_PARTS[c.type]
            parts.append(ContentPart(type=kind, text=c.text or "") if kind == "output_text"
                         else ContentPart(type=kind, transcript=c.transcript or ""))
            continue
        kind = "input_text" if c.type == "text" else c.type
        if kind not in _USER_PARTS or (spec.role == "system" and kind != "input_text"):
            allowed = "input_text" if spec.role == "system" else "input_text, input_audio or input_image"
            raise bad(f"a {spec.role} message holds {allowed} parts, not {c.type}", where)
        if kind == "input_text":
            parts.append(ContentPart(type=kind, text=c.text or ""))
        elif kind == "input_image":
            if not c.image_url:
                raise bad("an input_image part needs `image_url` (a data URL)", f"{where}.image_url")
            parts.append(ContentPart(type=kind, image_url=c.image_url))
        else:
            if audio is not None:
                raise bad("a message holds one input_audio part", where)
            if not c.audio and not c.transcript:
                raise bad("an input_audio part needs `audio` (base64 in the session's input format)",
                          f"{where}.audio")
            audio = decode_audio(c.audio, f"{where}.audio", event_id) if c.audio else None
            parts.append(ContentPart(type=kind, transcript=c.transcript))
    return Item(id=item_id, type="message", role=spec.role, content=parts), audio

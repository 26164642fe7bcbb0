"""A conversation that outgrows the chat model's context, as the Realtime API's `truncation` setting says.

Before a response, the conversation's items are counted in the chat model's own tokens (each item once; the
thinker counts them between its steps; audio that the chat model hears itself counts 25 tokens a second) and
set against what the context leaves: its length, less the answer's room (`max_output_tokens`, or a quarter of
the context when that is "inf"), the instructions and the tools. `token_limits.post_instructions` may set a
lower limit. Past it, `auto` drops the oldest items until the rest fits, and `retention_ratio` until the rest
holds that share of the limit, so that the next truncations (and the prefix cache's misses they cause) come
less often. `disabled` drops nothing: the response then fails with `context_length_exceeded`. The last item is
never dropped, nor is a tool's output left without its call."""

from __future__ import annotations

import json
from typing import Any

from omniserve.api.realtime.conversation import Conversation
from omniserve.api.realtime.events import Item
from omniserve.api.realtime.protocol import RetentionRatio, ToolSpec, Truncation
from omniserve.errors import OmniError
from omniserve.media.pcm import ASR_RATE
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.messages import CountTokens

PER_MESSAGE = 8  # the chat template's tokens around one message (role markers), at most, in the families served
AUDIO_TOKENS_PER_S = 25  # what a second of audio is to a chat model that hears it (Qwen-Omni: 25, or fewer)
PER_TOOLS = 64  # and around the tool definitions
MARGIN = 16


def message_text(message: dict[str, Any]) -> str:
    """What a chat message says, in words (its parts' text, its calls' names and arguments)."""
    content = message.get("content")
    parts = [p.get("text") or "" for p in content if p.get("type") == "text"] if isinstance(content, list) \
        else [content or ""]
    for call in message.get("tool_calls") or []:
        parts += [call["function"]["name"], call["function"]["arguments"]]
    return " ".join(parts)


def oldest_to_drop(items: list[Item], tokens: list[int], limit: int, truncation: Truncation) -> int:
    """How many of the oldest `items` (each `tokens` long) to drop so that the rest fits `limit`."""
    if truncation == "disabled" or sum(tokens) <= limit:
        return 0
    target = limit * (truncation.retention_ratio if isinstance(truncation, RetentionRatio) else 1.0)
    drop, total = 0, sum(tokens)
    while drop < len(items) - 1 and (total > target or items[drop].type == "function_call_output"):
        total -= tokens[drop]
        drop += 1
    return drop


class ContextFit:
    """Counts a conversation's items in the chat model's tokens, and says which to drop."""

    def __init__(self, client: Client, chat: ServedModel, conversation: Conversation, hears_audio: bool):
        self._client, self._chat = client, chat
        self._conversation = conversation
        self._hears_audio = hears_audio

    async def to_drop(self, items: list[Item], instructions: str, tools: list[ToolSpec], max_output_tokens: int | str,
                      truncation: Truncation) -> int:
        """How many of the oldest `items` the response must leave out (0: all fit, or truncation is off)."""
        context = self._chat.facts.context_length
        if truncation == "disabled" or not context or not items:
            return 0
        conversation = self._conversation
        texts = [" ".join(message_text(m) for m in conversation.chat_messages([item], False)) for item in items]
        tool_text = json.dumps([t.model_dump(exclude_none=True) for t in tools]) if tools else ""
        counts = await self._counts([instructions, tool_text, *texts])
        room = max_output_tokens if isinstance(max_output_tokens, int) else context // 4
        limit = context - room - counts[0] - PER_MESSAGE - MARGIN - (counts[1] + PER_TOOLS if tools else 0)
        if isinstance(truncation, RetentionRatio) and truncation.token_limits and \
                truncation.token_limits.post_instructions is not None:
            limit = min(limit, truncation.token_limits.post_instructions)
        heard = [self._audio_tokens(item) for item in items]
        tokens = [n + PER_MESSAGE + audio if text or audio else 0
                  for n, text, audio in zip(counts[2:], texts, heard, strict=True)]
        return oldest_to_drop(items, tokens, max(0, limit), truncation)

    def _audio_tokens(self, item: Item) -> int:
        """A user item's audio, to a chat model that hears it (one that reads transcripts reads its text)."""
        audio = self._conversation.user_audio.get(item.id) if self._hears_audio else None
        return 0 if audio is None else round(len(audio) / ASR_RATE * AUDIO_TOKENS_PER_S)

    async def _counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens, from the cache or the chat model (an estimate where it cannot count)."""
        cache = self._conversation.token_counts
        missing = list(dict.fromkeys(t for t in texts if t and t not in cache))
        if missing:
            try:
                counted = await self._client.control(self._chat.stage, CountTokens(missing))
            except OmniError:  # a chat model that does not count: about 3 characters a token, on the safe side
                counted = [len(t) // 3 + 1 for t in missing]
            cache.update(zip(missing, counted, strict=True))
        counts = [cache[t] if t else 0 for t in texts]
        self._conversation.token_counts = {t: cache[t] for t in texts if t}  # what the items say now
        return counts

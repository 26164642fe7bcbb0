"""Prompts moved out of the KV cache into host memory, as llama-server's `--cache-ram` keeps them.

A slot keeps its last prompt's KV, but a new sequence takes the lowest free slot (so that the running
ones stay consecutive), and its prompt overwrites what that slot kept. Before it does, the kept tokens'
KV (llama.cpp's state of that one sequence: its used cells only) moves here, and a later prompt that
starts the same way brings it back instead of decoding it again: four prompts asked in turn by one
client would otherwise each overwrite the last one's cache. Pure Python: the state is opaque bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(eq=False)
class StoredPrompt:
    """The KV of `tokens` (decoded with `adapter`), as llama.cpp saved it."""

    adapter: str | None
    tokens: list[int]
    state: bytearray


class PromptStore:
    """Stored prompts up to `limit_bytes`, the oldest dropped first when it is full."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._entries: list[StoredPrompt] = []  # oldest first

    def __iter__(self) -> Iterator[StoredPrompt]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return sum(len(e.state) for e in self._entries)

    def holds(self, adapter: str | None, tokens: list[int]) -> bool:
        """Whether an entry already keeps these tokens (as all or the start of its own)."""
        return any(e.adapter == adapter and e.tokens[:len(tokens)] == tokens for e in self._entries)

    def put(self, entry: StoredPrompt) -> None:
        """Keep `entry`, dropping the entries it holds, then the oldest ones while over the limit."""
        if len(entry.state) > self.limit_bytes:
            return
        n = len(entry.tokens)
        self._entries = [e for e in self._entries
                         if not (e.adapter == entry.adapter and entry.tokens[:len(e.tokens)] == e.tokens
                                 and len(e.tokens) <= n)]
        self._entries.append(entry)
        while self.size > self.limit_bytes:
            self._entries.pop(0)

    def remove(self, entry: StoredPrompt) -> None:
        """Drop an entry (gone already if it was the oldest when the store made room)."""
        if entry in self._entries:
            self._entries.remove(entry)

    def forget_adapter(self, adapter: str) -> None:
        """Drop the prompts decoded with an adapter being unloaded."""
        self._entries = [e for e in self._entries if e.adapter != adapter]

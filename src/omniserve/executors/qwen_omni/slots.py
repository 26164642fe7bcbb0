"""Every running sequence's attention cache laid out once, in a row of its own (as the GGUF path keeps a KV
stream per slot): keys and values of each layer are one tensor of (rows, KV heads, capacity, head size).

A decode step writes each sequence's new token at its own position, in place, and attends over the rows of the
batch up to the longest, the positions past each row's length masked out. The running sequences keep rows 0..n-1
(one that ends gives its row to the last: `move`), so the batch is a view of the first rows and a step copies no
cache. Stacking and splitting the sequences' own caches, as before, copied every cached token twice a step.
Rows and capacity grow by doubling, so a long answer moves its cache a few times, not at every token.

Imports torch and transformers (the Qwen-Omni extra): only the executors that run such a checkpoint load it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

MIN_CAPACITY = 256  # tokens a row holds at first


class SlotKV:
    """The keys and values of every layer, a row per running sequence. A sequence (`holder`) knows its `row`."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.holders: list[Any] = []  # who holds rows 0..n-1

    def take(self, holder: Any) -> None:
        """The next row for a sequence starting (its prompt goes there: `cache([holder.row], [0])`)."""
        holder.row = len(self.holders)
        self.holders.append(holder)

    def keep(self, running: Callable[[Any], bool], cached: Callable[[Any], int]) -> None:
        """The rows of the holders no longer `running` go to the last ones, so the running keep rows 0..n-1.
        `cached(holder)`: the tokens its row holds (call it between passes, when that is all of them)."""
        for gone in [h for h in self.holders if not running(h)]:
            last = self.holders.pop()
            if last is not gone:
                self.move(last.row, gone.row, cached(last))
                last.row = gone.row
                self.holders[gone.row] = last
            gone.row = -1
        if not self.holders:  # idle: the memory goes back; the next requests get rows of the size they need
            self.keys, self.values = [None] * len(self.keys), [None] * len(self.values)

    def clear(self) -> None:
        self.keep(lambda _: False, lambda _: 0)

    def cache(self, rows: list[int], lengths: list[int]) -> Cache:
        """A cache for one forward pass over `rows`, each holding `lengths` tokens so far: the pass writes its
        tokens after them. Several rows decode one token each; one row may take a prompt."""
        where = _Where(rows, lengths)
        return Cache(layers=[_SlotLayer(self, index, where) for index in range(len(self.keys))])

    def mask(self, lengths: list[int], device) -> torch.Tensor:
        """The attention mask of a decode step over rows holding `lengths` tokens: each row's own and the new one."""
        span = torch.arange(max(lengths) + 1, device=device)
        return (span[None, :] <= torch.tensor(lengths, device=device)[:, None]).long()

    def move(self, source: int, row: int, length: int) -> None:
        """Row `source`'s first `length` tokens into `row` (a freed row takes the last one, so rows stay 0..n-1)."""
        for keys, values in zip(self.keys, self.values, strict=True):
            # (a layer may be short of the row: a prompt that failed while the layers grew never ran there)
            if keys is not None and length > 0 and source < keys.shape[0]:
                keys[row, :, :length] = keys[source, :, :length]
                values[row, :, :length] = values[source, :, :length]

    def grow(self, index: int, like: torch.Tensor, like_values: torch.Tensor, rows: int, length: int) -> None:
        """Make layer `index` hold at least `rows` rows of `length` tokens (doubling), keeping what it holds."""
        keys, values = self.keys[index], self.values[index]
        have_rows, have_len = (0, 0) if keys is None else (keys.shape[0], keys.shape[2])
        if rows <= have_rows and length <= have_len:
            return
        new_rows, new_len = max(have_rows, 1), max(have_len, MIN_CAPACITY)
        while new_rows < rows:
            new_rows *= 2
        while new_len < length:
            new_len *= 2
        heads = like.shape[1]
        grown_keys = like.new_zeros((new_rows, heads, new_len, like.shape[-1]))
        grown_values = like_values.new_zeros((new_rows, heads, new_len, like_values.shape[-1]))
        if keys is not None:
            grown_keys[:have_rows, :, :have_len] = keys
            grown_values[:have_rows, :, :have_len] = values
        self.keys[index], self.values[index] = grown_keys, grown_values


class _Where:
    """Where one forward pass writes: its rows and their lengths, as index tensors made once for all layers."""

    def __init__(self, rows: list[int], lengths: list[int]):
        self.rows, self.lengths = rows, lengths
        first = rows[0]
        self.consecutive = rows == list(range(first, first + len(rows)))
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tensors is None:
            self._tensors = (torch.tensor(self.rows, device=device), torch.tensor(self.lengths, device=device))
        return self._tensors


class _SlotLayer(CacheLayerMixin):
    """One layer's part of one forward pass (transformers' cache layer interface)."""

    is_sliding = False

    def __init__(self, slots: SlotKV, index: int, where: _Where):
        super().__init__()
        self.slots, self.index, self.where = slots, index, where
        self.rows, self.lengths = where.rows, where.lengths
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        batch, _, new, _ = key_states.shape
        rows, lengths = self.rows, self.lengths
        end = max(lengths) + new
        self.slots.grow(self.index, key_states, value_states, max(rows) + 1, end)
        keys, values = self.slots.keys[self.index], self.slots.values[self.index]
        if new > 1:  # a prompt: one row
            row, start = rows[0], lengths[0]
            keys[row, :, start:end] = key_states[0]
            values[row, :, start:end] = value_states[0]
            return keys[row:row + 1, :, :end], values[row:row + 1, :, :end]
        at, where = self.where.tensors(keys.device)
        keys[at, :, where] = key_states[:, :, 0]
        values[at, :, where] = value_states[:, :, 0]
        if self.where.consecutive:  # a view, no copy
            first = rows[0]
            return keys[first:first + batch, :, :end], values[first:first + batch, :, :end]
        return keys[at, :, :end], values[at, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return max(self.lengths) + query_length, 0

    def get_seq_length(self) -> int:
        return max(self.lengths)

    def get_max_length(self) -> int:
        return -1

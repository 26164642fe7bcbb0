"""Which tokens each step decodes, and where their KV lives: pure Python, no llama.cpp.

The KV cache is one stream of `context_length` cells per slot (as llama-server
runs it), so each sequence's attention reads its own cells only; in one
unified pool it read every cell in use, every other sequence's and every kept
prompt's too, and a step cost grew with all of them. llama.cpp cuts a batch
over several streams into ubatches of consecutive sequence ids: a step puts
its tokens in slot order, and new sequences take the lowest free slot, so the
running ones stay consecutive and a step is one or two ubatches.

A step (`schedule`) holds one decode token for each generating sequence, so
every stream moves, and prompt chunks of the oldest sequences still in
prefill, up to `n_batch` tokens in all. How many prompts one step takes is a
policy (`max_prefill_sequences`): on a CPU a step costs in proportion to its
tokens, so prompts taken one at a time, in order, give the earliest first
tokens (the first gets its answer after one prompt's work, not after all of
them) while the running streams keep moving in between; a GPU has room to
take several at once. A prompt with only a few tokens left to decode (most of
it found in the prefix cache: `short_prefill_tokens`) costs little, and joins
the step whatever the policy. A prompt's media embeddings (an image, a window of audio)
go in a decode of their own, one block per step. With M-RoPE (Qwen2-VL family, Qwen2.5-Omni) an
image's rows sit on its grid and take max(rows, columns) positions, so a token's position is
its index in the prompt plus the sequence's `shift`, which each such block moves.

Prefix caching: a slot keeps its prompt's KV when its sequence ends. A new
sequence starts past the longest prefix of its prompt already computed, kept
by the slot it takes, or by another slot (free, or running the same system
prompt), or moved to host memory (`prompt_store.py`), and decodes only the
rest, so a long system prompt is computed once. What the slot it takes kept
and it does not reuse moves to host memory first, so prompts that come back
in turn find their KV again, as llama-server's prompt cache does.

LoRA adapters apply to a whole context, so a step decodes the sequences of
one adapter (or of none): steps take turns between the adapters that have
work, and the prefix cache only matches prompts decoded with the same adapter.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from omniserve.executors.llamacpp.prompt_store import PromptStore, StoredPrompt
from omniserve.executors.llamacpp.runtime import Batch


class KvCache(Protocol):
    """What the scheduler asks of the model runtime (`LlamaRuntime`, or a fake in tests)."""

    def trim_slot(self, slot: int, keep: int) -> None: ...

    def save_slot(self, slot: int) -> bytearray: ...

    def load_slot(self, slot: int, state: bytearray) -> bool: ...

    def use_adapter(self, name: str | None) -> None: ...


class SeqState(enum.Enum):
    WAITING = "waiting"  # admitted, waiting for a free slot
    RUNNING = "running"  # holds a slot: in prefill, or generating
    DONE = "done"  # finished, aborted or failed: its slot is released


@dataclass
class MediaBlock:
    """A media item's encoder output in a prompt (an image's, or a window of audio): rows of input
    embeddings, decoded together when not causal."""

    rows: np.ndarray
    causal: bool
    positions: np.ndarray | None = None  # M-RoPE: (4, rows) offsets from the block's first position
    span: int = 0  # positions it takes (M-RoPE: an image's max(rows, columns)); 0: one per row

    def __post_init__(self):
        self.span = self.span or len(self.rows)


@dataclass(eq=False)
class Sequence:
    """One choice of one request, as the scheduler sees it."""

    request_id: str
    index: int
    prompt: list[int]  # -1 at image embedding positions
    lora: str | None = None  # the adapter it is decoded with
    score_prompt: bool = False  # every prompt token's logits wanted (prompt logprobs): no prefix is reused
    blocks: dict[int, MediaBlock] = field(default_factory=dict)  # start position -> image block
    state: SeqState = SeqState.WAITING
    slot: int = -1
    n_past: int = 0  # tokens in its KV stream
    shift: int = 0  # its position minus its index (M-RoPE: an image takes fewer positions than rows)
    cached: int = 0  # prompt tokens whose KV came from the prefix cache
    next_token: int | None = None  # sampled, not yet decoded
    answer: list[int] = field(default_factory=list)  # answer tokens decoded into its KV stream
    batch_pos: int = -1  # where its logits sit in the last decode (-1: none to sample)

    def position(self, index: int) -> int:
        """Where prompt or answer token `index` sits, from `n_past` on."""
        return index + self.shift

    def block_at_next(self) -> tuple[int, MediaBlock] | None:
        """The image block its next position falls in, if any."""
        return next(((s, b) for s, b in self.blocks.items() if s <= self.n_past < s + len(b.rows)), None)

    def reusable(self) -> int:
        """How many of its prompt tokens have their KV in its slot (up to the first image)."""
        n = min(self.n_past, len(self.prompt))
        return min(n, self.prompt.index(-1)) if -1 in self.prompt[:n] else n

    def kept_tokens(self) -> list[int]:
        """The tokens whose KV its slot holds, as a later prompt can match them: the prompt (up to its first
        image), then the answer so far. A conversation's next prompt holds this one and its answer."""
        n = self.reusable()
        return self.prompt[:n] if n < len(self.prompt) else self.prompt + self.answer


@dataclass
class Chunk:
    """Prompt tokens `start`.. of a sequence in this step's batch, from batch index `first`."""

    seq: Sequence
    start: int
    count: int
    first: int


@dataclass
class EmbeddingChunk:
    """Rows of a media block decoded after the step's batch (`last`: they end the prompt)."""

    seq: Sequence
    rows: np.ndarray
    positions: np.ndarray  # (1 or 4, rows): each row's position, or its M-RoPE sections
    causal: bool
    last: bool
    ends_block: int = 0  # when the rows end their block, how far it moves the positions after it


@dataclass
class StepPlan:
    batch: Batch
    decoding: list[Sequence]  # one token each
    chunks: list[Chunk]  # prompt chunks
    embedding: EmbeddingChunk | None = None

    @property
    def sequences(self) -> list[Sequence]:
        """The sequences in `batch`."""
        return self.decoding + [c.seq for c in self.chunks]


class Scheduler:
    def __init__(self, kv: KvCache, slots: int, n_batch: int, prefix_cache: bool = True,
                 prefix_cache_min_tokens: int = 16, max_prefill_sequences: int = 1, short_prefill_tokens: int = 16,
                 prompt_store_bytes: int = 0):
        self.kv = kv
        self.n_batch = n_batch
        self.max_prefill_sequences = max_prefill_sequences  # prompts (or image blocks) one step advances
        self.short_prefill_tokens = short_prefill_tokens  # a prompt with no more left joins any step
        self.prefix_cache = prefix_cache
        # shorter shared prefixes are decoded again unless the slot a sequence takes anyway keeps them
        self.prefix_cache_min_tokens = prefix_cache_min_tokens
        self.store = PromptStore(prompt_store_bytes if prefix_cache else 0)  # what slots kept, in host memory
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.free_slots: list[int] = list(range(slots - 1, -1, -1))
        self.kept: dict[int, tuple[str | None, list[int]]] = {}  # free slot -> (adapter, prompt tokens kept)
        self._turn = 0  # which adapter group decodes next, when several have work

    # ---- admission and release -------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.admit()

    def admit(self) -> None:
        """Waiting sequences take the free slots: first those whose request runs the fewest sequences, in
        order among equals, so that a request with many choices does not hold up a single one behind them."""
        while self.waiting and self.free_slots:
            running = Counter(s.request_id for s in self.running)
            seq = min(self.waiting, key=lambda s: running[s.request_id])  # the first of the fewest
            self.waiting.remove(seq)
            self._place(seq)
            seq.state = SeqState.RUNNING
            self.running.append(seq)

    def release(self, seq: Sequence) -> None:
        """The one way out, for a finished, aborted or failed sequence: its slot keeps the KV of its
        prompt and answer for the prefix cache."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            kept = seq.kept_tokens() if self.prefix_cache else []
            self.kv.trim_slot(seq.slot, len(kept))
            if kept:
                self.kept[seq.slot] = (seq.lora, kept)
            self.free_slots.append(seq.slot)
        elif seq.state is SeqState.WAITING and seq in self.waiting:  # (not if placing it failed)
            self.waiting.remove(seq)
        seq.state = SeqState.DONE

    def adapter_users(self, name: str) -> int:
        return sum(s.lora == name for s in [*self.running, *self.waiting])

    def forget_adapter(self, name: str) -> None:
        """Drop the prompts kept for an adapter being unloaded."""
        for slot in [s for s, (lora, _) in self.kept.items() if lora == name]:
            self.kv.trim_slot(slot, 0)
            del self.kept[slot]
        self.store.forget_adapter(name)

    def has_work(self) -> bool:
        return bool(self.running)

    # ---- the step: schedule -> (the executor runs it) -> advance ---------------------------

    def schedule(self) -> StepPlan:
        """This step's batch: a decode token for each generating sequence of the adapter whose turn
        it is, and prompt chunks of those in prefill, oldest first, in slot order."""
        group = self._adapter_group()
        decoding = [seq for seq in group if seq.next_token is not None]
        budget = self.n_batch - len(decoding)
        prefill: list[tuple[Sequence, int]] = []
        embedding = None
        started = 0
        for seq in group:
            seq.batch_pos = -1
            if seq.next_token is not None or budget <= 0:
                continue
            block = seq.block_at_next()
            if block is not None:
                if embedding is None and started < self.max_prefill_sequences:  # one block: a decode of its own
                    embedding = self._embedding_chunk(seq, *block)
                    started += 1
                continue
            end = min((s for s in seq.blocks if s > seq.n_past), default=len(seq.prompt))
            if end - seq.n_past > self.short_prefill_tokens:
                if started >= self.max_prefill_sequences:
                    continue
                started += 1
            take = min(end - seq.n_past, budget)
            prefill.append((seq, take))
            budget -= take
        takes = dict(prefill)
        batch, chunks = Batch(), []
        for seq in sorted(decoding + [s for s, _ in prefill], key=lambda s: s.slot):
            if seq.next_token is not None:
                seq.batch_pos = len(batch)
                batch.add(seq.next_token, seq.position(seq.n_past), seq.slot, True)
                continue
            chunks.append(Chunk(seq, seq.n_past, takes[seq], len(batch)))
            for pos in range(seq.n_past, seq.n_past + takes[seq]):
                last = pos == len(seq.prompt) - 1
                if last:
                    seq.batch_pos = len(batch)
                batch.add(seq.prompt[pos], seq.position(pos), seq.slot, last or seq.score_prompt)
        return StepPlan(batch, decoding, chunks, embedding)

    def advance(self, plan: StepPlan) -> None:
        """The batch was decoded: its tokens are in the KV cache."""
        for seq in plan.decoding:
            seq.n_past += 1
            seq.answer.append(seq.next_token)
            seq.next_token = None
        for chunk in plan.chunks:
            chunk.seq.n_past += chunk.count

    def advance_embeddings(self, chunk: EmbeddingChunk) -> None:
        """An embedding chunk was decoded; if it ends the prompt, the sequence's logits are ready."""
        chunk.seq.n_past += len(chunk.rows)
        chunk.seq.shift += chunk.ends_block
        chunk.seq.batch_pos = len(chunk.rows) - 1 if chunk.last else -1

    def _embedding_chunk(self, seq: Sequence, start: int, block: MediaBlock) -> EmbeddingChunk:
        offset = seq.n_past - start
        take = min(len(block.rows) - offset, self.n_batch)
        first = seq.position(start)
        positions = (block.positions[:, offset:offset + take] + first if block.positions is not None
                     else np.arange(first + offset, first + offset + take, dtype=np.int32)[None])
        ends = block.span - len(block.rows) if offset + take == len(block.rows) else 0
        return EmbeddingChunk(seq, block.rows[offset:offset + take], positions, block.causal,
                              seq.n_past + take == len(seq.prompt), ends)

    def _adapter_group(self) -> list[Sequence]:
        """The running sequences this step decodes: those of one adapter (None: the base model),
        the adapters taking turns, and that adapter set on the context."""
        adapters = list(dict.fromkeys(seq.lora for seq in self.running))
        if not adapters:
            return []
        if len(adapters) == 1:
            chosen = adapters[0]
        else:
            self._turn = (self._turn + 1) % len(adapters)
            chosen = adapters[self._turn]
        self.kv.use_adapter(chosen)
        return [seq for seq in self.running if seq.lora == chosen]

    # ---- the prefix cache ------------------------------------------------------------

    def _place(self, seq: Sequence) -> None:
        """Give `seq` the lowest free slot (the running ones stay consecutive: see `schedule`), starting it
        past the longest prompt prefix already computed: kept by that slot, or brought in from another
        slot (free or running) or the prompt store, when it is at least `prefix_cache_min_tokens` long.
        What the slot kept and the new prompt does not reuse moves to the prompt store first."""
        slot = min(self.free_slots)
        self.free_slots.remove(slot)
        seq.slot = slot
        lora, kept = self.kept.pop(slot, (None, []))
        reuse = self.prefix_cache and not seq.score_prompt  # (a prompt's logprobs need its every token decoded)
        match = self._match(seq, kept) if reuse and lora == seq.lora else 0
        source: int | StoredPrompt | None = None  # where the prefix comes from, if not this slot
        if reuse:
            sources: list[tuple[int | StoredPrompt, list[int]]] = [
                (s, k) for s, (lo, k) in self.kept.items() if lo == seq.lora]
            sources += [(r.slot, r.prompt[:r.reusable()]) for r in self.running if r.lora == seq.lora]
            sources += [(e, e.tokens) for e in self.store if e.adapter == seq.lora]
            for src, tokens in sources:
                m = self._match(seq, tokens)
                if m > match and m >= self.prefix_cache_min_tokens:
                    match, source = m, src
        if len(kept) > match or (kept and source is not None):  # what it kept, and will not keep
            self._store(slot, lora, kept)
        if source is None:
            self.kv.trim_slot(slot, match)
        else:  # (a stored prompt that the new one holds whole moves back; one it shares a prefix with stays)
            state = source.state if isinstance(source, StoredPrompt) else self.kv.save_slot(source)
            if not self.kv.load_slot(slot, state):
                match = 0
            self.kv.trim_slot(slot, match)
            if isinstance(source, StoredPrompt) and match == len(source.tokens):
                self.store.remove(source)
        seq.n_past = seq.cached = match

    @staticmethod
    def _match(seq: Sequence, tokens: list[int]) -> int:
        """How many of `seq`'s prompt tokens `tokens` hold. The last is always decoded (its logits start the
        answer), and image embeddings are not matched."""
        limit = len(seq.prompt) - 1
        if -1 in seq.prompt:
            limit = min(limit, seq.prompt.index(-1))
        return min(common_prefix(tokens, seq.prompt), limit)

    def _store(self, slot: int, lora: str | None, kept: list[int]) -> None:
        """Move a slot's kept tokens into the prompt store, unless it holds them already."""
        if self.store.limit_bytes and not self.store.holds(lora, kept):
            state = self.kv.save_slot(slot)
            if state:
                self.store.put(StoredPrompt(lora, list(kept), state))


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n

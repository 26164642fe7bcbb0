"""The LLM scheduler, driven with a fake KV cache that checks what llama.cpp would: each token goes
at the next position of its slot's stream, and the streams hold exactly the tokens decoded or copied
into them. No model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from omniserve.executors.llamacpp.scheduler import MediaBlock, Scheduler, SeqState, Sequence, StepPlan


class FakeKv:
    def __init__(self, slots: int):
        self.streams: dict[int, list[int]] = {s: [] for s in range(slots)}
        self.adapter: str | None = None
        self.saved: list[int] = []  # the slots whose KV was saved (to be copied, or stored)

    def trim_slot(self, slot: int, keep: int) -> None:
        del self.streams[slot][keep:]

    def save_slot(self, slot: int) -> bytearray:
        self.saved.append(slot)
        return bytearray(np.array(self.streams[slot], np.int64).tobytes())

    def load_slot(self, slot: int, state: bytearray) -> bool:
        self.streams[slot] = [int(t) for t in np.frombuffer(state, np.int64)]
        return True

    def use_adapter(self, name: str | None) -> None:
        self.adapter = name

    def decode(self, plan: StepPlan) -> None:
        b = plan.batch
        assert b.slots == sorted(b.slots), "a batch's tokens go in slot order"
        for token, pos, slot in zip(b.tokens, b.positions, b.slots, strict=True):
            assert pos == len(self.streams[slot]), f"slot {slot}: position {pos} after {len(self.streams[slot])}"
            self.streams[slot].append(token)


def seq(rid: str, prompt: list[int], **kw) -> Sequence:
    return Sequence(rid, 0, prompt, **kw)


def step(s: Scheduler, kv: FakeKv, answers: dict[str, int] | None = None) -> StepPlan:
    """One step: decode, then 'sample' each ready sequence (token 900+n), releasing it after
    `answers[request_id]` tokens (default 3)."""
    plan = s.schedule()
    kv.decode(plan)
    s.advance(plan)
    for q in plan.sequences:
        if q.batch_pos >= 0:
            made = getattr(q, "made", 0) + 1
            q.made = made
            if made >= (answers or {}).get(q.request_id, 3):
                s.release(q)
            else:
                q.next_token = 900 + made
    s.admit()
    return plan


def finished(s: Scheduler, kv: FakeKv, prompt: list[int]) -> Sequence:
    """A sequence run to its end: its slot keeps its prompt."""
    q = seq("done", prompt)
    s.add(q)
    while q.state is not SeqState.DONE:
        step(s, kv)
    return q


def test_prompts_that_arrive_together_start_one_per_step_in_order():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=64, short_prefill_tokens=4)
    seqs = [seq(f"r{i}", list(range(10 * i, 10 * i + 5))) for i in range(3)]
    for q in seqs:
        s.add(q)
    sizes, first_tokens = [], []
    for _ in range(3):
        sizes.append(len(step(s, kv).batch))
        first_tokens.append([q.request_id for q in seqs if q.n_past >= len(q.prompt)])
    assert sizes == [5, 1 + 5, 2 + 5]  # the first prompt answers after its own work alone
    assert first_tokens == [["r0"], ["r0", "r1"], ["r0", "r1", "r2"]]


def test_prompts_with_few_tokens_left_join_any_step():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=512, prefix_cache_min_tokens=4, short_prefill_tokens=2)
    system = list(range(1, 30))
    first = finished(s, kv, system + [40])
    assert s.kept[first.slot][1] == first.prompt + [901, 902]  # its prompt and the answer decoded
    cold = seq("cold", list(range(100, 110)))
    warm = [seq(f"warm{i}", system + [50 + i]) for i in range(2)]  # one token left each, after the copy
    for q in (*warm, cold):
        s.add(q)
    assert [q.cached for q in warm] == [29, 29]
    plan = step(s, kv)
    assert {c.seq.request_id for c in plan.chunks} == {"cold", "warm0", "warm1"}  # the cold prompt and both warm
    assert all(q.next_token is not None for q in (cold, *warm))


def test_a_conversation_s_next_turn_reuses_the_last_prompt_and_its_answer():
    kv = FakeKv(2)
    s = Scheduler(kv, slots=2, n_batch=512, prefix_cache_min_tokens=4)
    turn = finished(s, kv, list(range(1, 20)))
    assert turn.answer == [901, 902]  # the last token sampled was never decoded
    following = seq("following", [*turn.prompt, 901, 902, 7, 8, 9])  # its answer, then the user's next words
    s.add(following)
    assert following.cached == len(turn.prompt) + 2
    other = seq("other", [*turn.prompt, 905, 7])  # an answer of its own: only the prompt is shared
    s.add(other)
    assert other.cached == len(turn.prompt)


def test_prompts_that_arrive_together_can_start_in_one_step_in_slot_order():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=64, max_prefill_sequences=4)
    seqs = [seq(f"r{i}", list(range(10 * i, 10 * i + 5))) for i in range(3)]
    for q in seqs:
        s.add(q)
    assert [q.slot for q in seqs] == [0, 1, 2] and all(q.state is SeqState.RUNNING for q in seqs)
    plan = step(s, kv)
    assert len(plan.chunks) == 3 and len(plan.batch) == 15
    assert all(q.next_token == 901 for q in seqs)  # every prompt's first token in the same step
    plan = step(s, kv)
    assert plan.batch.tokens == [901, 901, 901] and plan.batch.slots == [0, 1, 2]
    assert [kv.streams[q.slot] for q in seqs] == [q.prompt + [901] for q in seqs]


def test_prompt_chunks_share_the_batch_budget_with_decode_tokens():
    kv = FakeKv(3)
    s = Scheduler(kv, slots=3, n_batch=8)
    a = seq("a", [1, 2, 3])
    s.add(a)
    step(s, kv, {"a": 100})
    long = seq("long", list(range(100, 120)))  # 20 tokens: 7 per step beside a's decode token
    s.add(long)
    sizes = []
    while long.next_token is None:
        plan = step(s, kv, {"a": 100})
        sizes.append(len(plan.batch))
        assert a in plan.decoding  # a keeps moving while the long prompt fills
    assert sizes == [8, 8, 7]
    assert kv.streams[long.slot] == long.prompt


def test_a_full_house_waits_and_a_released_slot_admits_the_next():
    kv = FakeKv(2)
    s = Scheduler(kv, slots=2, n_batch=64)
    a, b, c = seq("a", [1, 2]), seq("b", [3, 4]), seq("c", [5, 6])
    for q in (a, b, c):
        s.add(q)
    assert c.state is SeqState.WAITING and list(s.waiting) == [c]
    s.release(c)  # aborted while waiting
    assert c.state is SeqState.DONE and not s.waiting
    d = seq("d", [7, 8])
    s.add(d)
    s.release(a)
    assert d.state is SeqState.WAITING  # until the executor admits, after its step
    s.admit()
    assert d.state is SeqState.RUNNING and d.slot == a.slot == 0
    assert a.state is SeqState.DONE


def test_new_sequences_take_the_lowest_free_slot():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=64, prefix_cache=False)
    qs = [seq(f"r{i}", [i + 1, i + 2]) for i in range(4)]
    for q in qs:
        s.add(q)
    s.release(qs[2])
    s.release(qs[0])
    e = seq("e", [9, 9])
    s.add(e)
    assert e.slot == 0
    assert kv.streams[0] == []  # without the prefix cache nothing is kept


def test_a_long_shared_prefix_is_copied_from_the_slot_that_keeps_it():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=512, prefix_cache_min_tokens=64)
    system = list(range(1, 101))
    first = seq("first", system + [500, 501])
    s.add(first)
    while first.state is not SeqState.DONE:
        step(s, kv)
    assert s.kept[0][1] == first.prompt + first.answer == kv.streams[0]  # the prompt and answer stay
    blocker = seq("blocker", [7, 7])  # takes slot 0, the lowest free
    second = seq("second", system + [600])
    s.add(blocker)
    s.add(second)
    assert blocker.slot == 0 and blocker.cached == 0  # the lowest free slot, its kept prompt dropped
    assert second.cached == 0  # the kept prompt went with slot 0 before second arrived
    third = seq("third", system + [700, 701])
    s.add(third)  # second is decoding the same system prompt in slot 1: its stream is copied once decoded
    while second.n_past < len(second.prompt):
        step(s, kv)
    fourth = seq("fourth", system + [800])
    s.add(fourth)
    assert fourth.cached == 100 and kv.saved == [second.slot]  # (with no prompt store, nothing else is saved)
    assert kv.streams[fourth.slot] == system
    while fourth.n_past < len(fourth.prompt):
        step(s, kv)
    assert kv.streams[fourth.slot] == system + [800]


def test_the_last_free_slot_takes_over_its_kept_prompt_instead_of_copying():
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=4)
    finished(s, kv, [1, 2, 3, 4, 5, 6])
    b = seq("b", [1, 2, 3, 4, 5, 9, 9])
    s.add(b)
    assert b.slot == 0 and b.cached == 5 and not kv.saved
    assert kv.streams[0] == [1, 2, 3, 4, 5]
    step(s, kv)
    assert kv.streams[0] == b.prompt


def test_a_short_prefix_is_reused_only_where_the_lowest_free_slot_keeps_it():
    kv = FakeKv(2)
    s = Scheduler(kv, slots=2, n_batch=512, prefix_cache_min_tokens=64)
    finished(s, kv, [1, 2, 3, 4])
    b = seq("b", [1, 2, 3, 8])
    s.add(b)
    assert b.slot == 0 and b.cached == 3 and not kv.saved


def test_prompts_asked_in_turn_come_back_from_the_prompt_store():
    """One slot, two prompts that share a short template, asked in turn: each overwrites the other's KV, which
    moves to host memory first, and comes back when its prompt does."""
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=4, prompt_store_bytes=1 << 20)
    template = [1, 2, 3]
    a = finished(s, kv, template + list(range(10, 20)))
    b = finished(s, kv, template + list(range(30, 40)))
    assert b.cached == 3  # the template, kept by the slot
    assert [e.tokens for e in s.store] == [a.prompt + a.answer]
    again = seq("again", a.prompt)
    s.add(again)
    assert again.cached == len(a.prompt) - 1 and kv.streams[0] == a.prompt[:-1]
    assert [e.tokens for e in s.store] == [a.prompt + a.answer, b.prompt + b.answer]  # a shared a prefix: it stays
    step(s, kv)
    assert kv.streams[0] == a.prompt


def test_a_conversation_s_next_turn_takes_its_stored_prompt_back_whole():
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=4, prompt_store_bytes=1 << 20)
    turn = finished(s, kv, list(range(1, 20)))
    finished(s, kv, list(range(50, 60)))  # another request takes the slot meanwhile
    following = seq("following", [*turn.prompt, *turn.answer, 7, 8])
    s.add(following)
    assert following.cached == len(turn.prompt) + len(turn.answer)
    assert [e.tokens[0] for e in s.store] == [50]  # the turn's KV moved back into the slot: not stored twice


def test_a_stored_prompt_dropped_to_make_room_still_comes_back():
    """Storing what the slot kept makes room by dropping the oldest entry, which is the one the new prompt takes
    back whole: it still has its KV (the entry is in hand), and nothing fails."""
    kv = FakeKv(1)
    tokens = list(range(1, 20))
    size = len(bytearray(np.array(tokens + [901, 902], np.int64).tobytes()))
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=4, prompt_store_bytes=size + size // 2)
    turn = finished(s, kv, tokens)
    finished(s, kv, list(range(50, 69)))  # the turn's KV moves to the store; this one's stays in the slot
    following = seq("following", [*turn.prompt, *turn.answer, 7, 8])
    s.add(following)  # the slot's kept prompt goes to the store first, which drops the turn's entry to make room
    assert following.cached == len(turn.prompt) + len(turn.answer)
    assert kv.streams[0] == turn.prompt + turn.answer and [e.tokens[0] for e in s.store] == [50]


def test_a_short_prefix_is_not_brought_in_from_the_prompt_store():
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=8, prompt_store_bytes=1 << 20)
    a = finished(s, kv, list(range(1, 10)))
    finished(s, kv, [70, 71])
    short = seq("short", a.prompt[:6] + [99])
    s.add(short)
    assert short.cached == 0 and len(s.store) == 2


def test_prompt_logprobs_decode_every_prompt_token():
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=1)
    finished(s, kv, [1, 2, 3, 4])
    b = seq("b", [1, 2, 3, 4, 5], score_prompt=True)
    s.add(b)
    assert b.cached == 0
    plan = step(s, kv)
    assert plan.batch.logits == [True] * 5


def test_a_prompt_cannot_be_matched_whole():
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=512, prefix_cache_min_tokens=1)
    finished(s, kv, [1, 2, 3])
    again = seq("again", [1, 2, 3])
    s.add(again)
    assert again.cached == 2  # the last token is decoded again: its logits start the answer
    plan = step(s, kv)
    assert plan.batch.tokens == [3] and plan.batch.logits == [True]


def test_adapters_take_turns_and_keep_their_own_prefixes():
    kv = FakeKv(4)
    s = Scheduler(kv, slots=4, n_batch=512, prefix_cache_min_tokens=1)
    base, tuned = seq("base", [1, 2, 3]), seq("tuned", [1, 2, 3], lora="x")
    s.add(base)
    s.add(tuned)
    assert tuned.cached == 0  # base's prompt is decoded without the adapter
    seen = []
    for _ in range(4):
        plan = step(s, kv, {"base": 100, "tuned": 100})
        seen.append((kv.adapter, [q.request_id for q in plan.sequences]))
    assert seen == [("x", ["tuned"]), (None, ["base"]), ("x", ["tuned"]), (None, ["base"])]
    assert s.adapter_users("x") == 1
    s.release(tuned)
    s.forget_adapter("x")
    assert all(lora != "x" for lora, _ in s.kept.values()) and kv.streams[tuned.slot] == []


def test_image_blocks_decode_alone_and_prompt_chunks_stop_before_them():
    kv = FakeKv(2)
    s = Scheduler(kv, slots=2, n_batch=4, max_prefill_sequences=2)
    rows = np.zeros((6, 8), np.float32)
    q = seq("vlm", [1, 2] + [-1] * 6 + [3], blocks={2: MediaBlock(rows, causal=True)})
    s.add(q)
    plan = s.schedule()
    assert plan.batch.tokens == [1, 2] and plan.embedding is None
    kv.decode(plan)
    s.advance(plan)
    kinds = []
    while q.n_past < 8:
        plan = s.schedule()
        assert not plan.batch and plan.embedding is not None
        kinds.append(len(plan.embedding.rows))
        kv.streams[q.slot] += [-1] * len(plan.embedding.rows)
        s.advance_embeddings(plan.embedding)
    assert kinds == [4, 2]
    assert np.array_equal(plan.embedding.positions, [[6, 7]])  # plain positions: one per row
    plan = s.schedule()
    assert plan.batch.tokens == [3] and plan.batch.positions == [8] and q.batch_pos == 0
    kv.decode(plan)
    s.advance(plan)
    s.release(q)
    assert s.kept[0][1] == [1, 2]  # kept up to the image: embeddings are not matched


def test_an_mrope_image_takes_its_grid_positions_and_text_after_it_follows_them():
    """Qwen2-VL-style positions: a 2x3 grid of 6 rows at position p takes (t, y, x) = (p, p+row, p+col) and 3
    positions in all, so the text after it starts at p + 3, and so does the answer after that."""
    kv = FakeKv(1)
    s = Scheduler(kv, slots=1, n_batch=4)
    grid = np.array([[0] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [0] * 6], np.int32)
    q = seq("vl", [1, 2] + [-1] * 6 + [3, 4], blocks={2: MediaBlock(np.zeros((6, 8), np.float32), True, grid, 3)})
    s.add(q)
    plan = s.schedule()
    assert plan.batch.positions == [0, 1]
    s.advance(plan)
    sections = []
    while q.n_past < 8:
        plan = s.schedule()
        sections.append(plan.embedding.positions)
        s.advance_embeddings(plan.embedding)
    assert np.array_equal(np.concatenate(sections, axis=1), grid + 2)
    plan = s.schedule()
    assert plan.batch.tokens == [3, 4] and plan.batch.positions == [5, 6]
    s.advance(plan)
    q.next_token = 9
    assert s.schedule().batch.positions == [7]


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_many_requests_keep_every_stream_consistent(slots):
    """A random mix of arrivals, shared prefixes, aborts and finishes: the fake KV checks every position."""
    rng = np.random.default_rng(slots)
    kv = FakeKv(slots)
    s = Scheduler(kv, slots=slots, n_batch=16, prefix_cache_min_tokens=4, max_prefill_sequences=1 + slots % 3,
                  prompt_store_bytes=2048)  # a few prompts: some evicted
    live: list[Sequence] = []
    prefixes = [list(rng.integers(1, 50, 12)) for _ in range(3)]
    answers = {}
    for i in range(200):
        if rng.random() < 0.3:
            tail = rng.integers(1, 50, rng.integers(1, 9))
            prompt = [int(t) for t in prefixes[rng.integers(3)]] + [int(t) for t in tail]
            q = seq(f"r{i}", prompt)
            answers[q.request_id] = int(rng.integers(1, 6))
            s.add(q)
            live.append(q)
        if live and rng.random() < 0.05:
            s.release(live.pop(int(rng.integers(len(live)))))
        if s.has_work():
            step(s, kv, answers)
        live = [q for q in live if q.state is not SeqState.DONE]
        for q in s.running:
            answer = [900 + k for k in range(1, q.n_past - len(q.prompt) + 1)]
            assert kv.streams[q.slot] == q.prompt[:q.n_past] + answer
    assert sorted(s.free_slots + [q.slot for q in s.running]) == list(range(slots))
    assert len(s.store)  # (the slots were taken over: their prompts moved to the store)


def test_a_free_slot_goes_to_the_request_running_the_fewest_sequences():
    """Six choices of one request on two slots, then a single one: it takes the first slot that frees,
    ahead of the choices still waiting."""
    kv = FakeKv(2)
    s = Scheduler(kv, slots=2, n_batch=64, max_prefill_sequences=4)
    many = [Sequence("many", i, [1, 2, 3]) for i in range(6)]
    for q in many:
        s.add(q)
    alone = seq("alone", [7, 8, 9])
    s.add(alone)
    assert {q.request_id for q in s.running} == {"many"} and alone.state is SeqState.WAITING
    while not any(q.state is SeqState.DONE for q in many):
        step(s, kv)
    assert alone.state is SeqState.RUNNING  # in order, two more of the six would have taken both freed slots
    assert sum(q.state is SeqState.WAITING for q in many) == 3

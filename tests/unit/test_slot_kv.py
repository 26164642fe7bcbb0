"""The Qwen-Omni stages' attention cache of one row per running sequence (`executors/qwen_omni/slots.py`), driven
through transformers' cache interface as a model's attention layers drive it. No model is loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omniserve.executors.qwen_omni import slots


@dataclass(eq=False)
class Seq:
    name: str
    cached: int = 0
    row: int = -1


def states(batch: int, new: int, fill: float) -> torch.Tensor:
    """(batch, 2 heads, new tokens, 4): row b's token t holds fill + 10 b + t."""
    base = torch.arange(new, dtype=torch.float32)[None, :] + 10 * torch.arange(batch, dtype=torch.float32)[:, None]
    return (base + fill)[:, None, :, None].expand(batch, 2, new, 4).contiguous()


def prefill(kv, seq: Seq, length: int, fill: float) -> None:
    kv.take(seq)
    keys, _ = kv.cache([seq.row], [0]).layers[0].update(states(1, length, fill), states(1, length, fill))
    assert keys.shape == (1, 2, length, 4)
    seq.cached = length


def test_a_decode_step_writes_each_token_at_its_own_position_and_reads_a_view():
    kv = slots.SlotKV(layers=1)
    seqs = [Seq("a"), Seq("b"), Seq("c")]
    for seq, length, fill in zip(seqs, (2, 5, 3), (100, 200, 300), strict=True):
        prefill(kv, seq, length, fill)
    lengths = [s.cached for s in seqs]
    cache = kv.cache([s.row for s in seqs], lengths)
    assert cache.get_seq_length() == 5 and cache.get_mask_sizes(1, 0) == (6, 0)
    keys, _ = cache.layers[0].update(states(3, 1, 900), states(3, 1, 900))
    assert keys.shape == (3, 2, 6, 4) and keys.data_ptr() == kv.keys[0].data_ptr()  # the first rows: no copy
    assert keys[0, 0, :3, 0].tolist() == [100, 101, 900]  # a's two prompt tokens, then its new one
    assert keys[1, 0, :6, 0].tolist() == [200, 201, 202, 203, 204, 910]
    assert keys[2, 0, :4, 0].tolist() == [300, 301, 302, 920]
    mask = kv.mask(lengths, "cpu")
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 0, 0]]


def test_a_sequence_that_ends_gives_its_row_to_the_last_one():
    kv = slots.SlotKV(layers=2)
    seqs = [Seq("a"), Seq("b"), Seq("c")]
    for seq, length, fill in zip(seqs, (2, 5, 3), (100, 200, 300), strict=True):
        prefill(kv, seq, length, fill)
    running = {"b", "c"}
    kv.keep(lambda s: s.name in running, lambda s: s.cached)
    a, b, c = seqs
    assert (a.row, b.row, c.row) == (-1, 1, 0) and kv.holders == [c, b]
    assert kv.keys[0][0, 0, :3, 0].tolist() == [300, 301, 302]  # c's cache moved into a's row
    kv.take(d := Seq("d"))
    assert d.row == 2


def test_rows_and_length_grow_keeping_what_they_hold():
    kv = slots.SlotKV(layers=1)
    first = Seq("first")
    prefill(kv, first, 3, 100)
    assert kv.keys[0].shape[2] == slots.MIN_CAPACITY
    long = Seq("long")
    prefill(kv, long, slots.MIN_CAPACITY + 1, 0)
    assert kv.keys[0].shape[:3] == (2, 2, 2 * slots.MIN_CAPACITY)
    assert kv.keys[0][0, 0, :3, 0].tolist() == [100, 101, 102]


def test_the_memory_goes_back_when_no_sequence_runs():
    kv = slots.SlotKV(layers=1)
    prefill(kv, first := Seq("first"), 3, 100)
    kv.keep(lambda s: False, lambda s: s.cached)
    assert first.row == -1 and kv.holders == [] and kv.keys == [None]

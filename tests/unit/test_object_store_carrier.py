"""The Ray backend's payload carrier, as pure logic: which payloads it keeps (the large ones), how many fetches
each waits for (the stage's downstream edges), and that nothing is kept forever."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from omniserve.runtime import ray_backend
from omniserve.runtime.ray_backend import ObjectStoreCarrier
from omniserve.runtime.types import OmniOutput, PayloadRef


def outputs(*payloads) -> list[OmniOutput]:
    return [OmniOutput(request_id=f"r{i}", payload=p) for i, p in enumerate(payloads)]


def test_large_payloads_are_kept_and_small_ones_ride_the_message():
    carrier = ObjectStoreCarrier("actor-a", min_bytes=1024, readers={"encoder": 1})
    big, small = np.arange(4096, dtype=np.float32), np.arange(4, dtype=np.float32)
    sent = carrier.outgoing("encoder", outputs(big, small, None))
    ref = sent[0].payload
    assert isinstance(ref, PayloadRef) and ref.holder == "actor-a" and ref.nbytes > big.nbytes
    assert sent[1].payload is small and sent[2].payload is None
    assert np.array_equal(pickle.loads(carrier.take(ref.key)), big)
    with pytest.raises(KeyError):  # its one reader took it: it is gone
        carrier.take(ref.key)


def test_a_stage_with_two_readers_keeps_it_for_both_and_a_stage_with_none_keeps_nothing():
    carrier = ObjectStoreCarrier("actor-a", min_bytes=0, readers={"split": 2})
    ref = carrier.outgoing("split", outputs(b"x" * 10))[0].payload
    carrier.take(ref.key)
    carrier.take(ref.key)
    with pytest.raises(KeyError):
        carrier.take(ref.key)
    assert carrier.outgoing("terminal", outputs(b"x" * 10))[0].payload == b"x" * 10


def test_what_nobody_fetches_goes_after_a_while(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(ray_backend, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    carrier = ObjectStoreCarrier("actor-a", min_bytes=0, readers={"encoder": 1})
    forgotten = carrier.outgoing("encoder", outputs(b"old"))[0].payload
    clock[0] += ObjectStoreCarrier.KEEP_S + 1
    kept = carrier.outgoing("encoder", outputs(b"new"))[0].payload
    with pytest.raises(KeyError):
        carrier.take(forgotten.key)
    assert carrier.take(kept.key)

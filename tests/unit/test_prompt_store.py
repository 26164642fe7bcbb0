"""The host-memory prompt store: what it keeps, drops and evicts (no model)."""

from __future__ import annotations

from omniserve.executors.llamacpp.prompt_store import PromptStore, StoredPrompt


def entry(tokens: list[int], size: int = 10, adapter: str | None = None) -> StoredPrompt:
    return StoredPrompt(adapter, tokens, bytearray(size))


def test_a_longer_prompt_replaces_the_ones_it_holds():
    store = PromptStore(1000)
    store.put(entry([1, 2]))
    store.put(entry([1, 3]))
    store.put(entry([1, 2, 3, 4]))
    assert [e.tokens for e in store] == [[1, 3], [1, 2, 3, 4]]
    assert store.holds(None, [1, 2, 3]) and not store.holds(None, [1, 2, 5]) and not store.holds("x", [1, 3])


def test_the_oldest_go_first_when_it_is_full_and_an_oversized_one_is_not_kept():
    store = PromptStore(25)
    for first in range(3):
        store.put(entry([first]))
    assert [e.tokens for e in store] == [[1], [2]] and store.size == 20
    store.put(entry([9], size=26))
    assert [e.tokens for e in store] == [[1], [2]]


def test_an_adapter_s_prompts_are_its_own():
    store = PromptStore(1000)
    store.put(entry([1, 2], adapter="x"))
    store.put(entry([1], adapter=None))
    assert len(store) == 2  # [1] does not hold x's [1, 2]: decoded without the adapter
    store.forget_adapter("x")
    assert [e.adapter for e in store] == [None]

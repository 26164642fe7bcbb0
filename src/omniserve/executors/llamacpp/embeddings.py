"""/v1/embeddings from the chat GGUF: llama.cpp's embedding mode, in a second context on the same
model (mean pooling over each input's tokens, then L2-normalised). It runs between the chat steps:
the running sequences wait for it, as for a prompt chunk, so a request is capped in size."""

from __future__ import annotations

import numpy as np

from omniserve.errors import InvalidRequest, OmniError
from omniserve.executors.base import EmbeddingParams
from omniserve.executors.llamacpp.runtime import LlamaRuntime

EMBED_MAX_TOKENS = 1024  # longest input (one ubatch; its compute buffer grows with it)
EMBED_MAX_REQUEST_TOKENS = 16384  # all inputs of one request


class LlamaEmbedder:
    def __init__(self, runtime: LlamaRuntime):
        self.rt = runtime
        self.longest = min(runtime.context_length, EMBED_MAX_TOKENS)
        self._ctx = None  # made on the first request

    def close(self) -> None:
        if self._ctx is not None:
            self.rt.ll.llama_free(self._ctx)

    def embed(self, params: EmbeddingParams) -> tuple[np.ndarray, int]:
        """One unit vector per input, and the tokens embedded in all."""
        ll, rt = self.rt.ll, self.rt
        truncate = params.truncate_prompt_tokens
        limit = self.longest if truncate in (None, -1) else truncate
        if limit > self.longest:
            raise InvalidRequest(f"truncate_prompt_tokens: this model embeds at most {self.longest} tokens; got "
                                 f"{limit}", param="truncate_prompt_tokens")
        inputs = params.texts_within(limit * rt.max_piece_bytes, _utf8_bytes, self.longest)  # bytes/piece: a bound
        ids = [rt.tokenize(x, add_special=True) if isinstance(x, str) else list(x) for x in inputs]
        for i, tokens in enumerate(ids):
            where = f"input[{i}]" if len(ids) > 1 else "input"
            if any(not 0 <= t < rt.n_vocab for t in tokens):
                raise InvalidRequest(f"{where}: token ids must be 0 to {rt.n_vocab - 1} (this model's vocabulary)",
                                     param="input")
            if len(tokens) > limit:
                if truncate is None:
                    raise InvalidRequest(f"{where} is {len(tokens)} tokens; this model embeds at most "
                                         f"{self.longest}. Shorten it, or set truncate_prompt_tokens to keep its "
                                         "last tokens", param="input")
                ids[i] = tokens[len(tokens) - limit:]
        total = sum(map(len, ids))
        if total > EMBED_MAX_REQUEST_TOKENS:
            raise InvalidRequest(f"input: {total} tokens in one request; this model embeds at most "
                                 f"{EMBED_MAX_REQUEST_TOKENS} per request (send fewer inputs per request)",
                                 param="input")
        if self._ctx is None:
            cparams = ll.llama_context_default_params()
            cparams.embeddings = True
            cparams.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.longest  # one input, one ubatch
            cparams.n_threads = cparams.n_threads_batch = rt.threads
            self._ctx = ll.llama_init_from_model(rt.model, cparams)
            if not self._ctx:
                raise RuntimeError("llama.cpp could not create an embedding context (out of memory?)")
        vectors = np.zeros((len(ids), rt.n_embd_out), np.float32)
        memory = ll.llama_get_memory(self._ctx)
        for row, tokens in enumerate(ids):
            ll.llama_memory_clear(memory, True)
            array = (ll.llama_token * len(tokens))(*tokens)  # the batch points into it: keep it alive
            if ll.llama_decode(self._ctx, ll.llama_batch_get_one(array, len(tokens))) != 0:
                raise OmniError(f"llama.cpp could not embed input[{row}] ({len(tokens)} tokens)")
            pooled = np.ctypeslib.as_array(ll.llama_get_embeddings_seq(self._ctx, 0), (rt.n_embd_out,))
            vectors[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return vectors, total


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))

"""Sentence embeddings for `/v1/embeddings` (all-MiniLM-L6-v2, int8 ONNX).

`add` tokenizes and checks every input of a request (its length, its token
ids), so a bad input is a 400 before any work. `step` embeds the waiting
inputs of all requests together, oldest first, up to `BATCH` inputs in one
ONNX Runtime call: concurrent requests share the call. Each output carries
the embeddings of one request's inputs from that call, with their indices;
`done` comes with the request's last.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import EmbeddingParams, Executor, StepResult, request_params
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import Embeddings, OmniOutput, OmniRequest

BATCH = 64
# WordPiece's longest word (a longer one is a single [UNK]): a text this many characters a token is
# checked by its length, not tokenized in full
CHARS_PER_TOKEN = 100


class EmbedderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int = Field(1, ge=1)


@dataclass
class _Item:
    request_id: str
    index: int
    ids: list[int]


class EmbedderExecutor(Executor):
    def __init__(self, args: EmbedderArgs, stage: str = "embedder"):
        super().__init__(args, stage)
        self._items: deque[_Item] = deque()
        self._left: dict[str, int] = {}  # request id -> inputs not embedded yet

    def load(self) -> StageFacts:
        from omniserve.models.minilm import MODEL, MiniLm

        self.model = MiniLm(self.args.threads)
        return StageFacts(model_path=str(MODEL.path()), dimensions=self.model.dimensions,
                          context_length=self.model.max_tokens)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(EmbeddingParams, request.params_for(self.stage))
        ids = self._token_ids(params)
        items = [_Item(request.request_id, i, x) for i, x in enumerate(ids)]
        self._items.extend(items)
        self._left[request.request_id] = len(items)
        return [OmniOutput(request.request_id, started=True, prompt_tokens=sum(len(x) for x in ids))]

    def _token_ids(self, params: EmbeddingParams) -> list[list[int]]:
        """Each input's token ids, cut to `truncate_prompt_tokens` (keeping the end, as vLLM does),
        or a 400 naming the input that is too long or holds an unknown id."""
        model, texts = self.model, bool(params.input) and isinstance(params.input[0], str)
        limit = params.truncate_prompt_tokens
        if limit is not None and limit > model.max_tokens:
            raise InvalidRequest(f"truncate_prompt_tokens: this model takes at most {model.max_tokens} tokens; "
                                 f"got {limit}", param="truncate_prompt_tokens")
        limit = model.max_tokens if limit in (None, -1) else limit
        ids = model.tokenize(params.texts_within(limit * CHARS_PER_TOKEN, len, model.max_tokens)) if texts \
            else params.input
        out = []
        for i, tokens in enumerate(ids):
            where = f"input[{i}]" if len(ids) > 1 else "input"
            if not texts and any(not 0 <= t < model.vocab_size for t in tokens):
                raise InvalidRequest(f"{where}: token ids must be 0 to {model.vocab_size - 1} (this model's "
                                     "vocabulary)", param="input")
            if len(tokens) > limit:
                if params.truncate_prompt_tokens is None:
                    raise InvalidRequest(
                        f"{where} is {len(tokens)} tokens; this model takes at most {model.max_tokens}. Shorten "
                        "it, or set truncate_prompt_tokens to keep its last tokens", param="input")
                tokens = tokens[:1] + tokens[len(tokens) - limit + 1:] if texts else tokens[len(tokens) - limit:]
            out.append(tokens)
        return out

    def abort(self, request_id: str) -> None:
        self._items = deque(item for item in self._items if item.request_id != request_id)
        self._left.pop(request_id, None)

    def has_work(self) -> bool:
        return bool(self._items)

    def step(self) -> StepResult:
        batch = [self._items.popleft() for _ in range(min(BATCH, len(self._items)))]
        vectors = self.model.embed_ids([item.ids for item in batch])
        by_request: dict[str, list[int]] = {}
        for row, item in enumerate(batch):
            by_request.setdefault(item.request_id, []).append(row)
        outputs = []
        for request_id, rows in by_request.items():
            self._left[request_id] -= len(rows)
            done = self._left[request_id] == 0
            if done:
                del self._left[request_id]
            rows_embedded = Embeddings([batch[r].index for r in rows], vectors[rows].astype(np.float32))
            outputs.append(OmniOutput(request_id, finish_reason="stop" if done else None, done=done,
                                      data=rows_embedded))
        return self.result(outputs, len(batch))

    def close(self) -> None:
        self._items.clear()

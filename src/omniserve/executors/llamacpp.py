"""LLM executor on llama.cpp's low-level API, with continuous batching.

Every step builds one `llama_batch` holding one decode token for each running
sequence plus prompt chunks of newly admitted ones, runs one `llama_decode`,
and samples each sequence with its own llama.cpp sampler chain (C code, not
numpy over the vocabulary). Requests join and leave between steps, so a new
request never waits for another to finish, only for the current step.

The KV cache is one stream of `context_length` cells per slot (as llama-server
runs it), so each sequence's attention reads its own cells only; in one
unified pool it read every cell in use, every other sequence's and every kept
prompt's too, and a step cost grew with all of them. llama.cpp cuts a batch
over several streams into ubatches of consecutive sequence ids: a step puts
its tokens in slot order, and new sequences take the lowest free slot, so the
running ones stay consecutive and a step is one or two ubatches.

Prefix caching: a slot keeps its prompt's KV when its sequence ends. A new
sequence takes the free slot whose kept prompt shares the longest prefix with
its own, or copies the prefix from another slot (`llama_memory_seq_cp`: a
whole stream, then its tail is dropped), and decodes only the rest, so a long
system prompt is computed once.

LoRA adapters (GGUF) are loaded next to the model; a request names one
(`SamplingParams.lora`). llama.cpp applies adapters to a whole context, so a
step decodes the sequences of one adapter (or of none): steps take turns
between the adapters that have work, and the prefix cache only matches
prompts decoded with the same adapter.
"""

from __future__ import annotations

import ctypes
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import ContextLengthExceeded, InvalidRequest, NotFound, OmniError, OutOfMemory
from omniserve.executors.text_stream import TextStream
from omniserve.runtime.types import (
    OmniOutput,
    OmniRequest,
    SamplingParams,
    TokenLogprob,
    fill_media_parts,
    image_order,
    media_kinds,
)

# Where an image's encoder output goes in the rendered prompt (llama.cpp's default media marker).
MEDIA_MARKER = "<__media__>"
EMBED_MAX_TOKENS = 1024  # longest /v1/embeddings input (one ubatch; its compute buffer grows with it)
EMBED_MAX_REQUEST_TOKENS = 16384  # all inputs of one /v1/embeddings request to the chat model

log = logging.getLogger(__name__)


class LlamaCppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    context_length: int | None = Field(None, ge=16, description="tokens per sequence; default min(trained, 4096)")
    threads: int = Field(2, ge=1)
    max_sequences: int = Field(8, ge=1, le=256, description="sequences decoded together (KV streams)")
    n_batch: int = Field(512, ge=8, description="tokens per llama_decode call")
    n_gpu_layers: int = Field(0, ge=-1)
    chat_template: str | None = None
    prefix_cache: bool = True  # reuse the KV of shared prompt prefixes across sequences
    # shorter shared prefixes are decoded again: they save little, and reusing KV made by another
    # batch shifts the logits by float noise (enough to change a tiny model's greedy answer)
    prefix_cache_min_tokens: int = Field(64, ge=1, description="the shortest prompt prefix copied from another slot")
    lora_paths: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> GGUF path")
    # for tests: a request whose prompt holds this text fails while it decodes (it alone fails; the stage goes on)
    fail_on: str | None = None


@dataclass(eq=False)
class _Sequence:
    request_id: str
    index: int
    slot: int
    prompt: list[int]
    params: SamplingParams
    sampler: Any
    stream: TextStream
    max_new: int
    n_past: int = 0  # tokens already in the KV cache
    cached: int = 0  # prompt tokens whose KV came from the prefix cache
    lora: str | None = None  # the adapter it is decoded with
    next_token: int | None = None  # sampled, not yet decoded
    generated: int = 0
    batch_pos: int = -1  # where this sequence's logits sit in the current batch
    doomed: bool = False  # its prompt holds `LlamaCppArgs.fail_on`
    # the prompt tokens' logprobs, collected while the prompt is decoded (None: not wanted)
    prompt_logprobs: list[TokenLogprob] | None = None
    # Image embeddings in the prompt (a vision-language model): start position -> (rows, causal).
    # `prompt` holds -1 at their positions.
    blocks: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_tokens: int
    open_choices: int
    sequences: list[_Sequence] = field(default_factory=list)


class LlamaCppExecutor:
    def __init__(self, args: LlamaCppArgs, stage: str = "thinker"):
        self.stage = stage
        # Requests waiting for upstream stages to turn their media into text or embeddings:
        # the request, the kinds still missing, and what came so far by (kind, index).
        self._upstream: dict[str, tuple[OmniRequest, set[str], dict[tuple[str, int], dict]]] = {}
        self._embd_batch = None  # allocated when the first image embeddings arrive
        self.args = args
        self._requests: dict[str, _Request] = {}
        self._running: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._free_slots: list[int] = list(range(args.max_sequences - 1, -1, -1))
        self._kept: dict[int, tuple[str | None, list[int]]] = {}  # free slot -> (adapter, prompt tokens kept)
        self._loras: dict[str, Any] = {}  # adapter name -> llama_adapter_lora pointer
        self._lora_paths: dict[str, str] = {}
        self._active_lora: str | None = None  # set on the context now
        self._embed_ctx = None  # a second context in embedding mode, made on the first /v1/embeddings call
        self._turn = 0  # which adapter group decodes next, when several have work
        self.failed: list[tuple[str, Exception]] = []  # requests a step failed (the worker tells them)
        self._failing: set[str] = set()  # their ids, until the worker aborts them

    # ---- lifecycle -----------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        import llama_cpp

        self._ll = ll = llama_cpp
        # llama.cpp talks a lot on stderr; its failures reach us as return values, so
        # its log goes to Python logging at debug level only.
        self._log_callback = ll.llama_log_callback(forward_llama_log)
        ll.llama_log_set(self._log_callback, ctypes.c_void_p(0))
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = self.args.n_gpu_layers
        self._model = ll.llama_model_load_from_file(self.args.model_path.encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.args.model_path}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        trained = ll.llama_model_n_ctx_train(self._model)
        self.context_length = self.args.context_length or min(trained, 4096)

        cparams = ll.llama_context_default_params()
        cparams.n_seq_max = self.args.max_sequences
        cparams.n_ctx = self.context_length * self.args.max_sequences
        cparams.n_batch = max(self.args.n_batch, self.args.max_sequences)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = self.args.threads
        cparams.n_threads_batch = self.args.threads
        cparams.kv_unified = False  # a KV stream per slot: attention reads one sequence's cells, not all
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.n_embd = ll.llama_model_n_embd_inp(self._model)
        self.n_embd_out = ll.llama_model_n_embd_out(self._model)  # pooled embeddings have this width
        # recurrent and hybrid models keep one state per sequence: it cannot be cut back to a prefix
        self._prefix_cache = self.args.prefix_cache and not (ll.llama_model_is_recurrent(self._model)
                                                             or ll.llama_model_is_hybrid(self._model))
        self._mem = ll.llama_get_memory(self._ctx)
        self._n_batch = cparams.n_batch
        self._batch = ll.llama_batch_init(self._n_batch, 0, 1)

        # no token spells more bytes than this: a text longer than context * this cannot fit,
        # and is refused before it is tokenized (a 30 MB prompt would take the worker half a minute)
        self._max_piece_bytes = max(len(self._piece(t, special=True)) for t in range(self.n_vocab)) or 1
        self._template = self.args.chat_template or self._meta("tokenizer.chat_template")
        self._bos = self._piece_text(ll.llama_vocab_bos(self._vocab), special=True)
        self._eos = self._piece_text(ll.llama_vocab_eos(self._vocab), special=True)
        self._formatter = None
        if self._template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self._template, eos_token=self._eos, bos_token=self._bos)
        return {
            "model_path": self.args.model_path,
            "context_length": self.context_length,
            "trained_context_length": trained,
            "max_sequences": self.args.max_sequences,
            "n_vocab": self.n_vocab,
            "loras": self._load_startup_loras(),
            "dimensions": self.n_embd_out,  # of /v1/embeddings from this model (llama.cpp embedding mode)
            "has_chat_template": bool(self._template),
            "template_tools": "tools" in (self._template or ""),  # renders OpenAI tools itself
            "architecture": self._meta("general.architecture"),
            "name": self._meta("general.name"),
        }

    def close(self) -> None:
        ll = self._ll
        for seq in self._running + list(self._waiting):
            ll.llama_sampler_free(seq.sampler)
        ll.llama_batch_free(self._batch)
        if self._embd_batch is not None:
            ll.llama_batch_free(self._embd_batch)
        if self._embed_ctx is not None:
            ll.llama_free(self._embed_ctx)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)

    # ---- admission -----------------------------------------------------------------

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        op = request.params_for(self.stage).get("lora_op")
        if op is not None:  # load or unload an adapter (/v1/load_lora_adapter, /v1/unload_lora_adapter)
            result = self._lora_op(op)
            return [OmniOutput(request.request_id, started=True),
                    OmniOutput(request.request_id, finish_reason="stop", done=True, info={"loras": result})]
        embed = request.params_for(self.stage).get("embed")
        if embed is not None:
            return self._embed(request.request_id, embed["input"], embed.get("truncate_prompt_tokens"))
        kinds = media_kinds(request.messages)
        if kinds:  # starts once the speech and vision stages have fed their text
            self._upstream[request.request_id] = (request, kinds, {})
            return []
        return self._start(request)

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        """What one upstream stage made of the media items, all at once: one output per item
        (`index`), its kind in `info["media"]`, and `info["text"]` (transcripts, image
        descriptions) or `info["chunks"]` (a vision encoder's tokens and embeddings)."""
        waiting = self._upstream.get(outputs[0].request_id)
        if waiting is None:
            return []
        request, missing, infos = waiting
        for o in outputs:
            if "media" in o.info:
                infos[(o.info["media"], o.index)] = o.info
                missing.discard(o.info["media"])
        if missing:
            return []
        del self._upstream[request.request_id]
        encoded = {i: info["chunks"] for (_, i), info in infos.items() if "chunks" in info}
        order = image_order(request.messages)
        request.messages = fill_media_parts(request.messages, {k: v.get("text", "") for k, v in infos.items()},
                                            image_marker=MEDIA_MARKER if encoded else None)
        return self._start(request, [encoded[i] for i in order] if encoded else None)

    def _start(self, request: OmniRequest, images: list[list[dict[str, Any]]] | None = None) -> list[OmniOutput]:
        """`images`: for a vision-language model, each image's encoder chunks in prompt order."""
        params = request.sampling_for(self.stage)
        prompt, blocks = self._prompt_with_images(request, images) if images else (self._prompt_tokens(request), {})
        param = "messages" if request.messages is not None else "prompt"
        if not prompt:
            raise InvalidRequest("the prompt is empty", param=param)
        room = self.context_length - len(prompt)
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens, "
                f"but the prompt has {len(prompt)} tokens. Shorten the {param}.",
                param=param,
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{len(prompt) + params.max_tokens} tokens ({len(prompt)} in the {param}, {params.max_tokens} "
                f"for the completion). Reduce the {param} or max_tokens.",
                param="max_tokens",
            )
        if params.lora is not None and params.lora not in self._loras:
            raise self._not_loaded(params.lora, "model", " (POST /v1/load_lora_adapter, or --lora-paths)")
        bad = [t for t in params.logit_bias if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequest(f"logit_bias: token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})",
                                 param="logit_bias")
        max_new = params.max_tokens or room
        req = _Request(request.request_id, len(prompt), params.n)
        base_seed = params.seed if params.seed is not None else random.getrandbits(32)
        for index in range(params.n):
            seq = _Sequence(
                request_id=request.request_id,
                index=index,
                slot=-1,
                prompt=prompt,
                params=params,
                sampler=self._make_sampler(params, (base_seed + index) & 0xFFFFFFFF),
                stream=TextStream(params.stop),
                max_new=max_new,
                blocks=blocks,
                lora=params.lora,
                prompt_logprobs=[] if params.prompt_logprobs and index == 0 and not blocks else None,
                doomed=self.args.fail_on is not None and self.args.fail_on in str(request.messages or request.prompt),
            )
            req.sequences.append(seq)
            self._waiting.append(seq)
        self._requests[request.request_id] = req
        self._admit_waiting()
        return [OmniOutput(request.request_id, started=True, prompt_tokens=len(prompt))]

    def abort(self, request_id: str) -> None:
        self._upstream.pop(request_id, None)
        self._failing.discard(request_id)
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        for seq in req.sequences:
            if seq in self._running:
                self._release(seq)
            elif seq in self._waiting:
                self._waiting.remove(seq)
                self._ll.llama_sampler_free(seq.sampler)
        self._admit_waiting()

    def has_work(self) -> bool:
        return bool(self._running)

    def running_sequences(self) -> int:
        return len(self._running)

    # ---- the step ------------------------------------------------------------------

    def step(self) -> list[OmniOutput]:
        ll, batch = self._ll, self._batch
        group = self._lora_group()
        # A decode token for each generating sequence keeps every stream moving.
        decoding = [seq for seq in group if seq.next_token is not None]
        self.batch_size = len(decoding)  # sequences in this step (for the metrics)
        # And a prompt chunk of the oldest admitted sequence still in prefill. One prompt
        # per step: arrivals get their first token in order instead of all waiting for
        # one big prefill, and the running streams keep moving in between.
        embedding = None  # a sequence whose prompt continues with image embeddings
        chunk = None  # (sequence, tokens to take) of this step's prompt chunk
        for seq in group:
            seq.batch_pos = -1
        for seq in group:
            if seq.next_token is not None or len(decoding) >= self._n_batch:
                continue
            self.batch_size += 1
            if seq.n_past in seq.blocks or any(s < seq.n_past < s + len(b) for s, (b, _) in seq.blocks.items()):
                embedding = seq
                break
            end = min((s for s in seq.blocks if s > seq.n_past), default=len(seq.prompt))
            chunk = (seq, min(end - seq.n_past, self._n_batch - len(decoding)))
            break
        # Tokens go in slot order: llama.cpp cuts a batch over several KV streams into ubatches of
        # consecutive sequence ids, so out of order it would run many small ones.
        n = 0
        prefill = None  # (sequence, batch index, position) of a prompt chunk whose logprobs are wanted
        for seq in sorted(decoding + ([chunk[0]] if chunk else []), key=lambda s: s.slot):
            if seq.next_token is not None:
                self._put(n, seq.next_token, seq.n_past, seq.slot, True)
                seq.batch_pos = n
                seq.n_past += 1
                n += 1
                continue
            take = chunk[1]
            scored = seq.prompt_logprobs is not None
            prefill = (seq, n, seq.n_past) if scored else None
            for k in range(take):
                pos = seq.n_past + k
                last = pos == len(seq.prompt) - 1
                self._put(n, seq.prompt[pos], pos, seq.slot, last or scored)
                if last:
                    seq.batch_pos = n
                n += 1
            seq.n_past += take
        batch.n_tokens = n
        outputs: list[OmniOutput] = []
        if n:
            rc = ll.llama_decode(self._ctx, batch)
            if rc != 0:  # the batch's requests fail, the stage goes on
                for seq in decoding + ([chunk[0]] if chunk else []):
                    self._fail(seq.request_id, decode_error(rc))
                return outputs
            if prefill is not None:
                outputs += self._score_prompt(*prefill, n)
            for seq in list(group):
                if seq.batch_pos >= 0 and seq in self._running and seq.request_id not in self._failing:
                    try:
                        outputs.extend(self._sample(seq))
                    except Exception as exc:  # this request's alone
                        self._fail(seq.request_id, exc)
        if embedding is not None and embedding in self._running:  # after sampling: a decode overwrites logits
            try:
                if self._decode_embeddings(embedding):
                    outputs.extend(self._sample(embedding))
            except Exception as exc:  # this request's alone
                self._fail(embedding.request_id, exc)
        self._admit_waiting()
        return outputs

    def _score_prompt(self, seq: _Sequence, first: int, start: int, end: int) -> list[OmniOutput]:
        """The logprob of each prompt token in this chunk, from the logits before it; with the
        chunk that ends the prompt, all of them go out (once, before the first sampled token)."""
        lps = seq.prompt_logprobs
        if start == 0:
            lps.append(self._token_logprob(seq.prompt[0], None, 0))
        for i in range(first, end):
            pos = start + i - first
            if pos + 1 < len(seq.prompt):
                lps.append(self._token_logprob(seq.prompt[pos + 1], i, seq.params.top_logprobs))
        if seq.n_past < len(seq.prompt):
            return []
        seq.prompt_logprobs = None
        return [OmniOutput(seq.request_id, "thinker", seq.index, prompt_logprobs=lps)]

    def _decode_embeddings(self, seq: _Sequence) -> bool:
        """Decode the next rows of the image block `seq` is in, as one batch of embeddings.
        True if they end the prompt (its logits are then ready to sample)."""
        ll = self._ll
        start, (rows, causal) = next((s, b) for s, b in seq.blocks.items() if s <= seq.n_past < s + len(b[0]))
        offset = seq.n_past - start
        take = min(len(rows) - offset, self._n_batch)
        if not causal and take < len(rows):
            raise RuntimeError(f"an image of {len(rows)} embeddings needs n_batch >= {len(rows)} (non-causal)")
        if self._embd_batch is None:
            self._embd_batch = ll.llama_batch_init(self._n_batch, self.n_embd, 1)
        batch = self._embd_batch
        part = np.ascontiguousarray(rows[offset:offset + take], dtype=np.float32)
        ctypes.memmove(batch.embd, part.ctypes.data, part.nbytes)
        last = seq.n_past + take == len(seq.prompt)
        for k in range(take):
            batch.pos[k] = seq.n_past + k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = seq.slot
            batch.logits[k] = last and k == take - 1
        batch.n_tokens = take
        if not causal:
            ll.llama_set_causal_attn(self._ctx, False)
        try:
            rc = ll.llama_decode(self._ctx, batch)
        finally:
            if not causal:
                ll.llama_set_causal_attn(self._ctx, True)
        if rc != 0:
            raise RuntimeError(f"llama_decode of image embeddings failed with code {rc}")
        seq.n_past += take
        seq.batch_pos = take - 1 if last else -1
        return last

    def _put(self, i: int, token: int, pos: int, slot: int, want_logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = slot
        b.logits[i] = want_logits

    def _fail(self, request_id: str, exc: Exception) -> None:
        """A request this step failed: the worker tells it and aborts it here."""
        if request_id not in self._failing:
            self._failing.add(request_id)
            self.failed.append((request_id, exc))

    def _sample(self, seq: _Sequence) -> list[OmniOutput]:
        if seq.doomed:
            raise RuntimeError("this request's prompt holds the text the stage was told to fail on (fail_on)")
        ll = self._ll
        token = ll.llama_sampler_sample(seq.sampler, self._ctx, seq.batch_pos)
        req = self._requests[seq.request_id]
        if ll.llama_vocab_is_eog(self._vocab, token) and not seq.params.ignore_eos:
            return self._finish(seq, req, "stop", "", [], None)
        seq.generated += 1
        piece = self._piece(token)
        logprobs = [self._token_logprob(token, seq.batch_pos, seq.params.top_logprobs)] if seq.params.logprobs else None
        text = seq.stream.push(piece)
        if seq.stream.stopped:
            return self._finish(seq, req, "stop", text, [token], logprobs)
        if seq.generated >= seq.max_new or seq.n_past + 1 > self.context_length:
            return self._finish(seq, req, "length", text + seq.stream.flush(), [token], logprobs)
        seq.next_token = token
        return [
            OmniOutput(seq.request_id, "thinker", seq.index, text, [token], logprobs, completion_tokens=seq.generated)
        ]

    def _finish(self, seq, req, reason, text, tokens, logprobs) -> list[OmniOutput]:
        if reason == "stop" and not seq.stream.stopped:
            text = (text or "") + seq.stream.flush()
        self._release(seq)
        req.open_choices -= 1
        done = req.open_choices == 0
        if done:
            del self._requests[seq.request_id]
        return [
            OmniOutput(
                seq.request_id,
                "thinker",
                seq.index,
                text or "",
                tokens,
                logprobs,
                finish_reason=reason,
                done=done,
                prompt_tokens=req.prompt_tokens,
                cached_tokens=seq.cached,
                completion_tokens=seq.generated,
            )
        ]

    def _release(self, seq: _Sequence) -> None:
        self._running.remove(seq)
        kept = _reusable(seq.prompt, seq.n_past) if self._prefix_cache else 0
        self._ll.llama_memory_seq_rm(self._mem, seq.slot, kept, -1)  # the prompt's KV stays, the answer's goes
        if kept:
            self._kept[seq.slot] = (seq.lora, seq.prompt[:kept])
        self._ll.llama_sampler_free(seq.sampler)
        self._free_slots.append(seq.slot)

    def _admit_waiting(self) -> None:
        while self._waiting and self._free_slots:
            seq = self._waiting.popleft()
            self._place(seq)
            self._running.append(seq)

    def _place(self, seq: _Sequence) -> None:
        """Give `seq` the lowest free slot, starting it past the longest prompt prefix already in the
        KV cache, kept by a free slot or being decoded by a running sequence: that slot's stream is
        copied, so the source keeps its own; only when the source is the last free slot is it taken
        over."""
        ll, prompt = self._ll, seq.prompt
        limit = len(prompt) - 1  # the last prompt token is always decoded: its logits start the answer
        if -1 in prompt:
            limit = min(limit, prompt.index(-1))  # image embeddings are not matched
        sources = [(s, kept) for s, (lora, kept) in self._kept.items() if lora == seq.lora]
        sources += [(r.slot, r.prompt[:_reusable(r.prompt, r.n_past)]) for r in self._running if r.lora == seq.lora]
        source, match = max(((s, min(_common(kept, prompt), limit)) for s, kept in sources),
                            key=lambda item: item[1], default=(-1, 0))
        if not self._prefix_cache or seq.prompt_logprobs is not None:
            match = 0  # (a prompt's logprobs need its every token decoded)
        if match >= self.args.prefix_cache_min_tokens:
            # the lowest free slot, so that the running ones stay consecutive (see `step`); a kept prefix
            # is copied, not taken over, unless its slot is the last one free
            others = [s for s in self._free_slots if s != source]
            slot = min(others) if others else source
        else:  # a shorter prefix is worth taking only where it costs nothing: kept by the lowest free slot
            source = slot = min(self._free_slots)
            lora, kept = self._kept.get(slot, (None, []))
            match = min(_common(kept, prompt), limit) if self._prefix_cache and lora == seq.lora and \
                seq.prompt_logprobs is None else 0
        if match and source == slot:
            ll.llama_memory_seq_rm(self._mem, slot, match, -1)  # take over the kept prompt: drop its tail
        else:
            ll.llama_memory_seq_rm(self._mem, slot, -1, -1)
            if match:  # each slot is its own KV stream: the copy is the whole stream, then its tail goes
                ll.llama_memory_seq_cp(self._mem, source, slot, -1, -1)
                ll.llama_memory_seq_rm(self._mem, slot, match, -1)
        self._free_slots.remove(slot)
        self._kept.pop(slot, None)
        seq.slot = slot
        seq.n_past = seq.cached = match

    # ---- embeddings ----------------------------------------------------------------

    def _embed(self, request_id: str, inputs: list, truncate: int | None) -> list[OmniOutput]:
        """/v1/embeddings from this model: each input decoded alone in a context in embedding
        mode (mean pooling over its tokens), then L2-normalised. Runs between steps: the
        running sequences wait for it, as for a prompt chunk."""
        ll = self._ll
        longest = min(self.context_length, EMBED_MAX_TOKENS)
        limit = longest if truncate in (None, -1) else truncate
        if limit > longest:
            raise InvalidRequest(f"truncate_prompt_tokens: this model embeds at most {longest} tokens; got {limit}",
                                 param="truncate_prompt_tokens")
        ids = [self.tokenize(x, add_special=True) if isinstance(x, str) else list(x) for x in inputs]
        for i, tokens in enumerate(ids):
            where = f"input[{i}]" if len(ids) > 1 else "input"
            if any(not 0 <= t < self.n_vocab for t in tokens):
                raise InvalidRequest(f"{where}: token ids must be 0 to {self.n_vocab - 1} (this model's vocabulary)",
                                     param="input")
            if len(tokens) > limit:
                if truncate is None:
                    raise InvalidRequest(f"{where} is {len(tokens)} tokens; this model embeds at most {longest}. "
                                         "Shorten it, or set truncate_prompt_tokens to keep its last tokens",
                                         param="input")
                ids[i] = tokens[len(tokens) - limit:]
        total = sum(map(len, ids))
        if total > EMBED_MAX_REQUEST_TOKENS:  # it runs between decoding steps: every chat waits for it
            raise InvalidRequest(f"input: {total} tokens in one request; this model embeds at most "
                                 f"{EMBED_MAX_REQUEST_TOKENS} per request (send fewer inputs per request)",
                                 param="input")
        if self._embed_ctx is None:
            cparams = ll.llama_context_default_params()
            cparams.embeddings = True
            cparams.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = longest  # one input, one ubatch
            cparams.n_threads = cparams.n_threads_batch = self.args.threads
            self._embed_ctx = ll.llama_init_from_model(self._model, cparams)
            if not self._embed_ctx:
                raise RuntimeError("llama.cpp could not create an embedding context (out of memory?)")
        vectors = np.zeros((len(ids), self.n_embd_out), np.float32)
        memory = ll.llama_get_memory(self._embed_ctx)
        for row, tokens in enumerate(ids):
            ll.llama_memory_clear(memory, True)
            array = (ll.llama_token * len(tokens))(*tokens)  # the batch points into it: keep it alive
            batch = ll.llama_batch_get_one(array, len(tokens))
            if ll.llama_decode(self._embed_ctx, batch) != 0:  # a failed request, not a dead worker
                raise OmniError(f"llama.cpp could not embed input[{row}] ({len(tokens)} tokens)")
            pooled = np.ctypeslib.as_array(ll.llama_get_embeddings_seq(self._embed_ctx, 0), (self.n_embd_out,))
            vectors[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return [OmniOutput(request_id, started=True, info={"prompt_tokens": sum(map(len, ids))}),
                OmniOutput(request_id, finish_reason="stop", done=True,
                           info={"indices": list(range(len(ids))), "embeddings": vectors})]

    # ---- LoRA adapters -------------------------------------------------------------

    def _load_startup_loras(self) -> dict[str, str]:
        """`--lora-paths`: an adapter that does not load stops the start, naming it."""
        for name, path in self.args.lora_paths.items():
            try:
                self._load_lora(name, path)
            except InvalidRequest as exc:
                raise RuntimeError(f"--lora-paths {name}={path}: {exc}") from None
        return dict(self._lora_paths)

    def _load_lora(self, name: str, path: str) -> None:
        if name in self._loras:
            raise InvalidRequest(f"lora_name: an adapter named {name!r} is already loaded", param="lora_name")
        LOG_TAIL.clear()
        adapter = self._ll.llama_adapter_lora_init(self._model, path.encode())
        if not adapter:
            reason = next((line for line in reversed(LOG_TAIL) if "fail" in line or "error" in line),
                          "llama.cpp could not read it")
            raise InvalidRequest(f"lora_path: {path} is not a LoRA adapter for this model: {reason}",
                                 param="lora_path")
        self._loras[name] = adapter
        self._lora_paths[name] = path

    def _lora_op(self, op: dict[str, Any]) -> dict[str, str]:
        name = op["name"]
        if op["op"] == "load":
            self._load_lora(name, op["path"])
        else:
            if name not in self._loras:
                raise self._not_loaded(name, "lora_name")
            users = sum(s.lora == name for s in list(self._running) + list(self._waiting))
            if users:
                raise InvalidRequest(f"lora_name: adapter {name!r} is in use by {users} running sequence(s); "
                                     "unload it when they finish", param="lora_name")
            if self._active_lora == name:
                self._ll.llama_set_adapters_lora(self._ctx, None, 0, None)
                self._active_lora = None
            for slot in [s for s, (lora, _) in self._kept.items() if lora == name]:
                self._ll.llama_memory_seq_rm(self._mem, slot, -1, -1)
                del self._kept[slot]
            self._ll.llama_adapter_lora_free(self._loras.pop(name))
            del self._lora_paths[name]
        return dict(self._lora_paths)

    def _not_loaded(self, name: str, param: str, hint: str = "") -> NotFound:
        return NotFound(f"LoRA adapter {name!r} is not loaded; loaded: {', '.join(self._loras) or 'none'}{hint}",
                        param=param, code="lora_not_found")

    def _lora_group(self) -> list[_Sequence]:
        """The running sequences this step decodes: those of one adapter (None: the base model),
        the adapters taking turns, and that adapter set on the context."""
        adapters = list(dict.fromkeys(seq.lora for seq in self._running))
        if len(adapters) <= 1:
            chosen = adapters[0] if adapters else self._active_lora
        else:
            self._turn = (self._turn + 1) % len(adapters)
            chosen = adapters[self._turn]
        if chosen != self._active_lora:
            ll = self._ll
            if chosen is None:
                ll.llama_set_adapters_lora(self._ctx, None, 0, None)
            else:
                ll.llama_set_adapters_lora(self._ctx, (ll.llama_adapter_lora_p_ctypes * 1)(self._loras[chosen]), 1,
                                           (ctypes.c_float * 1)(1.0))
            self._active_lora = chosen
        return [seq for seq in self._running if seq.lora == chosen]

    # ---- sampling ------------------------------------------------------------------

    def _make_sampler(self, p: SamplingParams, seed: int):
        ll = self._ll
        grammar = None
        if p.grammar:  # first, so that no later sampler can pick a token the grammar forbids
            grammar = ll.llama_sampler_init_grammar(self._vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise InvalidRequest("the output grammar does not parse (llama.cpp GBNF, with a `root` rule): "
                                     "check the ebnf", param="ebnf")
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        add = lambda s: ll.llama_sampler_chain_add(chain, s)  # noqa: E731
        if grammar:
            add(grammar)
        if p.logit_bias:
            biases = (ll.llama_logit_bias * len(p.logit_bias))(
                *(ll.llama_logit_bias(token, bias) for token, bias in p.logit_bias.items()))
            add(ll.llama_sampler_init_logit_bias(self.n_vocab, len(p.logit_bias), biases))
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            add(ll.llama_sampler_init_penalties(
                self.n_vocab, 256, p.repetition_penalty, p.frequency_penalty, p.presence_penalty))
        if p.temperature <= 0:
            add(ll.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            add(ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0:
            add(ll.llama_sampler_init_min_p(p.min_p, 1))
        add(ll.llama_sampler_init_temp(p.temperature))
        add(ll.llama_sampler_init_dist(seed))
        return chain

    def _token_logprob(self, token: int, batch_pos: int | None, k: int) -> TokenLogprob:
        """`token`'s log-probability in the model's own distribution at `batch_pos` of the last
        decode, with the `k` likeliest there (None: a first token, which nothing predicts)."""
        piece = self._piece(token)
        if batch_pos is None:
            return TokenLogprob(piece.decode("utf-8", "replace"), None, list(piece))
        ptr = self._ll.llama_get_logits_ith(self._ctx, batch_pos)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        logz = peak + np.log(np.exp(logits - peak).sum())
        top: list[tuple[str, float, list[int]]] = []
        if k:
            ids = np.argpartition(-logits, k)[:k]
            ids = ids[np.argsort(-logits[ids])]
            for t in ids:
                b = self._piece(int(t))
                top.append((b.decode("utf-8", "replace"), float(logits[t] - logz), list(b)))
        return TokenLogprob(piece.decode("utf-8", "replace"), float(logits[token] - logz), list(piece), top)

    # ---- text ----------------------------------------------------------------------

    def _render(self, request: OmniRequest) -> str:
        if self._formatter is None:
            raise InvalidRequest(
                "this model has no chat template in its GGUF metadata; use /v1/completions", param="messages"
            )
        try:
            return self._formatter(messages=request.messages, tools=request.tools).prompt
        except Exception as exc:  # a template may raise on role order etc.
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from None

    def _prompt_with_images(self, request: OmniRequest, images: list[list[dict[str, Any]]]
                            ) -> tuple[list[int], dict[int, tuple[np.ndarray, bool]]]:
        """The rendered chat with each image's encoder chunks where its marker was:
        tokens as they are, embeddings as blocks (their positions hold -1 in the tokens)."""
        pieces = self._render(request).split(MEDIA_MARKER)
        if len(pieces) != len(images) + 1:
            raise InvalidRequest(f"the messages may not contain the text {MEDIA_MARKER!r}", param="messages")
        tokens: list[int] = []
        blocks: dict[int, tuple[np.ndarray, bool]] = {}
        for piece, chunks in zip(pieces, images + [[]], strict=True):
            tokens += self.tokenize(piece, add_special=False)
            for chunk in chunks:
                if "tokens" in chunk:
                    tokens += chunk["tokens"]
                    continue
                rows = chunk["embd"]
                if rows.shape[1] != self.n_embd:
                    raise RuntimeError(f"the vision encoder's embeddings are {rows.shape[1]} wide; the model takes "
                                       f"{self.n_embd} (is --mmproj for this --model-path?)")
                blocks[len(tokens)] = (rows, chunk["causal"])
                tokens += [-1] * len(rows)
        return tokens, blocks

    def _prompt_tokens(self, request: OmniRequest) -> list[int]:
        if request.messages is not None:
            return self.tokenize(self._fitting(self._render(request), "messages"), add_special=False)
        if isinstance(request.prompt, list):
            bad = [t for t in request.prompt if not 0 <= t < self.n_vocab]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})", "prompt")
            return list(request.prompt)
        return self.tokenize(self._fitting(request.prompt or "", "prompt"), add_special=True)

    def _fitting(self, text: str, param: str) -> str:
        """`text`, unless it is too long for the context however it tokenizes (checked before
        tokenizing it, which takes long for a huge text)."""
        fewest = -(-len(text.encode("utf-8", "surrogatepass")) // self._max_piece_bytes)
        if fewest >= self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens, but the {param} has at least "
                f"{fewest} tokens ({len(text)} characters). Shorten the {param}.", param=param)
        return text

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        ll = self._ll
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _piece_text(self, token: int, special: bool) -> str:
        return self._piece(token, special).decode("utf-8", "replace") if token >= 0 else ""

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")


_llama_log = logging.getLogger("llama.cpp")


def decode_error(rc: int) -> OmniError:
    """What the requests of a batch that `llama_decode` refused get: no room in the KV cache (1) or no
    memory for the compute (< -1) is a 507, since the same request may pass when fewer run."""
    if rc == 1 or rc < -1:
        return OutOfMemory(f"llama.cpp had no memory for this request's batch (llama_decode returned {rc}); retry "
                           "it, or run fewer requests at once")
    return OmniError(f"llama.cpp could not decode this request's batch (llama_decode returned {rc})")


def _reusable(prompt: list[int], n_past: int) -> int:
    """How many of a sequence's prompt tokens have their KV in its slot (up to the first image)."""
    n = min(n_past, len(prompt))
    return min(n, prompt.index(-1)) if -1 in prompt[:n] else n


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


LOG_TAIL: deque[str] = deque(maxlen=8)  # llama.cpp's last lines: why a call returned NULL


def forward_llama_log(level: int, text: bytes, user_data) -> None:
    LOG_TAIL.append(text.decode("utf-8", "replace").rstrip())
    if _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug(text.decode("utf-8", "replace").rstrip())

"""llama.cpp through its ctypes binding (llama-cpp-python's low-level API): the model and its
vocabulary, one decoding context with one KV stream per slot, the batch, samplers, logits and
LoRA adapters. No scheduling and no requests: the scheduler decides what a step decodes, this
module only makes llama.cpp do it."""

from __future__ import annotations

import ctypes
import functools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniserve.errors import InvalidRequest, OmniError, OutOfMemory
from omniserve.runtime.types import SamplingParams, TokenLogprob

_llama_log = logging.getLogger("llama.cpp")
LOG_TAIL: deque[str] = deque(maxlen=8)  # llama.cpp's last lines: why a call returned NULL


def forward_llama_log(level: int, text: bytes, user_data) -> None:
    LOG_TAIL.append(text.decode("utf-8", "replace").rstrip())
    if _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug(text.decode("utf-8", "replace").rstrip())


def quiet_llama_log(ll) -> Any:
    """llama.cpp talks a lot on stderr and says its failures in return values: its log goes to Python
    logging at debug level (and `LOG_TAIL`). One callback serves the whole process and lives as long as it:
    llama.cpp keeps calling it after the executor that set it is gone (a freed one crashed the next model
    load)."""
    callback = _log_callback(ll)
    ll.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


def quiet_mtmd_log(ll, mtmd) -> Any:
    """libmtmd's log (and its helpers') the same way: it prints a line per encoded item otherwise."""
    callback = quiet_llama_log(ll)
    mtmd.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    return callback


@functools.cache
def _log_callback(ll) -> Any:
    return ll.llama_log_callback(forward_llama_log)


def decode_error(rc: int) -> OmniError:
    """What the requests of a batch that `llama_decode` refused get: no room in the KV cache (1) or no
    memory for the compute (< -1) is a 507, since the same request may pass when fewer run."""
    if rc == 1 or rc < -1:
        return OutOfMemory(f"llama.cpp had no memory for this request's batch (llama_decode returned {rc}); retry "
                           "it, or run fewer requests at once")
    return OmniError(f"llama.cpp could not decode this request's batch (llama_decode returned {rc})")


DEFAULT_CONTEXT_LENGTH = 4096  # tokens per sequence unless configured (or trained shorter)


def resolve_context_length(configured: int | None, trained: int) -> int:
    """Tokens per sequence: as configured, else the model's trained length up to DEFAULT_CONTEXT_LENGTH."""
    return configured or min(trained, DEFAULT_CONTEXT_LENGTH)


@dataclass
class Batch:
    """One `llama_decode` call's tokens: each with its position, its slot (KV stream) and whether
    its logits are wanted."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    logits: list[bool] = field(default_factory=list)

    def add(self, token: int, position: int, slot: int, logits: bool) -> None:
        self.tokens.append(token)
        self.positions.append(position)
        self.slots.append(slot)
        self.logits.append(logits)

    def __len__(self) -> int:
        return len(self.tokens)


class _EmbeddingBatch:
    """A `llama_batch` of input embeddings whose arrays Python owns: M-RoPE needs four positions per row,
    more than `llama_batch_init` allocates."""

    def __init__(self, ll, n_batch: int, n_embd: int):
        self.embd = np.zeros((n_batch, n_embd), np.float32)
        self.pos = np.zeros(4 * n_batch, np.int32)
        self.n_seq_id = np.ones(n_batch, np.int32)
        self.seq = np.zeros(n_batch, np.int32)
        self.logits = np.zeros(n_batch, np.int8)
        seq_ptr = ctypes.POINTER(ctypes.c_int32)
        self.seq_ids = (seq_ptr * n_batch)(*(ctypes.cast(self.seq.ctypes.data + 4 * i, seq_ptr)
                                             for i in range(n_batch)))
        self.batch = ll.llama_batch()
        self.batch.embd = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.batch.pos = self.pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.batch.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.batch.seq_id = self.seq_ids
        self.batch.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(self, rows: np.ndarray, positions: np.ndarray, slots: np.ndarray, outputs: np.ndarray):
        """Each row with its position(s), its slot and whether its output (logits, embedding) is wanted."""
        n = len(rows)
        self.embd[:n] = rows
        self.pos[:positions.size] = positions.reshape(-1)  # section-major: all rows' t, then y, x, z
        self.seq[:n] = slots
        self.logits[:n] = outputs
        self.batch.n_tokens = n
        return self.batch


class LlamaRuntime:
    """One GGUF model and one decoding context of `slots` KV streams of `context_length` cells."""

    def __init__(self, model_path: str, *, context_length: int | None, slots: int, n_batch: int, threads: int,
                 n_gpu_layers: int, embeddings: bool = False):
        import llama_cpp

        self.ll = ll = llama_cpp
        self.model_path = model_path
        self.threads = threads
        self._log_callback = quiet_llama_log(ll)
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self.model = ll.llama_model_load_from_file(model_path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.trained_context_length = ll.llama_model_n_ctx_train(self.model)
        self.context_length = resolve_context_length(context_length, self.trained_context_length)

        cparams = ll.llama_context_default_params()
        cparams.n_seq_max = slots
        cparams.n_ctx = self.context_length * slots
        cparams.n_batch = max(n_batch, slots)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False  # a KV stream per slot: attention reads one sequence's cells, not all
        cparams.no_perf = True
        if embeddings:  # each output row's last hidden state (a TTS backbone's, which a head samples from)
            cparams.embeddings, cparams.pooling_type = True, ll.LLAMA_POOLING_TYPE_NONE
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.n_batch = cparams.n_batch
        self.n_embd = ll.llama_model_n_embd_inp(self.model)
        self.n_embd_out = ll.llama_model_n_embd_out(self.model)  # pooled embeddings have this width
        # recurrent and hybrid models keep one state per sequence: it cannot be cut back to a prefix
        self.can_trim = not (ll.llama_model_is_recurrent(self.model) or ll.llama_model_is_hybrid(self.model))
        self._mem = ll.llama_get_memory(self.ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._embd_batch: _EmbeddingBatch | None = None  # made when the first media embeddings arrive
        self.adapters: dict[str, Any] = {}  # LoRA adapter name -> llama_adapter_lora pointer
        self.active_adapter: str | None = None  # set on the context now
        # no token spells more bytes than this: a text longer than context * this cannot fit
        self.max_piece_bytes = max(len(self.piece(t, special=True)) for t in range(self.n_vocab)) or 1

    def close(self) -> None:
        ll = self.ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)

    # ---- the KV cache: one stream per slot ------------------------------------------

    def trim_slot(self, slot: int, keep: int) -> None:
        """Drop a slot's cells from position `keep` on (0: all of them)."""
        self.ll.llama_memory_seq_rm(self._mem, slot, keep, -1)

    def save_slot(self, slot: int) -> bytearray:
        """The KV of a slot's tokens (its used cells only, where copying a stream copies all of them);
        empty if llama.cpp could not save it."""
        size = self.ll.llama_state_seq_get_size(self.ctx, slot)
        state = bytearray(size)
        saved = self.ll.llama_state_seq_get_data(self.ctx, (ctypes.c_uint8 * size).from_buffer(state), size, slot)
        return state if saved == size else bytearray()

    def load_slot(self, slot: int, state: bytearray) -> bool:
        """Put saved KV into a slot, in place of what it held; False (and the slot empty) if llama.cpp
        could not (no room)."""
        size = len(state)
        if size and self.ll.llama_state_seq_set_data(
                self.ctx, (ctypes.c_uint8 * size).from_buffer(state), size, slot) == size:
            return True
        self.trim_slot(slot, 0)
        return False

    # ---- decoding --------------------------------------------------------------------

    def decode(self, batch: Batch) -> int:
        """Decode a batch of tokens; llama_decode's return code (0: done)."""
        b = self._batch
        for i, (token, pos, slot, logits) in enumerate(zip(batch.tokens, batch.positions, batch.slots, batch.logits,
                                                           strict=True)):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = slot
            b.logits[i] = logits
        b.n_tokens = len(batch)
        return self.ll.llama_decode(self.ctx, b)

    def decode_embeddings(self, rows: np.ndarray, positions: np.ndarray, slot: int, causal: bool,
                          last_logits: bool) -> int:
        """Decode rows of input embeddings (a media item's) into `slot`: `positions` is (1, n), or (4, n) M-RoPE
        sections for the Qwen2-VL family, which llama.cpp reads section-major from one array of 4n."""
        outputs = np.zeros(len(rows), np.int8)
        outputs[-1] = last_logits
        if not causal:
            self.ll.llama_set_causal_attn(self.ctx, False)
        try:
            return self.decode_rows(rows, positions, np.full(len(rows), slot, np.int32), outputs)
        finally:
            if not causal:
                self.ll.llama_set_causal_attn(self.ctx, True)

    def decode_rows(self, rows: np.ndarray, positions: np.ndarray, slots: np.ndarray, outputs: np.ndarray) -> int:
        """Decode rows of input embeddings, each into its own slot at its own position, in one batch."""
        if self._embd_batch is None:
            self._embd_batch = _EmbeddingBatch(self.ll, self.n_batch, self.n_embd)
        return self.ll.llama_decode(self.ctx, self._embd_batch.fill(rows, positions, slots, outputs))

    def embedding(self, batch_index: int) -> np.ndarray:
        """The last hidden state at `batch_index` of the last decode (a copy; needs `embeddings`)."""
        return np.ctypeslib.as_array(self.ll.llama_get_embeddings_ith(self.ctx, batch_index),
                                     shape=(self.n_embd,)).copy()

    def logits(self, batch_index: int) -> np.ndarray:
        """The logits at `batch_index` of the last decode (a view into llama.cpp's buffer)."""
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, batch_index), shape=(self.n_vocab,))

    def token_logprob(self, token: int, batch_index: int | None, k: int) -> TokenLogprob:
        """`token`'s log-probability in the model's own distribution at `batch_index` of the last
        decode, with the `k` likeliest there (None: a first token, which nothing predicts)."""
        piece = self.piece(token)
        if batch_index is None:
            return TokenLogprob(piece.decode("utf-8", "replace"), None, list(piece))
        logits = self.logits(batch_index).astype(np.float64)
        peak = logits.max()
        logz = peak + np.log(np.exp(logits - peak).sum())
        top: list[tuple[str, float, list[int]]] = []
        if k:
            ids = np.argpartition(-logits, k)[:k]
            ids = ids[np.argsort(-logits[ids])]
            for t in ids:
                b = self.piece(int(t))
                top.append((b.decode("utf-8", "replace"), float(logits[t] - logz), list(b)))
        return TokenLogprob(piece.decode("utf-8", "replace"), float(logits[token] - logz), list(piece), top)

    # ---- sampling --------------------------------------------------------------------

    def make_sampler(self, p: SamplingParams, seed: int):
        """A llama.cpp sampler chain for these parameters (free it with `free_sampler`)."""
        ll = self.ll
        grammar = None
        if p.grammar:  # first, so that no later sampler can pick a token the grammar forbids
            grammar = ll.llama_sampler_init_grammar(self.vocab, p.grammar.encode(), b"root")
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

    def sample(self, sampler, batch_index: int) -> int:
        return self.ll.llama_sampler_sample(sampler, self.ctx, batch_index)

    def free_sampler(self, sampler) -> None:
        self.ll.llama_sampler_free(sampler)

    def is_end(self, token: int) -> bool:
        return self.ll.llama_vocab_is_eog(self.vocab, token)

    # ---- LoRA adapters ---------------------------------------------------------------

    def load_adapter(self, name: str, path: str) -> None:
        """Load a GGUF LoRA adapter; an `InvalidRequest` saying why it is not one for this model."""
        LOG_TAIL.clear()
        adapter = self.ll.llama_adapter_lora_init(self.model, path.encode())
        if not adapter:
            reason = next((line for line in reversed(LOG_TAIL) if "fail" in line or "error" in line),
                          "llama.cpp could not read it")
            raise InvalidRequest(f"lora_path: {path} is not a LoRA adapter for this model: {reason}",
                                 param="lora_path")
        self.adapters[name] = adapter

    def free_adapter(self, name: str) -> None:
        if self.active_adapter == name:
            self.use_adapter(None)
        self.ll.llama_adapter_lora_free(self.adapters.pop(name))

    def use_adapter(self, name: str | None) -> None:
        """Apply one adapter (None: the base model) to the context, for the steps from now on."""
        if name == self.active_adapter:
            return
        ll = self.ll
        if name is None:
            ll.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            ll.llama_set_adapters_lora(self.ctx, (ll.llama_adapter_lora_p_ctypes * 1)(self.adapters[name]), 1,
                                       (ctypes.c_float * 1)(1.0))
        self.active_adapter = name

    # ---- the vocabulary --------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """`parse_special`: special tokens written in the text are those tokens (else their characters)."""
        ll = self.ll
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def special_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    @property
    def bos_text(self) -> str:
        return self.special_text(self.ll.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.special_text(self.ll.llama_vocab_eos(self.vocab))

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value (None: the file has no such key)."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

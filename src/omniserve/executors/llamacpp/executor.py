"""The LLM stage on llama.cpp, with continuous batching: requests join and leave between steps, so
a new request never waits for another to finish, only for the current step.

This module is the stage's face: it checks a request, waits for its upstream media, turns it into
sequences (one per choice) and their outputs. The scheduler (`scheduler.py`) decides what each
step decodes; the runtime (`runtime.py`) makes llama.cpp do it, and samples each sequence with its
own llama.cpp sampler chain (C code, not numpy over the vocabulary).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import ContextLengthExceeded, InvalidRequest, NotFound
from omniserve.executors.base import EmbeddingParams, Executor, StepResult, request_params
from omniserve.executors.llamacpp.embeddings import LlamaEmbedder
from omniserve.executors.llamacpp.prompt import MEDIA_MARKER, PromptRenderer
from omniserve.executors.llamacpp.runtime import LlamaRuntime, decode_error
from omniserve.executors.llamacpp.scheduler import EmbeddingChunk, Scheduler, SeqState, Sequence, StepPlan
from omniserve.executors.text_stream import TextStream
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.messages import ControlOp, CountTokens, LoadAdapter, UnloadAdapter
from omniserve.runtime.types import (
    Embeddings,
    EncodedChunk,
    MediaReading,
    OmniOutput,
    OmniRequest,
    SamplingParams,
    TokenLogprob,
    fill_media_parts,
    media_kinds,
    media_order,
)


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
    prefix_cache_min_tokens: int = Field(16, ge=1, description="the shortest prompt prefix copied from another "
                                         "slot or from host memory")
    prompt_store_mib: int = Field(1024, ge=0, description="host memory for the prompts that slots kept, once a new "
                                  "prompt takes their slot (llama-server's --cache-ram); 0: none")
    # prompts a step advances: one at a time gives the earliest first tokens on a CPU (see scheduler.py)
    max_prefill_sequences: int = Field(1, ge=1, description="prompts in prefill that one step advances")
    short_prefill_tokens: int = Field(16, ge=0, description="a prompt with no more tokens left joins any step")
    lora_paths: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> GGUF path")


@dataclass(eq=False)
class _Generation(Sequence):
    """A sequence and what sampling it needs."""

    params: SamplingParams = field(default_factory=SamplingParams)
    sampler: Any = None
    stream: TextStream = field(default_factory=TextStream)
    max_new: int = 0
    generated: int = 0
    # the prompt tokens' logprobs, collected while the prompt is decoded (None: not wanted)
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_tokens: int
    open_choices: int
    sequences: list[_Generation] = field(default_factory=list)


class LlamaCppExecutor(Executor):
    def __init__(self, args: LlamaCppArgs, stage: str = "thinker"):
        super().__init__(args, stage)
        # Requests waiting for upstream stages to turn their media into text or embeddings:
        # the request, the kinds still missing, and what came so far by (kind, index).
        self._upstream: dict[str, tuple[OmniRequest, set[str], dict[tuple[str, int], MediaReading]]] = {}
        self._requests: dict[str, _Request] = {}
        self._lora_paths: dict[str, str] = {}
        self._failing: set[str] = set()  # the requests a step failed, until the worker aborts them

    # ---- lifecycle -----------------------------------------------------------------

    def load(self) -> StageFacts:
        a = self.args
        self.rt = rt = LlamaRuntime(a.model_path, context_length=a.context_length, slots=a.max_sequences,
                                    n_batch=a.n_batch, threads=a.threads, n_gpu_layers=a.n_gpu_layers)
        self.context_length = rt.context_length
        self.scheduler = Scheduler(rt, a.max_sequences, rt.n_batch, a.prefix_cache and rt.can_trim,
                                   a.prefix_cache_min_tokens, a.max_prefill_sequences, a.short_prefill_tokens,
                                   a.prompt_store_mib << 20)
        self.renderer = PromptRenderer(rt, a.chat_template)
        self.embedder = LlamaEmbedder(rt)
        return StageFacts(
            model_path=a.model_path,
            context_length=rt.context_length,
            trained_context_length=rt.trained_context_length,
            max_sequences=a.max_sequences,
            n_vocab=rt.n_vocab,
            loras=self._load_startup_loras(),
            dimensions=rt.n_embd_out,  # of /v1/embeddings from this model (llama.cpp embedding mode)
            has_chat_template=bool(self.renderer.template),
            template_tools="tools" in (self.renderer.template or ""),  # renders OpenAI tools itself
            architecture=rt.meta("general.architecture"),
            name=rt.meta("general.name"),
        )

    def close(self) -> None:
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.rt.free_sampler(seq.sampler)
        self.embedder.close()
        self.rt.close()

    # ---- admission -----------------------------------------------------------------

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        if "embedding" in request.output_modalities:  # /v1/embeddings from the chat GGUF
            embed = request_params(EmbeddingParams, request.params_for(self.stage))
            vectors, tokens = self.embedder.embed(embed)
            return [OmniOutput(request.request_id, started=True, prompt_tokens=tokens),
                    OmniOutput(request.request_id, finish_reason="stop", done=True,
                               data=Embeddings(list(range(len(vectors))), vectors))]
        kinds = media_kinds(request.messages)
        if kinds:  # starts once the speech and vision stages have fed their text
            self._upstream[request.request_id] = (request, kinds, {})
            return []
        return self._start(request)

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        """What one upstream stage made of the media items, all at once: one `MediaReading` per item
        (`index`): a transcript or image description, or a vision encoder's tokens and embeddings."""
        waiting = self._upstream.get(outputs[0].request_id)
        if waiting is None:
            return []
        request, missing, readings = waiting
        for o in outputs:
            if isinstance(o.data, MediaReading):
                readings[(o.data.kind, o.index)] = o.data
                missing.discard(o.data.kind)
        if missing:
            return []
        del self._upstream[request.request_id]
        encoded = {key: r.chunks for key, r in readings.items() if r.chunks is not None}
        marked = {kind for kind, _ in encoded}
        order = media_order(request.messages, marked)
        request.messages = fill_media_parts(request.messages, {k: r.text for k, r in readings.items()},
                                            markers=dict.fromkeys(marked, MEDIA_MARKER))
        return self._start(request, [encoded[key] for key in order] if encoded else None)

    def _start(self, request: OmniRequest, media: list[list[EncodedChunk]] | None = None) -> list[OmniOutput]:
        """`media`: for a multimodal model, each item's encoder chunks in prompt order."""
        params = request.sampling_for(self.stage)
        prompt, blocks = (self.renderer.tokens_with_media(request, media) if media
                          else (self.renderer.tokens(request), {}))
        self._check(request, params, prompt)
        req = _Request(request.request_id, len(prompt), params.n)
        base_seed = params.seed if params.seed is not None else random.getrandbits(32)
        for index in range(params.n):
            scored = params.prompt_logprobs and index == 0 and not blocks
            req.sequences.append(_Generation(
                request_id=request.request_id,
                index=index,
                prompt=prompt,
                lora=params.lora,
                score_prompt=scored,
                blocks=blocks,
                params=params,
                sampler=self.rt.make_sampler(params, (base_seed + index) & 0xFFFFFFFF),
                stream=TextStream(params.stop),
                max_new=params.max_tokens or self.context_length - len(prompt),
                prompt_logprobs=[] if scored else None,
            ))
        self._requests[request.request_id] = req
        for seq in req.sequences:
            self.scheduler.add(seq)
        return [OmniOutput(request.request_id, started=True, prompt_tokens=len(prompt))]

    def _check(self, request: OmniRequest, params: SamplingParams, prompt: list[int]) -> None:
        """A 400 for a request this model cannot run, before it takes a slot."""
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
        if params.lora is not None and params.lora not in self.rt.adapters:
            raise self._not_loaded(params.lora, "model", " (POST /v1/load_lora_adapter, or --lora-paths)")
        bad = [t for t in params.logit_bias if not 0 <= t < self.rt.n_vocab]
        if bad:
            raise InvalidRequest(f"logit_bias: token id {bad[0]} is outside the vocabulary "
                                 f"(0..{self.rt.n_vocab - 1})", param="logit_bias")

    def abort(self, request_id: str) -> None:
        self._upstream.pop(request_id, None)
        self._failing.discard(request_id)
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        for seq in req.sequences:
            self._release(seq)
        self.scheduler.admit()

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step: schedule -> run -> update ---------------------------------------

    def step(self) -> StepResult:
        plan = self.scheduler.schedule()
        outputs: list[OmniOutput] = []
        if plan.batch:
            outputs += self._run(plan)
        if plan.embedding is not None:  # after sampling: a decode overwrites the logits
            outputs += self._run_embeddings(plan.embedding)
        self.scheduler.admit()
        return self.result(outputs, len(plan.sequences) + (plan.embedding is not None))

    def _run(self, plan: StepPlan) -> list[OmniOutput]:
        rc = self.rt.decode(plan.batch)
        if rc != 0:  # the batch's requests fail, the stage goes on
            for seq in plan.sequences:
                self._fail(seq.request_id, decode_error(rc))
            return []
        self.scheduler.advance(plan)
        outputs: list[OmniOutput] = []
        for chunk in plan.chunks:
            if chunk.seq.score_prompt:
                outputs += self._score_prompt(chunk.seq, chunk.first, chunk.start, chunk.count)
        for seq in plan.sequences:
            if seq.batch_pos >= 0:
                outputs += self._sample_guarded(seq)
        return outputs

    def _run_embeddings(self, chunk: EmbeddingChunk) -> list[OmniOutput]:
        seq = chunk.seq
        if seq.request_id in self._failing:
            return []
        rc = self.rt.decode_embeddings(chunk.rows, chunk.positions, seq.slot, chunk.causal, chunk.last)
        if rc != 0:
            self._fail(seq.request_id, decode_error(rc))
            return []
        self.scheduler.advance_embeddings(chunk)
        return self._sample_guarded(seq) if chunk.last else []

    def _sample_guarded(self, seq: _Generation) -> list[OmniOutput]:
        """Sample one sequence; an exception fails its request alone."""
        if seq.request_id in self._failing or seq.request_id not in self._requests:
            return []
        try:
            return self._sample(seq)
        except Exception as exc:
            self._fail(seq.request_id, exc)
            return []

    def _score_prompt(self, seq: _Generation, first: int, start: int, count: int) -> list[OmniOutput]:
        """The logprob of each prompt token in this chunk, from the logits before it; with the
        chunk that ends the prompt, all of them go out (once, before the first sampled token)."""
        lps = seq.prompt_logprobs
        if start == 0:
            lps.append(self.rt.token_logprob(seq.prompt[0], None, 0))
        for i in range(first, first + count):
            pos = start + i - first
            if pos + 1 < len(seq.prompt):
                lps.append(self.rt.token_logprob(seq.prompt[pos + 1], i, seq.params.top_logprobs))
        if seq.n_past < len(seq.prompt):
            return []
        seq.prompt_logprobs = None
        seq.score_prompt = False
        return [OmniOutput(seq.request_id, self.stage, seq.index, prompt_logprobs=lps)]

    def _fail(self, request_id: str, exc: Exception) -> None:
        """A request this step failed: the worker tells it and aborts it here."""
        if request_id not in self._failing:
            self._failing.add(request_id)
            self.fail(request_id, exc)

    def _sample(self, seq: _Generation) -> list[OmniOutput]:
        rt = self.rt
        token = rt.sample(seq.sampler, seq.batch_pos)
        req = self._requests[seq.request_id]
        if rt.is_end(token) and not seq.params.ignore_eos:
            return self._finish(seq, req, "stop", "", [], None)
        seq.generated += 1
        piece = rt.piece(token)
        logprobs = [rt.token_logprob(token, seq.batch_pos, seq.params.top_logprobs)] if seq.params.logprobs else None
        text = seq.stream.push(piece)
        if seq.stream.stopped:
            return self._finish(seq, req, "stop", text, [token], logprobs)
        if seq.generated >= seq.max_new or seq.n_past + 1 > self.context_length:
            return self._finish(seq, req, "length", text + seq.stream.flush(), [token], logprobs)
        seq.next_token = token
        return [OmniOutput(seq.request_id, self.stage, seq.index, text, [token], logprobs,
                           completion_tokens=seq.generated)]

    def _finish(self, seq: _Generation, req: _Request, reason: str, text: str, tokens: list[int],
                logprobs: list[TokenLogprob] | None) -> list[OmniOutput]:
        if reason == "stop" and not seq.stream.stopped:
            text = (text or "") + seq.stream.flush()
        self._release(seq)
        req.open_choices -= 1
        done = req.open_choices == 0
        if done:
            del self._requests[seq.request_id]
        return [OmniOutput(seq.request_id, self.stage, seq.index, text or "", tokens, logprobs, finish_reason=reason,
                           done=done, prompt_tokens=req.prompt_tokens, cached_tokens=seq.cached,
                           completion_tokens=seq.generated)]

    def _release(self, seq: _Generation) -> None:
        """Once per sequence, whether it finished, failed or was aborted: its slot and its sampler go."""
        if seq.state is not SeqState.DONE:
            self.scheduler.release(seq)
            self.rt.free_sampler(seq.sampler)

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
        if name in self.rt.adapters:
            raise InvalidRequest(f"lora_name: an adapter named {name!r} is already loaded", param="lora_name")
        self.rt.load_adapter(name, path)
        self._lora_paths[name] = path

    def control(self, op: ControlOp) -> dict[str, str] | list[int]:
        """Load or unload an adapter (/v1/load_lora_adapter, /v1/unload_lora_adapter), between steps;
        the adapters loaded after it, name -> path. Or count the tokens of texts."""
        if isinstance(op, CountTokens):
            return [len(self.rt.tokenize(text, add_special=False)) for text in op.texts]
        if isinstance(op, LoadAdapter):
            self._load_lora(op.name, op.path)
            return dict(self._lora_paths)
        if not isinstance(op, UnloadAdapter):
            return super().control(op)
        name = op.name
        if name not in self.rt.adapters:
            raise self._not_loaded(name, "lora_name")
        users = self.scheduler.adapter_users(name)
        if users:
            raise InvalidRequest(f"lora_name: adapter {name!r} is in use by {users} running sequence(s); "
                                 "unload it when they finish", param="lora_name")
        self.scheduler.forget_adapter(name)
        self.rt.free_adapter(name)
        del self._lora_paths[name]
        return dict(self._lora_paths)

    def _not_loaded(self, name: str, param: str, hint: str = "") -> NotFound:
        return NotFound(f"LoRA adapter {name!r} is not loaded; loaded: {', '.join(self.rt.adapters) or 'none'}"
                        f"{hint}", param=param, code="lora_not_found")

"""A multimodal model's own encoder (libmtmd, from llama.cpp), as a stage.

`--mmproj mmproj.gguf` with a multimodal `--model-path`: this stage turns each image
(a photo or a video frame), and each audio clip when the projector hears (Qwen2-Audio,
Voxtral, Ultravox, ...), into what the thinker decodes in its place: the model's wrapping
tokens (e.g. SmolVLM's `<fake_token_around_image><global-img>`, Qwen2-Audio's
`<|audio_bos|>`) and the projected embeddings, as llama.cpp's own multimodal path does.
For models that place media with M-RoPE (Qwen2-VL family, Qwen2.5-Omni) each block also
carries its rows' positions on the image grid, which the thinker offsets to where the
block lands. The text model is mapped here (for those tokens and its widths), not run: the
thinker runs it. Each step encodes one item of one request, round robin.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import ContextLengthExceeded, InvalidRequest
from omniserve.executors.base import RoundRobinExecutor
from omniserve.executors.llamacpp.runtime import LOG_TAIL, quiet_mtmd_log, resolve_context_length
from omniserve.media.audio import ASR_RATE
from omniserve.runtime.facts import MediaKind, StageFacts
from omniserve.runtime.types import EncodedChunk, MediaReading, OmniOutput, OmniRequest

log = logging.getLogger(__name__)


class MtmdArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    mmproj_path: str
    context_length: int | None = Field(None, ge=16, description="the thinker's; default as the thinker's default")
    threads: int = Field(2, ge=1)
    use_gpu: bool = False


@dataclass
class _MediaItem:
    kind: str  # "image" or "audio"
    index: int  # among the request's items of its kind
    chunks: Any  # libmtmd's chunks, preprocessed (mel features, image tiles), not yet encoded: freed once encoded
    seconds: float = 0.0  # audio


@dataclass
class _MediaJob:
    request_id: str
    items: list[_MediaItem]  # in prompt order
    done: int = 0


class MtmdEncoderExecutor(RoundRobinExecutor):
    args: MtmdArgs

    def __init__(self, args: MtmdArgs, stage: str = "vision"):
        super().__init__(args, stage)

    def load(self) -> StageFacts:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self._ll, self._mtmd = llama_cpp, mtmd
        self._log_callback = quiet_mtmd_log(llama_cpp, mtmd)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        # the weights are mapped from the file (the thinker maps the same pages), neither copied nor put on a GPU:
        # a vocabulary-only load would do for the wrapping tokens, but it reports no widths, and libmtmd then skips
        # its check that the projector is this model's
        params.n_gpu_layers, params.use_extra_bufts = 0, False
        self._model = llama_cpp.llama_model_load_from_file(self.args.model_path.encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.args.model_path}")
        cparams = mtmd.mtmd_context_params_default()
        cparams.use_gpu, cparams.n_threads, cparams.print_timings, cparams.warmup = (
            self.args.use_gpu, self.args.threads, False, False)
        self._ctx = mtmd.mtmd_init_from_file(self.args.mmproj_path.encode(), self._model, cparams)
        if not self._ctx:
            said = next((line for line in reversed(LOG_TAIL) if "mismatch" in line or "error" in line), "")
            reason = said.splitlines()[0].split("error: ")[-1] if said else ""
            raise RuntimeError(f"libmtmd could not load the projector {self.args.mmproj_path} for this model"
                               + (f": {reason}" if reason else ""))
        self.sees, self.hears = mtmd.mtmd_support_vision(self._ctx), mtmd.mtmd_support_audio(self._ctx)
        self.mrope = mtmd.mtmd_decode_use_mrope(self._ctx)  # positions by grid (Qwen2-VL family, Qwen-Omni)
        if self.hears and mtmd.mtmd_get_audio_sample_rate(self._ctx) != ASR_RATE:
            raise RuntimeError(f"this projector's audio encoder takes {mtmd.mtmd_get_audio_sample_rate(self._ctx)} "
                               f"Hz audio; only {ASR_RATE} Hz ones are supported")
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self._model)  # with Qwen3-VL's DeepStack features
        self.context_length = resolve_context_length(self.args.context_length,
                                                     llama_cpp.llama_model_n_ctx_train(self._model))
        self.marker = mtmd.mtmd_default_marker()
        self._wrapping = self._wrapping_fixes()
        media: list[MediaKind] = [kind for kind, takes in (("image", self.sees), ("audio", self.hears)) if takes]
        return StageFacts(model_path=self.args.mmproj_path, n_embd=self.n_embd, media=media)

    def close(self) -> None:
        for job in self._jobs:
            self._free(job.items[job.done:])
        super().close()
        self._mtmd.mtmd_free(self._ctx)
        self._ll.llama_model_free(self._model)

    def abort(self, request_id: str) -> None:
        for job in self._jobs:
            if job.request_id == request_id:
                self._free(job.items[job.done:])
        super().abort(request_id)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        """The request's images, and its audio when this model hears (else speech to text reads it), each
        preprocessed now: how many tokens they take is known before any is encoded."""
        if request.images and not self.sees:
            raise InvalidRequest("this model's projector takes no images (it hears only); send audio or text",
                                 param="messages")
        media = [("image", i, image) for i, image in enumerate(request.images)]
        media += [("audio", i, audio) for i, audio in enumerate(request.audios)] if self.hears else []
        if not media:
            raise InvalidRequest("the request has no media for the encoder stage", param="messages")
        items: list[_MediaItem] = []
        try:
            for kind, index, data in media:
                items.append(_MediaItem(kind, index, self._tokenize_item(kind, data),
                                        len(data) / ASR_RATE if kind == "audio" else 0.0))
            self._check_room(items)
        except Exception:
            self._free(items)
            raise
        self._jobs.append(_MediaJob(request.request_id, items))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _MediaJob) -> tuple[list[OmniOutput], bool]:
        item = job.items[job.done]
        try:
            chunks = self._encode_chunks(item.chunks)
        finally:
            self._free([item])
        job.done += 1
        done = job.done == len(job.items)
        return [OmniOutput(job.request_id, index=item.index, finish_reason="stop", done=done,
                           data=MediaReading(item.kind, chunks=chunks))], done

    def _check_room(self, items: list[_MediaItem]) -> None:
        """A 400 before any encoding when the media alone fill the thinker's context: libmtmd's preprocessing
        (mel features, image tiles) says how many tokens each item takes (a 30 s window of audio is 750)."""
        mtmd = self._mtmd
        taken = {"audio": 0, "image": 0}
        for item in items:
            taken[item.kind] += sum(mtmd.mtmd_input_chunk_get_n_tokens(mtmd.mtmd_input_chunks_get(item.chunks, i))
                                    for i in range(mtmd.mtmd_input_chunks_size(item.chunks)))
        if sum(taken.values()) >= self.context_length:
            seconds = sum(item.seconds for item in items)
            raise ContextLengthExceeded(
                f"this request's media take {sum(taken.values())} tokens of this model's context of "
                f"{self.context_length} (audio: {taken['audio']} tokens for {seconds:.1f} s; images: "
                f"{taken['image']} tokens); send shorter audio or fewer images", param="messages")

    def _free(self, items: list[_MediaItem]) -> None:
        for item in items:
            if item.chunks is not None:
                self._mtmd.mtmd_input_chunks_free(item.chunks)
                item.chunks = None

    def encode_image(self, image: np.ndarray) -> list[EncodedChunk]:
        """One image -> its chunks in order: the wrapping tokens and the block of embeddings."""
        return self._encode("image", image)

    def encode_audio(self, audio: np.ndarray) -> list[EncodedChunk]:
        """One clip (mono float at 16 kHz) -> its chunks, as `encode_image`'s: the wrapping tokens, and one
        block of embeddings per 30 s window."""
        return self._encode("audio", audio)

    def _tokenize_item(self, kind: str, data: np.ndarray):
        """libmtmd's chunks of one item: preprocessed, not yet encoded (the caller frees them)."""
        mtmd = self._mtmd
        if kind == "image":
            image = np.ascontiguousarray(data, dtype=np.uint8)
            bitmap = mtmd.mtmd_bitmap_init(image.shape[1], image.shape[0],
                                           (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes()))
        else:
            audio = np.ascontiguousarray(data, dtype=np.float32)
            bitmap = mtmd.mtmd_bitmap_init_from_audio(len(audio), audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text(text=self.marker, text_len=len(self.marker), add_special=False,
                                        parse_special=True)
            rc = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text),
                                    (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)  # the chunks hold their own copy of what they need
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise InvalidRequest(f"the model's encoder could not take this {kind} (mtmd_tokenize: {rc})",
                                 param="messages")
        return chunks

    def _encode(self, kind: str, data: np.ndarray) -> list[EncodedChunk]:
        item = _MediaItem(kind, 0, self._tokenize_item(kind, data))
        try:
            return self._encode_chunks(item.chunks)
        finally:
            self._free([item])

    def _encode_chunks(self, chunks) -> list[EncodedChunk]:
        """Encode an item's media chunks; its chunks in order, as the thinker decodes them."""
        mtmd = self._mtmd
        out: list[EncodedChunk] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            chunk_type = mtmd.mtmd_input_chunk_get_type(chunk)
            if chunk_type == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                if count.value:
                    tokens = list(tokens[: count.value])
                    out.append(EncodedChunk(tokens=self._wrapping.get(tuple(tokens), tokens)))
                continue
            if mtmd.mtmd_encode_chunk(self._ctx, chunk) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
            rows = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self._ctx), shape=(n * self.n_embd,))
            out.append(EncodedChunk(embd=rows.reshape(n, self.n_embd).copy(),  # the buffer is reused
                                    causal=not mtmd.mtmd_decode_use_non_causal(self._ctx, chunk),
                                    positions=self._positions(chunk, chunk_type, n) if self.mrope else None,
                                    span=mtmd.mtmd_input_chunk_get_n_pos(chunk)))
        return out

    def _positions(self, chunk, kind: int, n: int) -> np.ndarray:
        """A block's M-RoPE positions from its first one, (4, n) in llama.cpp's section order (t, y, x, z), as
        libmtmd's own helper lays them out: an image by its grid, audio in a line."""
        mtmd = self._mtmd
        if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            return np.tile(np.arange(n, dtype=np.int32), (4, 1))
        image = mtmd.mtmd_input_chunk_get_tokens_image(chunk)
        grid = [mtmd.mtmd_image_tokens_get_decoder_pos(image, 0, i) for i in range(n)]
        return np.array([[p.t for p in grid], [p.y for p in grid], [p.x for p in grid], [p.z for p in grid]],
                        dtype=np.int32)

    def _wrapping_fixes(self) -> dict[tuple[int, ...], list[int]]:
        """libmtmd wraps every Qwen2-VL-style image in `<|vision_start|>`...`<|vision_end|>`, but Qwen2.5-Omni's
        vocabulary names those tokens `<|vision_bos|>` and `<|vision_eos|>`: there the names would be read as
        plain text, a dozen tokens the model never saw around an image. The model's own tokens go in instead."""
        fixes = {}
        for theirs, ours in (("<|vision_start|>", "<|vision_bos|>"), ("<|vision_end|>", "<|vision_eos|>")):
            spelled, own = self._tokenize(theirs), self._tokenize(ours)
            if len(spelled) > 1 and len(own) == 1:
                fixes[tuple(spelled)] = own
        return fixes

    def _tokenize(self, text: str) -> list[int]:
        ll, data = self._ll, text.encode()
        buf = (ll.llama_token * (len(data) + 8))()
        n = ll.llama_tokenize(ll.llama_model_get_vocab(self._model), data, len(data), buf, len(buf), False, True)
        return list(buf[:max(n, 0)])

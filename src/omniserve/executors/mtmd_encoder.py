"""A vision-language model's own image encoder (libmtmd, from llama.cpp), as a stage.

`--mmproj mmproj.gguf` with a VLM `--model-path`: this stage turns each image
(a photo or a video frame) into what the thinker decodes in its place: the
model's wrapping tokens (e.g. SmolVLM's `<fake_token_around_image><global-img>`)
and the projected image embeddings, as llama.cpp's own multimodal path does.
The text model is loaded vocabulary-only here, for those tokens; the thinker
holds the weights. Each step encodes one image of one request, round robin.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import PerImageExecutor
from omniserve.executors.llamacpp.runtime import quiet_llama_log
from omniserve.runtime.types import MediaReading

log = logging.getLogger(__name__)


class MtmdArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    mmproj_path: str
    threads: int = Field(2, ge=1)
    use_gpu: bool = False


class MtmdEncoderExecutor(PerImageExecutor):
    args: MtmdArgs

    def load(self) -> dict[str, Any]:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self._ll, self._mtmd = llama_cpp, mtmd
        self._log_callback = quiet_llama_log(llama_cpp)
        mtmd.mtmd_log_set(self._log_callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(self._log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(self.args.model_path.encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.args.model_path}")
        cparams = mtmd.mtmd_context_params_default()
        cparams.use_gpu, cparams.n_threads, cparams.print_timings, cparams.warmup = (
            self.args.use_gpu, self.args.threads, False, False)
        self._ctx = mtmd.mtmd_init_from_file(self.args.mmproj_path.encode(), self._model, cparams)
        if not self._ctx:
            raise RuntimeError(f"libmtmd could not load the projector {self.args.mmproj_path} for this model")
        if not mtmd.mtmd_support_vision(self._ctx):
            raise RuntimeError(f"{self.args.mmproj_path} has no vision encoder")
        if mtmd.mtmd_decode_use_mrope(self._ctx):
            raise RuntimeError("this model places image tokens with M-RoPE (Qwen2-VL style), which the thinker "
                               "does not support yet")
        self.n_embd = _n_embd(llama_cpp, self._model)
        self.marker = mtmd.mtmd_default_marker()
        return {"model_path": self.args.mmproj_path, "n_embd": self.n_embd}

    def close(self) -> None:
        super().close()
        self._mtmd.mtmd_free(self._ctx)
        self._ll.llama_model_free(self._model)

    def process(self, image: np.ndarray) -> dict[str, Any]:
        return MediaReading("image", chunks=self.encode(image))

    def encode(self, image: np.ndarray) -> list[dict[str, Any]]:
        """One image -> its chunks in order: {"tokens": [...]} or {"embd": (n, n_embd) float32, "causal": bool}."""
        mtmd = self._mtmd
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        bitmap = mtmd.mtmd_bitmap_init(width, height, (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes()))
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text(text=self.marker, text_len=len(self.marker), add_special=False,
                                        parse_special=True)
            rc = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text),
                                    (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
            if rc != 0:
                raise InvalidRequest(f"the vision encoder could not take this image (mtmd_tokenize: {rc})")
            out: list[dict[str, Any]] = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t()
                    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    if count.value:
                        out.append({"tokens": list(tokens[: count.value])})
                    continue
                if mtmd.mtmd_encode_chunk(self._ctx, chunk) != 0:
                    raise RuntimeError("mtmd_encode_chunk failed")
                data = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self._ctx), shape=(n * self.n_embd,))
                out.append({"embd": data.reshape(n, self.n_embd).copy(),  # the buffer is reused
                            "causal": not mtmd.mtmd_decode_use_non_causal(self._ctx, chunk)})
            return out
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)


def _n_embd(ll, model) -> int:
    """The text model's input width; a vocabulary-only load reports 0, so read the metadata."""
    n = ll.llama_model_n_embd_inp(model)
    if n > 0:
        return n
    buf = ctypes.create_string_buffer(256)
    ll.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
    arch = buf.value
    ll.llama_model_meta_val_str(model, arch + b".embedding_length", buf, len(buf))
    return int(buf.value)

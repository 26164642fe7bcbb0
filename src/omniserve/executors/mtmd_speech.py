"""libmtmd's audio generation (llama.cpp's multimodal library): the parts of a speech model that are not its
llama.cpp backbone, in the projector file (`mmproj*.gguf`), each a stateless call. Pocket TTS (a flow head that
samples a latent per frame, the codec's decoder, the codec's encoder for voices) and Qwen3-TTS (a code predictor
that completes each frame's 16 codes from its first, the codec's decoder, an ECAPA-TDNN speaker encoder).

One libmtmd context draws all its noise from one generator, reseeded only when a call's seed differs from the
last call's: each call here gets a seed of its own (see `frame`), so that what a seed makes does not depend on
what else is being spoken.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from omniserve.errors import OmniError
from omniserve.executors.llamacpp.runtime import LOG_TAIL, quiet_mtmd_log


@dataclass
class Frame:
    """One generated frame."""

    next_input: np.ndarray  # the backbone's next input row (Qwen3-TTS: before its text overlay)
    latent: np.ndarray | None = None  # Pocket TTS: the frame's latent (normalised)
    codes: np.ndarray | None = None  # Qwen3-TTS: the frame's codes, its first one then the predicted ones
    eos: bool = False  # Pocket TTS: the state this frame came from says the speech ends


class AudioGeneration:
    def __init__(self, mmproj_path: str, model: Any, n_embd: int, threads: int, use_gpu: bool, kind: str):
        """`kind`: "pockettts" or "qwen3tts", the generation the projector must hold."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd, self.n_embd = mtmd, n_embd
        self._log_callback = quiet_mtmd_log(llama_cpp, mtmd)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings, params.warmup = use_gpu, threads, False, False
        self._ctx = mtmd.mtmd_init_from_file(mmproj_path.encode(), model, params)
        if not self._ctx:
            said = next((line for line in reversed(LOG_TAIL) if "error" in line), "")
            raise RuntimeError(f"libmtmd could not load {mmproj_path} for this model"
                               + (f": {said.split('error: ')[-1]}" if said else ""))
        info = mtmd.mtmd_gen_audio_get_info(self._ctx)
        types = {"pockettts": mtmd.MTMD_GEN_AUDIO_TYPE_POCKETTTS, "qwen3tts": mtmd.MTMD_GEN_AUDIO_TYPE_QWEN3TTS}
        names = {"pockettts": "Pocket TTS", "qwen3tts": "Qwen3-TTS"}
        if info.type != types[kind]:
            self.close()
            raise RuntimeError(f"{mmproj_path} is not a {names[kind]} projector (libmtmd's audio generation type "
                               f"{info.type})")
        self.sample_rate = info.sample_rate
        self._last_seed: int | None = None

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def _process(self, inp) -> Any:
        out = self._mtmd.mtmd_gen_out()
        if self._mtmd.mtmd_gen_audio_process(self._ctx, ctypes.byref(inp), ctypes.byref(out)) != 0:
            raise OmniError(f"libmtmd's audio generation failed: {LOG_TAIL[-1] if LOG_TAIL else 'no reason given'}")
        return out

    def frame(self, condition: np.ndarray, seed: int, *, temperature: float = 0.0, code0: int = 0, top_k: int = 50,
              top_p: float = 1.0) -> Frame:
        """The next frame from the backbone's hidden state `condition`. Pocket TTS: noise of `temperature`
        (0: none). Qwen3-TTS: the frame's first code `code0` (sampled from the backbone's logits), the others
        sampled with `top_k` and `top_p` (top_k 1: greedy; libmtmd samples them at temperature 1)."""
        if seed == self._last_seed:  # libmtmd reseeds its generator only for a seed other than the last one's
            self._code(condition, seed ^ 1, temperature, code0, top_k, top_p)
        return self._code(condition, seed, temperature, code0, top_k, top_p)

    def _code(self, condition: np.ndarray, seed: int, temperature: float, code0: int, top_k: int,
              top_p: float) -> Frame:
        mtmd = self._mtmd
        inp = mtmd.mtmd_gen_inp_default(self._ctx)
        hidden = np.ascontiguousarray(condition, np.float32)
        inp.type, inp.seed, inp.code0, inp.top_k, inp.top_p = (mtmd.MTMD_GEN_PROCESS_TYPE_GEN_CODE, seed, code0,
                                                                top_k, top_p)
        inp.embd = hidden.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        inp.temp = temperature or 1e-30  # libmtmd takes 0 for its default; noise of 1e-15 is none
        out = self._process(inp)
        self._last_seed = seed
        return Frame(np.ctypeslib.as_array(out.embd, shape=(self.n_embd,)).copy(),
                     np.ctypeslib.as_array(out.feats, shape=(out.n_feats,)).copy() if out.n_feats else None,
                     np.ctypeslib.as_array(out.codes, shape=(out.n_codes,)).copy() if out.n_codes else None,
                     bool(out.is_eos))

    def audio(self, state: bytes | None, *, latents: np.ndarray | None = None,
              codes: np.ndarray | None = None) -> tuple[np.ndarray, bytes]:
        """Frames as samples, after the frames whose decoder `state` this is (None: the start): Pocket TTS's
        latents (n, latent) or Qwen3-TTS's codes (n, 16). The samples, and the decoder's state after them."""
        mtmd = self._mtmd
        inp = mtmd.mtmd_gen_inp_default(self._ctx)
        inp.type = mtmd.MTMD_GEN_PROCESS_TYPE_GEN_WAV
        inp.seed = self._last_seed if self._last_seed is not None else 0  # the codec draws nothing: no reseed
        if latents is not None:
            data = np.ascontiguousarray(latents, np.float32)
            inp.feats, inp.n_feats = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size
        else:
            data = np.ascontiguousarray(codes, np.int32)
            inp.codes, inp.n_codes = data.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), data.size
        if state is not None:
            kept = ctypes.create_string_buffer(state, len(state))
            inp.state_data, inp.state_size = ctypes.cast(kept, ctypes.POINTER(ctypes.c_char)), len(state)
        self._last_seed = inp.seed
        out = self._process(inp)
        return (np.ctypeslib.as_array(out.audio, shape=(out.n_samples,)).copy(),
                ctypes.string_at(out.state_data, out.state_size))

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """A clip at the model's rate as its voice rows: Pocket TTS's codec latents through the speaker
        projection (one row per frame), Qwen3-TTS's speaker embedding (one row)."""
        mtmd = self._mtmd
        audio = np.ascontiguousarray(wave, np.float32)
        bitmap = mtmd.mtmd_bitmap_init_from_audio(len(audio), audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            marker = mtmd.mtmd_default_marker()
            text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
            if mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1):
                raise OmniError("libmtmd could not read the voice clip")
            rows = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                    continue
                n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd.mtmd_encode_chunk(self._ctx, chunk):
                    raise OmniError("libmtmd could not encode the voice clip")
                rows.append(np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self._ctx), shape=(n, self.n_embd)).copy())
            return np.concatenate(rows)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)


def file_digest(path: str) -> str:
    """A short name for a file by its bytes: what a voice encoded by one projector is kept under."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def seed_of(*parts: int) -> int:
    """A 32-bit seed from the parts, never libmtmd's "random" (UINT32_MAX)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % 0xFFFFFFFF

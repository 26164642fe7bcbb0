"""Pocket TTS as GGUF, through llama.cpp: no torch. The backbone is a llama.cpp model (`model.gguf`); the flow
head that samples each frame, the codec's decoder that makes it audio, and the codec's encoder that reads a voice
clip are libmtmd's audio generation (`mmproj.gguf`, `mtmd_gen_audio_process`), as llama.cpp's converter splits
Kyutai's checkpoint.

Speaking is `PocketSpeaker`'s, as with transformers. What differs:
- every sentence of the batch has a KV stream (slot) of its own in one llama.cpp context, so a step is one
  `llama_decode` of one row per sentence, with no cache to stack;
- the flow head and the codec run one sentence at a time (libmtmd takes one hidden state per call); the codec
  carries each sentence's decoder state from chunk to chunk, so chunks join with no frames decoded twice;
- a frame's noise comes from libmtmd's generator, seeded per frame from the request's seed, the choice, the
  sentence and the frame, so that a seed repeats its audio whatever else is in the batch (not transformers'
  noise: only greedy speech, `temperature` 0, equals transformers');
- a voice is the backbone's prompt rows: a built-in voice's codec latents through the speaker projection, or a
  clip (built-in or custom) through libmtmd's codec encoder.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import OmniError
from omniserve.executors.llamacpp.runtime import LOG_TAIL, Batch, LlamaRuntime, decode_error, quiet_mtmd_log
from omniserve.executors.pocket_tts import (
    SAMPLE_RATE,
    ClonedSpeechParams,
    PocketSpeaker,
    _Job,
    _Settings,
    _Utterance,
    _Voice,
    budget,
    read_voices,
)
from omniserve.executors.sentence_speech import to_pcm16

FADE_IN_SECONDS = 0.005  # each sentence fades in, as the original's
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")  # a built-in voice given as a clip


class PocketTtsGgufArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str  # the backbone
    mmproj_path: str  # the flow head and the codec
    voices_path: str  # built-in voices: codec latents (.safetensors, `audio_prompt_latents`) or clips
    voice_library: str | None = None  # the voice library's folder: custom voices speak from their samples
    threads: int = Field(2, ge=1)
    n_gpu_layers: int = 0  # backbone layers on the GPU of a GPU build of llama.cpp; the codec follows (0: CPU)
    max_batch: int = Field(8, ge=1)  # sentences that make a frame in one step
    # per sentence: its voice (30 s at most: 375 frames), text and frames
    context_length: int = Field(1024, ge=64)
    first_chunk_frames: int = Field(2, ge=1)  # frames in a sentence's first audio chunk; each next one doubles
    max_chunk_frames: int = Field(32, ge=1)
    temperature: float = Field(0.7, ge=0)  # of each frame's noise; 0: none (greedy)
    min_frames_before_eos: int = Field(6, ge=0)


@dataclass
class _GgufUtterance(_Utterance):
    slot: int = 0
    seed: int = 0  # the sentence's: frame k's noise is seeded from it and k
    condition: Any = None  # the backbone's last hidden state, which the next frame is sampled from
    next_row: Any = None  # the last frame as the backbone's next input row
    state: bytes | None = None  # the codec decoder's state after the frames sent


class AudioGeneration:
    """libmtmd's Pocket TTS parts, each a stateless call: a frame from a hidden state, audio from frames (with
    the decoder's state in and out), a voice's prompt rows from a clip."""

    def __init__(self, mmproj_path: str, model: Any, n_embd: int, threads: int, use_gpu: bool):
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
        if info.type != mtmd.MTMD_GEN_AUDIO_TYPE_POCKETTTS or info.sample_rate != SAMPLE_RATE:
            self.close()
            raise RuntimeError(f"{mmproj_path} is not a Pocket TTS projector (libmtmd's audio generation type "
                               f"{info.type}, {info.sample_rate} Hz)")
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

    def frame(self, condition: np.ndarray, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """The next frame from a hidden state: its latent (normalised), the backbone's next input row, and
        whether the speech ends here."""
        if seed == self._last_seed:  # libmtmd reseeds its generator only for a seed other than the last one's
            self._code(condition, seed ^ 1, temperature)
        return self._code(condition, seed, temperature)

    def _code(self, condition: np.ndarray, seed: int, temperature: float) -> tuple[np.ndarray, np.ndarray, bool]:
        mtmd = self._mtmd
        inp = mtmd.mtmd_gen_inp_default(self._ctx)
        hidden = np.ascontiguousarray(condition, np.float32)
        inp.type, inp.seed = mtmd.MTMD_GEN_PROCESS_TYPE_GEN_CODE, seed
        inp.embd = hidden.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        inp.temp = temperature or 1e-30  # libmtmd takes 0 for its default; noise of 1e-15 is none
        out = self._process(inp)
        self._last_seed = seed
        return (np.ctypeslib.as_array(out.feats, shape=(out.n_feats,)).copy(),
                np.ctypeslib.as_array(out.embd, shape=(self.n_embd,)).copy(), bool(out.is_eos))

    def audio(self, frames: np.ndarray, state: bytes | None) -> tuple[np.ndarray, bytes]:
        """Frames (n, latent) as 1920 samples each, after the frames whose decoder `state` this is."""
        mtmd = self._mtmd
        inp = mtmd.mtmd_gen_inp_default(self._ctx)
        feats = np.ascontiguousarray(frames, np.float32)
        inp.type, inp.n_feats = mtmd.MTMD_GEN_PROCESS_TYPE_GEN_WAV, feats.size
        inp.seed = self._last_seed if self._last_seed is not None else 0  # the codec draws nothing: no reseed
        inp.feats = feats.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if state is not None:
            kept = ctypes.create_string_buffer(state, len(state))
            inp.state_data, inp.state_size = ctypes.cast(kept, ctypes.POINTER(ctypes.c_char)), len(state)
        self._last_seed = inp.seed
        out = self._process(inp)
        return (np.ctypeslib.as_array(out.audio, shape=(out.n_samples,)).copy(),
                ctypes.string_at(out.state_data, out.state_size))

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """A 24 kHz clip as the backbone's voice rows (the codec's latents through the speaker projection)."""
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


class PocketTtsGgufExecutor(PocketSpeaker):
    params_model = ClonedSpeechParams
    _prepared_tensor = "audio_prompt_rows"  # a custom voice is kept as the backbone's rows, not the codec's latents

    def __init__(self, args: PocketTtsGgufArgs, stage: str = "talker"):
        super().__init__(args, stage)
        self._slots: list[int] = list(range(args.max_batch))[::-1]  # free KV streams
        self._sentences: dict[tuple[str, int], int] = {}  # per (request, choice): sentences started

    def load(self) -> dict[str, Any]:
        a = self.args
        self.rt = rt = LlamaRuntime(a.model_path, context_length=a.context_length, slots=a.max_batch, n_batch=512,
                                    threads=a.threads, n_gpu_layers=a.n_gpu_layers, embeddings=True)
        if rt.meta("general.architecture") != "pockettts":
            raise RuntimeError(f"{a.model_path} is not a Pocket TTS backbone (its architecture is "
                               f"{rt.meta('general.architecture')})")
        self.gen = AudioGeneration(a.mmproj_path, rt.model, rt.n_embd, a.threads, a.n_gpu_layers != 0)
        self._voice_bos = self._special("<|bos_before_voice|>", required=False)
        self._audio_bos = self._special("<|audio_bos|>", required=True)
        self._min_frames = a.min_frames_before_eos
        self._fade = np.linspace(0, 1, int(FADE_IN_SECONDS * SAMPLE_RATE), dtype=np.float32)
        self._voices = self._read_voices(Path(a.voices_path))
        self._open_library()
        digest = hashlib.sha256()
        with open(a.mmproj_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self._codec_key = f"pocket-tts-gguf-{digest.hexdigest()[:16]}"
        self._warm_up()
        return {**self._facts(Path(a.model_path)), "device": "gpu" if a.n_gpu_layers else "cpu"}

    def _special(self, name: str, required: bool) -> int | None:
        ids = self.rt.tokenize(name, add_special=False)
        if len(ids) == 1 and self.rt.special_text(ids[0]) == name:
            return ids[0]
        if required:
            raise RuntimeError(f"{self.args.model_path}: its vocabulary has no {name}, which Pocket TTS speaks from")
        return None

    def _read_voices(self, folder: Path) -> dict[str, np.ndarray]:
        """Built-in voices as prompt rows: codec latents through the speaker projection (read from the
        projector file), or clips through the codec's encoder."""
        from omniserve.media.audio import decode_audio

        voices: dict[str, np.ndarray] = {}
        latents = read_voices(folder)
        if latents:
            import gguf

            tensors = {t.name: t for t in gguf.GGUFReader(self.args.mmproj_path).tensors}
            projection = np.asarray(tensors["a.speaker_proj.weight"].data, np.float32)  # (n_embd, latent)
            voices.update({name: v @ projection.T for name, v in latents.items()})
        for clip in sorted(p for p in folder.glob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
            voices.setdefault(clip.stem, self.encode_voice(decode_audio(clip.read_bytes(), where=str(clip),
                                                                        rate=SAMPLE_RATE)))
        if not voices:
            raise ValueError(f"{folder} holds no voice (.safetensors with `audio_prompt_latents`, or a clip: "
                             f"{', '.join(AUDIO_SUFFIXES)})")
        return voices

    def encode_voice(self, wave) -> np.ndarray:
        """A 24 kHz clip as prompt rows, ending on a short pause as transformers' processor ends a voice."""
        return self.gen.encode(end_on_pause(np.asarray(wave, np.float32)))

    def close(self) -> None:
        super().close()
        self.gen.close()
        self.rt.close()

    def _forget(self, request_id: str) -> None:
        self._sentences = {k: n for k, n in self._sentences.items() if k[0] != request_id}

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        """The sentence's prompt, `[voice BOS] voice text audio-BOS`, into a free slot: the state its first frame
        is sampled from."""
        rt, settings = self.rt, job.settings
        assert isinstance(settings, _Settings)
        key = (job.request_id, voice.index)
        self._sentences[key] = index = self._sentences.get(key, -1) + 1
        text = rt.tokenize(prepare_text(sentence), add_special=False, parse_special=False)
        slot = self._slots.pop()
        rt.trim_slot(slot, 0)
        position = 0
        parts = [[self._voice_bos]] if self._voice_bos is not None else []
        parts += [settings.latents, [*text, self._audio_bos]]
        try:
            for i, part in enumerate(parts):
                position = self._prefill(slot, position, part, last=i == len(parts) - 1)
        except Exception:
            self._slots.append(slot)
            raise
        room = rt.context_length - position
        return _GgufUtterance(job, voice, sentence, frames_after_eos(sentence), min(budget(len(text)), room),
                              position=position, slot=slot, seed=_seed(settings.seed, voice.index, index),
                              condition=rt.embedding(-1))

    def _prefill(self, slot: int, position: int, part: Any, last: bool) -> int:
        """Tokens, or rows of embeddings, into `slot` from `position`: the position after them."""
        n = len(part)
        if isinstance(part, np.ndarray):
            outputs = np.zeros(n, np.int8)
            outputs[-1] = last
            rc = self.rt.decode_rows(part, np.arange(position, position + n, dtype=np.int32),
                                     np.full(n, slot, np.int32), outputs)
        else:
            batch = Batch()
            for i, token in enumerate(part):
                batch.add(token, position + i, slot, last and i == n - 1)
            rc = self.rt.decode(batch)
        if rc != 0:
            raise decode_error(rc)
        return position + n

    def _sample(self, rows: list[_GgufUtterance]) -> None:
        for u in rows:
            latent, u.next_row, u.eos = self.gen.frame(u.condition, _seed(u.seed, len(u.frames)),
                                                       self.args.temperature)
            u.frames.append(latent)

    def _backbone_step(self) -> None:
        rows: list[_GgufUtterance] = self._active  # type: ignore[assignment]
        n = len(rows)
        rc = self.rt.decode_rows(np.stack([u.next_row for u in rows]), np.array([u.position for u in rows], np.int32),
                                 np.array([u.slot for u in rows], np.int32), np.ones(n, np.int8))
        if rc != 0:
            raise decode_error(rc)
        for i, u in enumerate(rows):
            u.position += 1
            u.condition = self.rt.embedding(i)

    def _drop(self, leaving: list[_Utterance]) -> None:
        for u in leaving:
            assert isinstance(u, _GgufUtterance)
            self.rt.trim_slot(u.slot, 0)
            self._slots.append(u.slot)
        super()._drop(leaving)

    def _decode(self, u: _Utterance) -> bytes:
        assert isinstance(u, _GgufUtterance)
        audio, u.state = self.gen.audio(np.stack(u.frames[u.sent:]), u.state)
        if u.sent == 0:  # the original fades each sentence in
            fade = min(len(self._fade), len(audio))
            audio[:fade] *= self._fade[:fade]
        return to_pcm16(audio)


def prepare_text(text: str) -> str:
    """A sentence as the original (and llama.cpp's helper) gives it to the model: one line, `;` as `,`, the first
    letter capitalised, ending on punctuation."""
    text = text.replace("\r", " ").replace("\n", " ").replace(";", ",").strip(" ")
    if not text:
        return text
    text = text[0].upper() + text[1:] if "a" <= text[0] <= "z" else text
    return text + "." if text[-1].isalnum() else text


def frames_after_eos(text: str) -> int:
    """Frames spoken after the end-of-speech frame: 4 for a text of at most 4 words, else 2 (transformers'
    processor's defaults)."""
    return 4 if len(text.split()) <= 4 else 2


def end_on_pause(wave: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voice clip cut after its last loud 20 ms (within 35 dB of the loudest), faded out over 20 ms, then 80 ms
    of silence: how transformers' feature extractor (and the original) end a voice prompt."""
    frame = int(0.02 * rate)
    count = len(wave) // frame
    if count == 0:
        return wave
    rms = np.sqrt(np.square(wave[:count * frame].reshape(count, frame)).mean(-1))
    level = 20 * np.log10(rms + 1e-12)
    end = (int(np.nonzero(level > level.max() - 35.0)[0][-1]) + 1) * frame
    out = wave[:end].copy()
    fade = min(frame, end)
    out[end - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return np.concatenate([out, np.zeros(int(0.08 * rate), np.float32)])


def _seed(*parts: int) -> int:
    """A 32-bit seed from the parts, never libmtmd's "random" (UINT32_MAX)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % 0xFFFFFFFF

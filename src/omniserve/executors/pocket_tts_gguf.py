"""Pocket TTS as GGUF, through llama.cpp: no torch. The backbone is a llama.cpp model (`model.gguf`); the flow
head that samples each frame, the codec's decoder that makes it audio, and the codec's encoder that reads a voice
clip are libmtmd's audio generation (`mmproj.gguf`, `mtmd_gen_audio_process`), as llama.cpp's converter splits
Kyutai's checkpoint.

Speaking is `FrameSpeaker`'s, as with transformers. What differs:
- every sentence of the batch has a KV stream (slot) of its own in one llama.cpp context, so a step is one
  `llama_decode` of one row per sentence, with no cache to stack (`GgufSpeaker`);
- the flow head and the codec run one sentence at a time (libmtmd takes one hidden state per call); the codec
  carries each sentence's decoder state from chunk to chunk, so chunks join with no frames decoded twice;
- a frame's noise comes from libmtmd's generator, seeded per frame from the request's seed, the choice, the
  sentence and the frame, so that a seed repeats its audio whatever else is in the batch (not transformers'
  noise: only greedy speech, `temperature` 0, equals transformers');
- a voice is the backbone's prompt rows: a built-in voice's codec latents through the speaker projection, or a
  clip (built-in or custom) through libmtmd's codec encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.executors.frame_speech import (
    AUDIO_SUFFIXES,
    SAMPLE_RATE,
    ClonedSpeechParams,
    _Job,
    _Settings,
    _Utterance,
    _Voice,
    budget,
    english_only,
    read_voice_clips,
    read_voices,
)
from omniserve.executors.gguf_speech import GgufSpeaker, SlotUtterance
from omniserve.executors.mtmd_speech import file_digest, seed_of
from omniserve.executors.sentence_speech import to_pcm16
from omniserve.runtime.facts import StageFacts

FADE_IN_SECONDS = 0.005  # each sentence fades in, as the original's


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


class PocketTtsGgufExecutor(GgufSpeaker):
    params_model = ClonedSpeechParams
    model_name = "Pocket TTS"
    architecture = "pockettts"
    _prepared_tensor = "audio_prompt_rows"  # a custom voice is kept as the backbone's rows, not the codec's latents

    def load(self) -> StageFacts:
        a = self.args
        self._load_parts()
        self._voice_bos = self._special("<|bos_before_voice|>", required=False)
        self._audio_bos = self._special("<|audio_bos|>", required=True)
        self._min_frames = a.min_frames_before_eos
        self._fade = np.linspace(0, 1, int(FADE_IN_SECONDS * SAMPLE_RATE), dtype=np.float32)
        self._voices = self._read_voices(Path(a.voices_path))
        self._open_library()
        self._codec_key = f"pocket-tts-gguf-{file_digest(a.mmproj_path)}"
        self._warm_up()
        return self._facts(Path(a.model_path), device="gpu" if a.n_gpu_layers else "cpu")

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
        voices: dict[str, np.ndarray] = {}
        latents = read_voices(folder)
        if latents:
            import gguf

            tensors = {t.name: t for t in gguf.GGUFReader(self.args.mmproj_path).tensors}
            projection = np.asarray(tensors["a.speaker_proj.weight"].data, np.float32)  # (n_embd, latent)
            voices.update({name: v @ projection.T for name, v in latents.items()})
        voices = {**read_voice_clips(folder, self.encode_voice, SAMPLE_RATE), **voices}
        if not voices:
            raise ValueError(f"{folder} holds no voice (.safetensors with `audio_prompt_latents`, or a clip: "
                             f"{', '.join(AUDIO_SUFFIXES)})")
        return voices

    def encode_voice(self, wave) -> np.ndarray:
        """A 24 kHz clip as prompt rows, ending on a short pause as transformers' processor ends a voice."""
        return self.gen.encode(end_on_pause(np.asarray(wave, np.float32)))

    def _language(self, language: str | None) -> None:
        english_only(self.model_name, language)

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        """The sentence's prompt, `[voice BOS] voice text audio-BOS`, into a free slot: the state its first frame
        is sampled from."""
        rt, settings = self.rt, job.settings
        assert isinstance(settings, _Settings)
        text = rt.tokenize(prepare_text(sentence), add_special=False, parse_special=False)
        parts = [[self._voice_bos]] if self._voice_bos is not None else []
        slot, position = self._prefill(parts + [settings.latents, [*text, self._audio_bos]])
        room = rt.context_length - position
        return SlotUtterance(job, voice, sentence, frames_after_eos(sentence), min(budget(len(text)), room),
                             position=position, slot=slot, seed=self._sentence_seed(job, voice),
                             condition=rt.embedding(-1))

    def _sample(self, rows: list[SlotUtterance]) -> None:
        for u in rows:
            frame = self.gen.frame(u.condition, seed_of(u.seed, len(u.frames)), temperature=self.args.temperature)
            u.next_row, u.eos = frame.next_input, frame.eos
            u.frames.append(frame.latent)

    def _decode(self, u: _Utterance) -> bytes:
        assert isinstance(u, SlotUtterance)
        audio, u.state = self.gen.audio(u.state, latents=np.stack(u.frames[u.sent:]))
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

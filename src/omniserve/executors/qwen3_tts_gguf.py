"""Qwen3-TTS (12 Hz, the "Base" model that clones a voice from a clip) as GGUF, through llama.cpp: no torch.

llama.cpp's converter splits the checkpoint in two: the talker (`model.gguf`, a llama.cpp model whose vocabulary is
the text's then the codec's 3072 tokens) and a projector (`mmproj*.gguf`) with the code predictor, the codec's
decoder and the ECAPA-TDNN speaker encoder, which libmtmd runs (`mtmd_speech`). Each frame (80 ms) is 16 codes:
the talker's logits give the first (sampled here, as transformers' `generate` does: the codec's special tokens
masked but its end, no end before the second frame, a repetition penalty, temperature, top-k and top-p), the code
predictor the other 15, and their embeddings summed (with the text's pad row) are the talker's next input. The
codec decodes 72-frame windows with a state carried from one to the next; a chunk inside a window is decoded from
the last full window's state, so the chunks join into the whole.

The prompt is transformers' non-streaming one, as llama.cpp's own helper builds it: the assistant's role tokens,
the thinking and language codec tokens over the text pad, the speaker's embedding (a voice clip through the
speaker encoder), then the text, each token over the codec pad, and the codec's BOS. How sentences take turns and
frames leave is `FrameSpeaker`'s; the talker's slots are `GgufSpeaker`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.frame_speech import (
    AUDIO_SUFFIXES,
    ClonedSpeechParams,
    _Job,
    _Settings,
    _Utterance,
    _Voice,
    read_voice_clips,
)
from omniserve.executors.gguf_speech import GgufSpeaker, SlotUtterance
from omniserve.executors.mtmd_speech import file_digest, seed_of
from omniserve.executors.sentence_speech import to_pcm16
from omniserve.runtime.facts import StageFacts, VoiceDetail
from omniserve.voices import language_tag

SAMPLE_RATE = 24000
WINDOW = 72  # frames the codec decodes per call; its state holds whole windows only
CODES = 2048  # a codebook's entries: the talker's codec tokens below this are codes, the rest its specials
# a language tag's primary subtag -> the codec's language token name
LANGUAGE_NAMES = {"en": "english", "zh": "chinese", "ja": "japanese", "ko": "korean", "de": "german",
                  "fr": "french", "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian"}


class Qwen3TtsGgufArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str  # the talker
    mmproj_path: str  # the code predictor, the codec's decoder and the speaker encoder
    voices_path: str  # built-in voices: clips, each read once by the speaker encoder
    voice_library: str | None = None
    threads: int = Field(2, ge=1)
    n_gpu_layers: int = 0
    max_batch: int = Field(8, ge=1)
    context_length: int = Field(2048, ge=64)  # per sentence: its prompt and frames
    first_chunk_frames: int = Field(4, ge=1)
    max_chunk_frames: int = Field(WINDOW, ge=1)
    # transformers' `generate` defaults for the talker's first code, and for the code predictor's
    temperature: float = Field(0.9, ge=0)  # 0: greedy
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.05, ge=1)
    min_new_tokens: int = Field(2, ge=0)
    max_new_tokens: int = Field(2048, ge=1)
    subtalker_top_k: int = Field(50, ge=0)  # 1: greedy (libmtmd samples the predicted codes at temperature 1)
    subtalker_top_p: float = Field(1.0, gt=0, le=1)


@dataclass
class _CodecUtterance(SlotUtterance):
    logits: Any = None  # the talker's logits over the codec's tokens
    first_codes: list[int] = field(default_factory=list)  # for the repetition penalty
    committed: int = 0  # frames in the codec's `state` (whole windows)


class Qwen3TtsGgufExecutor(GgufSpeaker):
    params_model = ClonedSpeechParams
    model_name = "Qwen3-TTS"
    architecture = "qwen3tts"
    position_sections = 4  # the talker's M-RoPE, every section the same position
    _prepared_tensor = "speaker_embedding"

    def load(self) -> StageFacts:
        a = self.args
        self._load_parts()
        rt = self.rt
        self.sample_rate = self.gen.sample_rate
        self._embeddings = _EmbeddingRows(a.model_path)
        t = {name: self._special(name) for name in (
            "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<|codec_pad|>", "<|codec_bos|>", "<|codec_eos_token|>",
            "<|codec_think|>", "<|codec_think_bos|>", "<|codec_think_eos|>", "<|codec_0|>")}
        self._t = t
        self._codec0 = t["<|codec_0|>"]  # the codec's tokens start here, after the text's
        self._eos = t["<|codec_eos_token|>"] - self._codec0
        self._languages = {}
        for token in range(self._codec0, rt.n_vocab):
            name = rt.special_text(token)
            if name.startswith("<|codec_language_") and name.endswith("|>"):
                self._languages[name.removeprefix("<|codec_language_").removesuffix("|>")] = token
        if "english" not in self._languages:
            raise RuntimeError(f"{a.model_path}: its codec has no <|codec_language_english|> token")
        self._pad_row = self._embeddings.rows([t["<tts_pad>"]])[0]
        self._voices = read_voice_clips(Path(a.voices_path), self.encode_voice, SAMPLE_RATE)
        if not self._voices:
            raise ValueError(f"{a.voices_path} holds no voice clip ({', '.join(AUDIO_SUFFIXES)})")
        self._open_library()
        self._codec_key = f"qwen3-tts-gguf-{file_digest(a.mmproj_path)}"
        self._warm_up()
        return self._facts(Path(a.model_path), voice_details={name: VoiceDetail() for name in self._voices},
                           languages=sorted(self._languages), device="gpu" if a.n_gpu_layers else "cpu")

    def _special(self, name: str) -> int:
        ids = self.rt.tokenize(name, add_special=False)
        if len(ids) != 1 or self.rt.special_text(ids[0]) != name:
            raise RuntimeError(f"{self.args.model_path}: its vocabulary has no {name}, which Qwen3-TTS speaks with")
        return ids[0]

    def encode_voice(self, wave) -> np.ndarray:
        """A 24 kHz clip as the speaker encoder's embedding (one row)."""
        return self.gen.encode(np.asarray(wave, np.float32))

    def _language(self, language: str | None) -> Any:
        if language is None:
            return self._languages["english"]
        tag = (language_tag(language) or language).split("-")[0].lower()
        name = LANGUAGE_NAMES.get(tag, language.strip().lower())
        if name not in self._languages:
            raise InvalidRequest(f"language: Qwen3-TTS speaks {', '.join(sorted(self._languages))}; got "
                                 f"{language!r}", param="language")
        return self._languages[name]

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        rt, settings, t = self.rt, job.settings, self._t
        assert isinstance(settings, _Settings)
        head = rt.tokenize("<|im_start|>assistant\n", add_special=False)
        body = rt.tokenize(sentence.strip(), add_special=False, parse_special=False)
        pad, codec_pad = t["<tts_pad>"], t["<|codec_pad|>"]
        pairs = [(pad, t["<|codec_think|>"]), (pad, t["<|codec_think_bos|>"]), (pad, settings.language),
                 (pad, t["<|codec_think_eos|>"])]
        rows = [self._embeddings.rows(head)]
        rows.append(self._embeddings.pairs(pairs))
        if settings.latents is not None:
            rows.append(self._pad_row + settings.latents)
        rows.append(self._embeddings.pairs([(t["<tts_text_bos>"], codec_pad)] + [(i, codec_pad) for i in body]
                                           + [(t["<tts_text_eod>"], codec_pad), (pad, t["<|codec_bos|>"])]))
        slot, n = self._prefill([np.concatenate(rows)])
        room = rt.context_length - n
        return _CodecUtterance(job, voice, sentence, 0, min(self.args.max_new_tokens, room), position=n, slot=slot,
                               seed=self._sentence_seed(job, voice), condition=rt.embedding(-1),
                               logits=self._codec_logits(-1))

    def _codec_logits(self, batch_index: int) -> np.ndarray:
        return self.rt.logits(batch_index)[self._codec0:].copy()

    def _sample(self, rows: list[_CodecUtterance]) -> None:
        a = self.args
        for u in rows:
            frame = len(u.frames)
            code0 = self._first_code(u, np.random.default_rng(seed_of(u.seed, frame)))
            if code0 == self._eos:  # the end: no frame for this step
                u.eos = True
                continue
            made = self.gen.frame(u.condition, seed_of(u.seed, frame, 1), code0=code0, top_k=a.subtalker_top_k,
                                  top_p=a.subtalker_top_p)
            u.frames.append(made.codes)
            u.first_codes.append(code0)
            u.next_row = made.next_input + self._pad_row

    def _first_code(self, u: _CodecUtterance, rng) -> int:
        """The frame's first code from the talker's logits, as transformers' `generate` samples it."""
        a = self.args
        logits = u.logits.astype(np.float64)
        allowed = np.zeros(len(logits), bool)
        allowed[:CODES] = True
        allowed[self._eos] = len(u.frames) >= a.min_new_tokens
        logits[~allowed] = -np.inf
        if u.first_codes and a.repetition_penalty != 1:
            seen = np.unique(u.first_codes)
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / a.repetition_penalty,
                                    logits[seen] * a.repetition_penalty)
        if a.temperature == 0:
            return int(np.argmax(logits))
        logits = logits / a.temperature
        if a.top_k:
            logits[logits < np.sort(logits)[-min(a.top_k, len(logits))]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if a.top_p < 1:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < a.top_p
            mask = np.zeros(len(probs), bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0)
            probs /= probs.sum()
        return int(rng.choice(len(probs), p=probs))

    def _stepped(self, u: SlotUtterance, batch_index: int) -> None:
        assert isinstance(u, _CodecUtterance)
        u.logits = self._codec_logits(batch_index)

    def _decode(self, u: _Utterance) -> bytes:
        """The frames not yet sent: whole windows are decoded once more and their state kept; the rest is
        decoded from the last kept state (the codec's state holds whole windows only)."""
        assert isinstance(u, _CodecUtterance)
        if u.sent == len(u.frames):  # it ended with no new frame
            return b""
        start, pieces = u.committed, []
        while len(u.frames) - u.committed >= WINDOW:
            audio, u.state = self.gen.audio(u.state, codes=np.stack(u.frames[u.committed:u.committed + WINDOW]))
            pieces.append(audio)
            u.committed += WINDOW
        if len(u.frames) > u.committed:
            pieces.append(self.gen.audio(u.state, codes=np.stack(u.frames[u.committed:]))[0])
        if not pieces:
            return b""
        audio = np.concatenate(pieces)
        per_frame = len(audio) // (len(u.frames) - start)
        return to_pcm16(audio[(u.sent - start) * per_frame:])


class _EmbeddingRows:
    """The talker's input embedding table, read row by row from the GGUF (dequantized as needed): the prompt sums
    a text token's row and a codec token's."""

    def __init__(self, path: str):
        import gguf

        self._gguf = gguf
        self._table = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")

    def rows(self, tokens: list[int]) -> np.ndarray:
        data = self._table.data[np.asarray(tokens, np.int64)]
        if self._table.tensor_type in (self._gguf.GGMLQuantizationType.F32, self._gguf.GGMLQuantizationType.F16):
            return np.asarray(data, np.float32)
        return self._gguf.quants.dequantize(data, self._table.tensor_type).astype(np.float32)

    def pairs(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        return self.rows([a for a, _ in pairs]) + self.rows([b for _, b in pairs])

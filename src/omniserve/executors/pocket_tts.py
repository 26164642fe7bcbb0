"""Text to speech with Kyutai's Pocket TTS (transformers' `pocket_tts` classes): the voice model that clones
a voice from a few seconds of audio, English, 24 kHz.

Each sentence is one generation, as in the original: the prompt is the voice's codec latents, the text and
the audio BOS; then every step makes one 80 ms frame (a latent sampled by the flow head from the backbone's
last hidden state, with noise from the request's own generator, so that a seed repeats transformers'
`generate`). Every sentence being spoken moves one frame per step, all in one batched forward pass: their
KV caches are stacked, left-padded, once when the batch changes, not every step. Frames are decoded by the
codec as they come (the first chunk soon, the next ones larger), with enough earlier frames as context that
the chunks join into what decoding the whole sentence gives; chunks double in size, so that the context
costs little.

Built-in voices are the checkpoint's `voices/*.safetensors` (`audio_prompt_latents`, N x 32). A custom
voice of the voice library is its sample, read from the library's folder and encoded by the codec the
first time it speaks here, then kept. How text becomes sentences and choices take turns is
`SentenceSpeaker`'s; what the transformers model and the GGUF one (`pocket_tts_gguf`) share, how a sentence
starts, goes on and ends, and which frames leave when, is `PocketSpeaker`'s.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.sentence_speech import SentenceSpeaker, SpeechParams, _Job, _Voice, to_pcm16
from omniserve.executors.torch_device import resolve_device, resolve_dtype
from omniserve.runtime.types import OmniOutput
from omniserve.voices import OPENAI_VOICES, language_tag

SAMPLE_RATE = 24000
FRAME_RATE = 12.5  # codec frames a second (1920 samples each)
# codec frames before a chunk that its decoding sees: the decoder's reach (two sliding-window layers of 250
# steps at 200 Hz, 31 frames, and a few conv taps); decoding the chunk with them gives the whole decoding's
# samples to float noise
CONTEXT_FRAMES = 32
MAX_CUSTOM_VOICES = 64  # encoded custom voices kept in memory
SAMPLE_SECONDS = 30.0  # a custom voice's sample is no longer (the voice library's limit)


class PocketTtsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    voice_library: str | None = None  # the voice library's folder: custom voices speak from their samples
    device: str = "auto"  # auto: the first CUDA device if there is one, else the CPU
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$")  # auto: bfloat16 on CUDA, else float32
    threads: int = Field(2, ge=1)
    max_batch: int = Field(8, ge=1)  # sentences that make a frame in one step
    # frames in a sentence's first audio chunk (80 ms each); each next chunk doubles, up to the largest. The
    # codec decodes a chunk after CONTEXT_FRAMES frames of context: large chunks cost little more than
    # decoding the sentence whole
    first_chunk_frames: int = Field(2, ge=1)
    max_chunk_frames: int = Field(32, ge=1)


class ClonedSpeechParams(SpeechParams):
    seed: int | None = Field(None, ge=0, lt=2**63)  # the same seed, text and voice: the same audio


@dataclass(frozen=True)
class _Settings:
    latents: Any  # the voice as the model's prompt takes it: (N, 32) codec latents, or the GGUF backbone's rows
    seed: int


@dataclass
class _Utterance:
    """One sentence being spoken: where its generation stands and the frames not yet sent."""

    job: _Job
    voice: _Voice
    text: str
    frames_after_eos: int
    budget: int  # at most this many frames (the original's, from the text's length)
    position: int = 0  # the next input's position
    eos: bool = False  # the state the next frame is sampled from says the speech ends
    frames: list[Any] = field(default_factory=list)  # for the codec
    sent: int = 0  # frames decoded and sent
    chunk: int = 0  # the next chunk's size in frames
    countdown: int = -1  # frames left after the end of speech; -1: not seen yet
    done: bool = False


@dataclass
class _TorchUtterance(_Utterance):
    generator: Any = None
    keys: list[Any] = field(default_factory=list)  # per layer (1, heads, length, dim), while out of the batch
    values: list[Any] = field(default_factory=list)
    condition: Any = None  # the backbone's last hidden state (1, hidden), which the next frame is sampled from
    eos_logit: float = 0.0
    latent: Any = None  # the last frame, normalised (1, 32): the next input


def read_voices(folder: Path) -> dict[str, Any]:
    """A checkpoint's built-in voices: `voices/<name>.safetensors`, each the codec's latents of a voice clip
    (`audio_prompt_latents`, N x 32), as numpy arrays."""
    from safetensors.numpy import load_file

    voices = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(file)
        if "audio_prompt_latents" not in tensors:
            raise ValueError(f"{file}: a voice file holds `audio_prompt_latents` (the codec's latents of a "
                             f"voice clip); this one holds {', '.join(sorted(tensors)) or 'nothing'}")
        voices[file.stem] = tensors["audio_prompt_latents"].astype("float32")
    return voices


class PocketSpeaker(SentenceSpeaker):
    """Pocket TTS's speaking, whatever runs the model: the request's settings and voices, the batch of
    sentences (one frame each per step), when a sentence ends, and when its frames leave as audio. A subclass
    loads the model and says how a sentence starts (`_start`), how each sentence's next frame is sampled
    (`_sample`), how the backbone takes the frames in (`_backbone_step`), and how frames become audio
    (`_decode`). A voice is whatever the subclass's prompt takes (`_voices`, and `encode_voice` for a custom one,
    kept in the voice library as `_prepared_tensor` under `_codec_key`)."""

    params_model = ClonedSpeechParams
    _prepared_tensor = "audio_prompt_latents"

    def __init__(self, args: Any, stage: str = "talker"):
        super().__init__(stage)
        self.args = args
        self.sample_rate = SAMPLE_RATE
        self._active: list[_Utterance] = []  # the batch
        self._custom: OrderedDict[str, Any] = OrderedDict()  # custom voice id -> its prompt, most recent last
        self._voices: dict[str, Any] = {}
        self._library = None
        self._codec_key = ""
        self._min_frames = 0

    def _open_library(self) -> None:
        if self.args.voice_library:
            from omniserve.voice_library.store import VoiceLibrary

            self._library = VoiceLibrary(Path(self.args.voice_library))

    def _facts(self, root: Path) -> dict[str, Any]:
        names = list(self._voices)
        return {"model_path": str(root), "sample_rate": SAMPLE_RATE, "voices": names,
                "voice_details": {name: {"language": "en", "gender": None} for name in names},
                "openai_voices": {name: names[i % len(names)] for i, name in enumerate(OPENAI_VOICES)},
                "clones": True}

    def _warm_up(self) -> None:
        """A sentence through every path (prefill, a batched step, the codec), so the first request's is not
        the slow first run."""
        job = _Job("warm-up", _Settings(next(iter(self._voices.values())), 0), [_Voice(0), _Voice(1)])
        self._active = [self._start(job, voice, "Ready.") for voice in job.voices]
        for _ in range(2):
            self._decode(self._advance()[0])
        self._drop(list(self._active))
        self._forget("warm-up")

    def _forget(self, request_id: str) -> None:
        """A request's state kept across its sentences, once it is over."""

    # ---- a request's settings ------------------------------------------------------------------------------

    def _settings(self, params: ClonedSpeechParams) -> _Settings:
        for knob in ("noise_scale", "noise_w_scale"):
            if getattr(params, knob) is not None:
                raise InvalidRequest(f"{knob}: Piper's setting; a Pocket TTS voice has none", param=knob)
        if params.speed != 1.0:
            raise InvalidRequest("speed: Pocket TTS speaks at its own pace; leave speed at 1.0", param="speed")
        if params.language and (language_tag(params.language) or "").split("-")[0] != "en":
            raise InvalidRequest(f"language: Pocket TTS speaks English only; got {params.language!r}",
                                 param="language")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        return _Settings(self._latents(params.voice), seed)

    def _latents(self, voice: str | None):
        if voice is None:
            return next(iter(self._voices.values()))
        if voice.startswith("voice_"):
            return self._custom_latents(voice)
        name = next((n for n in self._voices if n.lower() == voice.lower()), None)
        if name is None:
            raise InvalidRequest(f"voice: unknown voice {voice!r}; valid voices: {', '.join(self._voices)}",
                                 param="voice")
        return self._voices[name]

    def _custom_latents(self, voice_id: str):
        """A custom voice's prompt: its sample encoded once (when the voice is made), kept in the voice library
        beside the sample, and in memory once used."""
        if voice_id in self._custom:
            self._custom.move_to_end(voice_id)
            return self._custom[voice_id]
        import numpy as np
        from safetensors.numpy import load, save

        from omniserve.media.audio import decode_audio

        found = self._library.voice(voice_id) if self._library is not None else None
        if found is None or found.disabled or not found.sample:
            raise InvalidRequest(f"voice: {voice_id} is not a voice of the voice library", param="voice",
                                 code="voice_not_found")
        kept = self._library.prepared_path(voice_id, self._codec_key)
        if kept.is_file():
            latents = self._as_prompt(load(kept.read_bytes())[self._prepared_tensor])
        else:
            audio = decode_audio(self._library.path(found.sample).read_bytes(), where="voice",
                                 max_seconds=SAMPLE_SECONDS, rate=SAMPLE_RATE)
            latents = self.encode_voice(audio)
            self._library.keep_prepared(voice_id, self._codec_key,
                                        save({self._prepared_tensor: np.ascontiguousarray(np.asarray(latents))}))
        self._custom[voice_id] = latents
        if len(self._custom) > MAX_CUSTOM_VOICES:
            self._custom.popitem(last=False)
        return latents

    def _as_prompt(self, array: Any) -> Any:
        """A kept voice (a numpy array) as this model's prompt takes it."""
        return array

    def encode_voice(self, wave) -> Any:
        raise NotImplementedError

    # ---- speaking ----------------------------------------------------------------------------------------

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._drop([u for u in self._active if u.job.request_id == request_id])
        self._forget(request_id)

    def close(self) -> None:
        super().close()
        self._active = []

    def has_work(self) -> bool:
        return bool(self._active) or super().has_work()

    def step(self) -> list[OmniOutput]:
        """Start the sentences that have room in the batch, then one frame for every sentence in it."""
        out: list[OmniOutput] = []
        while len(self._active) < self.args.max_batch and (turn := self._next_sentence()) is not None:
            self._active.append(self._start(*turn))
        if self._active:
            out += self._emit(self._advance())
        return out

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        """The sentence's prompt through the backbone: the state its first frame is sampled from."""
        raise NotImplementedError

    def _sample(self, rows: list[_Utterance]) -> None:
        """The next frame of every sentence in the batch, from its last state: appended to its `frames`, and
        kept as the backbone's next input."""
        raise NotImplementedError

    def _backbone_step(self) -> None:
        """The batch's last frames through the backbone, all rows at once: each row's next state and `eos`."""
        raise NotImplementedError

    def _decode(self, u: _Utterance) -> bytes:
        """The frames not yet sent as 16-bit PCM, joining the audio sent before."""
        raise NotImplementedError

    def _drop(self, leaving: list[_Utterance]) -> None:
        """Take sentences out of the batch."""
        if leaving:
            self._active = [u for u in self._active if u not in leaving]

    def _advance(self) -> list[_Utterance]:
        """One frame for every sentence in the batch: sample it from the last state, then (for those that go
        on) one backbone step on it, all rows at once. A sentence ends `frames_after_eos` frames after the
        first state that says so (from frame `_min_frames` on), or at its budget."""
        rows = self._active
        self._sample(rows)
        for u in rows:
            index = len(u.frames) - 1
            if u.countdown < 0 and u.eos and index >= self._min_frames:
                u.countdown = u.frames_after_eos
            if u.countdown == 0 or len(u.frames) >= u.budget:
                u.done = True
            elif u.countdown > 0:
                u.countdown -= 1
        self._drop([u for u in rows if u.done])
        if self._active:
            self._backbone_step()
        return rows

    def _emit(self, rows: list[_Utterance]) -> list[OmniOutput]:
        """Audio for each sentence that has a chunk's worth of new frames (or ended), and the end of those
        that did."""
        out: list[OmniOutput] = []
        for u in rows:
            if u.job.request_id not in self._jobs:
                continue
            u.chunk = u.chunk or self.args.first_chunk_frames
            if u.done or len(u.frames) - u.sent >= u.chunk:
                out.append(self._spoken(u.job, u.voice, self._decode(u), u.text if u.sent == 0 else ""))
                u.sent, u.chunk = len(u.frames), min(2 * u.chunk, self.args.max_chunk_frames)
            if u.done:
                out += self._sentence_done(u.job, u.voice)
                if u.job.request_id not in self._jobs:
                    self._forget(u.job.request_id)
        return out


class PocketTtsExecutor(PocketSpeaker):
    """Pocket TTS on torch, through transformers' classes."""

    def __init__(self, args: PocketTtsArgs, stage: str = "talker"):
        super().__init__(args, stage)
        self._cache = None  # the batch's stacked KV cache, in `_active`'s order; None: rebuild it at the next step
        self._pads: list[int] = []  # each row's left padding in it
        self._generators: dict[tuple[str, int], Any] = {}  # per (request, choice): one noise stream per answer

    def load(self) -> dict[str, Any]:
        import torch
        from transformers import PocketTTSAudioTokenizerModel, PocketTTSForConditionalGeneration, PocketTTSProcessor
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(self.args.threads)
        self._torch = torch
        self.device = resolve_device(self.args.device)
        self.dtype = resolve_dtype(self.args.dtype, self.device)
        root = Path(self.args.model_path)
        hf_logging.set_verbosity_error()
        extra = {}
        if (root / "audio_tokenizer" / "config.json").is_file():  # beside the model, wherever the folder moved
            extra["audio_tokenizer"] = PocketTTSAudioTokenizerModel.from_pretrained(root / "audio_tokenizer")
        self.processor = PocketTTSProcessor.from_pretrained(root, **extra)
        self.codec = self.processor.audio_tokenizer.to(self.device).eval()
        self.model = PocketTTSForConditionalGeneration.from_pretrained(root, dtype=self.dtype).to(self.device).eval()
        hf_logging.enable_progress_bar()
        self.config = self.model.config
        generation = self.model.generation_config
        self._noise_scale = math.sqrt(generation.temperature) if generation.do_sample else 0.0
        self._flow_steps = getattr(generation, "num_flow_steps", 1)
        self._eos_threshold = getattr(generation, "eos_threshold", -4.0)
        self._min_frames = getattr(generation, "min_frames_before_eos", 0)
        self._frame_size = self.codec.config.frame_size
        self._fade = torch.linspace(0, 1, int(self.processor.fade_in_duration * SAMPLE_RATE))
        self._voices = {name: torch.from_numpy(latents) for name, latents in read_voices(root / "voices").items()}
        if not self._voices:
            raise ValueError(f"{root}/voices holds no voice (.safetensors with `audio_prompt_latents`)")
        self._open_library()
        self._codec_key = codec_key(self.codec)
        self._warm_up()
        return {**self._facts(root), "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def _as_prompt(self, array: Any) -> Any:
        return self._torch.from_numpy(array)

    def encode_voice(self, wave) -> Any:
        """A 24 kHz mono clip as the codec's latents (N, 32), as the processor encodes a voice for `generate`."""
        torch = self._torch
        features = self.processor.feature_extractor(wave, sampling_rate=SAMPLE_RATE, end_on_pause=True,
                                                    return_tensors="pt")
        with torch.no_grad():
            encoded = self.codec.encode(features["input_values"].to(self.device, self.codec.dtype),
                                        features["padding_mask"].to(self.device))
        return encoded.latents[0][encoded.latents_mask[0].bool()].float().cpu()

    def _forget(self, request_id: str) -> None:
        self._generators = {k: g for k, g in self._generators.items() if k[0] != request_id}

    def close(self) -> None:
        super().close()
        self._cache = None

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        """The sentence's prompt through the backbone (alone): its cache, and the state its first frame is
        sampled from."""
        torch = self._torch
        self._unstack()  # the batch is about to change
        settings: _Settings = job.settings
        key = (job.request_id, voice.index)
        if key not in self._generators:  # a choice's frames draw from one stream, sentence after sentence
            self._generators[key] = torch.Generator(self.device).manual_seed(settings.seed + voice.index)
        text = sentence.strip()
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}])
        inputs = self.processor(text=prompt, audio_prompt_latents=[settings.latents], return_tensors="pt")
        ids = inputs["input_ids"].to(self.device)
        placeholders = torch.tensor([self.config.audio_prompt_bos_token_id, self.config.audio_prompt_token_id,
                                     self.config.audio_bos_token_id, self.config.audio_latent_token_id])
        text_tokens = int((~torch.isin(inputs["input_ids"], placeholders)).sum())
        with torch.no_grad():
            output = self.model(input_ids=ids, audio_prompt_latents=inputs["audio_prompt_latents"].to(self.device),
                                audio_prompt_latents_mask=inputs["audio_prompt_latents_mask"].to(self.device),
                                use_cache=True)
        cache = output.past_key_values
        utterance = _TorchUtterance(job, voice, sentence, int(inputs["frames_after_eos"][0]),
                                    budget(text_tokens), position=ids.shape[1], generator=self._generators[key],
                                    keys=[layer.keys for layer in cache.layers],
                                    values=[layer.values for layer in cache.layers])
        utterance.condition = output.last_hidden_state[:, -1]
        utterance.eos_logit = float(output.logits[0, -1, 0])
        return utterance

    def _sample(self, rows: list[_TorchUtterance]) -> None:
        torch = self._torch
        with torch.no_grad():
            noise = torch.cat([torch.randn(1, self.config.latent_dim, generator=u.generator, device=self.device,
                                           dtype=u.condition.dtype) for u in rows]) * self._noise_scale
            latents = self.model.sample_latent(torch.cat([u.condition for u in rows]), noise, self._flow_steps)
            frames = self.model.denormalize_latents(latents)
        for i, u in enumerate(rows):
            u.latent = latents[i:i + 1]
            u.frames.append(frames[i:i + 1])
            u.eos = u.eos_logit > self._eos_threshold

    def _backbone_step(self) -> None:
        torch = self._torch
        rows = self._active
        if self._cache is None:
            self._stack()
        with torch.no_grad():
            ids = torch.full((len(rows), 1), self.config.audio_latent_token_id, device=self.device)
            positions = torch.tensor([[u.position] for u in rows], device=self.device)
            mask = None
            if any(self._pads):
                width = self._cache.get_seq_length() + 1
                mask = torch.ones(len(rows), width, dtype=torch.long, device=self.device)
                for i, pad in enumerate(self._pads):
                    mask[i, :pad] = 0
            output = self.model(input_ids=ids, audio_latents=torch.cat([u.latent for u in rows])[:, None],
                                attention_mask=mask, position_ids=positions, past_key_values=self._cache,
                                use_cache=True)
        for i, u in enumerate(rows):
            u.position += 1
            u.condition = output.last_hidden_state[i:i + 1, -1]
            u.eos_logit = float(output.logits[i, -1, 0])

    def _stack(self) -> None:
        """The batch's KV cache: each row's, left-padded to the longest."""
        from transformers import DynamicCache

        torch = self._torch
        rows = self._active
        longest = max(u.keys[0].shape[-2] for u in rows)
        self._pads = [longest - u.keys[0].shape[-2] for u in rows]
        def stacked(tensors: list[Any]) -> Any:
            return torch.cat([torch.nn.functional.pad(t, (0, 0, pad, 0)) for t, pad in zip(tensors, self._pads,
                                                                                          strict=True)])

        cache = DynamicCache(config=self.config)
        for layer in range(len(rows[0].keys)):
            cache.update(stacked([u.keys[layer] for u in rows]), stacked([u.values[layer] for u in rows]), layer)
        self._cache = cache
        for u in rows:
            u.keys, u.values = [], []

    def _drop(self, leaving: list[_Utterance]) -> None:
        """Take sentences out of the batch; the others keep their own caches until it is stacked again."""
        if leaving:
            self._unstack()
            super()._drop(leaving)

    def _unstack(self) -> None:
        """Give each sentence in the batch its own cache back, before the batch changes."""
        if self._cache is None:
            return
        for i, u in enumerate(self._active):
            pad = self._pads[i]
            u.keys = [layer.keys[i:i + 1, :, pad:] for layer in self._cache.layers]
            u.values = [layer.values[i:i + 1, :, pad:] for layer in self._cache.layers]
        self._cache = None

    def _decode(self, u: _Utterance) -> bytes:
        """The frames not yet sent as 16-bit PCM: decoded after up to CONTEXT_FRAMES sent ones, whose audio is
        dropped (the decoder is causal, so the new samples are those of decoding the whole sentence)."""
        torch = self._torch
        start = max(0, u.sent - CONTEXT_FRAMES)
        with torch.no_grad():
            latents = torch.cat(u.frames[start:])[None].to(self.device, self.codec.dtype)
            audio = self.codec.decode(latents).audio_values[0, 0].float().cpu()
        audio = audio[(u.sent - start) * self._frame_size:(len(u.frames) - start) * self._frame_size]
        if u.sent == 0:  # the original fades each sentence in
            fade = min(len(self._fade), len(audio))
            audio[:fade] *= self._fade[:fade]
        return to_pcm16(audio.numpy())


def budget(text_tokens: int) -> int:
    """The most frames a sentence of this many tokens gets (the original's estimate, 12.5 frames a second)."""
    return math.ceil((text_tokens / 3 + 2) * FRAME_RATE)


def codec_key(codec) -> str:
    """A name for the codec's encoder, by its weights: a voice encoded by one codec is kept for that codec."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(codec.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return f"pocket-tts-{digest.hexdigest()[:16]}"

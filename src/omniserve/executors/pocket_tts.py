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
first time it speaks here, then kept. How a sentence starts, goes on and ends, and which frames leave when,
is `FrameSpeaker`'s (the GGUF model, `pocket_tts_gguf`, and Qwen3-TTS speak the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.executors.frame_speech import (
    SAMPLE_RATE,
    ClonedSpeechParams,
    FrameSpeaker,
    _Job,
    _Settings,
    _Utterance,
    _Voice,
    budget,
    english_only,
    read_voices,
)
from omniserve.executors.sentence_speech import to_pcm16
from omniserve.executors.torch_device import resolve_device, resolve_dtype
from omniserve.runtime.facts import StageFacts

# codec frames before a chunk that its decoding sees: the decoder's reach (two sliding-window layers of 250
# steps at 200 Hz, 31 frames, and a few conv taps); decoding the chunk with them gives the whole decoding's
# samples to float noise
CONTEXT_FRAMES = 32


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


@dataclass
class _TorchUtterance(_Utterance):
    generator: Any = None
    keys: list[Any] = field(default_factory=list)  # per layer (1, heads, length, dim), while out of the batch
    values: list[Any] = field(default_factory=list)
    condition: Any = None  # the backbone's last hidden state (1, hidden), which the next frame is sampled from
    eos_logit: float = 0.0
    latent: Any = None  # the last frame, normalised (1, 32): the next input


class PocketTtsExecutor(FrameSpeaker):
    """Pocket TTS on torch, through transformers' classes."""

    params_model = ClonedSpeechParams
    model_name = "Pocket TTS"

    def __init__(self, args: PocketTtsArgs, stage: str = "talker"):
        super().__init__(args, stage)
        self._cache = None  # the batch's stacked KV cache, in `_active`'s order; None: rebuild it at the next step
        self._pads: list[int] = []  # each row's left padding in it
        self._generators: dict[tuple[str, int], Any] = {}  # per (request, choice): one noise stream per answer

    def load(self) -> StageFacts:
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
        return self._facts(root, device=str(self.device), dtype=str(self.dtype).removeprefix("torch."))

    def _as_prompt(self, array: Any) -> Any:
        return self._torch.from_numpy(array)

    def _language(self, language: str | None) -> None:
        english_only(self.model_name, language)

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


def codec_key(codec) -> str:
    """A name for the codec's encoder, by its weights: a voice encoded by one codec is kept for that codec."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(codec.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return f"pocket-tts-{digest.hexdigest()[:16]}"

"""Codec tokens to a waveform, in chunks: Qwen2.5-Omni's token2wav (a DiT that turns codes into a mel
spectrogram by flow matching, then BigVGAN).

The first chunk is `chunk_frames` codes, and each next one twice the last, up to `max_chunk_frames`:
early audio, then fewer passes. The DiT makes each block's mel once, seeing the blocks its look-back
and look-ahead layers reach; the vocoder turns each chunk's mel into audio inside a window with left
and right context, and only the chunk's own samples are kept, so audio leaves long before the talker
is done. Windows start on block boundaries, and the starting noise of every mel frame comes from one
stream per request (the request's seed), the same noise transformers draws for the whole answer at
once. Where a checkpoint's DiT looks only within its blocks, the chunks joined are the whole-answer
waveform; with look-ahead and look-back layers, the context makes the joins inaudible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from omniserve.errors import OmniError
from omniserve.executors.base import StepResult, request_params
from omniserve.executors.qwen_omni.runtime import ChunkedCode2Wav, LoadedPart, OmniStageArgs, SpeechJob, read_speakers
from omniserve.executors.qwen_omni.talker import VoiceParams, voice_of
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, OmniRequest

Code2WavArgs = OmniStageArgs
NOISE_FRAMES = 4096  # the first noise block; it doubles as an answer grows


@dataclass(kw_only=True)
class _Speech(SpeechJob):
    speaker: str
    seed: int
    noise: Any = None
    mel: Any = None  # the mel spectrogram of codes [0, mel_codes), computed once
    mel_codes: int = 0

    def chunk(self, first: int, largest: int) -> int:
        """The size of the next chunk: the first is small, for early audio; each next one doubles, up to
        `largest`, since every DiT pass costs the same fixed overhead (36 model calls) however long it is."""
        return min(first << min(self.chunks, 16), largest)


@dataclass
class _Chunk:
    """Codes [start, end) of one request, to decode in this step; `need`: codes whose mel the vocoder
    window takes (the chunk and its right context)."""

    job: _Speech
    start: int
    end: int
    need: int
    audio: bytes = b""


class QwenOmniCode2WavExecutor(ChunkedCode2Wav):
    def load(self) -> StageFacts:
        import torch

        self.torch = torch
        args = self.args.model_copy(update={"dtype": "float32"})  # transformers runs token2wav in float32 too
        part = LoadedPart(args, "code2wav")
        self.part, self.model, self.device = part, part.model, part.device
        self.speakers = read_speakers(part.checkpoint.path)
        self.default_voice = part.family.default_voice if part.family.default_voice in self.speakers \
            else next(iter(self.speakers))
        dit = part.config.token2wav_config.dit_config
        vocoder = part.config.token2wav_config.bigvgan_config
        self.repeats = dit.repeats
        self.codebook = dit.num_embeds + 1  # the DiT's codec embedding rows
        self.mel_dim = dit.mel_dim
        self.hop = math.prod(vocoder.upsample_rates)  # samples per mel frame
        self.block = block = max(1, dit.block_size // dit.repeats)  # codes per DiT block
        # what one DiT pass can see beyond a block: a block back per look-back layer, ahead per look-ahead layer
        self.dit_left, self.dit_right = block * len(dit.look_backward_layers), block * len(dit.look_ahead_layers)
        self.chunk = self.args.chunk_frames or max(block, 24 // block * block)
        self.largest = max(self.chunk, self.args.max_chunk_frames or 8 * self.chunk)
        self.left = self.args.left_context_frames if self.args.left_context_frames is not None else self.chunk
        self.right = self.args.right_context_frames if self.args.right_context_frames is not None else block
        for name, value in (("chunk_frames", self.chunk), ("max_chunk_frames", self.largest),
                            ("right_context_frames", self.right)):
            if value % block:
                raise ValueError(f"{name} {value} must be a multiple of the DiT block ({block} codes)")
        self.sample_rate = part.family.sample_rate
        return part.facts(sample_rate=self.sample_rate, voices=list(self.speakers), chunk_frames=self.chunk,
                          max_chunk_frames=self.largest, left_context_frames=self.left, right_context_frames=self.right)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(VoiceParams, request.params_for(self.stage))
        speaker = voice_of(params, self.speakers, self.default_voice)
        seed = params.seed if params.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self._jobs[request.request_id] = _Speech(request_id=request.request_id, speaker=speaker, seed=seed)
        return [OmniOutput(request.request_id, started=True, sample_rate=self.sample_rate)]

    def _codes(self, token_ids: list[int]) -> list[int]:
        wrong = next((code for code in token_ids if not 0 <= code < self.codebook), None)
        if wrong is not None:
            raise OmniError(f"the talker made codec token {wrong}, which code2wav cannot decode (its codebook "
                            f"has {self.codebook}); the checkpoint's talker and token2wav do not match")
        return token_ids

    def _ready(self, job: _Speech) -> bool:
        if job.codes_done:
            return True  # the rest, or the end
        return len(job.codes) >= job.decoded + job.chunk(self.chunk, self.largest) + self.right + self.dit_right

    def step(self) -> StepResult:
        """The next chunk of every request that has one ready. Windows of one length (and one speaker's
        reference) go through the DiT and the vocoder together, in one batch."""
        chunks = []
        for job in self._take_turns():
            end = min(job.decoded + job.chunk(self.chunk, self.largest), len(job.codes))
            chunks.append(_Chunk(job, job.decoded, end, min(len(job.codes), end + self.right)))
        try:
            with self.torch.no_grad():
                self._make_mel([c for c in chunks if c.need > c.job.mel_codes])
                self._vocode([c for c in chunks if c.end > c.start])
        except Exception as exc:
            self._fail([c.job for c in chunks], exc)
            return self.result([], max(1, len(chunks)))
        return self.result([self._chunk_out(chunk.job, chunk.audio, chunk.end) for chunk in chunks],
                           max(1, len(chunks)))

    def _make_mel(self, chunks: list[_Chunk]) -> None:
        """Each chunk's request gets the mel of its codes up to `need`: the DiT runs once per block, on the
        blocks not made yet, with the context its look-back and look-ahead layers see."""
        torch = self.torch
        windows: dict[tuple, list[tuple[_Chunk, int, int]]] = {}
        for chunk in chunks:
            job = chunk.job
            first = max(0, job.mel_codes - self.dit_left)
            last = min(len(job.codes), chunk.need + self.dit_right)
            reference = self.speakers[job.speaker]["ref_mel"].shape
            windows.setdefault((last - first, tuple(reference)), []).append((chunk, first, last))
        for group in windows.values():
            codes = torch.tensor([c.job.codes[first:last] for c, first, last in group], device=self.device)
            noise = torch.cat([self._noise(c.job, last * self.repeats)[:, first * self.repeats:last * self.repeats]
                               for c, first, last in group])
            cond = torch.cat([self.speakers[c.job.speaker]["cond"] for c, _, _ in group]).to(self.device).float()
            ref_mel = torch.cat([self.speakers[c.job.speaker]["ref_mel"] for c, _, _ in group]).to(self.device)
            mels = dit_sample(self.model.code2wav_dit_model, noise, cond, ref_mel.float(), codes)
            for row, (chunk, first, _) in enumerate(group):
                job = chunk.job
                mel = mels[row:row + 1, :, (job.mel_codes - first) * self.repeats:(chunk.need - first) * self.repeats]
                job.mel = mel if job.mel is None else torch.cat([job.mel, mel], dim=-1)
                job.mel_codes = chunk.need

    def _vocode(self, chunks: list[_Chunk]) -> None:
        """Each chunk's audio (16-bit PCM): the vocoder runs on its mel with left and right context, and only
        the chunk's own samples are kept."""
        torch = self.torch
        windows: dict[int, list[tuple[_Chunk, int]]] = {}
        for chunk in chunks:
            first = max(0, chunk.start - self.left)
            windows.setdefault(chunk.need - first, []).append((chunk, first))
        for group in windows.values():
            mel = torch.cat([c.job.mel[..., first * self.repeats:c.need * self.repeats] for c, first in group])
            waves = self.model.code2wav_bigvgan_model(mel).reshape(len(group), -1)
            for row, (chunk, first) in enumerate(group):
                cut = (chunk.start - first) * self.repeats * self.hop
                wave = waves[row, cut:cut + (chunk.end - chunk.start) * self.repeats * self.hop]
                chunk.audio = (wave.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()

    def _noise(self, job: _Speech, frames: int):
        """The first `frames` mel frames of this request's noise (one stream per seed, so a longer draw
        starts with the shorter one)."""
        torch = self.torch
        if job.noise is None or job.noise.shape[1] < frames:
            size = NOISE_FRAMES
            while size < frames:
                size *= 2
            generator = torch.Generator(device=self.device).manual_seed(job.seed & 0xFFFF_FFFF_FFFF_FFFF)
            job.noise = torch.randn([1, size, self.mel_dim], generator=generator, device=self.device)
        return job.noise


def dit_sample(dit, noise, cond, ref_mel, codes, num_steps: int = 10, guidance_scale: float = 0.5,
               sway_coefficient: float = -1.0):
    """The DiT's flow-matching ODE from given starting noise; what `Qwen2_5OmniToken2WavDiTModel.sample`
    computes, except that it draws its noise itself."""
    import torch
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    frames = noise.shape[1]
    speaker = cond.unsqueeze(1).repeat(1, frames, 1)

    def velocity(time_step, hidden):
        if guidance_scale < 1e-5:
            return dit(hidden_states=hidden, speaker_embedding=speaker, condition_vector=ref_mel,
                       quantized_code=codes, time_step=time_step, drop_audio_conditioning=False, drop_code=False,
                       apply_cfg=False)
        out = dit(hidden_states=hidden, quantized_code=codes, speaker_embedding=speaker, condition_vector=ref_mel,
                  time_step=time_step, apply_cfg=True)
        guided, null = torch.chunk(out, 2, dim=0)
        return guided + (guided - null) * guidance_scale

    times = torch.linspace(0, 1, num_steps, device=codes.device, dtype=speaker.dtype)
    if sway_coefficient is not None:
        times += sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
    trajectory = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)
    return trajectory[-1].permute(0, 2, 1)

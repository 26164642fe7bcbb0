"""Codec frames to a waveform, in chunks: Qwen3-Omni's code2wav (a causal transformer and upsampling
convolutions; every frame holds one code per quantizer).

Audio is decoded in chunks of `chunk_frames` frames (25, about two seconds), each with up to
`left_context_frames` frames before it as context (25), the chunking of transformers'
`Qwen3OmniMoeCode2Wav.chunked_decode`: a chunk leaves as soon as the talker has made its frames, and
the chunks joined are that function's waveform. The windows of every request that has a chunk ready
decode together, batched by length.
"""

from __future__ import annotations

from omniserve.errors import OmniError
from omniserve.executors.base import StepResult, request_params
from omniserve.executors.qwen_omni.runtime import ChunkedCode2Wav, LoadedPart, OmniStageArgs, SpeechJob
from omniserve.executors.qwen_omni.talker import VoiceParams, voice_of
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, OmniRequest

Code2WavArgs = OmniStageArgs
CHUNK_FRAMES = LEFT_CONTEXT_FRAMES = 25  # what the Qwen3-Omni serving recipes stream with


class Qwen3OmniCode2WavExecutor(ChunkedCode2Wav):
    def load(self) -> StageFacts:
        import torch

        self.torch = torch
        for name in ("max_chunk_frames", "right_context_frames"):
            if getattr(self.args, name) is not None:
                raise ValueError(f"{name}: Qwen3-Omni's code2wav is causal and decodes chunks of one size; set "
                                 "chunk_frames and left_context_frames only")
        part = LoadedPart(self.args, "code2wav")
        self.part, self.model, self.device = part, part.model, part.device
        config = part.config.code2wav_config
        self.quantizers, self.codebook = config.num_quantizers, config.codebook_size
        self.upsample = int(self.model.total_upsample)  # samples per frame
        self.chunk = self.args.chunk_frames or CHUNK_FRAMES
        self.left = self.args.left_context_frames if self.args.left_context_frames is not None \
            else LEFT_CONTEXT_FRAMES
        speakers = part.config.talker_config.speaker_id or {}
        self.speakers = [name.capitalize() for name in speakers]
        self.default_voice = part.family.default_voice if part.family.default_voice in self.speakers \
            else self.speakers[0]
        self.sample_rate = part.family.sample_rate
        return part.facts(sample_rate=self.sample_rate, voices=self.speakers, chunk_frames=self.chunk,
                          left_context_frames=self.left)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(VoiceParams, request.params_for(self.stage))
        voice_of(params, dict.fromkeys(self.speakers), self.default_voice)  # a 400 here, before any work
        self._jobs[request.request_id] = SpeechJob(request_id=request.request_id)
        return [OmniOutput(request.request_id, started=True, sample_rate=self.sample_rate)]

    def _codes(self, token_ids: list[int]) -> list[list[int]]:
        """Frames of one code per quantizer."""
        if len(token_ids) % self.quantizers or any(not 0 <= c < self.codebook for c in token_ids):
            raise OmniError(f"the talker sent codes code2wav cannot decode (it takes frames of {self.quantizers} "
                            f"codes below {self.codebook}); the checkpoint's talker and code2wav do not match")
        return [token_ids[i:i + self.quantizers] for i in range(0, len(token_ids), self.quantizers)]

    def _ready(self, job: SpeechJob) -> bool:
        return job.codes_done or len(job.codes) >= job.decoded + self.chunk

    def step(self) -> StepResult:
        """The next chunk of every request that has one ready; windows of one length decode in one batch."""
        windows: dict[int, list[tuple[SpeechJob, int, int]]] = {}  # length -> (job, first frame, chunk end)
        jobs = self._take_turns()
        audio: dict[str, bytes] = {}
        ends = {}
        for job in jobs:
            ends[job.request_id] = end = min(job.decoded + self.chunk, len(job.codes))
            if end == job.decoded:  # the talker ended on a chunk boundary (or said nothing)
                audio[job.request_id] = b""
                continue
            first = job.decoded - min(self.left, job.decoded)
            windows.setdefault(end - first, []).append((job, first, end))
        try:
            with self.torch.no_grad():
                for group in windows.values():
                    codes = self.torch.tensor([job.codes[first:end] for job, first, end in group],
                                              device=self.device).transpose(1, 2)
                    waves = self.model(codes).float().reshape(len(group), -1)
                    for row, (job, first, _) in enumerate(group):
                        wave = waves[row, (job.decoded - first) * self.upsample:]
                        audio[job.request_id] = (wave.clamp(-1, 1) * 32767).round().to(self.torch.int16) \
                            .cpu().numpy().tobytes()
        except Exception as exc:
            self._fail(jobs, exc)
            return self.result([], max(1, len(jobs)))
        return self.result([self._chunk_out(job, audio[job.request_id], ends[job.request_id]) for job in jobs],
                           max(1, len(jobs)))

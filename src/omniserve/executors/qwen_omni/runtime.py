"""What the Qwen-Omni stages share: their load-time arguments, loading one part of a checkpoint on its
device and dtype, and a sampler that makes the same choices as transformers' `generate`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest, OutOfMemory
from omniserve.executors.base import Executor
from omniserve.executors.torch_device import resolve_device, resolve_dtype
from omniserve.models.qwen_omni import find_checkpoint
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, SamplingParams

_FRACTIONS: dict[int, float] = {}  # CUDA device -> the memory share this process has been given


class OmniStageArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    device: str = "auto"  # auto: the first CUDA device if there is one, else the CPU
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$")  # auto: bfloat16 on CUDA, else float32
    threads: int = Field(2, ge=1)
    mem_fraction: float | None = Field(None, gt=0, lt=1)  # of the device's memory this stage may use (CUDA)
    context_length: int | None = Field(None, ge=16)
    # code2wav: codec frames in the first chunk (each next one doubles, up to the largest), and the frames
    # before (and after) a chunk that the vocoder sees as context
    chunk_frames: int | None = Field(None, ge=1)
    max_chunk_frames: int | None = Field(None, ge=1)
    left_context_frames: int | None = Field(None, ge=0)
    right_context_frames: int | None = Field(None, ge=0)


class LoadedPart:
    """One part (thinker, talker or code2wav) of a checkpoint, on its device."""

    def __init__(self, args: OmniStageArgs, part: str):
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        checkpoint = find_checkpoint(args.model_path)
        assert checkpoint is not None, args.model_path
        self.checkpoint = checkpoint
        self.mem_fraction = args.mem_fraction
        self.family = checkpoint.family
        self.device = resolve_device(args.device)
        torch.set_num_threads(args.threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            if args.mem_fraction is not None:  # colocated stages on one device add up their shares
                _FRACTIONS[self.device.index] = min(0.99, _FRACTIONS.get(self.device.index, 0) + args.mem_fraction)
                torch.cuda.set_per_process_memory_fraction(_FRACTIONS[self.device.index], self.device)
        elif checkpoint.quantization == "fp8":
            raise ValueError(f"{checkpoint.path} holds FP8 weights, which need a CUDA GPU; this stage runs on the CPU "
                             "(serve a bfloat16 checkpoint on the CPU, or give the stage a GPU)")
        self.dtype = resolve_dtype(args.dtype, self.device)
        hf_logging.set_verbosity_error()  # the other parts' weights are "unexpected" here, by design
        config = getattr(transformers, self.family.config_class).from_pretrained(checkpoint.path)
        class_name, sub_config, prefix = getattr(self.family, part)
        self.config = config
        hf_logging.enable_progress_bar()
        part_config = getattr(config, sub_config)
        share_weight_conversions(config.model_type, part_config.model_type)
        self.model, loaded = getattr(transformers, class_name).from_pretrained(
            checkpoint.path, config=part_config, key_mapping={rf"^{prefix}\.": ""}, dtype=self.dtype,
            device_map=self.device, output_loading_info=True)
        self.model.eval()
        if loaded["missing_keys"]:  # never serve weights left as they were allocated
            missing = sorted(loaded["missing_keys"])
            raise ValueError(f"{checkpoint.path}: the {part}'s weights {', '.join(missing[:3])}"
                             f"{f' (and {len(missing) - 3} more)' if len(missing) > 3 else ''} are not in the "
                             "checkpoint (or not in a layout this version of transformers reads)")

    def facts(self, **more: Any) -> StageFacts:
        """What every part tells of itself, with its stage's `more`."""
        return StageFacts(model_path=str(self.checkpoint.path), family=self.family.name, device=str(self.device),
                          dtype=str(self.dtype).removeprefix("torch."), mem_fraction=self.mem_fraction, **more)


def share_weight_conversions(whole: str, part: str) -> None:
    """Let a part loaded alone read the checkpoint as the whole model does: transformers knows how to fuse
    Qwen3-Omni's per-expert weights for the whole model and its thinker, not for its talker alone."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    conversions = get_checkpoint_conversion_mapping(whole)
    if conversions and get_checkpoint_conversion_mapping(part) is None:
        register_checkpoint_conversion_mapping(part, conversions)


def read_speakers(path: Path) -> dict[str, dict[str, Any]]:
    """Qwen2.5-Omni's speakers (`spk_dict.pt`): per name, the talker's text-start token and the
    code2wav conditioning."""
    import torch

    file = path / "spk_dict.pt"
    if not file.is_file():
        raise ValueError(f"{file} is missing: Qwen2.5-Omni keeps its voices there")
    return torch.load(file, weights_only=True)


class Sampler:
    """The next token of one sequence, chosen as transformers' `generate` chooses it: repetition penalty
    and suppressed tokens, then temperature, top-k and top-p, then a draw from this sequence's own
    generator (greedy at temperature 0)."""

    def __init__(self, params: SamplingParams, device, suppress: list[int] | None = None, generator=None):
        import torch
        from transformers import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy = params.temperature == 0
        processors: list[Any] = []
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if suppress:
            processors.append(SuppressTokensLogitsProcessor(suppress, device=device))
        if not self.greedy:
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k and params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            if params.min_p > 0:
                processors.append(MinPLogitsWarper(params.min_p))
        self.processors = LogitsProcessorList(processors)
        self.bias = dict(params.logit_bias)
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty
        if generator is not None:  # draws interleaved with another sampler's, as from one global RNG
            self.generator = generator
            return
        self.generator = torch.Generator(device=device)
        if params.seed is not None:
            self.generator.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
        else:
            self.generator.seed()

    def __call__(self, logits, seen, generated: list[int]) -> int:
        """`logits`: (1, vocab) float32; `seen`: (1, n) the sequence so far (prompt included);
        `generated`: the tokens chosen so far (for the OpenAI penalties)."""
        import torch

        scores = logits
        if self.bias or ((self.presence or self.frequency) and generated):
            scores = scores.clone()
            for token, bias in self.bias.items():
                if 0 <= token < scores.shape[-1]:
                    scores[0, token] += bias
            if generated and (self.presence or self.frequency):
                ids, counts = torch.unique(torch.tensor(generated, device=scores.device), return_counts=True)
                scores[0, ids] -= self.presence + self.frequency * counts.to(scores.dtype)
        scores = self.processors(seen, scores)
        if self.greedy:
            return int(torch.argmax(scores, dim=-1)[0])
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])


def failure(exc: Exception) -> Exception:
    """What a request that failed in a forward pass gets: out of device memory is a 507 of its own."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return OutOfMemory(f"the model ran out of device memory on this request ({str(exc).splitlines()[0]}); "
                           "retry it, shorter, or give the stage more memory")
    return exc


def check_sampling(stage: str, params: SamplingParams) -> None:
    """What these stages cannot do is a 400 naming the field."""
    for name, unsupported in (("n", params.n != 1), ("logprobs", params.logprobs or params.prompt_logprobs),
                              ("response_format", params.grammar is not None), ("lora_path", params.lora)):
        if unsupported:
            raise InvalidRequest(f"{name}: not supported by this model's {stage} (a Qwen-Omni checkpoint)",
                                 param=name)


@dataclass(kw_only=True)
class SpeechJob:
    """One request's codes on their way to audio."""

    request_id: str
    codes: list = field(default_factory=list)  # codec tokens (Qwen3-Omni: frames of codes) so far
    codes_done: bool = False
    decoded: int = 0  # codes whose audio has left
    chunks: int = 0  # chunks decoded so far
    text: str = ""  # the answer's text not passed on yet
    samples: int = 0


class ChunkedCode2Wav(Executor):
    """What both code2wav stages share: each request's codes arrive from the talker, every request with a
    chunk ready takes its turn in the next step, and each chunk leaves as one output (the last says done)."""

    def __init__(self, args: OmniStageArgs, stage: str = "code2wav"):
        super().__init__(args, stage)
        self._jobs: dict[str, SpeechJob] = {}
        self._turns: deque[str] = deque()  # requests with a chunk ready
        self.sample_rate = 24000

    def close(self) -> None:
        self._jobs.clear()

    def abort(self, request_id: str) -> None:
        self._jobs.pop(request_id, None)
        if request_id in self._turns:
            self._turns.remove(request_id)

    def has_work(self) -> bool:
        return bool(self._turns)

    def _ready(self, job: SpeechJob) -> bool:
        raise NotImplementedError

    def _codes(self, token_ids: list[int]) -> list:
        """The talker's tokens as this stage keeps them; codes it cannot decode are an error."""
        raise NotImplementedError

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        for out in outputs:
            job = self._jobs.get(out.request_id)
            if job is None:
                continue
            job.codes += self._codes(out.token_ids)
            job.text += out.text
            job.codes_done = job.codes_done or out.done
            if self._ready(job) and job.request_id not in self._turns:
                self._turns.append(job.request_id)
        return []

    def _take_turns(self) -> list[SpeechJob]:
        jobs = [self._jobs[request_id] for request_id in self._turns]
        self._turns.clear()
        return jobs

    def _fail(self, jobs: list[SpeechJob], exc: Exception) -> None:
        """A step that failed fails its requests; the stage goes on."""
        for job in jobs:
            self._jobs.pop(job.request_id, None)
            self.fail(job.request_id, failure(exc))

    def _chunk_out(self, job: SpeechJob, audio: bytes, end: int) -> OmniOutput:
        """The output of the chunk that ends at code `end`; the request's turn comes again if it has another."""
        job.decoded, job.chunks = end, job.chunks + 1
        text, job.text = job.text, ""
        out = OmniOutput(job.request_id, audio=audio, sample_rate=self.sample_rate, text=text)
        job.samples += len(audio) // 2
        if job.codes_done and job.decoded == len(job.codes):
            out.finish_reason, out.done = "stop", True
            del self._jobs[job.request_id]
        elif self._ready(job):
            self._turns.append(job.request_id)
        return out

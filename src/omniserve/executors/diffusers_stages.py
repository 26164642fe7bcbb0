"""A diffusers pipeline folder run as three stages: text encoder -> denoiser -> VAE decoder.

Each stage loads only its components from the folder (`model_index.json` names
their classes), so the three can sit in different processes or on different
devices. The text encoder runs the pipeline's own `encode_prompt` for the
prompt and the negative prompt (classifier-free guidance); the denoiser runs
the scheduler loop, one denoising step per engine step for every waiting
request whose latents have the same shape (one batched model call), and
reports progress; the decoder turns latents into an image, or a video's
frames. Requests carry numpy arrays between them on the graph's edges. What
differs between a UNet pipeline and Wan lives in `models/diffusion_families.py`.

The denoiser also takes LoRA adapters (SGLang Diffusion's `/v1/set_lora`
family), through peft: `control` calls change the adapters
between steps instead of making an image.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import RoundRobinExecutor, StepResult, request_params
from omniserve.models.diffusion_families import family_of
from omniserve.runtime.facts import ImageTask, StageFacts
from omniserve.runtime.messages import ControlOp, ListAdapters, MergeAdapters, SetAdapters
from omniserve.runtime.types import GeneratedImage, OmniOutput, OmniRequest, VideoFrames

log = logging.getLogger(__name__)


class DiffusersArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(2, ge=1)
    device: str = "cpu"


class DiffusionParams(BaseModel):
    """What a request may set for the diffusion stages (`OmniRequest.params[stage]`). Steps and
    guidance left out take the pipeline's own defaults."""

    model_config = ConfigDict(extra="ignore")

    n: int = Field(1, ge=1, le=10)
    width: int = Field(512, ge=16)
    height: int = Field(512, ge=16)
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    video: bool = False  # frames instead of images (a video family only)
    num_frames: int = Field(1, ge=1, le=3600)


def _index(folder: str) -> dict[str, Any]:
    return json.loads((Path(folder) / "model_index.json").read_text())


def _component(folder: str, name: str, device: str):
    """One component of a diffusers folder, of the class `model_index.json` names."""
    library, cls = _index(folder)[name]
    component = getattr(importlib.import_module(library), cls).from_pretrained(folder, subfolder=name)
    return component.to(device) if hasattr(component, "to") else component


def _call_defaults(folder: str) -> dict[str, Any]:
    """The defaults of the pipeline class's own `__call__` (steps, guidance, text length)."""
    import diffusers

    call = inspect.signature(getattr(diffusers, _index(folder)["_class_name"]).__call__).parameters
    return {k: p.default for k, p in call.items() if p.default is not inspect.Parameter.empty}


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ---- text encoder ------------------------------------------------------------------------


class DiffusersTextEncoderExecutor(RoundRobinExecutor):
    """The pipeline's own `encode_prompt`, with only its tokenizers and text encoders loaded."""

    def __init__(self, args: DiffusersArgs, stage: str = "text_encoder"):
        super().__init__(args, stage)

    def load(self) -> StageFacts:
        from diffusers import DiffusionPipeline

        _threads(self.args.threads)
        others = {name: None for name, spec in _index(self.args.model_path).items()
                  if isinstance(spec, list) and not name.startswith(("tokenizer", "text_encoder"))}
        self.pipe = DiffusionPipeline.from_pretrained(self.args.model_path, **others).to(self.args.device)
        accepted = inspect.signature(self.pipe.encode_prompt).parameters
        options = {"num_images_per_prompt": 1, "num_videos_per_prompt": 1, "device": self.args.device,
                   "max_sequence_length": _call_defaults(self.args.model_path).get("max_sequence_length")}
        self.options = {k: v for k, v in options.items() if k in accepted and v is not None}
        return StageFacts(model_path=self.args.model_path)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(DiffusionParams, request.params_for(self.stage))
        self._jobs.append(_Prompt(request.request_id, request.prompt or "", params.negative_prompt or ""))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _Prompt) -> tuple[list[OmniOutput], bool]:
        import torch

        with torch.no_grad():
            positive, negative = self.pipe.encode_prompt(prompt=job.prompt, negative_prompt=job.negative,
                                                         do_classifier_free_guidance=True, **self.options)[:2]
        embeds = torch.cat([negative, positive])
        return [OmniOutput(job.request_id, finish_reason="stop", done=True,
                           payload=embeds.float().cpu().numpy())], True


@dataclass
class _Prompt:
    request_id: str
    prompt: str
    negative: str


# ---- denoiser ----------------------------------------------------------------------------


@dataclass
class _Denoise:
    request_id: str
    params: DiffusionParams
    guidance: float
    embeds: Any  # torch (2, seq, dim): negative, positive
    latents: Any
    scheduler: Any
    step: int = 0
    timesteps: list = field(default_factory=list)


class DiffusersDenoiserExecutor(RoundRobinExecutor):
    def __init__(self, args: DiffusersArgs, stage: str = "denoiser"):
        super().__init__(args, stage)
        self._waiting: dict[str, DiffusionParams] = {}
        self.loras: dict[str, dict[str, Any]] = {}  # nickname -> {path, strength}
        self.merged = False

    def load(self) -> StageFacts:
        _threads(self.args.threads)
        self.family = family_of(self.args.model_path)
        self.model = _component(self.args.model_path, self.family.denoiser, self.args.device).eval()
        self.scheduler = _component(self.args.model_path, "scheduler", self.args.device)
        self.defaults = _call_defaults(self.args.model_path)
        return StageFacts(model_path=self.args.model_path, lora=hasattr(self.model, "load_lora_adapter"))

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(DiffusionParams, request.params_for(self.stage))
        multiple = self.family.multiple
        if params.width % multiple or params.height % multiple:
            raise InvalidRequest(f"size: this model needs a width and height divisible by {multiple}", param="size")
        self._waiting[request.request_id] = params  # starts when the text encoder feeds the embeddings
        return [OmniOutput(request.request_id, started=True)]

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        import torch

        params = self._waiting.pop(outputs[0].request_id, None)
        embeds = next((o.payload for o in outputs if o.payload is not None), None)
        if params is None or embeds is None:
            return []
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        generator = torch.Generator().manual_seed(seed)
        frames = self.family.frames(params.num_frames if params.video else 1)
        shape = self.family.latent_shape(self.model, params.n, params.height, params.width, frames)
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(params.num_inference_steps or self.defaults.get("num_inference_steps", 50))
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        latents = self.family.first_latents(torch.randn(shape, generator=generator), scheduler)
        guidance = params.guidance_scale if params.guidance_scale is not None else self.defaults.get(
            "guidance_scale", 7.5)
        self._jobs.append(_Denoise(outputs[0].request_id, params, guidance, torch.from_numpy(embeds), latents,
                                   scheduler, timesteps=list(scheduler.timesteps)))
        return []

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._waiting.pop(request_id, None)

    def step(self) -> StepResult:
        """One denoising step for the oldest job and for every queued job that can share its model
        call (the same latent and text shapes): requests batch with each other, each at its own timestep."""
        head = self._jobs.popleft()
        batch = [head] + [j for j in self._jobs if j.latents.shape[1:] == head.latents.shape[1:]
                          and j.embeds.shape[1:] == head.embeds.shape[1:]]
        self._jobs = deque(j for j in self._jobs if all(j is not b for b in batch))
        if len(batch) > 1:
            log.debug("one denoiser call for %d requests", len(batch))
        outputs = self._denoise(batch)
        self._jobs.extend(job for job in batch if job.step < len(job.timesteps))
        return self.result(outputs, len(batch))

    def _denoise(self, batch: list[_Denoise]) -> list[OmniOutput]:
        import torch

        inputs, times, contexts = [], [], []
        for job in batch:  # classifier-free guidance doubles a job's rows: unconditioned, then conditioned
            t, guided = job.timesteps[job.step], job.guidance > 1
            rows, timesteps = self.family.model_input(job.scheduler, torch.cat([job.latents] * 2) if guided
                                                      else job.latents, t)
            inputs.append(rows)
            times.append(timesteps)
            contexts.append((job.embeds if guided else job.embeds[1:]).repeat_interleave(job.params.n, dim=0))
        with torch.no_grad():
            noise = self.family.predict_batch(self.model, inputs, times, contexts)
        outputs = []
        for job, predicted in zip(batch, noise.split([len(x) for x in inputs]), strict=True):
            if job.guidance > 1:
                uncond, cond = predicted.chunk(2)
                predicted = uncond + job.guidance * (cond - uncond)
            job.latents = job.scheduler.step(predicted, job.timesteps[job.step], job.latents).prev_sample
            job.step += 1
            done = job.step == len(job.timesteps)
            outputs.append(OmniOutput(job.request_id, finish_reason="stop" if done else None, done=done,
                                      progress=round(100 * job.step / len(job.timesteps)),
                                      payload=job.latents.numpy() if done else None))
        return outputs

    # ---- LoRA (SGLang Diffusion's set_lora / merge / unmerge / list) ----------------------

    def control(self, op: ControlOp) -> dict[str, Any]:
        """Set, merge, unmerge or list the adapters, between denoising steps; the adapters after it."""
        if not isinstance(op, SetAdapters | MergeAdapters | ListAdapters):
            raise InvalidRequest(f"the {self.stage!r} stage takes no {type(op).__name__} operation")
        if not hasattr(self.model, "load_lora_adapter"):
            raise InvalidRequest("this model cannot take LoRA adapters", param="lora_path")
        if isinstance(op, SetAdapters):
            if self.merged:
                self.model.unfuse_lora()
                self.merged = False
            for nickname, path in zip(op.nicknames, op.paths, strict=True):
                if nickname in self.loras and self.loras[nickname]["path"] == path:
                    continue
                if nickname in self.loras:
                    self.model.delete_adapters([nickname])
                try:
                    self.model.load_lora_adapter(_lora_weights(path), prefix=self.family.denoiser,
                                                 adapter_name=nickname)
                except Exception as exc:  # a wrong file, a mismatched model: the caller's to fix
                    raise InvalidRequest(f"lora_path: could not load {path!r} as {nickname!r}: "
                                         f"{type(exc).__name__}: {exc}", param="lora_path") from None
                self.loras[nickname] = {"path": path}
            for nickname, strength in zip(op.nicknames, op.strengths, strict=True):
                self.loras[nickname]["strength"] = strength
            active = {n: v["strength"] for n, v in self.loras.items() if n in op.nicknames}
            self.model.set_adapters(list(active), list(active.values()))
        elif isinstance(op, MergeAdapters):
            if not self.loras:
                raise InvalidRequest("no LoRA adapter is set; call /v1/set_lora first", param="lora_nickname")
            if op.merge and not self.merged:
                self.model.fuse_lora()
            elif not op.merge and self.merged:
                self.model.unfuse_lora()
            self.merged = op.merge
        return {"loras": [{"lora_nickname": n, **v} for n, v in self.loras.items()], "merged": self.merged}


def _lora_weights(path: str) -> dict[str, Any]:
    """A LoRA's tensors from a .safetensors file, or from the one in a folder (as diffusers saves them)."""
    from safetensors.torch import load_file

    folder = Path(path)
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"the folder should hold one .safetensors file; it holds {len(files)}")
        folder = files[0]
    return load_file(str(folder))


# ---- VAE decoder -------------------------------------------------------------------------


class DiffusersDecoderExecutor(RoundRobinExecutor):
    def __init__(self, args: DiffusersArgs, stage: str = "vae"):
        super().__init__(args, stage)
        self._waiting: dict[str, tuple[str, DiffusionParams]] = {}

    def load(self) -> StageFacts:
        _threads(self.args.threads)
        self.family = family_of(self.args.model_path)
        self.vae = _component(self.args.model_path, "vae", self.args.device).eval()
        tasks: list[ImageTask] = ["T2V", "T2I"] if self.family.videos else ["T2I"]
        return StageFacts(model_path=self.args.model_path, pipeline_name="diffusers",
                          pipeline_class=_index(self.args.model_path).get("_class_name"), task_type=tasks[0],
                          tasks=tasks, edits=False, videos=self.family.videos)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(DiffusionParams, request.params_for(self.stage))
        if params.video and not self.family.videos:
            raise InvalidRequest("this model makes still images, not videos", param="model")
        self._waiting[request.request_id] = (request.prompt or "", params)
        return [OmniOutput(request.request_id, started=True)]

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        waiting = self._waiting.pop(outputs[0].request_id, None)
        latents = next((o.payload for o in outputs if o.payload is not None), None)
        if waiting is not None and latents is not None:
            self._jobs.append(_Latents(outputs[0].request_id, *waiting, latents))
        return []

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._waiting.pop(request_id, None)

    def advance(self, job: _Latents) -> tuple[list[OmniOutput], bool]:
        """One image (or one video) per turn."""
        import torch

        with torch.no_grad():
            pixels = self.family.decode(self.vae, torch.from_numpy(job.latents[job.index:job.index + 1]))
        frames = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        index = job.index
        job.index += 1
        done = job.index == len(job.latents)
        out = OmniOutput(job.request_id, index=index, finish_reason="stop", done=done)
        if job.params.video:
            out.data, out.progress = VideoFrames(frames), 100
        else:
            out.data = GeneratedImage(frames[0], job.prompt)
        return [out], done


@dataclass
class _Latents:
    request_id: str
    prompt: str
    params: DiffusionParams
    latents: np.ndarray
    index: int = 0

"""A diffusers pipeline folder run as three stages: text encoder -> denoiser -> VAE decoder.

Each stage loads only its components from the folder (`model_index.json` names
their classes), so the three can sit in different processes or on different
devices. The text encoder turns the prompt (and the negative prompt, for
classifier-free guidance) into embeddings; the denoiser runs the scheduler
loop, one denoising step per engine step for every waiting request whose
latents have the same shape (one batched UNet call), and reports progress;
the decoder turns latents into pixels. Requests carry numpy arrays between
them on the graph's edges.

The denoiser also takes LoRA adapters (SGLang Diffusion's `/v1/set_lora`
family), through peft: requests with `params["lora"]` change the adapters
between steps instead of making an image.
"""

from __future__ import annotations

import importlib
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
from omniserve.executors.base import RoundRobinExecutor, request_params
from omniserve.runtime.types import OmniOutput, OmniRequest

log = logging.getLogger(__name__)


class DiffusersArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(2, ge=1)
    device: str = "cpu"


class DiffusionParams(BaseModel):
    """What a request may set for the diffusion stages (`OmniRequest.params[stage]`)."""

    model_config = ConfigDict(extra="ignore")

    n: int = Field(1, ge=1, le=10)
    width: int = Field(512, ge=16)
    height: int = Field(512, ge=16)
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    lora: dict[str, Any] | None = None  # an adapter operation instead of an image (denoiser only)


def _component(folder: str, name: str, device: str):
    """One component of a diffusers folder, of the class `model_index.json` names."""
    library, cls = json.loads((Path(folder) / "model_index.json").read_text())[name]
    component = getattr(importlib.import_module(library), cls).from_pretrained(folder, subfolder=name)
    return component.to(device) if hasattr(component, "to") else component


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ---- text encoder ------------------------------------------------------------------------


class DiffusersTextEncoderExecutor(RoundRobinExecutor):
    def __init__(self, args: DiffusersArgs, stage: str = "text_encoder"):
        super().__init__(args, stage)

    def load(self) -> dict[str, Any]:
        _threads(self.args.threads)
        self.tokenizer = _component(self.args.model_path, "tokenizer", self.args.device)
        self.encoder = _component(self.args.model_path, "text_encoder", self.args.device).eval()
        return {"model_path": self.args.model_path}

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(DiffusionParams, request.params_for(self.stage))
        self._jobs.append(_Prompt(request.request_id, request.prompt or "", params.negative_prompt or ""))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _Prompt) -> tuple[list[OmniOutput], bool]:
        import torch

        tokens = self.tokenizer([job.negative, job.prompt], padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            embeds = self.encoder(tokens.input_ids.to(self.args.device))[0]
        return [OmniOutput(job.request_id, finish_reason="stop", done=True,
                           info={"embeds": embeds.float().cpu().numpy()})], True


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

    def load(self) -> dict[str, Any]:
        _threads(self.args.threads)
        self.unet = _component(self.args.model_path, "unet", self.args.device).eval()
        self.scheduler = _component(self.args.model_path, "scheduler", self.args.device)
        vae = json.loads((Path(self.args.model_path) / "vae" / "config.json").read_text())
        self.scale = 2 ** (len(vae["block_out_channels"]) - 1)
        return {"model_path": self.args.model_path, "lora": hasattr(self.unet, "load_lora_adapter")}

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(DiffusionParams, request.params_for(self.stage))
        if params.lora is not None:
            result = self._lora(params.lora)
            return [OmniOutput(request.request_id, started=True),
                    OmniOutput(request.request_id, finish_reason="stop", done=True, info={"lora": result})]
        if params.width % self.scale or params.height % self.scale:
            raise InvalidRequest(f"size: this model needs a width and height divisible by {self.scale}",
                                 param="size")
        self._waiting[request.request_id] = params  # starts when the text encoder feeds the embeddings
        return [OmniOutput(request.request_id, started=True)]

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        import torch

        params = self._waiting.pop(outputs[0].request_id, None)
        embeds = next((o.info["embeds"] for o in outputs if "embeds" in o.info), None)
        if params is None or embeds is None:
            return []
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        generator = torch.Generator().manual_seed(seed)
        shape = (params.n, self.unet.config.in_channels, params.height // self.scale, params.width // self.scale)
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(params.num_inference_steps)
        latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
        self._jobs.append(_Denoise(outputs[0].request_id, params, torch.from_numpy(embeds), latents, scheduler,
                                   timesteps=list(scheduler.timesteps)))
        return []

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._waiting.pop(request_id, None)

    def step(self) -> list[OmniOutput]:
        """One denoising step for the oldest job and for every queued job that can share its UNet
        call (the same latent shape): requests batch with each other, each at its own timestep."""
        head = self._jobs.popleft()
        batch = [head] + [j for j in self._jobs if j.latents.shape[1:] == head.latents.shape[1:]]
        self._jobs = deque(j for j in self._jobs if all(j is not b for b in batch))
        if len(batch) > 1:
            log.debug("one UNet call for %d requests", len(batch))
        outputs = self._denoise(batch)
        self._jobs.extend(job for job in batch if job.step < len(job.timesteps))
        return outputs

    def _denoise(self, batch: list[_Denoise]) -> list[OmniOutput]:
        import torch

        inputs, times, contexts = [], [], []
        for job in batch:  # classifier-free guidance doubles a job's rows: unconditioned, then conditioned
            t, guided = job.timesteps[job.step], job.params.guidance_scale > 1
            rows = torch.cat([job.latents] * 2) if guided else job.latents
            inputs.append(job.scheduler.scale_model_input(rows, t))
            times.append(t.repeat(len(rows)))
            contexts.append((job.embeds if guided else job.embeds[1:]).repeat_interleave(job.params.n, dim=0))
        with torch.no_grad():
            noise = self.unet(torch.cat(inputs), torch.cat(times), encoder_hidden_states=torch.cat(contexts)).sample
        outputs = []
        for job, predicted in zip(batch, noise.split([len(x) for x in inputs]), strict=True):
            if job.params.guidance_scale > 1:
                uncond, cond = predicted.chunk(2)
                predicted = uncond + job.params.guidance_scale * (cond - uncond)
            job.latents = job.scheduler.step(predicted, job.timesteps[job.step], job.latents).prev_sample
            job.step += 1
            done = job.step == len(job.timesteps)
            info = {"progress": round(100 * job.step / len(job.timesteps))}
            if done:
                info["latents"] = job.latents.numpy()
            outputs.append(OmniOutput(job.request_id, finish_reason="stop" if done else None, done=done, info=info))
        return outputs

    # ---- LoRA (SGLang Diffusion's set_lora / merge / unmerge / list) ----------------------

    def _lora(self, op: dict[str, Any]) -> dict[str, Any]:
        if not hasattr(self.unet, "load_lora_adapter"):
            raise InvalidRequest("this model cannot take LoRA adapters", param="lora_path")
        action = op["op"]
        if action == "set":
            if self.merged:
                self.unet.unfuse_lora()
                self.merged = False
            for nickname, path in zip(op["nicknames"], op["paths"], strict=True):
                if nickname in self.loras and self.loras[nickname]["path"] == path:
                    continue
                if nickname in self.loras:
                    self.unet.delete_adapters([nickname])
                try:
                    self.unet.load_lora_adapter(_lora_weights(path), prefix="unet", adapter_name=nickname)
                except Exception as exc:  # a wrong file, a mismatched model: the caller's to fix
                    raise InvalidRequest(f"lora_path: could not load {path!r} as {nickname!r}: "
                                         f"{type(exc).__name__}: {exc}", param="lora_path") from None
                self.loras[nickname] = {"path": path}
            for nickname, strength in zip(op["nicknames"], op["strengths"], strict=True):
                self.loras[nickname]["strength"] = strength
            active = {n: v["strength"] for n, v in self.loras.items() if n in op["nicknames"]}
            self.unet.set_adapters(list(active), list(active.values()))
        elif action in ("merge", "unmerge"):
            if not self.loras:
                raise InvalidRequest("no LoRA adapter is set; call /v1/set_lora first", param="lora_nickname")
            if action == "merge" and not self.merged:
                self.unet.fuse_lora()
            elif action == "unmerge" and self.merged:
                self.unet.unfuse_lora()
            self.merged = action == "merge"
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
        self._waiting: dict[str, str] = {}

    def load(self) -> dict[str, Any]:
        _threads(self.args.threads)
        self.vae = _component(self.args.model_path, "vae", self.args.device).eval()
        index = json.loads((Path(self.args.model_path) / "model_index.json").read_text())
        return {"model_path": self.args.model_path, "pipeline_name": "diffusers",
                "pipeline_class": index.get("_class_name"), "task_type": "T2I", "tasks": ["T2I"],
                "edits": False, "videos": False}

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        self._waiting[request.request_id] = request.prompt or ""
        return [OmniOutput(request.request_id, started=True)]

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        prompt = self._waiting.pop(outputs[0].request_id, None)
        latents = next((o.info["latents"] for o in outputs if "latents" in o.info), None)
        if prompt is not None and latents is not None:
            self._jobs.append(_Latents(outputs[0].request_id, prompt, latents))
        return []

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._waiting.pop(request_id, None)

    def advance(self, job: _Latents) -> tuple[list[OmniOutput], bool]:
        """One image per turn."""
        import torch

        with torch.no_grad():
            latent = torch.from_numpy(job.latents[job.index:job.index + 1]) / self.vae.config.scaling_factor
            pixels = self.vae.decode(latent).sample[0]
        image = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        index = job.index
        job.index += 1
        done = job.index == len(job.latents)
        return [OmniOutput(job.request_id, index=index, finish_reason="stop", done=done,
                           info={"image": image, "revised_prompt": job.prompt})], done


@dataclass
class _Latents:
    request_id: str
    prompt: str
    latents: np.ndarray
    index: int = 0

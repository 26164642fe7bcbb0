"""Image generation with sketch-rnn: the prompt picks a category, the model draws it.

Each step draws one image of one request, round robin, so several requests
share the stage and each image comes back as soon as it is drawn. Outputs
carry one image each (`index`, an RGB or RGBA uint8 array in
`info["image"]`); `done` comes with the last.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import RoundRobinExecutor, request_params
from omniserve.models.sketch_rnn import SketchRnn, render
from omniserve.runtime.types import OmniOutput, OmniRequest


class SketchRnnArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(1, ge=1)  # numpy on one thread: a drawing takes about 10 ms


class ImageParams(BaseModel):
    """What a request may set for an image-generation stage (`OmniRequest.params[stage]`)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=10)
    width: int = Field(512, ge=16)
    height: int = Field(512, ge=16)
    seed: int | None = None
    temperature: float = Field(0.4, gt=0, le=1, description="sketch-rnn sampling temperature")
    transparent: bool = False
    negative_prompt: str | None = None  # accepted for the diffusion API's sake; a sketch has nothing to avoid
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None


@dataclass
class _Job:
    request_id: str
    category: str
    params: ImageParams
    rng: np.random.Generator
    index: int = 0


class SketchRnnExecutor(RoundRobinExecutor):
    args: SketchRnnArgs

    def __init__(self, args: SketchRnnArgs, stage: str = "image"):
        super().__init__(args, stage)

    def load(self) -> dict[str, Any]:
        self.sketches = SketchRnn(Path(self.args.model_path))
        return {"model_path": self.args.model_path, "categories": self.sketches.categories,
                "pipeline": "sketch-rnn", "task": "text-to-image"}

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(ImageParams, request.params_for(self.stage))
        prompt = request.prompt if isinstance(request.prompt, str) else ""
        category = self.sketches.match(prompt)
        if category is None:
            raise InvalidRequest(
                f"prompt: this model draws one of {len(self.sketches.categories)} things and the prompt names none "
                f"of them; name one of: {', '.join(c.replace('_', ' ') for c in self.sketches.categories)}",
                param="prompt")
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        self._jobs.append(_Job(request.request_id, category, params, np.random.default_rng(seed)))
        return [OmniOutput(request.request_id, started=True, info={"category": category})]

    def advance(self, job: _Job) -> tuple[list[OmniOutput], bool]:
        p = job.params
        stroke = self.sketches.model(job.category).sample(job.rng, p.temperature)
        mode, background = ("RGBA", (255, 255, 255, 0)) if p.transparent else ("RGB", (255, 255, 255))
        image = np.asarray(render(stroke, p.width, p.height, background=background, mode=mode,
                                  ink=(0, 0, 0, 255) if p.transparent else (0, 0, 0)))
        index = job.index
        job.index += 1
        done = job.index == p.n
        revised = f"a drawing of a {job.category.replace('_', ' ')}"
        return [OmniOutput(job.request_id, index=index, finish_reason="stop", done=done,
                           info={"image": image, "revised_prompt": revised, "category": job.category})], done

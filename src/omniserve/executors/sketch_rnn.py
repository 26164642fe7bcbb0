"""Image generation with sketch-rnn: the prompt picks a category, the model draws it.

An edit draws it into a given image instead: inside the mask's fully
transparent area (OpenAI's convention), or over the whole image without a mask.
A video animates the drawing stroke by stroke (onto `images[0]` if given,
the reference image); each step renders a few frames and reports progress.

Each step draws one image of one request, round robin, so several requests
share the stage and each image comes back as soon as it is drawn. Outputs
carry one image each (`index`, an RGB or RGBA uint8 array in
a `GeneratedImage`); `done` comes with the last.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import RoundRobinExecutor, request_params
from omniserve.models.sketch_rnn import SketchRnn, Stroke, render
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import GeneratedImage, OmniOutput, OmniRequest, VideoFrames


class SketchRnnArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(1, ge=1)  # numpy on one thread: a drawing takes about 10 ms
    # a prompt naming none of the categories, nor anything near one in meaning: a 400 (True), or the nearest
    # category all the same, said in revised_prompt (False)
    strict_prompts: bool = False


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
    edit: bool = False  # draw into OmniRequest.images[0]
    mask: bool = False  # and OmniRequest.images[-1] (RGBA) is the mask
    video: bool = False  # animate it: `num_frames` frames, drawn into images[0] if there is one
    num_frames: int = Field(32, ge=1, le=3600)


FRAMES_PER_STEP = 8


@dataclass
class _Job:
    request_id: str
    category: str
    params: ImageParams
    rng: np.random.Generator
    images: list[np.ndarray]  # for an edit: the image, then the mask if any
    index: int = 0
    stroke: Stroke | None = None  # a video's drawing, sampled on its first step


class SketchRnnExecutor(RoundRobinExecutor):
    args: SketchRnnArgs

    def __init__(self, args: SketchRnnArgs, stage: str = "image"):
        super().__init__(args, stage)

    def load(self) -> StageFacts:
        from omniserve.models.minilm import MiniLm

        self.sketches = SketchRnn(Path(self.args.model_path), MiniLm(self.args.threads).embed)
        return StageFacts(model_path=self.args.model_path, categories=self.sketches.categories,
                          pipeline_name="sketch_rnn_pipeline", pipeline_class="SketchRnn", task_type="T2I",
                          tasks=["T2I", "TI2I", "T2V", "TI2V"], edits=True, videos=True)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(ImageParams, request.params_for(self.stage))
        prompt = request.prompt if isinstance(request.prompt, str) else ""
        category = self.sketches.match(prompt, strict=self.args.strict_prompts)
        if category is None:
            raise InvalidRequest(
                f"prompt: this model draws one of {len(self.sketches.categories)} things and the prompt names none "
                f"of them; name one of: {', '.join(c.replace('_', ' ') for c in self.sketches.categories)} "
                "(this server runs with --strict-image-prompts)",
                param="prompt")
        if params.edit and not request.images:
            raise InvalidRequest("image: an edit needs an image", param="image")
        if params.mask and not (request.images[-1][..., 3] == 0).any():
            raise InvalidRequest("mask: the mask has no fully transparent area, so there is nothing to edit "
                                 "(transparent pixels mark where to draw)", param="mask")
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        self._jobs.append(_Job(request.request_id, category, params, np.random.default_rng(seed),
                               list(request.images)))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _Job) -> tuple[list[OmniOutput], bool]:
        if job.params.video:
            return self._frames(job)
        p = job.params
        stroke = self.sketches.model(job.category).sample(job.rng, p.temperature)
        if p.edit:
            image = draw_into(stroke, job.images[0], job.images[-1] if p.mask else None, p.width, p.height)
        else:
            mode, background = ("RGBA", (255, 255, 255, 0)) if p.transparent else ("RGB", (255, 255, 255))
            image = np.asarray(render(stroke, p.width, p.height, background=background, mode=mode,
                                      ink=(0, 0, 0, 255) if p.transparent else (0, 0, 0)))
        index = job.index
        job.index += 1
        done = job.index == p.n
        revised = f"a drawing of a {job.category.replace('_', ' ')}"
        return [OmniOutput(job.request_id, index=index, finish_reason="stop", done=done,
                           data=GeneratedImage(image, revised))], done


    def _frames(self, job: _Job) -> tuple[list[OmniOutput], bool]:
        """The next few frames of the animation: the pen reaches the end of the drawing at 80%
        of the clip, and the finished drawing holds for the rest."""
        p = job.params
        if job.stroke is None:
            job.stroke = self.sketches.model(job.category).sample(job.rng, p.temperature)
        points = len(job.stroke.offsets)
        drawing_frames = max(1, round(p.num_frames * 0.8))
        first, last = job.index, min(job.index + FRAMES_PER_STEP, p.num_frames)
        frames = []
        for t in range(first, last):
            upto = round(points * min(1.0, (t + 1) / drawing_frames))
            if job.images:
                frames.append(draw_into(job.stroke, job.images[0], None, p.width, p.height, upto))
            else:
                frames.append(np.asarray(render(job.stroke, p.width, p.height, upto=upto)))
        job.index = last
        done = last == p.num_frames
        return [OmniOutput(job.request_id, finish_reason="stop" if done else None, done=done,
                           data=VideoFrames(np.stack(frames)), progress=round(100 * last / p.num_frames))], done

def draw_into(stroke: Stroke, base: np.ndarray, mask: np.ndarray | None, width: int, height: int,
              upto: int | None = None) -> np.ndarray:
    """The drawing fitted into the editable area's bounding box and inked only inside the area
    (the mask's fully transparent pixels; everywhere without a mask), then sized width x height."""
    h, w = base.shape[:2]
    area = np.ones((h, w), bool) if mask is None else mask[..., 3] == 0
    ys, xs = np.nonzero(area)
    left, top = xs.min(), ys.min()
    layer = render(stroke, int(xs.max() - left + 1), int(ys.max() - top + 1), background=(0, 0, 0, 0),
                   ink=(0, 0, 0, 255), mode="RGBA", upto=upto)
    ink = np.zeros((h, w), bool)
    ink[top:top + layer.height, left:left + layer.width] = np.asarray(layer)[..., 3] > 0
    out = base[..., :3].copy()
    out[ink & area] = 0
    if (width, height) != (w, h):
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.LANCZOS))
    return out

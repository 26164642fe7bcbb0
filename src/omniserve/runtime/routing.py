"""A request's route through the stage graph, planned from the graph and the request alone: the stage
it enters (`ServedModel.entry`: the model it names, or the first stage of that model's path, as an omni
checkpoint's voice enters at the thinker), the media it carries, and the outputs it asks for.

- Outputs: for each kind asked for, the nearest stage downstream of the entry (the entry itself
  first) that makes it emits it, or the one the request names (`OmniRequest.makers`: which of two
  voice models speaks), and every stage on the way there is visited: a spoken answer goes
  thinker ⇢ talker (⇢ code2wav), an image text encoder -> denoiser -> VAE.
- Inputs: a media kind that no stage on the route reads itself is read by an upstream stage of the
  entry that does (speech to text for audio, the vision stage for images), which then feeds the
  entry its text or embeddings.
- The caller's per-stage settings (`OmniRequest.stage_sampling`) are checked here against each
  executor's params model, so a bad one is a 400 naming it before the request takes a slot, and
  join `params` in the route (what the API derived, such as a voice, wins).

`plan_route` is pure: it reads the request and the graph and changes neither; every 400 of routing is raised here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omniserve.config import PipelineConfig
from omniserve.errors import InvalidRequest
from omniserve.executors import makes, reads, request_params_model
from omniserve.executors.base import request_params
from omniserve.runtime.types import OmniRequest


@dataclass(frozen=True)
class Route:
    stages: frozenset[str]  # the stages the request visits
    emit: frozenset[str]  # those whose outputs reach the caller
    params: dict[str, dict[str, Any]]  # each stage's settings: the API's, with the caller's stage_sampling


def plan_route(pipeline: PipelineConfig, request: OmniRequest) -> Route:
    names = [s.name for s in pipeline.stages]
    entry = request.entry
    if entry not in names:
        raise InvalidRequest(f"this pipeline has no stage {entry!r}; stages: {', '.join(names)}")
    executors = {s.name: s.executor for s in pipeline.stages}
    stages, emit = {entry}, set()
    for kind in dict.fromkeys(request.output_modalities):
        path = _path(pipeline, entry, _maker(executors, kind, request.makers.get(kind)))
        if path is None:
            raise InvalidRequest(f"this server has no stage that makes {kind} output from the {entry!r} stage",
                                 param="modalities")
        stages.update(path)
        emit.add(path[-1])
    for kind in _media(request):
        if any(kind in reads(executors[s]) for s in stages):
            continue
        reader = next((e.src for e in pipeline.edges if e.dst == entry and kind in reads(executors[e.src])), None)
        if reader is None:
            raise InvalidRequest(f"this server has no stage that reads {kind} input for the {entry!r} stage")
        stages.add(reader)
    if request.progress:
        emit = set(stages)
    return Route(frozenset(stages), frozenset(emit), _params(request, executors))


def path_between(pipeline: PipelineConfig, entry: str, stage: str) -> list[str]:
    """The stages a request entering at `entry` visits to reach `stage` downstream (a served model's stages)."""
    path = _path(pipeline, entry, lambda name: name == stage)
    if path is None:
        raise ValueError(f"stage {stage!r} is not downstream of {entry!r}")
    return path


def _maker(executors: dict[str, str], kind: str, maker: str | None) -> Callable[[str], bool]:
    """Whether a stage makes `kind` (and is `maker`, where the request names which stage does)."""
    return lambda stage: kind in makes(executors[stage]) and maker in (None, stage)


def _path(pipeline: PipelineConfig, entry: str, found: Callable[[str], bool]) -> list[str] | None:
    """The stages from `entry` to the nearest one downstream (breadth first, `entry` itself first) that is
    `found`."""
    paths = deque([[entry]])
    while paths:
        path = paths.popleft()
        if found(path[-1]):
            return path
        paths.extend(path + [e.dst] for e in pipeline.downstream(path[-1]) if e.dst not in path)
    return None


def _media(request: OmniRequest) -> list[str]:
    return (["audio"] if request.audios else []) + (["image"] if request.images else [])


def _params(request: OmniRequest, executors: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The request's params, with the caller's stage_sampling checked and under them."""
    params = dict(request.params)
    for stage, values in request.stage_sampling.items():
        if stage not in executors:
            raise InvalidRequest(f"stage_sampling: unknown stage {stage!r}; this pipeline's stages are "
                                 f"{', '.join(executors)}", param="stage_sampling")
        model = request_params_model(executors[stage])
        if model is None:  # an LLM stage: the API made its values sampling parameters
            continue
        try:
            request_params(model, values)
        except InvalidRequest as exc:
            raise InvalidRequest(f"stage_sampling.{stage}.{exc.message}",
                                 param=f"stage_sampling.{stage}.{exc.param}") from None
        params[stage] = {**values, **params.get(stage, {})}
    return params

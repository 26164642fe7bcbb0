"""A request's route through the stage graph, planned from the graph and the request alone: the stage
it enters (`ServedModel.entry`: the model it names, or the first stage of that model's path, as an omni
checkpoint's voice enters at the thinker), the media it carries, and the outputs it asks for.

- Outputs: for each kind asked for, the nearest stage downstream of the entry (the entry itself
  first) that makes it emits it, or the one the request names (`OmniRequest.makers`: which of two
  voice models speaks), and every stage on the way there is visited: a spoken answer goes
  thinker ⇢ talker (⇢ code2wav), an image text encoder -> denoiser -> VAE.
- Inputs: a media kind that no stage on the route reads itself is read by an upstream stage of the
  entry that does (speech to text for audio, the vision stage for images), which then feeds the
  entry its text or embeddings. What a stage reads is its executor's kinds, narrowed to those its
  model told it reads when it loaded (`stage_reads`: a --mmproj projector that only hears); the same
  answer tells the API which media a served model takes (`media_read`) before it fetches any.
- The caller's per-stage settings (`OmniRequest.stage_sampling`) are checked here against each
  executor's params model, so a bad one is a 400 naming it before the request takes a slot, and
  join `params` in the route (what the API derived, such as a voice, wins).

`plan_route` is pure: it reads the request, the graph and what the stages read, and changes none of them; every
400 of routing is raised here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omniserve.config import PipelineConfig
from omniserve.errors import InvalidRequest
from omniserve.executors import makes, reads, request_params_model
from omniserve.executors.base import request_params
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniRequest

StageReads = Mapping[str, frozenset[str]]  # stage -> the media kinds ("audio", "image") it takes from a request


@dataclass(frozen=True)
class Route:
    stages: frozenset[str]  # the stages the request visits
    emit: frozenset[str]  # those whose outputs reach the caller
    params: dict[str, dict[str, Any]]  # each stage's settings: the API's, with the caller's stage_sampling


def stage_reads(pipeline: PipelineConfig, facts: Callable[[str], StageFacts] | None = None) -> StageReads:
    """What each stage reads: its executor's media kinds, narrowed to what its model told (`facts(stage).media`)
    where it told; without `facts`, the executors' kinds alone (a graph before its stages load)."""
    out = {}
    for stage in pipeline.stages:
        kinds = frozenset(reads(stage.executor))
        told = facts(stage.name).media if facts is not None else None
        out[stage.name] = kinds & frozenset(told) if told is not None else kinds
    return out


def media_read(pipeline: PipelineConfig, path: list[str] | tuple[str, ...], read: StageReads) -> frozenset[str]:
    """The media kinds a request entering at `path[0]` and visiting `path` may carry: what a stage on it reads, or
    a stage feeding its entry."""
    return frozenset(kind for kind in ("audio", "image") if _reader(pipeline, read, path, kind) is not None)


def plan_route(pipeline: PipelineConfig, request: OmniRequest, read: StageReads | None = None) -> Route:
    """`read`: what each stage reads (`stage_reads`); by default, what its executor can."""
    read = read if read is not None else stage_reads(pipeline)
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
        reader = _reader(pipeline, read, [entry, *stages - {entry}], kind)
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


def _reader(pipeline: PipelineConfig, read: StageReads, path: list[str] | tuple[str, ...], kind: str) -> str | None:
    """The stage that reads `kind` for a request visiting `path` (entry first): one on it, else the first that
    feeds the entry and reads it (speech to text, a vision stage)."""
    on_path = next((stage for stage in path if kind in read[stage]), None)
    return on_path or next((e.src for e in pipeline.edges if e.dst == path[0] and kind in read[e.src]), None)


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

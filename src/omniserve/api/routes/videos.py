"""The `/v1/videos` job API (OpenAI Videos and SGLang Diffusion): create a job (JSON or
multipart), list and fetch jobs, download the mp4 once it is completed, delete (which
aborts a running job), and `POST /v1/videos/sync`, which answers when the job is done.
Jobs live in SQLite (`jobs/store.py`) and run in `jobs/runner.py`."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from PIL import Image
from starlette.datastructures import UploadFile

from omniserve.api.media import decode_uploaded_image, load_image
from omniserve.api.protocol.common import validate_fields
from omniserve.api.protocol.videos import DeletedVideo, Video, VideoList, VideoRequest
from omniserve.api.routes.common import get_client, model_response, open_file_response, read_json, resolve_model
from omniserve.errors import InvalidRequest, NotFound, Overloaded
from omniserve.jobs.runner import VideoRunner
from omniserve.jobs.store import VideoJob
from omniserve.media.image_out import VIDEO_DEFAULT_QUALITY, encoding_quality

router = APIRouter()


def runner(request: Request) -> VideoRunner:
    return request.app.state.videos


def _video(request: Request, job: VideoJob) -> Video:
    """The OpenAI video object of a job; its file is kept for --image-ttl-seconds after it completes."""
    ttl = int(request.app.state.settings.image_ttl_seconds)
    return Video(id=job.id, object="video", model=job.model, status=job.status, progress=job.progress,
                 created_at=job.created_at, completed_at=job.completed_at,
                 expires_at=job.completed_at + ttl if job.completed_at else None, prompt=job.prompt, size=job.size,
                 seconds=job.seconds, error=job.error)


def _job(request: Request, video_id: str) -> VideoJob:
    job = runner(request).store.get(video_id)
    if job is None:
        raise NotFound(f"no video job {video_id!r}", param="video_id", code="video_not_found")
    return job


async def _create(request: Request) -> str:
    """Validate, store the job (and its reference image), wake the runner; return the id."""
    reference: Any = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        upload = form.get("input_reference")
        body = validate_fields(fields, VideoRequest)
        if isinstance(upload, UploadFile):
            reference = await decode_uploaded_image(request, upload, "input_reference")
    else:
        body = await read_json(request, VideoRequest)
    if body.input_reference is not None and reference is None:
        ref = body.input_reference
        reference = await load_image(request, ref.get("image_url", ref) if isinstance(ref, dict) else ref,
                                     "input_reference")
    model = resolve_model(get_client(request), body.model, "image")
    if not model.facts.videos:
        raise InvalidRequest(f"model `{model.id}` cannot make videos", param="model")
    jobs = runner(request)
    limit = request.app.state.settings.max_video_jobs
    if jobs.store.count("queued") >= limit:
        raise Overloaded(f"{limit} video jobs are already queued (--max-video-jobs); retry later")
    width, height = map(int, body.size.split("x"))
    video_id = f"video_{uuid.uuid4().hex}"
    if reference is not None:
        with request.app.state.data.writing("the reference image", jobs.folder):
            await asyncio.to_thread(Image.fromarray(reference).save, jobs.reference_path(video_id), format="PNG")
    stage = {"n": 1, "width": width, "height": height, "num_frames": body.frames(), "seed": body.seed,
             "negative_prompt": body.negative_prompt, "num_inference_steps": body.num_inference_steps,
             "guidance_scale": body.guidance_scale}
    params = {"fps": body.fps, "reference": reference is not None,
              "quality": encoding_quality(body.quality, body.output_compression, VIDEO_DEFAULT_QUALITY),
              "stage": {k: v for k, v in stage.items() if v is not None}}
    jobs.store.create(video_id, model.id, body.prompt, body.size, body.seconds, params)
    jobs.submitted()
    return video_id


@router.post("/v1/videos")
@router.post("/v1/videos/generations")
async def create_video(request: Request) -> Response:
    video_id = await _create(request)
    return model_response(_video(request, _job(request, video_id)))


@router.post("/v1/videos/sync")
async def create_video_sync(request: Request) -> Response:
    """Create the job and answer once it is completed or failed."""
    video_id = await _create(request)
    await runner(request).wait(video_id)
    return model_response(_video(request, _job(request, video_id)))


@router.get("/v1/videos")
async def list_videos(request: Request, after: str | None = None, limit: int = Query(20, ge=0, le=100),
                      order: Literal["asc", "desc"] = "desc") -> Response:
    try:
        jobs, more = runner(request).store.list(after, limit, order)
    except KeyError:
        raise NotFound(f"after: no video job {after!r}", param="after", code="video_not_found") from None
    data = [_video(request, j) for j in jobs]
    return model_response(VideoList(object="list", data=data, first_id=data[0].id if data else None,
                                    last_id=data[-1].id if data else None, has_more=more))


@router.get("/v1/videos/{video_id}")
async def retrieve_video(request: Request, video_id: str) -> Response:
    return model_response(_video(request, _job(request, video_id)))


@router.get("/v1/videos/{video_id}/content")
async def video_content(request: Request, video_id: str,
                        variant: Literal["video"] = Query("video", description="only the video itself is kept")):
    job = _job(request, video_id)
    if job.status != "completed":
        detail = f"; error: {job.error['message']}" if job.error else f" ({job.progress}% done)"
        raise NotFound(f"video {video_id} is not ready: its status is {job.status}{detail}", param="video_id",
                       code="video_not_ready")
    path = runner(request).path(video_id)
    expires_at = _video(request, job).expires_at
    if expires_at is not None and time.time() >= expires_at:
        path.unlink(missing_ok=True)
        raise NotFound(f"video {video_id} has expired (videos are kept for --image-ttl-seconds after they "
                       "complete)", param="video_id", code="video_expired")
    try:
        file = path.open("rb")
    except FileNotFoundError:
        _job(request, video_id)  # deleted meanwhile: 404 video_not_found
        raise NotFound(f"video {video_id} completed, but its file {path} is gone: it was removed from the data "
                       "directory outside the server; create the video again", param="video_id",
                       code="video_file_missing") from None
    return open_file_response(file, "video/mp4", f"{video_id}.mp4")


@router.delete("/v1/videos/{video_id}")
async def delete_video(request: Request, video_id: str) -> Response:
    _job(request, video_id)
    jobs = runner(request)
    jobs.store.delete(video_id)  # first, so the runner cannot pick it up any more
    await jobs.cancel(video_id)  # a running job is aborted in the pipeline
    for path in (jobs.path(video_id), jobs.reference_path(video_id)):
        path.unlink(missing_ok=True)
    return model_response(DeletedVideo(id=video_id, object="video.deleted", deleted=True))

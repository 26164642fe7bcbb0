"""Runs queued video jobs, one at a time, through the pipeline.

The job's request goes to its model's stage like any other request; frames
are encoded to mp4 as they arrive and the stage's progress is written to the
store. Deleting a running job cancels its task, which aborts the request in
the pipeline (the same path as a client that disconnects), and removes its
partial file. The store is the truth: the runner keeps only which job it is
running now, and the outcome of a job that the store could not take yet (the disk
is full): it is written when the disk takes it, and until then the queue waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omniserve.errors import OmniError, StorageFailed
from omniserve.jobs.store import JobStore, VideoJob
from omniserve.media.video import VideoEncoder
from omniserve.runtime.client import Client
from omniserve.runtime.types import OmniRequest, VideoFrames
from omniserve.storage import storage_failure

log = logging.getLogger(__name__)

STORAGE_RETRY_S = 2.0  # how often a runner whose store cannot be written tries again


class VideoRunner:
    def __init__(self, store: JobStore, client: Client, folder: Path):
        self.store = store
        self.client = client
        self.folder = folder
        self._wake = asyncio.Event()
        self._current: tuple[str, asyncio.Task] | None = None
        self._outcome: tuple[str, dict[str, Any]] | None = None  # a finished job's fields, until they are written
        self._finished: dict[str, asyncio.Event] = {}
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        resumed = self.store.requeue_interrupted()
        if resumed:
            log.info("%d video job(s) left unfinished by the last run are queued again", resumed)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    def submitted(self) -> None:
        self._wake.set()

    async def wait(self, job_id: str) -> None:
        """Until the job is completed or failed (or deleted)."""
        event = self._finished.setdefault(job_id, asyncio.Event())
        job = self.store.get(job_id)
        if job is None or job.status in ("completed", "failed"):
            return
        await event.wait()

    async def cancel(self, job_id: str) -> None:
        """Abort the job if it is running now; the caller deletes it from the store."""
        if self._current and self._current[0] == job_id:
            task = self._current[1]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._done(job_id)

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.mp4"

    def reference_path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.reference.png"

    async def _loop(self) -> None:
        """Run jobs one by one. A store that cannot be written (the disk is full) holds the queue, and the
        loop tries again every few seconds: a job's outcome is kept until it is written."""
        while True:
            try:
                await self._next()
            except StorageFailed:
                await asyncio.sleep(STORAGE_RETRY_S)  # the data dir logged it once and /health shows it
            except Exception as exc:  # the store itself failed (a read): the runner lives on
                log.warning("video jobs: the job store failed (%s); trying again in %g s", exc, STORAGE_RETRY_S)
                await asyncio.sleep(STORAGE_RETRY_S)

    async def _next(self) -> None:
        if self._outcome is not None:  # a job finished, but its outcome could not be written yet
            job_id, fields = self._outcome
            self.store.update(job_id, **fields)
            self._outcome = None
            self._done(job_id)
        job = self.store.next_queued()
        if job is None:
            self._wake.clear()
            await self._wake.wait()
            return
        self.store.update(job.id, status="in_progress", progress=0)
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._current = (job.id, task)
        try:
            outcome = await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the loop itself is stopping
                task.cancel()
                raise
            self._done(job.id)  # deleted
            return
        finally:
            self._current = None
        self._outcome = (job.id, outcome)
        self.store.update(job.id, **outcome)
        self._outcome = None
        self._done(job.id)

    async def _run(self, job: VideoJob) -> dict[str, Any]:
        """Make the job's video; the fields that record how it ended."""
        partial = self.folder / f".{job.id}.partial.mp4"
        try:
            await self._generate(job, partial)
            os.replace(partial, self.path(job.id))
            return {"status": "completed", "progress": 100, "completed_at": int(time.time()),
                    "file": str(self.path(job.id))}
        except OmniError as exc:
            return self._failed(exc.code or type(exc).__name__, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = storage_failure(exc, self.folder, "the video")
            if failure is not None:
                log.warning("video job %s failed: %s", job.id, failure.message)
                return self._failed(failure.code, failure.message)
            log.exception("video job %s failed", job.id)  # a bug must fail the job, not the runner
            return self._failed("internal_error", f"the job failed: {type(exc).__name__}")
        finally:
            partial.unlink(missing_ok=True)

    async def _generate(self, job: VideoJob, partial: Path) -> None:
        model = self.client.model(job.model)
        if model is None:
            raise OmniError(f"model `{job.model}` is no longer served", code="model_not_found")
        settings = job.params  # {"fps", "quality", "reference", "stage": the image stage's params}
        images = []
        if settings["reference"]:
            images.append(np.asarray(Image.open(self.reference_path(job.id)).convert("RGB")))
        stage = {**settings["stage"], "video": True}
        route = model.path  # every stage reports progress; the last one makes the frames
        omni = OmniRequest(f"{job.id}-{int(time.time() * 1000)}", prompt=job.prompt, images=images,
                           entry=model.entry,
                           output_modalities=["video"], progress=True, params=dict.fromkeys(route, stage))
        encoder = VideoEncoder(str(partial), settings["fps"], stage["width"], stage["height"], settings["quality"])
        writing: asyncio.Future | None = None
        try:
            async for out in self.client.generate(omni):
                if isinstance(out.data, VideoFrames):
                    writing = asyncio.ensure_future(asyncio.to_thread(encoder.write, out.data.frames))
                    await asyncio.shield(writing)
                if out.progress is not None:
                    with contextlib.suppress(StorageFailed):  # progress is worth no failed job
                        self.store.update(job.id, progress=min(99, out.progress))
        finally:
            if writing is not None:  # cancelled mid-write: the thread still runs; the encoder is not thread-safe
                await asyncio.wait({writing})
            await asyncio.to_thread(encoder.close)

    @staticmethod
    def _failed(code: str, message: str) -> dict[str, Any]:
        return {"status": "failed", "error": {"code": code, "message": message}, "completed_at": int(time.time())}

    def _done(self, job_id: str) -> None:
        event = self._finished.pop(job_id, None)
        if event is not None:
            event.set()

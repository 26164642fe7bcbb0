"""The `/v1/videos` job API with sketch-rnn animating its drawing: jobs in SQLite, mp4 out,
progress, listing, abort on delete, and jobs that survive a restart of the server."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_server, shared_models, wait_until
from tests.media_helpers import data_url, finished
from tests.media_helpers import video_frames as frames

LONG = {"size": "1280x720", "num_frames": 600, "fps": 30}  # several seconds of encoding: time to watch and abort


def serve(tmp_path, data_dir, *args):
    sketches = shared_models() / "sketch-rnn-quickdraw"
    tmp_path.mkdir(parents=True, exist_ok=True)
    return run_server("--image-model", f"sketch-rnn:{sketches}", "--data-dir", str(data_dir), "--asr-model", "none",
                      "--tts-model", "none", "--vision-model", "none", *args, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("vid"), tmp_path_factory.mktemp("viddata")) as server:
        yield server


@pytest.fixture(scope="module")
def videos(video_server):
    return video_server.openai().videos



def test_create_poll_and_download(videos):
    job = videos.create(model="sketch-rnn", prompt="a dolphin jumping", seconds="4", size="320x240")
    assert job.object == "video" and job.status in ("queued", "in_progress") and job.progress < 100
    assert job.size == "320x240" and job.seconds == "4" and job.model == "sketch-rnn" and job.created_at
    done = finished(videos, job.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at and done.expires_at
    clip = frames(videos.download_content(job.id).read())
    assert len(clip) == 32 and clip[0].shape == (240, 320, 3)  # 4 s at the default 8 fps
    ink = [float((f < 128).mean()) for f in clip]
    assert ink[0] < ink[12] < ink[24] and ink[-1] > 0.002  # drawn stroke by stroke


def test_multipart_with_a_reference_image(video_server, videos):
    paper = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 230, 250)).save(paper, format="PNG")
    with video_server.http() as http:
        r = http.post("/v1/videos", data={"prompt": "a bird", "size": "160x120", "num_frames": "10", "seed": "3"},
                      files={"input_reference": ("paper.png", paper.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
    done = finished(videos, r.json()["id"])
    clip = frames(videos.download_content(done.id).read())
    assert len(clip) == 10
    assert np.abs(np.median(clip[-1].reshape(-1, 3), axis=0) - [200, 230, 250]).max() < 12  # drawn on the paper


def test_json_reference_url_alias_and_sync(video_server):
    paper = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 200, 200)).save(paper, format="PNG")
    with video_server.http() as http:
        r = http.post("/v1/videos/sync", json={"prompt": "a key", "size": "64x64", "num_frames": 4,
                                               "input_reference": {"image_url": data_url(paper.getvalue(),
                                                                                         "image/png")}})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        r = http.post("/v1/videos/generations", json={"prompt": "a key", "size": "64x64", "seconds": 1})
        assert r.status_code == 200 and r.json()["status"] in ("queued", "in_progress", "completed")


def test_list_pages(video_server, videos):
    ids = [videos.create(prompt="a sheep", size="64x64", extra_body={"num_frames": 2}).id for _ in range(3)]
    newest = videos.list(limit=2, order="desc")
    assert [v.id for v in newest.data] == ids[::-1][:2] and newest.has_more
    assert newest.last_id == ids[1] and newest.first_id == ids[2]
    rest = videos.list(limit=100, order="desc", after=newest.last_id)
    assert rest.data[0].id == ids[0]
    oldest_first = [v.id for v in videos.list(limit=100, order="asc").data]
    assert oldest_first.index(ids[0]) < oldest_first.index(ids[1]) < oldest_first.index(ids[2])


def test_delete_aborts_a_running_job(video_server, videos):
    job = videos.create(prompt="a roller coaster", extra_body=LONG)
    running = wait_until(lambda: (v := videos.retrieve(job.id)).status == "in_progress" and v.progress > 0 and v)
    with video_server.http() as http:
        r = http.get(f"/v1/videos/{job.id}/content")
        assert r.status_code == 404 and "not ready" in r.json()["error"]["message"]
        assert running.progress < 100
        r = http.delete(f"/v1/videos/{job.id}")
        assert r.json() == {"id": job.id, "object": "video.deleted", "deleted": True}
        assert http.get(f"/v1/videos/{job.id}").status_code == 404
        wait_until(lambda: http.get("/get_load").json()["running"] == 0, timeout=10)  # aborted in the pipeline
        time.sleep(1)
        assert http.get(f"/v1/videos/{job.id}").status_code == 404  # and it did not come back


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "a dog", "seconds": 0}, "seconds", "more than 0"),
    ({"prompt": "a dog", "seconds": "999"}, "seconds", "at most 60"),
    ({"prompt": "a dog", "seconds": "four"}, "seconds", "number of seconds"),
    ({"prompt": "a dog", "size": "511x512"}, "size", "even"),
    ({"prompt": "a dog", "size": "huge"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "a dog", "fps": 0}, "fps", "greater than or equal to 1"),
    ({"prompt": "a dog", "input_reference": "http://127.0.0.1/x.png"}, "input_reference", "private"),
    ({"prompt": "a dog", "model": "smollm2-135m"}, "model", "chat model"),
])
def test_bad_jobs_are_400(video_server, body, param, words):
    with video_server.http() as http:
        r = http.post("/v1/videos", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_unknown_ids_and_bad_queries(video_server):
    with video_server.http() as http:
        for method, url in (("get", "/v1/videos/video_nope"), ("get", "/v1/videos/video_nope/content"),
                            ("delete", "/v1/videos/video_nope")):
            r = getattr(http, method)(url)
            assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found", r.text
        assert http.get("/v1/videos", params={"limit": 101}).json()["error"]["param"] == "limit"
        assert http.get("/v1/videos", params={"order": "up"}).json()["error"]["param"] == "order"
        assert http.get("/v1/videos", params={"after": "video_nope"}).json()["error"]["param"] == "after"
        done = http.post("/v1/videos/sync", json={"prompt": "a key", "size": "64x64", "num_frames": 2}).json()
        r = http.get(f"/v1/videos/{done['id']}/content", params={"variant": "thumbnail"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "variant"


def test_jobs_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    with serve(tmp_path / "a", data, "--max-video-jobs", "1") as server:
        videos = server.openai().videos
        done = videos.create(prompt="a lantern", size="64x64", extra_body={"num_frames": 3})
        assert finished(videos, done.id).status == "completed"
        running = videos.create(prompt="a trombone", extra_body=LONG)
        wait_until(lambda: videos.retrieve(running.id).status == "in_progress")
        waiting = videos.create(prompt="a pool", size="64x64", extra_body={"num_frames": 3})
        with server.http() as http:  # one running, one queued: the queue (1) is full
            r = http.post("/v1/videos", json={"prompt": "a dog", "size": "64x64"})
            assert r.status_code == 503 and "--max-video-jobs" in r.json()["error"]["message"]
    # The server is gone mid-job; a new one on the same data dir finds every job.
    with serve(tmp_path / "b", data) as server:
        videos = server.openai().videos
        assert len(frames(videos.download_content(done.id).read())) == 3
        assert "2 video job(s) left unfinished by the last run are queued again" in server.log()
        for job in (running, waiting):
            assert finished(videos, job.id, timeout=120).status == "completed"
        assert len(frames(videos.download_content(waiting.id).read())) == 3


def test_videos_expire(tmp_path):
    with serve(tmp_path / "ttl", tmp_path / "data", "--image-ttl-seconds", "2") as server:
        videos = server.openai().videos
        job = videos.create(prompt="a lantern", size="64x64", extra_body={"num_frames": 2})
        done = finished(videos, job.id)
        assert done.expires_at - done.completed_at == 2
        assert len(frames(videos.download_content(job.id).read())) == 2
        time.sleep(2.5)
        with server.http() as http:
            r = http.get(f"/v1/videos/{job.id}/content")
            assert r.status_code == 404 and r.json()["error"]["code"] == "video_expired"
            assert http.get(f"/v1/videos/{job.id}").json()["status"] == "completed"  # the job itself remains

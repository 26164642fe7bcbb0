"""The data directory under trouble: a full disk during a video job, a read-only `--data-dir` at start,
downloads that race a DELETE, and a video file removed behind the server's back. Nothing stored is lost,
the video runner lives on, writes answer 507 while the rest serves, and /health says what is wrong.

The full and read-only disks are tmpfs mounts (this needs root, as CI and the developers' machines run)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import idle, wait_until
from tests.integration.test_cli import omniserve
from tests.integration.test_videos import serve
from tests.media_helpers import finished
from tests.media_helpers import video_frames as frames

LONG = {"size": "1280x720", "num_frames": 600, "fps": 30}  # seconds of encoding: time to fill the disk under it
SMALL = {"size": "64x64", "num_frames": 3}


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64m", *options)), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs here ({done.stderr.strip()}): these tests fill and lock a real disk, "
                    "which needs root (as CI and the developers' machines run)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full (it may be already); the file, if there was room to make it."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("ab") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_fails_writes_with_507_and_the_runner_lives_on(tmp_path):
    with tmpfs(tmp_path / "disk") as disk, serve(tmp_path, disk, "--embedding-model", "none") as server, \
            server.http() as http:
        videos = server.openai().videos
        job = videos.create(prompt="a roller coaster", extra_body=LONG)
        wait_until(lambda: (v := videos.retrieve(job.id)).status == "in_progress" and v.progress > 0, timeout=60)
        filler = fill(disk)  # (the job's mp4 may have filled it already)
        # the job's mp4 cannot be written, nor its outcome: the runner holds it, and everything else serves
        r = wait_until(lambda: (r := http.post("/v1/videos", json={"prompt": "a dog " * 2000, **SMALL})).status_code
                       != 200 and r, timeout=30)
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["type"] == "insufficient_storage" and error["code"] == "disk_full", error
        assert "full" in error["message"] and str(disk) in error["message"]
        health = wait_until(lambda: (h := http.get("/health")).status_code == 200 and "storage" in h.json() and h)
        assert "full" in health.json()["storage"]
        assert http.get("/get_model_info").json()["data_dir"]["problem"]
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        wait_until(lambda: idle(http), timeout=60)
        # its mp4 met the full disk: the job failed, or its outcome waits for the disk (tests/unit/test_video_runner)
        assert videos.retrieve(job.id).status in ("in_progress", "failed")
        filler.unlink(missing_ok=True)  # space again: the outcome is written, and the queue goes on
        ended = finished(videos, job.id, timeout=60)
        if ended.status == "completed":  # its frames were all written before, or after: the video is whole
            assert len(frames(videos.download_content(job.id).read())) == LONG["num_frames"]
        else:
            assert ended.error.code == "disk_full", ended.error
        r = http.post("/v1/videos/sync", json={"prompt": "a key", **SMALL}, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        assert "storage" not in http.get("/health").json()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_read_only_data_dir_fails_the_start_in_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro") as folder:
        t0 = time.monotonic()
        done = omniserve("serve", "--data-dir", str(folder / "data"), "--port", "0")
        took = time.monotonic() - t0
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniserve: error: --data-dir"), done.stderr
    assert "cannot be written" in lines[0] and "Read-only" in lines[0], lines
    assert "Traceback" not in done.stderr and took < 20  # before any model loads


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("race"), tmp_path_factory.mktemp("racedata"), "--embedding-model",
               "none") as server:
        yield server


def download(base_url: str, video_id: str, results: list) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        r = c.get(f"/v1/videos/{video_id}/content")
        results.append((r.status_code, len(r.content), r.headers.get("content-length"), r))


def test_downloads_racing_a_delete_are_whole_or_404(video_server):
    """Each download gets all of its Content-Length, or a 404 in the envelope; never a 500 or a cut body."""
    videos = video_server.openai().videos
    for _ in range(12):
        job = finished(videos, videos.create(prompt="a lantern", extra_body=SMALL).id)
        assert job.status == "completed"
        results = []
        threads = [threading.Thread(target=download, args=(video_server.base_url, job.id, results))
                   for _ in range(3)]
        for t in threads:
            t.start()
        with video_server.http() as http:
            assert http.delete(f"/v1/videos/{job.id}").status_code == 200
        for t in threads:
            t.join()
        for status, size, length, r in results:
            assert status in (200, 404), r.text
            if status == 200:
                assert size == int(length) > 0
            else:
                assert r.json()["error"]["code"] == "video_not_found"
    assert "Traceback" not in video_server.log(), video_server.log()[-3000:]


def test_a_video_file_removed_outside_the_server_says_so(video_server, tmp_path):
    videos = video_server.openai().videos
    job = finished(videos, videos.create(prompt="a lantern", extra_body=SMALL).id)
    data = Path(next(a for a in video_server.process.args if "racedata" in a))
    (data / "videos" / f"{job.id}.mp4").unlink()
    with video_server.http() as http:
        r = http.get(f"/v1/videos/{job.id}/content")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "video_file_missing" and "outside the server" in error["message"], error
    assert job.expires_at > time.time()

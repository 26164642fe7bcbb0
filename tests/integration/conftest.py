"""Media fixtures: a local HTTP media server, and an omniserve that may fetch from it and
read files from a folder (private URLs and local paths are off by default)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.conftest import run_server
from tests.media_helpers import cat_video, make_video, rgb, skimage_photo


class _MediaHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /hop/N redirects N more times, then to /chelsea.png."""

    def do_GET(self):
        if self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/hop/{n - 1}" if n > 1 else "/chelsea.png")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name in ("chelsea.png", "page.png"):
        (folder / name).write_bytes(skimage_photo(name).read_bytes())
    (folder / "cat.mp4").write_bytes(cat_video())  # 4 s
    (folder / "short.mp4").write_bytes(make_video([(rgb("chelsea.png"), 2.0)]))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def media_url(media_dir):
    handler = functools.partial(_MediaHandler, directory=str(media_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def open_server(tmp_path_factory, media_dir):
    """A server that may fetch from loopback and read files under `media_dir`."""
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(run_server(
            "--allow-private-media-urls", "--allowed-local-media-path", str(media_dir), "--max-video-seconds", "3",
            "--max-media-items", "3", tmp_path=tmp_path_factory.mktemp("open")))


@pytest.fixture(scope="session")
def open_client(open_server):
    return open_server.openai()



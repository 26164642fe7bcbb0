"""Images per second through omniserve vs the image executor in-process, in one run.

In-process: the sketch-rnn executor driven directly (add, step until done),
plus the PNG encoding the server also does, so the difference is the serving
path (HTTP, JSON, base64, the pipeline's pipes). Server: `POST
/v1/images/generations` from 1 and from 4 concurrent clients. Same model,
size and prompts on both sides; each figure is the median of --repeats runs.
Targets: at most 10% overhead with 1 client, and more images/s with 4 than 1.

    python bench/bench_images.py --repeats 3 --images 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, http, running  # noqa: E402

PROMPTS = ["a dog", "a bicycle", "a palm tree", "a sheep", "a tiger", "a hedgehog", "a bird", "a key"]
SIZE = 256


def sketches_dir() -> Path:
    for folder in (ROOT.parent / "shared" / "models", Path("/work/shared/models")):
        if (folder / "sketch-rnn-quickdraw").is_dir():
            return folder / "sketch-rnn-quickdraw"
    raise SystemExit("sketch-rnn weights not found beside the checkout (../shared/models/sketch-rnn-quickdraw)")


def in_process(images: int, clients: int) -> float:
    """Images/s with `clients` requests in the executor at a time."""
    from omniserve.executors.sketch_rnn import SketchRnnArgs, SketchRnnExecutor
    from omniserve.media.image_out import encode_image
    from omniserve.runtime.types import OmniRequest

    executor = SketchRnnExecutor(SketchRnnArgs(model_path=str(sketches_dir())))
    executor.load()
    for prompt in PROMPTS:  # load every category first, as the warm server has
        executor.sketches.model(executor.sketches.match(prompt))
    t0 = time.perf_counter()
    sent = done = 0
    while done < images:
        while sent < images and sent - done < clients:
            params = {"width": SIZE, "height": SIZE, "seed": sent}
            executor.add(OmniRequest(f"r{sent}", prompt=PROMPTS[sent % len(PROMPTS)], params={"image": params}))
            sent += 1
        for out in executor.step():
            encode_image(out.info["image"], "png", 75)
            done += out.done
    return images / (time.perf_counter() - t0)


def served(base: str, images: int, clients: int) -> float:
    def one(i: int) -> None:
        http.post(base + "/v1/images/generations",
                  json={"prompt": PROMPTS[i % len(PROMPTS)], "size": f"{SIZE}x{SIZE}", "seed": i}).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(images)))
    return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()

    raw = {c: statistics.median(in_process(args.images, c) for _ in range(args.repeats)) for c in (1, 4)}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--image-model", f"sketch-rnn:{sketches_dir()}", "--asr-model", "none", "--tts-model", "none",
           "--vision-model", "none", "--data-dir", str(ROOT / "build" / "test-data")]
    with running("omniserve", cmd, base):
        served(base, len(PROMPTS), 1)  # warm up: every category loaded
        server = {c: statistics.median(served(base, args.images, c) for _ in range(args.repeats)) for c in (1, 4)}

    print(f"sketch-rnn {SIZE}x{SIZE} png, {args.images} images, median of {args.repeats}")
    print(f"{'clients':>7} {'in-process':>12} {'omniserve':>11} {'overhead':>9}")
    for c in (1, 4):
        print(f"{c:>7} {raw[c]:>8.1f} im/s {server[c]:>7.1f} im/s {(raw[c] / server[c] - 1) * 100:>+8.1f}%")
    print(f"omniserve 4 clients / 1 client: {server[4] / server[1]:.2f}x")


if __name__ == "__main__":
    main()

"""Images per second through omniserve vs the model in-process, in one run.

sketch-rnn (default): in-process is the sketch-rnn executor driven directly
(add, step until done), plus the PNG encoding the server also does, so the
difference is the serving path (HTTP, JSON, base64, the pipeline's pipes).
`--diffusers DIR`: in-process is diffusers' own pipeline (`StableDiffusionPipeline`,
or `WanPipeline` making one-frame videos), one image at a time, and the server
runs the three diffusion stages, whose denoiser batches concurrent requests
into one model call.
Server: `POST /v1/images/generations` from 1 and from 4 concurrent clients.
Same model, size and prompts on both sides; each figure is the median of
--repeats runs. Targets: at most 10% overhead with 1 client, and more
images/s with 4 clients than with 1.

    python bench/bench_images.py --repeats 3 --images 40
    python bench/bench_images.py --diffusers build/test-data/tiny-sd/model --images 16
    python bench/bench_images.py --diffusers build/test-data/tiny-wan --images 16
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, http, running  # noqa: E402

PROMPTS = ["a dog", "a bicycle", "a palm tree", "a sheep", "a tiger", "a hedgehog", "a bird", "a key"]
SIZE = 256  # sketch-rnn; --diffusers uses DIFFUSERS_SIZE (attention over the latents grows fast on a CPU)
DIFFUSERS_SIZE = 64


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
            executor.add(OmniRequest(f"r{sent}", prompt=PROMPTS[sent % len(PROMPTS)], entry="image",
                                   params={"image": params}))
            sent += 1
        for out in executor.step().outputs:
            encode_image(out.data.image, "png", 75)
            done += out.done
    return images / (time.perf_counter() - t0)


STEPS = 20  # diffusion steps per image in --diffusers mode


def in_process_diffusers(folder: str, images: int, clients: int) -> float:
    """diffusers' own pipeline, one image per call (`clients` does not apply: it has no server);
    a video pipeline (Wan) makes one-frame videos."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    video = "num_frames" in inspect.signature(pipe.__call__).parameters
    t0 = time.perf_counter()
    for i in range(images):
        out = pipe(PROMPTS[i % len(PROMPTS)], num_inference_steps=STEPS, height=DIFFUSERS_SIZE, width=DIFFUSERS_SIZE,
                   generator=torch.Generator().manual_seed(i), output_type="np", **({"num_frames": 1} if video else {}))
        encode_png(out.frames[0][0] if video else out.images[0])
    return images / (time.perf_counter() - t0)


def encode_png(image) -> None:
    import numpy as np

    from omniserve.media.image_out import encode_image

    encode_image((np.asarray(image) * 255).round().astype("uint8"), "png", 75)


def served(base: str, images: int, clients: int, extra: dict | None = None) -> float:
    def one(i: int) -> None:
        http.post(base + "/v1/images/generations",
                  json={"prompt": PROMPTS[i % len(PROMPTS)], "size": f"{SIZE}x{SIZE}", "seed": i, **(extra or {})}
                  ).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(images)))
    return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--diffusers", help="a diffusers folder to bench instead of sketch-rnn")
    args = parser.parse_args()

    if args.diffusers:
        model, name = f"diffusers:{args.diffusers}", "diffusers"
        extra = {"num_inference_steps": STEPS, "size": f"{DIFFUSERS_SIZE}x{DIFFUSERS_SIZE}"}
        raw1 = statistics.median(in_process_diffusers(args.diffusers, args.images, 1) for _ in range(args.repeats))
        raw = {1: raw1, 4: raw1}
    else:
        model, extra, name = f"sketch-rnn:{sketches_dir()}", {}, "sketch-rnn"
        raw = {c: statistics.median(in_process(args.images, c) for _ in range(args.repeats)) for c in (1, 4)}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--image-model", model, "--asr-model", "none", "--tts-model", "none",
           "--vision-model", "none", "--data-dir", str(ROOT / "build" / "test-data")]
    with running("omniserve", cmd, base):
        served(base, len(PROMPTS), 1, extra)  # warm up: every category loaded
        server = {c: statistics.median(served(base, args.images, c, extra) for _ in range(args.repeats))
                  for c in (1, 4)}

    side = DIFFUSERS_SIZE if args.diffusers else SIZE
    print(f"{name} {side}x{side} png, {args.images} images, median of {args.repeats}")
    print(f"{'clients':>7} {'in-process':>12} {'omniserve':>11} {'overhead':>9}")
    for c in (1, 4):
        print(f"{c:>7} {raw[c]:>8.2f} im/s {server[c]:>7.2f} im/s {(raw[c] / server[c] - 1) * 100:>+8.1f}%")
    print(f"omniserve 4 clients / 1 client: {server[4] / server[1]:.2f}x")


if __name__ == "__main__":
    main()

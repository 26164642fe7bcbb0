"""A question about a picture through omniserve vs the same stages' models in-process, in one run.

In-process: decode the PNG, describe it with the vision stage's executor
(EfficientNet-Lite0 + RapidOCR), put the description into the message as the
server does, and generate the answer with the thinker's llama.cpp executor,
all in this process with no HTTP, no pipes and no other stages.
Server: `POST /v1/chat/completions` with the image as a data URL.

Both sides use the same models, the same thread count, greedy sampling and a
fixed answer length (`ignore_eos`), one request at a time; each figure is the
median of --repeats runs. Target: the server within 10% of in-process.

    python bench/bench_vision.py --repeats 5
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, http, median_time, running  # noqa: E402

QUESTIONS = [("chelsea.png", "What animal is this?"), ("page.png", "What does the text say?")]
MAX_TOKENS = 32


def photo(name: str) -> bytes:
    import skimage

    return (Path(skimage.__file__).parent / "data" / name).read_bytes()


class InProcess:
    """The vision and thinker executors, driven directly."""

    def __init__(self, gguf: str, classifier: str, threads: int):
        from omniserve.executors.describer import DescriberArgs, DescriberExecutor
        from omniserve.executors.llamacpp import LlamaCppArgs, LlamaCppExecutor

        self.vision = DescriberExecutor(DescriberArgs(classifier_path=classifier, threads=threads))
        self.vision.load()
        self.thinker = LlamaCppExecutor(LlamaCppArgs(model_path=gguf, threads=threads, max_sequences=8))
        self.thinker.load()
        self.n = 0

    def ask(self, png: bytes, question: str) -> str:
        from omniserve.media.images import decode_image
        from omniserve.runtime.types import OmniRequest, SamplingParams, fill_media_parts, image_part

        image = decode_image(png, where="image", max_pixels=25_000_000)
        description = self.vision.process(image).text
        messages = fill_media_parts([{"role": "user", "content": [image_part(0), {"type": "text", "text": question}]}],
                                    {("image", 0): description})
        self.n += 1
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        self.thinker.add(OmniRequest(f"r{self.n}", entry="thinker", messages=messages, sampling={"thinker": params}))
        text = []
        while self.thinker.has_work():
            text += [o.text for o in self.thinker.step().outputs]
        return "".join(text)


def server_ask(base: str, png: bytes, question: str) -> str:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}],
            "temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    r = http.post(base + "/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(ROOT / "build" / "test-data"))
    args = parser.parse_args()

    from omniserve.models.defaults import ALIASES
    from omniserve.models.vision import exported_classifier

    gguf = str(ALIASES["smollm2-135m"].materialize(Path(args.data_dir)))
    classifier = str(exported_classifier(Path(args.data_dir)))
    pngs = {name: photo(name) for name, _ in QUESTIONS}

    local = InProcess(gguf, classifier, args.threads)
    for name, q in QUESTIONS:
        local.ask(pngs[name], q)  # warm up
    raw = {q: median_time(lambda n=name, q=q: local.ask(pngs[n], q), args.repeats) for name, q in QUESTIONS}


    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omniserve", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--data-dir", args.data_dir]
    with running("omniserve", cmd, base):
        for name, q in QUESTIONS:
            server_ask(base, pngs[name], q)  # warm up
        served = {q: median_time(lambda n=name, q=q: server_ask(base, pngs[n], q), args.repeats)
                  for name, q in QUESTIONS}

    print(f"image question -> {MAX_TOKENS}-token answer, {args.threads} threads, median of {args.repeats}")
    print(f"{'question':<28} {'in-process':>11} {'omniserve':>10} {'overhead':>9}")
    for name, q in QUESTIONS:
        print(f"{name + ': ' + q:<28.28} {raw[q] * 1000:>9.0f}ms {served[q] * 1000:>8.0f}ms "
              f"{(served[q] / raw[q] - 1) * 100:>+8.1f}%")


if __name__ == "__main__":
    main()

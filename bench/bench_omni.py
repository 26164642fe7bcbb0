"""A Qwen-Omni checkpoint answering with speech: omniserve's three stages against transformers' own
`generate(return_audio=True)` in this process, in one run, on the same checkpoint, prompt and lengths.

In-process: `Qwen2_5OmniForConditionalGeneration.generate` (or Qwen3-Omni's), one request after another
(it answers one conversation at a time). Server: `POST /v1/chat/completions` with `modalities: ["text", "audio"]`,
non-streamed (total time) and streamed (time to the first audio chunk), from 1 and from 4 clients.
Both sides decode the same number of thinker tokens and talker codes (EOS ignored on the thinker, the
talker greedy with a fixed number of codes), so they make the same amount of audio.

Targets: with 1 client the server's total time is within 10% of in-process `generate`; streamed, the
first audio arrives in at most 30% of the non-streamed total; with 4 clients the server answers at
least 2x the requests/s of sequential `generate`.

    python bench/bench_omni.py                      # the tiny checkpoint the tests build
    python bench/bench_omni.py --family qwen3_omni_moe   # the tiny Qwen3-Omni (400 frames: 8 s at its 50 frames/s)
    python bench/bench_omni.py --model DIR --thinker-tokens 64 --talker-codes 400
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, http, running  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about the weather today, please."}]


TINY = {"qwen2_5_omni": "tiny-qwen2.5-omni", "qwen3_omni_moe": "tiny-qwen3-omni"}


def tiny_checkpoint(family: str) -> Path:
    out = ROOT / "build" / "test-data" / TINY[family]
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_omni.py"), str(out), "--family", family],
                   check=True)
    return out


class InProcess:
    def __init__(self, folder: Path, threads: int):
        import torch
        import transformers
        from transformers.utils import logging

        from omniserve.models.qwen_omni import QWEN_SYSTEM_PROMPT, find_checkpoint

        logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        checkpoint = find_checkpoint(str(folder))
        self.family = checkpoint.family.name
        model_class = next(a for a in checkpoint.config["architectures"] if hasattr(transformers, a))
        self.model = getattr(transformers, model_class).from_pretrained(folder, dtype=torch.float32).eval()
        processor = getattr(transformers, checkpoint.family.processor_class).from_pretrained(folder)
        conversation = [{"role": "user", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]}]
        if self.family == "qwen2_5_omni":
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM_PROMPT}]})
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        self.inputs = processor(text=[text], return_tensors="pt")

    def answer(self, thinker_tokens: int, talker_codes: int) -> float:
        """Seconds of audio made."""
        self.torch.manual_seed(0)
        if self.family == "qwen2_5_omni":
            talker = self.model.talker
            extra = {"talker_eos_token_id": [talker.codec_pad_token, talker.codec_eos_token]}
        else:
            extra = {"thinker_eos_token_id": self.model.config.thinker_config.text_config.eos_token_id}
        _, wave = self.model.generate(**self.inputs, thinker_max_new_tokens=thinker_tokens,
                                      thinker_min_new_tokens=thinker_tokens, talker_do_sample=False,
                                      talker_max_new_tokens=talker_codes, talker_min_new_tokens=talker_codes,
                                      speaker="Chelsie", **extra)
        return wave.numel() / 24000


def body(thinker_tokens: int, talker_codes: int, stream: bool, seed: int) -> dict:
    return {"messages": MESSAGES, "max_tokens": thinker_tokens, "ignore_eos": True, "temperature": 0, "seed": seed,
            "modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "pcm16" if stream else "wav"},
            "stream": stream, "stage_sampling": {"talker": {"temperature": 0, "max_tokens": talker_codes,
                                                            "ignore_eos": True}}}


def served(base: str, thinker_tokens: int, talker_codes: int, seed: int) -> tuple[float, float]:
    """(total seconds, seconds of audio) of one non-streamed answer."""
    t0 = time.perf_counter()
    reply = http.post(base + "/v1/chat/completions", json=body(thinker_tokens, talker_codes, False, seed))
    reply.raise_for_status()
    audio = base64.b64decode(reply.json()["choices"][0]["message"]["audio"]["data"])
    return time.perf_counter() - t0, (len(audio) - 44) / 2 / 24000


def first_audio(base: str, thinker_tokens: int, talker_codes: int, seed: int) -> tuple[float, float]:
    """(seconds to the first audio chunk, total seconds) of one streamed answer."""
    t0 = time.perf_counter()
    first = None
    with http.stream("POST", base + "/v1/chat/completions",
                     json=body(thinker_tokens, talker_codes, True, seed)) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            audio = choices[0]["delta"].get("audio") if choices else None
            if first is None and audio and audio.get("data"):
                first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Qwen-Omni folder (default: the tiny test checkpoint of --family)")
    parser.add_argument("--family", choices=sorted(TINY), default="qwen2_5_omni")
    parser.add_argument("--thinker-tokens", type=int, default=64)
    parser.add_argument("--talker-codes", type=int, default=400)
    parser.add_argument("--requests", type=int, default=8, help="answers per measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    folder = Path(args.model) if args.model else tiny_checkpoint(args.family)
    tokens, codes, n = args.thinker_tokens, args.talker_codes, args.requests

    local = InProcess(folder, args.threads)
    local.answer(tokens, codes)  # warm up
    t0 = time.perf_counter()
    audio_s = [local.answer(tokens, codes) for _ in range(n)]
    local_total = (time.perf_counter() - t0) / n
    del local

    port = free_port()
    cmd = [sys.executable, "-m", "omniserve", "serve", "--model-path", str(folder), "--port", str(port),
           "--host", "127.0.0.1", "--threads", str(args.threads), "--embedding-model", "none"]
    with running("omniserve", cmd, f"http://127.0.0.1:{port}") as base:
        served(base, tokens, codes, 0)  # warm up
        one = [served(base, tokens, codes, i) for i in range(n)]
        streamed = [first_audio(base, tokens, codes, i) for i in range(n)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: served(base, tokens, codes, i), range(n)))
        four = n / (time.perf_counter() - t0)

    total = statistics.median(t for t, _ in one)
    first = statistics.median(f for f, _ in streamed)
    streamed_total = statistics.median(t for _, t in streamed)
    seconds = statistics.median(audio_s)
    print(f"model {folder.name}: {tokens} thinker tokens, {codes} talker codes, {seconds:.2f} s of audio per answer, "
          f"{n} answers per figure, {args.threads} threads")
    print(f"{'':28}{'in-process generate':>22}{'omniserve':>14}{'ratio':>10}")
    print(f"{'1 client, total (s)':28}{local_total:>22.3f}{total:>14.3f}{total / local_total:>10.2f}")
    print(f"{'1 client, real-time factor':28}{local_total / seconds:>22.3f}{total / seconds:>14.3f}")
    print(f"{'1 client, first audio (s)':28}{'(at the end)':>22}{first:>14.3f}{first / total:>10.2f}"
          f"   (streamed total {streamed_total:.3f} s)")
    print(f"{'4 clients, requests/s':28}{1 / local_total:>22.3f}{four:>14.3f}{four * local_total:>10.2f}")
    print(f"targets: 1-client overhead {100 * (total / local_total - 1):+.1f}% (<= +10%), first audio "
          f"{100 * first / total:.0f}% of total (<= 30%), 4 clients {four * local_total:.2f}x sequential (>= 2x)")


if __name__ == "__main__":
    main()

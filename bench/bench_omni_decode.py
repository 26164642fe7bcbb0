"""The Qwen-Omni thinker's decode loop: omniserve's thinker executor against transformers' own `generate`, in this
process, on one checkpoint, answering text only: tokens per second with 1 and with 8 requests at once.

transformers: `thinker.generate` greedy, EOS ignored, the 8 prompts as one left-padded batch (what `generate`
does with several requests). omniserve: `QwenOmniThinkerExecutor` (what the thinker stage runs), the requests
added together and stepped until they are done: a step prefills one prompt and decodes a token for every running
one. Every request has its own prompt, of its own length, and answers the same number of tokens.

    python bench/bench_omni_decode.py                  # the tiny test checkpoint
    python bench/bench_omni_decode.py --width 0.5b     # its thinker with a 0.5B-class language model
    python bench/bench_omni_decode.py --model DIR --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

PROMPTS = ["Tell me about the weather today, please.", "What do you see in this image?",
           "Count from one to ten.", "Hello, how are you?", "Once upon a time there was a cat.",
           "Name three colors.", "The quick brown fox jumps over the lazy dog, and then what happened?",
           "Say something about the sea."]


def checkpoint(width: str) -> Path:
    out = ROOT / "build" / "test-data" / ("tiny-qwen2.5-omni" if width == "tiny" else f"tiny-qwen2.5-omni-{width}")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_omni.py"), str(out), "--width", width],
                   check=True)
    return out


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


class Transformers:
    """The checkpoint's thinker in transformers, answering a left-padded batch with `generate`."""

    def __init__(self, folder: Path):
        import torch
        import transformers

        from omniserve.models.qwen_omni import QWEN_SYSTEM_PROMPT, find_checkpoint

        self.torch = torch
        found = find_checkpoint(str(folder))
        model_class = next(a for a in found.config["architectures"] if hasattr(transformers, a))
        self.model = getattr(transformers, model_class).from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = getattr(transformers, found.family.processor_class).from_pretrained(folder)
        self.processor.tokenizer.padding_side = "left"
        self.system = [{"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM_PROMPT}]}]

    def tok_s(self, prompts: list[str], tokens: int) -> float:
        texts = [self.processor.apply_chat_template(
            self.system + [{"role": "user", "content": [{"type": "text", "text": p}]}], add_generation_prompt=True,
            tokenize=False) for p in prompts]
        inputs = self.processor(text=texts, return_tensors="pt", padding=True)
        with self.torch.no_grad():
            t0 = time.perf_counter()
            out = self.model.thinker.generate(
                **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                eos_token_id=self.model.config.thinker_config.text_config.eos_token_id,
                pad_token_id=self.processor.tokenizer.pad_token_id)
            wall = time.perf_counter() - t0
        assert out.shape[1] - inputs["input_ids"].shape[1] == tokens
        return len(prompts) * tokens / wall


class Omniserve:
    """omniserve's thinker executor, as the thinker stage runs it."""

    def __init__(self, folder: Path, threads: int):
        from omniserve.executors.qwen_omni.thinker import QwenOmniThinkerExecutor, ThinkerArgs

        self.executor = QwenOmniThinkerExecutor(ThinkerArgs(model_path=str(folder), threads=threads,
                                                            dtype="float32"))
        self.executor.load()

    def tok_s(self, prompts: list[str], tokens: int) -> float:
        from omniserve.runtime.types import OmniRequest, SamplingParams

        sampling = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        made = 0
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts):
            self.executor.add(OmniRequest(f"r{i}", entry="thinker", messages=messages(prompt),
                                          sampling={"thinker": sampling}))
        while self.executor.has_work():
            result = self.executor.step()
            assert not result.failed, result.failed
            made += len(result.outputs)
        wall = time.perf_counter() - t0
        assert made == len(prompts) * tokens, made
        return made / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Qwen-Omni folder (default: the tiny checkpoint of --width)")
    parser.add_argument("--width", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--tokens", type=int, default=64, help="answer tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else checkpoint(args.width)
    print(f"checkpoint {folder.name}, {args.threads} threads, {args.tokens} tokens per request, "
          f"medians of {args.repeats} runs taking turns")
    print(f"{'requests':>8} | {'transformers tok/s':>18} | {'omniserve tok/s':>15} | ratio")
    peer, server = Transformers(folder), Omniserve(folder, args.threads)
    peer.tok_s(PROMPTS[:1], 4), server.tok_s(PROMPTS[:1], 4)  # warm up
    for n in args.concurrency:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        ours, theirs = [], []
        for _ in range(args.repeats):
            theirs.append(peer.tok_s(prompts, args.tokens))
            ours.append(server.tok_s(prompts, args.tokens))
        a, b = statistics.median(theirs), statistics.median(ours)
        print(f"{n:>8} | {a:>18.1f} | {b:>15.1f} | {b / a:.2f}", flush=True)


if __name__ == "__main__":
    main()

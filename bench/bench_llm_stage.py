"""The LLM stage alone, in-process, with no server around it: how fast one stream decodes, the share of
the wall time inside `llama_decode`, and the Python the stage adds per step. Set beside bench_llm.py's
server figures, it says how much of a gap to llama-server is the stage and how much the serving path.

    python bench/bench_llm_stage.py                 # 3 runs of 256 greedy tokens, SmolLM2-135M, 2 threads
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def main() -> None:
    from omniserve.executors.llamacpp import LlamaCppArgs, LlamaCppExecutor
    from omniserve.models.defaults import ALIASES
    from omniserve.runtime.types import OmniRequest, SamplingParams

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model = args.model or str(ALIASES["smollm2-135m"].materialize(Path(tempfile.gettempdir())))
    stage = LlamaCppExecutor(LlamaCppArgs(model_path=model, threads=args.threads, max_sequences=16))
    stage.load()
    decoding = [0.0]
    decode = stage.rt.decode

    def timed(batch):
        start = time.perf_counter()
        try:
            return decode(batch)
        finally:
            decoding[0] += time.perf_counter() - start

    stage.rt.decode = timed
    for run in range(args.runs):
        params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
        stage.add(OmniRequest(f"run{run}", entry="thinker", messages=[{"role": "user", "content": PROMPT}],
                              sampling={"thinker": params}))
        decoding[0], tokens, start = 0.0, 0, time.perf_counter()
        while stage.has_work():
            tokens += sum(len(out.token_ids) for out in stage.step().outputs)
        wall = time.perf_counter() - start
        print(f"run {run + 1}: {tokens / wall:.1f} tok/s, {100 * decoding[0] / wall:.1f}% of the time in "
              f"llama_decode, {1000 * (wall - decoding[0]) / tokens:.3f} ms of Python per step")
    stage.close()


if __name__ == "__main__":
    main()

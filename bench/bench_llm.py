"""Streaming throughput and latency: omniserve vs llama.cpp's own server vs the raw engine.

All run on the same GGUF with the same thread count, in one run:

- raw: a bare batched `llama_decode` loop (no HTTP, no scheduler): the limit;
- omniserve: this server, N concurrent streaming chat clients;
- omniserve-ray (with `--peers`): the same with `--worker-backend ray`, its stage worker a Ray actor;
- omniserve-replicas (with `--peers`): the same CPU split into two thinker replicas (`replicas: 2`), each with
  half the threads, each request on the least loaded;
- llama-server: llama.cpp's C++ server, built once from the llama.cpp that the pinned
  llama-cpp-python vendors (`bench/llama_server.py`), with continuous batching and `--parallel`
  equal to omniserve's `--max-running-requests`, and the same context per sequence;
- llama_cpp.server (with `--peers`): llama-cpp-python's own OpenAI server, started with
  `--interrupt_requests False` (by default it cuts a running stream short when a new request
  arrives, which makes its numbers meaningless).

Every request decodes exactly --max-tokens tokens (EOS is banned with `logit_bias`, which every
server honours), so the work is identical. Aggregate tok/s is tokens over wall time from the first
request to the last token, prefill included, for the raw loop too (its decode-only rate goes to
stderr). Each concurrency level runs `--rounds` requests per client. The servers run side by side and take
turns at each level, `--repeats` times (default 3); a figure is over all of a server's runs at that level.

    python bench/bench_llm.py                       # 1, 4, 8, 16 clients, 128 tokens each
    python bench/bench_llm.py --concurrency 8 --peers omniserve llama-server
    python bench/bench_llm.py --concurrency 1 8 --peers omniserve omniserve-ray   # Ray's cost (issue 16)
    python bench/bench_llm.py --concurrency 1 8 --peers omniserve omniserve-replicas  # threads or replicas
    python bench/bench_llm.py --setup outside      # as the outside measurement of issue 28 was taken

`--setup outside` reproduces an outside measurement: llama-server with `--parallel 8 -c 32768 -t 2 -tb 2`,
omniserve with text only (no speech, vision or embedding stages) and 8 slots; 1, 4 and 8 clients, each sending
`--rounds` (4) streaming requests one after another on a kept-alive connection; four prompts that repeat (client k's
request j asks prompt (k + j) mod 4, so both servers' prompt caches matter); 128 tokens with EOS banned; three
repeats with the servers taking turns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_server  # noqa: E402
from common import free_port, running  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper and the sea."
# --setup outside: prompts that repeat across a client's requests
PROMPTS = [PROMPT, "Explain how a steam engine works, step by step.",
           "Describe a walk through a busy market in a city by the sea.",
           "Tell me about the history of the bicycle and how it changed cities."]


@dataclass
class Result:
    tokens: int
    wall: float
    ttfts: list[float]
    itls: list[float]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# ---- raw engine ---------------------------------------------------------------------


def run_raw(model: str, threads: int, n_seq: int, max_tokens: int) -> Result:
    """Prefill n_seq copies of the chat prompt, then decode them together, greedy."""
    import llama_cpp as ll
    import llama_cpp._logger as llama_logger

    from omniserve.executors.llamacpp import LlamaCppArgs, LlamaCppExecutor
    from omniserve.runtime.types import OmniRequest

    llama_logger.set_verbose(False)
    # Borrow the executor only to load the model and render/tokenize the prompt.
    ex = LlamaCppExecutor(LlamaCppArgs(model_path=model, threads=threads, max_sequences=n_seq))
    ex.load()
    prompt = ex.renderer.tokens(OmniRequest("bench", entry="thinker", messages=[{"role": "user", "content": PROMPT}]))
    ctx, batch = ex.rt.ctx, ll.llama_batch_init(max(len(prompt), n_seq), 0, 1)
    samplers = [ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params()) for _ in range(n_seq)]
    for s in samplers:
        ll.llama_sampler_chain_add(s, ll.llama_sampler_init_greedy())

    t_start = time.perf_counter()
    ttfts = []
    last = []
    for seq in range(n_seq):  # prefill one sequence per decode call, as a server would on arrival
        for i, tok in enumerate(prompt):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0], batch.logits[i] = seq, i == len(prompt) - 1
        batch.n_tokens = len(prompt)
        assert ll.llama_decode(ctx, batch) == 0
        last.append(ll.llama_sampler_sample(samplers[seq], ctx, len(prompt) - 1))
        ttfts.append(time.perf_counter() - t_start)
    t_decode = time.perf_counter()
    step_times: list[float] = []
    for step in range(max_tokens - 1):
        t0 = time.perf_counter()
        for seq in range(n_seq):
            batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = last[seq], len(prompt) + step, 1
            batch.seq_id[seq][0], batch.logits[seq] = seq, True
        batch.n_tokens = n_seq
        assert ll.llama_decode(ctx, batch) == 0
        last = [ll.llama_sampler_sample(samplers[seq], ctx, seq) for seq in range(n_seq)]
        step_times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    decode_only = n_seq * (max_tokens - 1) / (time.perf_counter() - t_decode)
    for s in samplers:
        ll.llama_sampler_free(s)
    ll.llama_batch_free(batch)
    ex.close()
    # Same work as a server does for n_seq clients: prefill included, as in the clients' wall time.
    print(f"raw n={n_seq}: decode-only {decode_only:.1f} tok/s", file=sys.stderr)
    return Result(n_seq * max_tokens, wall, ttfts, step_times)


# ---- servers -------------------------------------------------------------------------


CONTEXT = 4096  # tokens per sequence, as omniserve gives SmolLM2 (min(trained, 4096))


@contextlib.contextmanager
def server(kind: str, model: str, threads: int, slots: int, outside: bool = False):
    port = free_port()
    if kind.startswith("omniserve"):
        cmd = [sys.executable, "-m", "omniserve", "serve", "--model-path", model, "--threads", str(threads),
               "--max-running-requests", str(slots), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--asr-model", "none", "--tts-model", "none"]
        if outside:  # text only
            cmd += ["--vision-model", "none", "--embedding-model", "none"]
        if kind == "omniserve-ray":  # the stage workers as Ray actors (a local Ray cluster the server starts)
            cmd += ["--worker-backend", "ray"]
        if kind == "omniserve-replicas":  # the same cores, as two thinkers of half the threads each
            config = Path(tempfile.mkdtemp()) / "replicas.yaml"
            config.write_text(f"stages: {{thinker: {{placement: {{replicas: 2}}, "
                              f"args: {{threads: {max(1, threads // 2)}}}}}}}\n")
            cmd += ["--config", str(config)]
    elif kind == "llama-server":
        cmd = [str(llama_server.build()), "--model", model, "--threads", str(threads), "--threads-batch", str(threads),
               "--ctx-size", str(CONTEXT * slots), "--parallel", str(slots), "--cont-batching",
               "--host", "127.0.0.1", "--port", str(port), "--log-disable"]
        if outside:  # exactly as it was started there
            cmd = [str(llama_server.build()), "--model", model, "--parallel", "8", "-c", "32768", "-t", str(threads),
                   "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port), "--log-disable"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--n_ctx", "4096", "--interrupt_requests", "False",
               "--host", "127.0.0.1", "--port", str(port)]
    with running(kind, cmd, f"http://127.0.0.1:{port}") as base:
        yield base


async def one_stream(http: httpx.AsyncClient, base: str, model: str, max_tokens: int, eos: int, t0: float,
                     prompt: str = PROMPT):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "logit_bias": {str(eos): -100}}
    stamps = []
    async with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("no tokens streamed")
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:], strict=False)], len(stamps), stamps[-1]


async def load(base: str, clients: int, max_tokens: int, eos: int, rounds: int, outside: bool = False) -> Result:
    """`clients` clients, each streaming `rounds` requests one after another. `outside`: each client on its own
    kept-alive connection, its requests asking the four PROMPTS in turn."""
    # ours: a new connection per stream (llama-server closes kept-alive ones that httpx would reuse)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        # Model names differ between servers; ask each which id it serves.
        model = (await http.get(base + "/v1/models")).json()["data"][0]["id"]
        await one_stream(http, base, model, 4, eos, time.perf_counter())  # warm-up

        async def client(k: int) -> list:
            runs = []
            async with contextlib.AsyncExitStack() as stack:
                own = await stack.enter_async_context(httpx.AsyncClient(timeout=600)) if outside else http
                for j in range(rounds):
                    prompt = PROMPTS[(k + j) % len(PROMPTS)] if outside else PROMPT
                    t0 = time.perf_counter()
                    try:
                        runs.append(await one_stream(own, base, model, max_tokens, eos, t0, prompt))
                    except httpx.RemoteProtocolError:  # the server closed the kept-alive connection: a new one
                        runs.append(await one_stream(own, base, model, max_tokens, eos, t0, prompt))
            return runs

        t0 = time.perf_counter()
        runs = [r for rs in await asyncio.gather(*(client(k) for k in range(clients))) for r in rs]
    end = max(r[3] for r in runs)
    return Result(sum(r[2] for r in runs), end - t0, [r[0] for r in runs], [x for r in runs for x in r[1]])


# ---- report --------------------------------------------------------------------------


def eos_token(model: str) -> int:
    import llama_cpp as ll
    import llama_cpp._logger as llama_logger

    llama_logger.set_verbose(False)
    params = ll.llama_model_default_params()
    params.vocab_only = True
    m = ll.llama_model_load_from_file(model.encode(), params)
    vocab = ll.llama_model_get_vocab(m)
    eot = ll.llama_vocab_eot(vocab)
    tok = eot if eot >= 0 else ll.llama_vocab_eos(vocab)
    ll.llama_model_free(m)
    return tok


def fmt(r: Result | None) -> str:
    if r is None:
        return f"{'-':>9} {'-':>9} {'-':>9} {'-':>9}"
    return (f"{r.tok_s:9.1f} {pct(r.ttfts, 50):9.3f} {pct(r.ttfts, 99):9.3f} "
            f"{pct(r.itls, 50) * 1000 if r.itls else float('nan'):9.1f}")


PEERS = ["raw", "omniserve", "omniserve-ray", "omniserve-replicas", "llama-server", "llama_cpp.server"]


def main() -> None:
    from omniserve.models.defaults import ALIASES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--setup", choices=["ours", "outside"], default="ours",
                    help="outside: the setup of the outside measurement (see above)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=None, help="default: 1 4 8 16 (outside: 1 4 8)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=None, help="requests per client, one after another (default: 2; "
                    "outside: 4)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each level per server, the servers taking turns")
    ap.add_argument("--peers", nargs="+", default=["raw", "omniserve", "llama-server"], choices=PEERS)
    args = ap.parse_args()
    outside = args.setup == "outside"
    args.concurrency = args.concurrency or ([1, 4, 8] if outside else [1, 4, 8, 16])
    args.rounds = args.rounds or (4 if outside else 2)
    if outside:
        args.peers = [p for p in args.peers if p != "raw"]
    model = args.model or str(ALIASES["smollm2-135m"].materialize(Path(tempfile.gettempdir())))
    eos = eos_token(model)
    slots = 8 if outside else max(args.concurrency)
    peers = [p for p in PEERS if p in args.peers]
    results: dict[tuple[str, int], Result] = {}
    for n in args.concurrency:
        if "raw" in peers:
            results[("raw", n)] = run_raw(model, args.threads, n, args.max_tokens)
            print(f"raw n={n}: {results[('raw', n)].tok_s:.1f} tok/s", file=sys.stderr)
    servers = [p for p in peers if p != "raw"]
    with contextlib.ExitStack() as stack:
        # All servers up at once (an idle one costs nothing), and the peers take turns at each level,
        # --repeats times: the machine's slow drifts fall on every peer alike.
        bases = {kind: stack.enter_context(server(kind, model, args.threads, slots, outside)) for kind in servers}
        for n in args.concurrency:
            runs: dict[str, list[Result]] = {kind: [] for kind in servers}
            for _ in range(args.repeats):
                for kind in servers:
                    runs[kind].append(asyncio.run(load(bases[kind], n, args.max_tokens, eos, args.rounds, outside)))
                    print(f"{kind} n={n}: {runs[kind][-1].tok_s:.1f} tok/s", file=sys.stderr)
            for kind in servers:
                results[(kind, n)] = Result(sum(r.tokens for r in runs[kind]), sum(r.wall for r in runs[kind]),
                                            [x for r in runs[kind] for x in r.ttfts],
                                            [x for r in runs[kind] for x in r.itls])

    print(f"\nsetup {args.setup}: model {Path(model).name}, {args.threads} threads, {args.max_tokens} tokens per "
          f"stream, {args.rounds} streams per client, {slots} slots, {args.repeats} runs per server and level, "
          "taking turns\n")
    head = f"{'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>9}"
    print(f"{'clients':>7} | " + " | ".join(f"{p:^39}" for p in peers))
    print(f"{'':>7} | " + " | ".join(head for _ in peers))
    for n in args.concurrency:
        print(f"{n:>7} | " + " | ".join(fmt(results.get((p, n))) for p in peers))
    print("\nratios: omniserve / peer (aggregate completion tok/s; TTFT p50 and ITL p50, lower is better)")
    for n in args.concurrency:
        ours = results.get(("omniserve", n))
        parts = []
        for peer in (p for p in peers if p != "omniserve"):
            theirs = results.get((peer, n))
            if ours and theirs:
                parts.append(f"{peer}: tok/s {ours.tok_s / theirs.tok_s:5.2f}, TTFT "
                             f"{pct(ours.ttfts, 50) / pct(theirs.ttfts, 50):5.2f}, ITL "
                             f"{pct(ours.itls, 50) / pct(theirs.itls, 50):5.2f}")
        print(f"  {n} clients: " + "; ".join(parts))


if __name__ == "__main__":
    main()

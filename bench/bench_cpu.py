"""Where a streamed token's CPU goes: each server process's CPU time per token, at one client.

On 2 cores with `--threads 2`, llama.cpp's two threads keep both cores busy, so any other work a token costs
(omniserve's API process, its worker's pipe write, llama-server's HTTP thread) runs in the decode loop's time.
This prints, for omniserve and llama-server in turn, the CPU time (user and system, from /proc) that each process
of the server spent per streamed token, with the inter-token latency the client saw:

    python bench/bench_cpu.py                     # 20 streams of 128 tokens, each server twice, taking turns
    python bench/bench_cpu.py --max-tokens 1000 --streams 3

Servers start as `bench_llm.py --setup outside` starts them (text only; llama-server with --parallel 8). omniserve's
stage worker shows its fork server's command line (`multiprocessing.forkserver`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_llm import eos_token, one_stream, server  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Process:
    pid: int
    name: str
    user: float  # CPU seconds
    system: float


def read_proc(pid: int) -> tuple[list[str], list[str]] | None:
    """A process's /proc/PID/stat fields after its name (state first), and its command line; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split(), cmdline


def processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process there is."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (read := read_proc(int(entry))) is not None:
            out[int(entry)] = (int(read[0][1]), read[1])
    return out


def server_tree(port: int) -> list[int]:
    """The process started with `--port <port>` and every process below it (omniserve's workers are children of
    its fork server, which is a child of the server)."""
    every = processes()
    root = next(pid for pid, (_, cmd) in every.items()
                if "--port" in cmd[:-1] and cmd[cmd.index("--port") + 1] == str(port))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [child for child, (parent, _) in every.items() if parent == pid]
    return tree


def sample(pid: int) -> Process | None:
    if (read := read_proc(pid)) is None:
        return None
    fields, cmdline = read
    return Process(pid, " ".join(cmdline)[:60], int(fields[11]) / TICK, int(fields[12]) / TICK)


async def measure(kind: str, model: str, eos: int, streams: int, max_tokens: int) -> None:
    with server(kind, model, 2, 8, outside=True) as base:
        port = int(base.rsplit(":", 1)[1])
        # a new connection per stream: llama-server closes kept-alive ones that httpx would reuse
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            name = (await http.get(base + "/v1/models")).json()["data"][0]["id"]
            await one_stream(http, base, name, 8, eos, time.perf_counter())  # warm-up
            tree = server_tree(port)
            before = {pid: sample(pid) for pid in tree}
            tokens, gaps = 0, []
            for _ in range(streams):
                _, stream_gaps, count, _ = await one_stream(http, base, name, max_tokens, eos, time.perf_counter())
                tokens += count
                gaps += stream_gaps
            after = {pid: sample(pid) for pid in tree}
    print(f"{kind}: {tokens} tokens, ITL p50 {1e3 * statistics.median(gaps):.2f} ms; CPU per token:")
    for pid in tree:
        old, new = before[pid], after[pid]
        if old is None or new is None or new.user + new.system - old.user - old.system < 0.01:
            continue
        user, system = (new.user - old.user) / tokens * 1e3, (new.system - old.system) / tokens * 1e3
        print(f"  {user + system:7.3f} ms (user {user:.3f}, system {system:.3f})  pid {pid}: {new.name}")


def main() -> None:
    from omniserve.models.defaults import ALIASES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded SmolLM2-135M Q4_1)")
    ap.add_argument("--streams", type=int, default=20, help="streams one after another, per server and round")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="times each server runs, taking turns")
    args = ap.parse_args()
    model = args.model or str(ALIASES["smollm2-135m"].materialize(Path(tempfile.gettempdir())))
    eos = eos_token(model)
    for _ in range(args.rounds):
        for kind in ("omniserve", "llama-server"):
            asyncio.run(measure(kind, model, eos, args.streams, args.max_tokens))


if __name__ == "__main__":
    main()

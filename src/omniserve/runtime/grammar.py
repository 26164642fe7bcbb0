"""Structured-output grammars are built and checked out of the server process.

A short regex can expand into an automaton of millions of states, a JSON Schema can nest past
Python's recursion limit, and a GBNF grammar can crash llama.cpp's parser (a stack overflow on
deep nesting) or its sampler (a rule that leaves no token to choose). So a grammar is made
(by the `make` function the server gives, from the request's spec) in a helper process, which
then parses it with llama.cpp itself, on the served model's vocabulary, and checks that the
grammar allows a first token. A helper gets `timeout` seconds a grammar; one that runs over is
killed and one that crashes is replaced, and the request gets a 400 either way. The event loop
only waits. Outcomes are kept for the last `CACHE_SIZE` specs, refusals too, so a client that
sends the same grammar again (good or bad) costs nothing.

The helpers are shared fairly: when builds wait for one, the clients (by address) that wait take turns,
so one client's many slow grammars do not hold up another's; a build whose callers have all left before
it reached a helper is dropped. A grammar that takes longer than `MAX_STEP_MS` to apply to the vocabulary
is refused: the sampler applies it at every step, and every sequence decoding beside it would wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from omniserve.errors import InvalidRequest, OmniError, Unavailable
from omniserve.runtime.processes import CONTEXT

log = logging.getLogger(__name__)

CACHE_SIZE = 256
MAX_STEP_MS = 250  # applying a grammar to the whole vocabulary once (what each decoding step costs it)
Outcome = str | None | OmniError


class FairSlots:
    """`size` slots for owners: while they are contended, the owners that wait get one in turn (round
    robin), each its oldest waiter first."""

    def __init__(self, size: int):
        self.free = size
        self._waiting: OrderedDict[str, deque[asyncio.Future]] = OrderedDict()

    async def acquire(self, owner: str) -> None:
        if self.free and not self._waiting:
            self.free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot just as it left: pass it on
            else:
                queue = self._waiting.get(owner)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._waiting[owner]
            raise

    def release(self) -> None:
        while self._waiting:
            owner, queue = next(iter(self._waiting.items()))
            turn = queue.popleft()
            if queue:
                self._waiting.move_to_end(owner)  # the next owner's turn
            else:
                del self._waiting[owner]
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1

    @contextlib.asynccontextmanager
    async def held(self, owner: str):
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release()


@dataclass
class _Pending:
    """A build under way, which callers with the same spec join."""

    task: asyncio.Task | None = None
    waiters: int = 0
    started: bool = False  # it has a helper: it runs to its end (a helper is not stopped mid-grammar)


class GrammarBuilder:
    """The server's side: up to `helpers` grammars are built at once, each in its own process.
    `make(spec)` turns a spec (a frozen dataclass with a `param`) into GBNF; it must be importable."""

    def __init__(self, make: Callable[[Any], str | None], vocab_path: str | None, timeout: float, helpers: int = 2):
        self.make = make
        self.vocab_path = vocab_path  # a GGUF to read the vocabulary from (None: skip llama.cpp's check)
        self.timeout = timeout
        self._idle: list[_Helper] = []
        self._slots = FairSlots(helpers)
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._pending: dict[str, _Pending] = {}  # builds under way, which the same spec joins

    async def build(self, spec: Any, owner: str = "") -> str | None:
        """The GBNF for `spec` (None for free text), or an InvalidRequest naming the parameter. `owner`:
        who asks (the client's address), for a fair share of the helpers."""
        if spec is None:
            return None
        key = json.dumps(asdict(spec), sort_keys=True, default=str)
        if key in self._outcomes:
            self._outcomes.move_to_end(key)
            outcome = self._outcomes[key]
        else:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending()
                pending.task = asyncio.ensure_future(self._build_and_keep(key, spec, owner, pending))
            pending.waiters += 1
            try:
                # shielded: a client that leaves does not cut a build short and strand its helper
                outcome = await asyncio.shield(pending.task)
            finally:
                pending.waiters -= 1
                if not pending.waiters and not pending.started and not pending.task.done():
                    pending.task.cancel()  # every caller left before it had a helper: nobody needs it
        if isinstance(outcome, OmniError):
            raise outcome
        return outcome

    async def _build_and_keep(self, key: str, spec: Any, owner: str, pending: _Pending) -> Outcome:
        try:
            outcome = await self._build(spec, owner, pending)
        finally:
            del self._pending[key]
        if not isinstance(outcome, Unavailable):
            self._outcomes[key] = outcome
            if len(self._outcomes) > CACHE_SIZE:
                self._outcomes.popitem(last=False)
        return outcome

    async def _build(self, spec: Any, owner: str, pending: _Pending) -> Outcome:
        async with self._slots.held(owner):
            pending.started = True
            for attempt in (1, 2):  # an idle helper may have died since it was last used: then a new one
                reused = bool(self._idle)
                try:
                    helper = self._idle.pop() if reused else await asyncio.to_thread(_Helper, self.make,
                                                                                      self.vocab_path)
                except OSError as exc:
                    return Unavailable(f"the grammar helper process could not start ({exc}); retry later")
                try:
                    outcome = await asyncio.to_thread(helper.run, spec, self.timeout)
                except _Gone:
                    helper.kill()
                    if reused and attempt == 1:
                        continue
                    return Unavailable("the grammar helper process is gone; retry later")
                if isinstance(outcome, _Failed):  # stuck or crashed on this grammar: never use it again
                    helper.kill()
                    return outcome.error
                self._idle.append(helper)
                return outcome
        return Unavailable("the grammar helper process is gone; retry later")

    def close(self) -> None:
        for helper in self._idle:
            helper.kill()
        self._idle.clear()


class _Gone(Exception):
    """The helper was dead before it got the grammar."""


class _Failed:
    """The helper ran over its time or crashed on this grammar."""

    def __init__(self, error: InvalidRequest):
        self.error = error


class _Helper:
    """One helper process and its pipe."""

    def __init__(self, make: Callable[[Any], str | None], vocab_path: str | None):
        self.conn, child = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=_serve, args=(child, make, vocab_path), name="omniserve-grammar",
                                       daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            self.kill()
            raise OSError("it did not say it was ready")

    def run(self, spec: Any, timeout: float) -> str | None | OmniError | _Failed:
        started = time.monotonic()
        try:
            self.conn.send(spec)
        except OSError:
            raise _Gone() from None
        if not self.conn.poll(timeout):
            return _Failed(InvalidRequest(f"{spec.param}: building the output grammar took longer than {timeout:g} s; "
                                          "simplify it (long bounded repeats and deep nesting grow it fast)",
                                          param=spec.param))
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            return _Failed(InvalidRequest(f"{spec.param}: the grammar engine crashed on this grammar; simplify it",
                                          param=spec.param))
        log.debug("grammar for %s built in %.3f s", spec.param, time.monotonic() - started)
        return OmniError.from_wire(value) if kind == "error" else value

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


# ---- the helper process ---------------------------------------------------------------------

def _serve(conn: Connection, make: Callable[[Any], str | None], vocab_path: str | None) -> None:
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl+C is not ours to act on
    # llama.cpp's grammar parser prints the grammar it could not parse to stderr, which is the server's log: a
    # client's grammar must not write lines there (its errors come back in the reply)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    os.close(quiet)
    checker = _LlamaCheck(vocab_path) if vocab_path else None
    conn.send("ready")
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        try:
            grammar = make(spec)
            if grammar is not None and checker is not None:
                checker.check(grammar, spec.param)
            reply: tuple[str, Any] = ("ok", grammar)
        except OmniError as exc:
            reply = ("error", exc.to_wire())
        except RecursionError:
            reply = ("error", InvalidRequest(f"{spec.param}: nested too deeply to compile", param=spec.param
                                             ).to_wire())
        except Exception as exc:  # a converter's own failure on an input it did not expect
            reply = ("error", InvalidRequest(f"{spec.param}: cannot compile the grammar: {type(exc).__name__}: "
                                             f"{exc}", param=spec.param).to_wire())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class _LlamaCheck:
    """llama.cpp's own parser on the model's vocabulary (loaded alone, without weights)."""

    def __init__(self, vocab_path: str):
        import llama_cpp as ll

        from omniserve.executors.llamacpp.runtime import quiet_llama_log

        self.ll = ll
        self._log = quiet_llama_log(ll)
        params = ll.llama_model_default_params()
        params.vocab_only = True
        self.model = ll.llama_model_load_from_file(vocab_path.encode(), params)
        if not self.model:
            raise RuntimeError(f"cannot read the vocabulary of {vocab_path}")
        self.vocab = ll.llama_model_get_vocab(self.model)
        # every token at logit 0, as a llama_token_data array (id, logit, p) that numpy can read back
        self.tokens = np.zeros(ll.llama_vocab_n_tokens(self.vocab), dtype=[("id", "<i4"), ("logit", "<f4"),
                                                                             ("p", "<f4")])
        self.tokens["id"] = np.arange(len(self.tokens))

    def check(self, grammar: str, param: str) -> None:
        ll = self.ll
        sampler = ll.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequest(f"{param}: the grammar does not parse (llama.cpp GBNF, with a `root` rule)",
                                 param=param)
        try:
            self.tokens["logit"] = 0.0
            data = self.tokens.ctypes.data_as(ctypes.POINTER(ll.llama_token_data))
            candidates = ll.llama_token_data_array(data, len(self.tokens), -1, False)
            started = time.perf_counter()
            ll.llama_sampler_apply(sampler, ctypes.byref(candidates))
            ms = (time.perf_counter() - started) * 1000
            if np.isneginf(self.tokens["logit"]).all():
                raise InvalidRequest(f"{param}: the grammar allows no output at all", param=param)
            if ms > MAX_STEP_MS:
                raise InvalidRequest(f"{param}: the grammar takes {ms:.0f} ms to apply to the model's vocabulary, "
                                     f"which it would cost every step of the answer; this server allows "
                                     f"{MAX_STEP_MS} ms. Shorten it: long enums and many alternatives cost the most",
                                     param=param)
        finally:
            ll.llama_sampler_free(sampler)

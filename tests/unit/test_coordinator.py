"""The coordinator with real workers in threads (`loopback.py`): which replica a request goes to, control calls
replayed on a restarted worker, what flows on an edge and when, and an abort whose slot waits for the worker.

The stages run two fake executors, named by import path as any pipeline may: `Tokens` makes one text token a step
for each request (its `Script`, in the request's params, may have it fail the request, hang the worker or crash
it), and `Relay` answers each feed from upstream with one output that joins what came in it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from omniserve.config import PipelineConfig, validate_pipeline
from omniserve.errors import InvalidRequest, OmniError, WorkerCrashed
from omniserve.executors.base import Executor, StepResult
from omniserve.runtime.coordinator import Coordinator
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.launcher import StageLoadError
from omniserve.runtime.messages import ControlOp, ListAdapters, LoadAdapter
from omniserve.runtime.types import OmniOutput, OmniRequest
from tests.unit.loopback import WorkerCrash, launch_in_thread, worker_pid

TIMEOUT_S = 2.0  # for anything the coordinator should do at once: a broken one fails, it does not hang


# ---- the fake executors ------------------------------------------------------------------------------------------


@dataclass
class Gate:
    """Where a `Tokens` step hangs for one request: `held` once it waits, until the test sets `released`."""

    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def hang(self) -> None:
        self.held.set()
        self.released.wait()


GATES: dict[str, Gate] = {}  # by request id (an Event does not cross a pipe; a thread shares it)
LOADED: dict[tuple[int, str], Fake] = {}  # each worker's executor of each stage, by the worker's pid


class FakeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_s: float = 0.0  # a pause in each step, so that an endless request does not flood the test
    adapter_s: float = 0.0  # how long loading an adapter takes


class Fake(Executor):
    """What both fakes share: a log of what reached the worker, and adapters that control calls load."""

    args_model = FakeArgs
    makes = ("text",)

    def load(self) -> StageFacts:
        self.log: list[str] = []
        self.adapters: list[str] = []
        LOADED[(worker_pid(), self.stage)] = self
        return StageFacts()

    def control(self, op: ControlOp) -> list[str]:
        if isinstance(op, ListAdapters):
            self.log.append("ListAdapters")
            return list(self.adapters)
        if not isinstance(op, LoadAdapter):
            return super().control(op)
        if op.name in self.adapters:
            raise InvalidRequest(f"adapter {op.name!r} is loaded already")
        time.sleep(self.args.adapter_s)
        self.log.append(f"LoadAdapter {op.name}")
        self.adapters.append(op.name)
        return list(self.adapters)


class Script(BaseModel):
    """What a request has `Tokens` do: make `tokens` tokens (None: until it is aborted); at token `hang_at` hang the
    worker until the request's gate is released, then at `crash_at` crash the worker, at `fail_at` fail the
    request."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = 3
    fail_at: int | None = None
    hang_at: int | None = None
    crash_at: int | None = None


@dataclass
class _Job:
    request_id: str
    script: Script
    made: int = 0


class Tokens(Fake):
    params_model = Script

    def load(self) -> StageFacts:
        self.jobs: dict[str, _Job] = {}
        return super().load()

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        self.log.append(f"add {request.request_id}")
        self.jobs[request.request_id] = _Job(request.request_id, Script.model_validate(request.params_for(self.stage)))
        return []

    def abort(self, request_id: str) -> None:
        self.log.append(f"abort {request_id}")
        self.jobs.pop(request_id, None)

    def has_work(self) -> bool:
        return bool(self.jobs)

    def step(self) -> StepResult:
        outputs = []
        for job in list(self.jobs.values()):
            made, script = job.made, job.script
            if made == script.hang_at:
                GATES[job.request_id].hang()
            if made == script.crash_at:
                raise WorkerCrash
            if made == script.fail_at:
                self.fail(job.request_id, RuntimeError(f"told to fail at t{made}"))
                continue
            job.made += 1
            done = job.made == script.tokens
            if done:
                del self.jobs[job.request_id]
            outputs.append(OmniOutput(job.request_id, text=f"t{made}", done=done,
                                      finish_reason="stop" if done else None))
        time.sleep(self.args.step_s)
        return self.result(outputs, len(outputs))


class Relay(Fake):
    """It takes upstream outputs (it implements `feed`), and refuses them for a request never added here."""

    def load(self) -> StageFacts:
        self.held: set[str] = set()
        return super().load()

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        self.log.append(f"add {request.request_id}")
        self.held.add(request.request_id)
        return []

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        request_id, text = outputs[0].request_id, "+".join(output.text for output in outputs)
        self.log.append(f"feed {request_id} {text}")
        if request_id not in self.held:
            raise InvalidRequest(f"request {request_id} was never added to this worker")
        done = any(output.done for output in outputs)
        if done:
            self.held.discard(request_id)
        return [OmniOutput(request_id, text=text, done=done)]

    def abort(self, request_id: str) -> None:
        self.log.append(f"abort {request_id}")
        self.held.discard(request_id)

    def has_work(self) -> bool:
        return False

    def step(self) -> StepResult:
        return self.result([])


# ---- helpers -----------------------------------------------------------------------------------------------------


def single(**args: Any) -> PipelineConfig:
    return validate_pipeline({"stages": [{"name": "tok", "executor": f"{__name__}:Tokens", "args": args}]})


def chain(streaming: bool, relays: int = 1, **args: Any) -> PipelineConfig:
    """tok -> relay."""
    return validate_pipeline({
        "stages": [{"name": "tok", "executor": f"{__name__}:Tokens", "args": args},
                   {"name": "relay", "executor": f"{__name__}:Relay", "placement": {"replicas": relays}}],
        "edges": [{"src": "tok", "dst": "relay", "streaming": streaming}]})


def request(request_id: str, emit: str = "tok", **script: Any) -> OmniRequest:
    """A request whose text comes from `emit` (through tok, for the relay); `script` is what tok does with it."""
    return OmniRequest(request_id, prompt="hi", entry="tok", makers={"text": emit}, params={"tok": script})


@contextlib.asynccontextmanager
async def serving(pipeline: PipelineConfig, max_running: int = 4) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(pipeline, max_running, max_queued=8, log_level="warning", launch=launch_in_thread)
    await coordinator.start()
    try:
        yield coordinator
    finally:
        for gate in GATES.values():
            gate.released.set()
        await coordinator.shutdown()
        GATES.clear()


def gate(request_id: str) -> Gate:
    """The gate of a request about to start (made before the worker looks for it)."""
    GATES[request_id] = Gate()
    return GATES[request_id]


def executor(coordinator: Coordinator, stage: str, replica: int = 0) -> Fake:
    return LOADED[(coordinator.pool.handles[stage][replica].pid, stage)]


async def next_output(outputs: AsyncIterator[OmniOutput]) -> OmniOutput:
    return await asyncio.wait_for(anext(outputs), TIMEOUT_S)


async def texts(outputs: AsyncIterator[OmniOutput]) -> list[str]:
    async def read() -> list[str]:
        return [output.text async for output in outputs]

    return await asyncio.wait_for(read(), TIMEOUT_S)


async def until(condition: Callable[[], Any]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "the coordinator did not get there in time"
        await asyncio.sleep(0.002)


# ---- tests -------------------------------------------------------------------------------------------------------


def test_a_request_goes_to_the_least_loaded_replica_and_stays_on_it():
    """The relay has two workers: each request goes to the one holding fewer (the first of equals), and every
    chunk the streaming edge feeds it goes there too (another worker would refuse it)."""

    async def scenario() -> None:
        async with serving(chain(streaming=True, relays=2, step_s=0.002)) as c:
            streams = {}
            try:
                for request_id in ("r1", "r2"):
                    streams[request_id] = c.generate(request(request_id, emit="relay", tokens=None))
                    await next_output(streams[request_id])
                await streams.pop("r2").aclose()
                await until(lambda: c.pool.load[("relay", 1)] == 0)
                streams["r3"] = c.generate(request("r3", emit="relay", tokens=None))
                for stream in streams.values():
                    for _ in range(5):
                        await next_output(stream)
                assert (c.pool.load[("relay", 0)], c.pool.load[("relay", 1)]) == (1, 1)
            finally:
                for stream in streams.values():
                    await stream.aclose()
            logs = [executor(c, "relay", i).log for i in range(2)]
            added = [{entry.split()[1] for entry in log if entry.startswith("add")} for log in logs]
            fed = [{entry.split()[1] for entry in log if entry.startswith("feed")} for log in logs]
            assert added == [{"r1"}, {"r2", "r3"}]
            assert fed == added

    asyncio.run(scenario())


def test_a_control_call_that_changes_a_stage_is_replayed_on_its_restarted_worker_before_it_takes_requests():
    async def scenario() -> None:
        async with serving(single(adapter_s=0.05)) as c:
            assert await c.control("tok", LoadAdapter("a", "/a.gguf")) == ["a"]
            assert await c.control("tok", ListAdapters()) == ["a"]  # changes nothing: not replayed
            with pytest.raises(InvalidRequest, match="loaded already"):  # failed: not replayed
                await c.control("tok", LoadAdapter("a", "/again.gguf"))
            dead, hung = c.pool.handles["tok"][0], gate("r1")
            crashing = c.generate(request("r1", hang_at=1, crash_at=1))
            assert (await next_output(crashing)).text == "t0"
            hung.released.set()  # crash once t0 is read, so the test knows which output came before the crash
            with pytest.raises(WorkerCrashed, match="'tok' stage worker crashed"):
                await next_output(crashing)
            await until(lambda: c.pool.handles["tok"][0] not in (None, dead))
            restarted = executor(c, "tok")
            assert restarted.log == ["LoadAdapter a"]  # loaded (it takes a while) before it was taken into service
            assert dead.process.exitcode == 1 and c.crashes == 1
            assert await texts(c.generate(request("r2"))) == ["t0", "t1", "t2"]
            assert await c.control("tok", ListAdapters()) == ["a"]
            assert restarted.log == ["LoadAdapter a", "add r2", "ListAdapters"]

    asyncio.run(scenario())


@pytest.mark.parametrize("streaming", [True, False])
def test_an_edge_feeds_each_chunk_when_streaming_and_else_all_at_once_when_upstream_is_done(streaming):
    """tok makes t0 and t1, then hangs before t2: a streaming edge has fed the relay each already, the other
    nothing; once tok is done, the relay has had all three, in one feed on the other edge."""

    async def scenario() -> None:
        async with serving(chain(streaming)) as c:
            received: list[str] = []

            async def read() -> None:
                async for output in c.generate(request("r", emit="relay", hang_at=2)):
                    received.append(output.text)

            hung = gate("r")
            reader = asyncio.ensure_future(read())
            relay = executor(c, "relay")
            before = ["t0", "t1"] if streaming else []
            await until(lambda: hung.held.is_set() and len(received) == len(before))
            await asyncio.sleep(0.1)  # anything more would arrive by now
            assert received == before
            assert relay.log == ["add r"] + [f"feed r {text}" for text in before]
            hung.released.set()
            await asyncio.wait_for(reader, TIMEOUT_S)
            assert received == (["t0", "t1", "t2"] if streaming else ["t0+t1+t2"])

    asyncio.run(scenario())


def test_a_consumer_that_leaves_aborts_the_request_whose_slot_waits_for_the_worker_to_confirm():
    """The consumer leaves while the worker is in a step: the request keeps its slot (the next in line waits) until
    the worker has taken the abort, then the slot goes to the next."""

    async def scenario() -> None:
        async with serving(single(step_s=0.001), max_running=1) as c:
            hung = gate("r1")
            leaving = c.generate(request("r1", tokens=None, hang_at=2))
            assert [(await next_output(leaving)).text for _ in range(2)] == ["t0", "t1"]
            waiting = asyncio.ensure_future(texts(c.generate(request("r2"))))
            await until(lambda: hung.held.is_set() and c.admission.queued("tok") == 1)
            await leaving.aclose()
            await asyncio.sleep(0.05)
            worker = executor(c, "tok")
            assert "abort r1" not in worker.log  # the worker is still in its step
            assert (c.admission.running("tok"), c.admission.queued("tok"), c.num_running) == (1, 1, 1)
            hung.released.set()
            assert await asyncio.wait_for(waiting, TIMEOUT_S) == ["t0", "t1", "t2"]
            assert worker.log.index("abort r1") < worker.log.index("add r2")
            await until(lambda: (c.admission.running("tok"), c.num_running) == (0, 0))

    asyncio.run(scenario())


def test_a_request_a_stage_fails_gets_its_error_and_the_others_go_on():
    async def scenario() -> None:
        async with serving(single(step_s=0.001)) as c:
            failing = c.generate(request("r1", tokens=5, fail_at=1))
            others = asyncio.ensure_future(texts(c.generate(request("r2", tokens=5))))
            assert (await next_output(failing)).text == "t0"
            with pytest.raises(OmniError, match="told to fail at t1"):
                await next_output(failing)
            assert await asyncio.wait_for(others, TIMEOUT_S) == ["t0", "t1", "t2", "t3", "t4"]
            await until(lambda: (c.admission.running("tok"), c.num_running) == (0, 0))
            assert c.crashes == 0

    asyncio.run(scenario())


class Untold(Executor):
    """A custom executor whose load() returns a dict (the contract before StageFacts)."""

    args_model = FakeArgs

    def load(self) -> dict:
        return {"context_length": 8}


def test_a_stage_whose_load_returns_no_stage_facts_fails_the_start_saying_so():
    pipeline = validate_pipeline({"stages": [{"name": "odd", "executor": f"{__name__}:Untold"}]})

    async def start() -> None:
        coordinator = Coordinator(pipeline, 1, max_queued=1, log_level="warning", launch=launch_in_thread)
        try:
            await coordinator.start()
        finally:
            await coordinator.shutdown()

    with pytest.raises(StageLoadError, match=r"TypeError: Untold.load\(\) returned dict, not StageFacts"):
        asyncio.run(start())

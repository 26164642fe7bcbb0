"""A failing step fails its requests, not the stage: what the worker and the LLM executor do with an
exception in a step (the integration test `test_a_request_failing_in_a_decode_step_fails_alone` runs
the real thing)."""

from __future__ import annotations

from multiprocessing import Pipe

from omniserve.errors import OmniError, OutOfMemory
from omniserve.executors.base import Executor
from omniserve.executors.llamacpp import decode_error
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.messages import (
    Aborted,
    AbortRequest,
    AddRequest,
    Control,
    ControlDone,
    LoadAdapter,
    RequestFailed,
)
from omniserve.runtime.types import OmniOutput, OmniRequest
from omniserve.runtime.worker import _Lane


class Breaking(Executor):
    """An executor whose step raises without saying for which request (a fake: only the lane is tested)."""

    def __init__(self):
        super().__init__(None, "thinker")
        self.aborted: list[str] = []

    def add(self, request):
        return [OmniOutput(request.request_id, started=True)]

    def step(self):
        raise RuntimeError("the model broke")

    def abort(self, request_id):
        self.aborted.append(request_id)


def test_an_exception_a_step_raises_fails_the_stage_requests_and_the_lane_goes_on():
    ours, theirs = Pipe()
    executor = Breaking()
    lane = _Lane(executor, ours, "thinker", StageFacts())
    for request_id in ("a", "b"):
        lane.handle(AddRequest(OmniRequest(request_id, prompt="hi", entry="thinker")))
    lane.handle(AbortRequest("b"))
    assert theirs.recv() == Aborted("b")
    assert lane.step() == []
    failure = theirs.recv()
    assert isinstance(failure, RequestFailed) and failure.request_id == "a"
    assert "the model broke" in OmniError.from_wire(failure.error).message
    assert executor.aborted == ["b", "a"] and lane.live == set()
    assert not theirs.poll(0.1)  # nothing for the request already aborted


def test_llama_decode_refusals_are_507_when_memory_ran_out():
    assert isinstance(decode_error(1), OutOfMemory) and decode_error(1).status_code == 507  # no KV room
    assert isinstance(decode_error(-3), OutOfMemory)  # compute buffers
    assert not isinstance(decode_error(-1), OutOfMemory) and decode_error(-1).status_code == 500


def test_a_control_call_a_stage_does_not_take_is_answered_with_an_error():
    ours, theirs = Pipe()
    lane = _Lane(Breaking(), ours, "thinker", StageFacts())
    assert lane.handle(Control("call-1", LoadAdapter("x", "/x.gguf"))) == []
    answer = theirs.recv()
    assert isinstance(answer, ControlDone) and answer.call_id == "call-1" and answer.result is None
    error = OmniError.from_wire(answer.error)
    assert error.status_code == 400 and "takes no LoadAdapter" in error.message


class FailingOne(Executor):
    """A step that fails one request by name and answers the other (a fake: only the lane is tested)."""

    def __init__(self):
        super().__init__(None, "thinker")
        self.aborted: list[str] = []

    def add(self, request):
        return []

    def step(self):
        self.fail("a", ValueError("a's prompt broke the model"))
        return self.result([OmniOutput("b", text="fine")], batch_size=2)

    def abort(self, request_id):
        self.aborted.append(request_id)


def test_a_request_a_step_fails_by_name_fails_alone():
    ours, theirs = Pipe()
    executor = FailingOne()
    lane = _Lane(executor, ours, "thinker", StageFacts())
    for request_id in ("a", "b"):
        lane.handle(AddRequest(OmniRequest(request_id, prompt="hi", entry="thinker")))
    assert [o.request_id for o in lane.step()] == ["b"]
    failure = theirs.recv()
    assert isinstance(failure, RequestFailed) and failure.request_id == "a"
    assert "a's prompt broke the model" in OmniError.from_wire(failure.error).message
    assert executor.aborted == ["a"] and lane.live == {"b"} and lane.batches == [2]
    assert executor.result([]).failed == []  # told once

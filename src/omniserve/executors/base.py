"""The contract every executor keeps, and what several share.

An executor wraps one model runtime. The stage worker calls `load` once, then
alternates `add`/`feed`/`abort`/`control` (between steps) with `step` (one
batched forward pass). It knows nothing about HTTP or other stages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omniserve.errors import InvalidRequest
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import MediaReading, OmniOutput, OmniRequest
from omniserve.validation import first_error

P = TypeVar("P", bound=BaseModel)


def request_params(model: type[P], data: dict[str, Any]) -> P:
    """A request's settings for a stage (`OmniRequest.params`), or a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc, message = first_error(exc)
        field = ".".join(map(str, loc))
        raise InvalidRequest(f"{field}: {message}", param=field) from None


class EmbeddingParams(BaseModel):
    """What a request sets for a stage that embeds (the embedder, or the chat GGUF in embedding mode):
    its inputs, as texts or as token-id lists."""

    model_config = ConfigDict(extra="forbid")

    input: list[str] | list[list[int]]
    truncate_prompt_tokens: int | None = Field(None, ge=-1)

    def texts_within(self, most: int, size: Callable[[str], int], tokens: int) -> list[str | list[int]]:
        """The inputs, each text checked by its `size` before it is tokenized (a 30 MB text would hold the
        worker for many seconds): over `most`, it cannot fit in `tokens` tokens, so it is a 400, or, with
        truncate_prompt_tokens (which keeps the end), only its last `most` characters are tokenized."""
        out: list[str | list[int]] = []
        for i, text in enumerate(self.input):
            if isinstance(text, str) and size(text) > most:
                if self.truncate_prompt_tokens is None:
                    where = f"input[{i}]" if len(self.input) > 1 else "input"
                    raise InvalidRequest(f"{where} is {len(text)} characters: more than this model's {tokens} "
                                         "tokens can hold. Shorten it, or set truncate_prompt_tokens to keep its "
                                         "last tokens", param="input")
                text = text[-most:]
            out.append(text)
        return out


@dataclass
class StepResult:
    """What one step made: its outputs, the requests it failed (each alone: the worker tells them and aborts
    them, and the stage goes on), and how many items it batched (for the metrics)."""

    outputs: list[OmniOutput] = field(default_factory=list)
    failed: list[tuple[str, Exception]] = field(default_factory=list)
    batch_size: int = 1


class Executor:
    """What the stage worker drives: one model runtime, `args` as its stage's config gave them, `stage` the
    name under which a request's settings for it come (`OmniRequest.params`, `sampling`)."""

    def __init__(self, args: Any, stage: str):
        self.args = args
        self.stage = stage
        self._failed: list[tuple[str, Exception]] = []

    def load(self) -> StageFacts:
        """Load the model; return what the API needs to know of it (context length, voices, ...)."""
        raise NotImplementedError

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        """Admit a request. Raise an `OmniError` to reject it."""
        raise NotImplementedError

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        """Take upstream outputs for a request already added (graph edges). Raise an `OmniError` to fail it."""
        return []

    def abort(self, request_id: str) -> None:
        """Drop a request and free its resources before the next step."""
        raise NotImplementedError

    def has_work(self) -> bool:
        raise NotImplementedError

    def step(self) -> StepResult:
        """Run one batched step (`result` makes what it returns)."""
        raise NotImplementedError

    def control(self, op: Any) -> Any:
        """An operation between steps (load an adapter, count tokens, ...), for the stages that take them."""
        raise InvalidRequest(f"the {self.stage!r} stage takes no {type(op).__name__} operation")

    def close(self) -> None:
        pass

    def fail(self, request_id: str, exc: Exception) -> None:
        """A request this step failed, and it alone: the step's result says so."""
        self._failed.append((request_id, exc))

    def result(self, outputs: list[OmniOutput], batch_size: int = 1) -> StepResult:
        """This step's result: its outputs, with the requests it failed."""
        failed, self._failed = self._failed, []
        return StepResult(outputs, failed, batch_size)


class RoundRobinExecutor(Executor):
    """Requests take turns: each step advances the oldest job by one unit of work (an
    image, a sentence, a segment), then the job goes to the back of the queue. So every
    request moves, and a streaming client sees each unit as soon as it is done.
    Subclasses queue jobs in `add` and implement `advance`."""

    def __init__(self, args: Any, stage: str):
        super().__init__(args, stage)
        self._jobs: deque[Any] = deque()  # each job has a `request_id`

    def advance(self, job: Any) -> tuple[list[OmniOutput], bool]:
        """One unit of work on `job`: its outputs, and whether the job is finished."""
        raise NotImplementedError

    def close(self) -> None:
        self._jobs.clear()

    def abort(self, request_id: str) -> None:
        self._jobs = deque(j for j in self._jobs if j.request_id != request_id)

    def has_work(self) -> bool:
        return bool(self._jobs)

    def step(self) -> StepResult:
        job = self._jobs.popleft()
        outputs, finished = self.advance(job)
        if not finished:
            self._jobs.append(job)
        return self.result(outputs)


@dataclass
class _ImageJob:
    request_id: str
    images: list[np.ndarray]
    index: int = 0


class PerImageExecutor(RoundRobinExecutor):
    """What the vision stages share: one image per turn, one output per image (`index`),
    in order; `done` comes with the last. Subclasses load a model and implement
    `process(image) -> MediaReading`."""

    def __init__(self, args: Any, stage: str = "vision"):
        super().__init__(args, stage)

    def process(self, image: np.ndarray) -> MediaReading:
        raise NotImplementedError

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        if not request.images:
            raise InvalidRequest("the request has no image for the vision stage", param="messages")
        self._jobs.append(_ImageJob(request.request_id, list(request.images)))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _ImageJob) -> tuple[list[OmniOutput], bool]:
        index = job.index
        reading = self.process(job.images[index])
        job.index += 1
        done = job.index == len(job.images)
        return [OmniOutput(job.request_id, index=index, text=reading.text, finish_reason="stop", done=done,
                           data=reading)], done

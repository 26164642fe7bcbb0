"""What the coordinator and the stage workers say to each other: typed messages, pickled over a
`Transport`. Requests flow down as `AddRequest` / `FeedOutputs` / `AbortRequest`; what a stage
makes flows back as `StepOutputs`. A `Control` call (LoRA adapters, token counts) is answered by one
`ControlDone` and takes no slot: it runs between steps, like an `add`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import OmniOutput, OmniRequest

WireError = tuple[str, str, str | None, str | None]  # OmniError.to_wire(): class, message, param, code

# ---- control operations: stage administration, not requests ------------------------------
# Those that change a stage (`changes_state`) are replayed, in order, on a worker of it that starts later.


@dataclass
class LoadAdapter:
    """Load a GGUF LoRA adapter into the chat model (`/v1/load_lora_adapter`)."""

    changes_state: ClassVar[bool] = True
    name: str
    path: str


@dataclass
class UnloadAdapter:
    changes_state: ClassVar[bool] = True
    name: str


@dataclass
class SetAdapters:
    """A diffusion denoiser's adapters and their strengths (SGLang Diffusion's `/v1/set_lora`)."""

    changes_state: ClassVar[bool] = True
    nicknames: list[str]
    paths: list[str]
    strengths: list[float]


@dataclass
class MergeAdapters:
    """Fuse the active adapters into the weights (`merge`), or take them out again."""

    changes_state: ClassVar[bool] = True
    merge: bool


@dataclass
class ListAdapters:
    changes_state: ClassVar[bool] = False


@dataclass
class CountTokens:
    """How many tokens each text is to the chat model (a realtime conversation fitting its context)."""

    changes_state: ClassVar[bool] = False
    texts: list[str]


ControlOp = LoadAdapter | UnloadAdapter | SetAdapters | MergeAdapters | ListAdapters | CountTokens

# ---- coordinator -> worker ---------------------------------------------------------------


@dataclass
class AddRequest:
    request: OmniRequest


@dataclass
class FeedOutputs:
    """An upstream stage's outputs for a request already added (a graph edge)."""

    outputs: list[OmniOutput]


@dataclass
class AbortRequest:
    request_id: str


@dataclass
class Control:
    call_id: str
    op: ControlOp


@dataclass
class StopWorker:
    pass


ToWorker = AddRequest | FeedOutputs | AbortRequest | Control | StopWorker

# ---- worker -> coordinator ---------------------------------------------------------------


@dataclass
class Ready:
    facts: StageFacts  # what the executor told of its model when it loaded, and the worker's pid


@dataclass
class LoadFailed:
    reason: str


@dataclass
class StepOutputs:
    outputs: list[OmniOutput]
    batches: list[int] = field(default_factory=list)  # the batch size of each step since the last report


@dataclass
class Alive:
    """Nothing to say, but the loop turns (sent at least every heartbeat)."""

    batches: list[int] = field(default_factory=list)


@dataclass
class RequestFailed:
    request_id: str
    error: WireError


@dataclass
class Aborted:
    request_id: str


@dataclass
class ControlDone:
    call_id: str
    result: Any = None
    error: WireError | None = None  # when the operation failed


FromWorker = Ready | LoadFailed | StepOutputs | Alive | RequestFailed | Aborted | ControlDone

"""A realtime session's settings, and one response's: the session's, with `response.create`'s over them."""

from __future__ import annotations

from dataclasses import dataclass, field

from omniserve.api.realtime.events import Item
from omniserve.api.realtime.protocol import ToolChoice, ToolSpec, Truncation, TurnDetectionSpec
from omniserve.media.pcm import PCM16, PcmFormat

# what a session is told until the client says otherwise (OpenAI has default instructions too): a spoken
# answer should be short, and a small model keeps to the point when asked
DEFAULT_INSTRUCTIONS = "You are a friendly voice assistant. Keep your answers short: one or two sentences."


@dataclass
class SessionSettings:
    voice: str
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: PcmFormat = PCM16
    output_format: PcmFormat = PCM16
    turn_detection: TurnDetectionSpec | None = field(default_factory=TurnDetectionSpec)
    temperature: float | None = 0.8  # OpenAI's realtime default; a spoken answer wanders less than at 1
    max_output_tokens: int | str = "inf"
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    stage_sampling: dict[str, dict] = field(default_factory=dict)
    truncation: Truncation = "auto"


@dataclass
class ResponseOptions:
    """One response's settings: the session's, with `response.create`'s over them."""

    modalities: list[str]
    instructions: str
    voice: str
    output_format: PcmFormat
    tools: list[ToolSpec]
    tool_choice: ToolChoice
    temperature: float | None
    max_output_tokens: int | str
    stage_sampling: dict[str, dict] = field(default_factory=dict)
    in_conversation: bool = True  # False: out of band; its items stay out of the conversation
    input: list[Item] | None = None  # the context instead of the conversation
    metadata: dict[str, str] | None = None
    truncation: Truncation = "disabled"  # what to drop from the conversation when it outgrows the context

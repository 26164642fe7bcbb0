"""`POST /v1/chat/completions` request model and its translation to OmniRequest."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from omniserve.api.protocol.common import SamplingFields
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniRequest


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        return self

    def to_omni_request(self, request_id: str) -> OmniRequest:
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequest(
                f"response_format type {self.response_format.get('type')!r} is not supported yet; use 'text'",
                param="response_format",
            )
        if self.tools:
            raise InvalidRequest("tools are not supported yet by this server", param="tools")
        sampling = self.sampling_params(
            self.max_completion_tokens or self.max_tokens, self.logprobs, self.top_logprobs or 0
        )
        return OmniRequest(
            request_id=request_id,
            messages=[_template_message(i, m) for i, m in enumerate(self.messages)],
            sampling={"thinker": sampling},
        )


def _template_message(i: int, message: ChatMessage) -> dict[str, Any]:
    """Flatten text parts into the plain string the chat template expects."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                where = f"messages[{i}].content[{j}]"
                raise InvalidRequest(
                    f"{where}: content part type {kind!r} is not supported by this model; it takes text parts only",
                    param=where,
                )
            texts.append(part["text"])
        content = "".join(texts)
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                           "content": content or ""}
    for key in ("name", "tool_call_id", "tool_calls"):
        value = getattr(message, key)
        if value is not None:
            out[key] = value
    return out

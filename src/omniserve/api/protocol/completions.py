"""`POST /v1/completions` request model and its translation to OmniRequests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from omniserve.api.protocol.common import ResponseHead, SamplingFields, Usage, omitted
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniRequest, TokenLogprob


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, description="must equal n: extra candidates are not generated and ranked")

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix: fill-in-the-middle is not supported by this model")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of equal to n is supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be an empty list")
        return self

    def prompts(self) -> list[str | list[int]]:
        """A single prompt, a batch of strings, one token list, or a batch of token lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def to_omni_requests(self, request_id: str, stage: str = "thinker") -> list[OmniRequest]:
        """One request per prompt, each routed to the LLM `stage` alone."""
        prompts = self.prompts()
        if self.echo and any(not isinstance(p, str) for p in prompts):
            raise InvalidRequest("echo is supported for text prompts only", param="echo")
        sampling = self.sampling_params(self.max_tokens or 16, self.logprobs is not None, self.logprobs or 0)
        sampling.prompt_logprobs = self.echo and self.logprobs is not None
        return [
            OmniRequest(request_id=f"{request_id}-{i}", prompt=p, sampling={stage: sampling}, entry=stage)
            for i, p in enumerate(prompts)
        ]


# ---- responses ---------------------------------------------------------------------------------------

class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the prompt's first token (echo)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def of(cls, items: list[TokenLogprob], offset: int) -> CompletionLogprobs:
        """`items` of a text that starts `offset` characters into the choice's text."""
        offsets = []
        for lp in items:
            offsets.append(offset)
            offset += len(lp.token)
        return cls(tokens=[lp.token for lp in items], token_logprobs=[lp.logprob for lp in items],
                   top_logprobs=[{t: v for t, v, _ in lp.top} if lp.logprob is not None else None for lp in items],
                   text_offset=offsets)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(ResponseHead):
    """A completion, and each `data:` event of a streamed one (which ends with `data: [DONE]`)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = omitted()  # in a stream: only on the last event, with stream_options.include_usage

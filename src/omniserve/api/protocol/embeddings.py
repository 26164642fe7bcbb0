"""Request model for `POST /v1/embeddings` (OpenAI, with vLLM/SGLang's `truncate_prompt_tokens`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omniserve.api.protocol.common import merge_extra_body

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
# OpenAI's embedding models: with no embedding model served, the chat model embeds under these names
OPENAI_EMBEDDING_NAMES = ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
# what the validators below check, as the schema says it
Text = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]
TokenId = Annotated[int, Field(json_schema_extra={"minimum": 0})]
_SOME = Field(json_schema_extra={"minItems": 1})
_INPUTS = Field(json_schema_extra={"minItems": 1, "maxItems": MAX_INPUTS})


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: Text | Annotated[list[Text], _INPUTS] | Annotated[list[TokenId], _SOME] \
        | Annotated[list[Annotated[list[TokenId], _SOME]], _INPUTS] = Field(
        description=f"a text, a list of at most {MAX_INPUTS} texts, token ids, or a list of token-id lists (each "
                    "id in the model's vocabulary)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1, json_schema_extra={"not": {"const": 0}})

    _merge_extra_body = model_validator(mode="before")(classmethod(lambda cls, data: merge_extra_body(data)))

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be -1 (the model's limit) or a number of tokens to keep, at least 1")
        return value

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == [] or (isinstance(value, str) and not re.search(r"\S", value)):
            raise ValueError("must not be empty: give a string, a list of strings, or token ids")
        if isinstance(value, list):
            if len(value) > MAX_INPUTS and not isinstance(value[0], int):
                raise ValueError(f"at most {MAX_INPUTS} inputs per request; got {len(value)}")
            empty = next((i for i, item in enumerate(value) if isinstance(item, str | list) and not
                          (re.search(r"\S", item) if isinstance(item, str) else item)), None)
            if empty is not None:
                raise ValueError(f"input[{empty}] is empty; every input must hold some text or token ids")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """A list of texts, or a list of token-id lists."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]


# ---- responses ---------------------------------------------------------------------------------------

class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

"""Request pieces shared by chat and completions, and body parsing.

We parse bodies ourselves (not through FastAPI's signature magic) so every
malformed body becomes a 400 in the OpenAI envelope naming the parameter.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from omniserve.api.protocol.structured import GrammarSpec, check_choice
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import SamplingParams
from omniserve.validation import first_error

M = TypeVar("M", bound=BaseModel)
MAX_BODY_NESTING = 100
_UNION_MEMBERS = {"str", "int", "float", "bool", "dict", "list", "none"}  # pydantic's names in error locations
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


_SOME_TEXT = re.compile(r"\S")


def _not_blank(value: str) -> str:
    if not _SOME_TEXT.search(value):  # as the schema's pattern reads it
        raise ValueError("must not be empty")
    return value


# a prompt or text that must say something (the schema says so too, for clients and fuzzers; the check
# is the validator's, which says it in words)
NonBlankStr = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"}), AfterValidator(_not_blank)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"must not contain a NUL character (at offset {value.index(chr(0))})")
    return value


# text for a model that reads characters, not bytes: something said, and no NUL
TextStr = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"^[^\x00]*[^\s\x00][^\x00]*$"}),
                    AfterValidator(_not_blank), AfterValidator(_no_nul)]


def _json_number(text: str) -> int | float:
    """JSON's 1.0 is the integer 1 (as JSON Schema reads it): an integral number reads as an int, so that a
    strict integer field takes it (a float field takes an int as it is)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def merge_extra_body(data: Any) -> Any:
    """vLLM-Omni's curl examples nest extensions under a literal `extra_body` key: lift them
    to the top level (top-level keys win)."""
    if isinstance(data, dict) and isinstance(data.get("extra_body"), dict):
        data = {**data["extra_body"], **{k: v for k, v in data.items() if k != "extra_body"}}
    return data


class SamplingFields(BaseModel):
    """The OpenAI + SGLang sampling parameters, validated at the edge."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    regex: str | None = None  # SGLang: the output matches this regular expression
    ebnf: str | None = None  # SGLang: the output follows this grammar (GBNF)
    lora_path: str | None = None  # SGLang: the name of a loaded LoRA adapter to answer with

    _merge_extra_body = model_validator(mode="before")(classmethod(lambda cls, data: merge_extra_body(data)))

    @model_validator(mode="after")
    def _check_stop(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError('stream_options: only allowed when stream is true')
        stops = self.stop_list()
        if len(stops) > 16:
            raise ValueError("stop: at most 16 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop: stop sequences must be non-empty strings")
        for key, bias in (self.logit_bias or {}).items():
            if not re.fullmatch(r"-?[0-9]{1,10}", key):
                raise ValueError(f"logit_bias: keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: bias for token {key} must be between -100 and 100")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_params(self, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=self.seed,
            stop=self.stop_list(),
            max_tokens=max_tokens,
            n=self.n,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            ignore_eos=self.ignore_eos,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
        )

    def grammar_spec(self) -> GrammarSpec | None:
        """What the output grammar is built from (`api/grammar.py` builds it), or None for free text."""
        spec = GrammarSpec(self.response_format, self.regex, self.ebnf)
        check_choice(spec)
        return spec if spec.given else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def load_json(raw: bytes | str, what: str = "the request body") -> Any:
    """JSON text -> data, nested no deeper than MAX_BODY_NESTING, or InvalidRequest."""
    too_deep = InvalidRequest(f"{what} nests objects and arrays more than {MAX_BODY_NESTING} levels deep")
    try:
        data = json.loads(raw, parse_float=_json_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if _nesting(data) > MAX_BODY_NESTING:  # what reads it next (schemas, grammars, pickling) recurses too
        raise too_deep
    return data


def parse_body(raw: bytes, model: type[M]) -> M:
    """JSON bytes -> validated model, or InvalidRequest naming the parameter."""
    data = load_json(raw)
    if _SURROGATE_ESCAPE.search(raw):  # JSON can spell a lone UTF-16 surrogate, which is no text at all
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("the request body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff) in a "
                                 "string; send valid Unicode text") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {type(data).__name__}")
    return validate_fields(data, model, strict=True)


def _nesting(data: Any) -> int:
    """How deep objects and arrays nest in `data` (counted without recursion)."""
    deepest, stack = 0, [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return deepest


def validate_fields(data: dict[str, Any], model: type[M], prefix: str = "", strict: bool = False) -> M:
    """A JSON body or form fields -> validated model, or InvalidRequest naming the parameter
    (under `prefix` when the fields sit deeper in the body, e.g. `stage_sampling.talker`).
    `strict`: JSON types as the spec gives them (no "5" for 5, no 0 for false); form fields
    are all text, so they are read leniently."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        loc, message = first_error(exc, deepest=True)
        param = loc_to_param((*prefix.split("."), *loc) if prefix else loc)
        named = re.match(r"^([\w\[\]\.]+): ", message)
        if not param and named:  # model-level checks name their parameter first
            param = named.group(1)
        raise InvalidRequest(f"{param}: {message}" if param and not message.startswith(param) else message,
                             param=param or None) from None


def loc_to_param(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role' (pydantic union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith("function-")
                                        or part in _UNION_MEMBERS):
            continue  # union member names such as 'list[str]'
        else:
            out += f".{part}" if out else part
    return out


# ---- responses: the routes build these, and /openapi.json documents them ------------------------------


def omitted(default: Any = None, **kwargs: Any) -> Any:
    """A response field left out of the JSON while it is None (OpenAI sends no `usage` in most chunks)."""
    return Field(default, exclude_if=lambda value: value is None, **kwargs)


class ResponseHead(BaseModel):
    """What every completion and chunk starts with (its `object` comes with each kind)."""

    id: str
    created: int
    model: str
    system_fingerprint: str


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = omitted()  # with --enable-cache-report

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
        details = PromptTokensDetails(cached_tokens=cached_tokens) if cached_tokens is not None else None
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's envelope."""

    error: ErrorDetail

"""Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` in, `message.tool_calls` out.

Calls are written in the Hermes format that Qwen2.5 and many GGUF chat templates use:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that knows `tools` gets them as they are and renders them its own way. For one
that does not (SmolLM2's), a system message describes the tools and this format, earlier calls
are written back into the assistant turns, and tool results go in `<tool_response>` blocks.
`required` and a named function are enforced by a grammar (one or more call blocks whose JSON
follows the tools' parameter schemas), so even a tiny model's calls parse and validate. `auto`
lets the model choose; calls found in its text become `tool_calls`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omniserve.api.protocol.structured import checked_schema, schema_rules
from omniserve.calls import CALL_CLOSE, CALL_OPEN
from omniserve.errors import InvalidRequest

MAX_PARALLEL_CALLS = 4  # with parallel_tool_calls, a forced answer holds at most this many calls
CALL = re.compile(rf"{re.escape(CALL_OPEN)}\s*(.*?)\s*{re.escape(CALL_CLOSE)}", re.DOTALL)
NO_PARAMETERS = {"type": "object", "properties": {}}


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


def forced_names(tools: list[Tool], choice: Any) -> list[str] | None:
    """The functions the answer must call (`required`: any of them; a named function: that one),
    None when calling is up to the model (`auto`), [] when it must not (`none`)."""
    names = [t.function.name for t in tools]
    if choice is None or choice == "auto":
        return None
    if choice == "none":
        return []
    if choice == "required":
        return names
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise InvalidRequest(f"tool_choice: no tool is named {name!r}; the tools are {', '.join(names)}",
                                 param="tool_choice")
        return [name]
    raise InvalidRequest('tool_choice: must be "none", "auto", "required" or {"type": "function", "function": '
                         '{"name": ...}}', param="tool_choice")


def call_grammar(tools: list[Tool], names: list[str], parallel: bool) -> str:
    """GBNF for one call block (up to MAX_PARALLEL_CALLS with `parallel`) to one of `names`, its
    arguments valid under that function's parameters."""
    options, defs = [], {}
    for i, tool in enumerate(tools):
        if tool.function.name not in names:
            continue
        params = checked_schema(tool.function.parameters or NO_PARAMETERS, f"tools[{i}].function.parameters")
        defs.update(params.get("$defs", {}))
        options.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"const": tool.function.name},
                                       "arguments": {k: v for k, v in params.items() if k != "$defs"}}})
    schema = {"anyOf": options, **({"$defs": defs} if defs else {})}
    more = ' ("\\n" tool-call-block)?' * (MAX_PARALLEL_CALLS - 1) if parallel else ""
    return (f"root ::= tool-call-block{more}\n"  # names the converter does not make from a schema
            'tool-call-block ::= "<tool_call>\\n" tool-call "\\n</tool_call>"\n'
            + schema_rules(schema, "tool-call", "tools", prop_order=["name", "arguments"]))


def system_prompt(tools: list[Tool]) -> str:
    """How a template without tool support learns about the tools (the Hermes wording)."""
    listed = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools)
    return ("You may call one or more functions to assist with the user query. The functions are listed in "
            f"<tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\nFor each function call, return a JSON "
            "object with the function name and arguments within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def call_block(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        pass
    return f"<tool_call>\n{json.dumps({'name': function.get('name'), 'arguments': arguments})}\n</tool_call>"


def plain_messages(messages: list[dict[str, Any]], tools: list[Tool]) -> list[dict[str, Any]]:
    """Messages for a template without tool support: the tools in the system message, calls
    written into the assistant turns, results as user turns with <tool_response> blocks."""
    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        if message["role"] == "assistant" and message.get("tool_calls"):
            text = message["content"] if isinstance(message.get("content"), str) else ""
            message["content"] = "\n".join([text] * bool(text) + [call_block(c) for c in message.pop("tool_calls")])
        elif message["role"] == "tool":
            message = {"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n"
                                                  "</tool_response>"}
        out.append(message)
    if tools:
        prompt = system_prompt(tools)
        if out and out[0]["role"] == "system" and isinstance(out[0]["content"], str):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tool calls itself: arguments as objects, as the
    Hugging Face chat-template convention has them."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function") or {})
                try:
                    function["arguments"] = json.loads(function.get("arguments") or "{}")
                except (TypeError, ValueError, RecursionError):
                    pass
                calls.append({**call, "function": function})
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


def parse_calls(text: str, tools: list[Tool]) -> tuple[str | None, list[dict[str, Any]]]:
    """The text left around the call blocks (None if nothing) and the calls, in OpenAI's shape.
    A block that is not JSON, or names no tool, stays in the text."""
    names = {t.function.name for t in tools}
    calls, kept, last = [], [], 0
    for match in CALL.finditer(text):
        call = _call(match.group(1), names)
        if call is None:
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}})
    content = ("".join(kept) + text[last:]).strip()
    return (content or None) if calls else text, calls


def _call(block: str, names: set[str]) -> dict[str, Any] | None:
    """A call block's JSON, if it calls one of `names` with object arguments."""
    try:
        call = json.loads(block)
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or call.get("name") not in names or not isinstance(call.get("arguments", {}), dict):
        return None
    return call


def malformed_call(text: str, calls: list[dict[str, Any]], cut_short: bool = False) -> str | None:
    """The start of the first call block in `text` that did not become one of `calls` (it is not JSON, names
    no tool, or never ends), if any. `cut_short`: the answer hit its token limit, so a last block that never
    ends was cut, not malformed."""
    starts = [m.start() for m in re.finditer(re.escape(CALL_OPEN), text)]
    if cut_short and starts and CALL_CLOSE not in text[starts[-1]:]:
        starts.pop()
    if len(starts) <= len(calls):
        return None
    parsed = {m.start() for m in CALL.finditer(text) if _call(m.group(1), {c["function"]["name"] for c in calls})}
    return next(text[at:at + 200] for at in starts if at not in parsed)

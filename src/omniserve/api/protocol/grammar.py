"""The GBNF a request's `GrammarSpec` makes: a forced tool call, or the response format, regex
or ebnf. Run out of the server process, by `runtime/grammar.py` (see there why)."""

from __future__ import annotations

from omniserve.api.protocol.structured import GrammarSpec, grammar_for
from omniserve.api.protocol.tools import Tool, call_grammar


def build(spec: GrammarSpec) -> str | None:
    tools = [Tool.model_validate(t) for t in spec.tools]
    if spec.forced:
        return call_grammar(tools, list(spec.forced), spec.parallel)
    if tools:  # the parameter schemas are checked even when the model may answer in text
        call_grammar(tools, [t.function.name for t in tools], False)
    return grammar_for(spec.response_format, spec.regex, spec.ebnf)

"""Preset graph for a plain chat LLM: one `thinker` stage on llama.cpp.

Templating, tokenization and detokenization run inside the thinker's
executor, which owns the vocabulary; the graph stays one hop for text.
"""

from __future__ import annotations

from typing import Any

from omniserve.config import ServerArgs


def text_pipeline(gguf_path: str, settings: ServerArgs) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model_path": gguf_path,
        "threads": settings.resolved_threads(),
        "max_sequences": settings.max_running_requests,
    }
    if settings.context_length:
        args["context_length"] = settings.context_length
    return {
        "stages": [{"name": "thinker", "executor": "llamacpp", "args": args}],
        "edges": [],
        "terminals": ["thinker"],
    }

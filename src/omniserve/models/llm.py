"""Preset graph for a chat LLM with optional speech stages:

    asr(whisper) -> thinker(llamacpp) ⇢ talker(piper)

The thinker does templating, tokenization and detokenization itself (it owns
the vocabulary). `asr` turns audio parts into text before the thinker runs;
`talker` speaks the thinker's text as it streams (⇢: a streaming edge).
Each request picks its route through the graph: a transcription visits
`asr` alone, speech `talker` alone, a voice chat all three.
"""

from __future__ import annotations

from typing import Any

from omniserve.config import ServerArgs
from omniserve.models.speech import SpeechModel


def omni_pipeline(gguf_path: str, settings: ServerArgs, asr: SpeechModel | None,
                  tts: SpeechModel | None) -> dict[str, Any]:
    threads = settings.resolved_threads()
    args: dict[str, Any] = {"model_path": gguf_path, "threads": threads,
                            "max_sequences": settings.max_running_requests}
    if settings.context_length:
        args["context_length"] = settings.context_length
    stages: list[dict[str, Any]] = [{"name": "thinker", "executor": "llamacpp", "args": args}]
    edges: list[dict[str, Any]] = []
    terminals = ["thinker"]
    if asr is not None:
        stages.insert(0, {"name": "asr", "executor": "whisper", "args": {"model_path": asr.path, "threads": threads}})
        edges.append({"src": "asr", "dst": "thinker"})
    if tts is not None and not settings.text_only:
        stages.append({"name": "talker", "executor": "piper",
                       "args": {"model_path": tts.path, "threads": threads}})
        edges.append({"src": "thinker", "dst": "talker", "streaming": True})
        terminals.append("talker")
    return {"stages": stages, "edges": edges, "terminals": terminals}

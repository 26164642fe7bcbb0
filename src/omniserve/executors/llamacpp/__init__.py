"""The LLM stage on llama.cpp: `executor` (the stage: requests in, outputs out), `scheduler` (what
each step decodes, and the prefix cache; pure Python), `runtime` (llama.cpp's ctypes API),
`prompt` (chat templates and image embeddings in the prompt) and `embeddings` (/v1/embeddings from
the chat GGUF)."""

from omniserve.executors.base import EmbeddingParams
from omniserve.executors.llamacpp.executor import LlamaCppArgs, LlamaCppExecutor
from omniserve.executors.llamacpp.runtime import decode_error, forward_llama_log

__all__ = ["EmbeddingParams", "LlamaCppArgs", "LlamaCppExecutor", "decode_error", "forward_llama_log"]

"""A request's prompt as tokens: the chat rendered with the model's own template (tools too, when
the template renders them), raw text or token ids, and a multimodal model's image and audio embeddings
where the template put each item's marker."""

from __future__ import annotations

from omniserve.errors import ContextLengthExceeded, InvalidRequest
from omniserve.executors.llamacpp.runtime import LlamaRuntime
from omniserve.executors.llamacpp.scheduler import MediaBlock
from omniserve.runtime.types import EncodedChunk, OmniRequest

# Where an image's encoder output goes in the rendered prompt (llama.cpp's default media marker).
MEDIA_MARKER = "<__media__>"


class PromptRenderer:
    def __init__(self, runtime: LlamaRuntime, template: str | None):
        self.rt = runtime
        self.template = template or runtime.meta("tokenizer.chat_template")
        self._formatter = None
        if self.template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self.template, eos_token=runtime.eos_text,
                                                  bos_token=runtime.bos_text)

    def tokens(self, request: OmniRequest) -> list[int]:
        """The prompt of a request with no images in it."""
        if request.messages is not None:
            return self.rt.tokenize(self._fitting(self._render(request), "messages"), add_special=False)
        if isinstance(request.prompt, list):
            bad = [t for t in request.prompt if not 0 <= t < self.rt.n_vocab]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{self.rt.n_vocab - 1})",
                                     "prompt")
            return list(request.prompt)
        return self.rt.tokenize(self._fitting(request.prompt or "", "prompt"), add_special=True)

    def tokens_with_media(self, request: OmniRequest, media: list[list[EncodedChunk]]
                          ) -> tuple[list[int], dict[int, MediaBlock]]:
        """The rendered chat with each media item's encoder chunks (in prompt order) where its marker was:
        tokens as they are, embeddings as blocks (their positions hold -1 in the tokens)."""
        pieces = self._render(request).split(MEDIA_MARKER)
        if len(pieces) != len(media) + 1:
            raise InvalidRequest(f"the messages may not contain the text {MEDIA_MARKER!r}", param="messages")
        tokens: list[int] = []
        blocks: dict[int, MediaBlock] = {}
        for piece, chunks in zip(pieces, media + [[]], strict=True):
            tokens += self.rt.tokenize(piece, add_special=False)
            for chunk in chunks:
                if chunk.embd is None:
                    tokens += chunk.tokens
                    continue
                rows = chunk.embd
                if rows.shape[1] != self.rt.n_embd:
                    raise RuntimeError(f"the media encoder's embeddings are {rows.shape[1]} wide; the model takes "
                                       f"{self.rt.n_embd} (is --mmproj for this --model-path?)")
                if not chunk.causal and len(rows) > self.rt.n_batch:
                    raise RuntimeError(f"an image of {len(rows)} embeddings needs n_batch >= {len(rows)} "
                                       "(non-causal)")
                blocks[len(tokens)] = MediaBlock(rows, chunk.causal, chunk.positions, chunk.span)
                tokens += [-1] * len(rows)
        return tokens, blocks

    def _render(self, request: OmniRequest) -> str:
        if self._formatter is None:
            raise InvalidRequest(
                "this model has no chat template in its GGUF metadata; use /v1/completions", param="messages"
            )
        try:
            return self._formatter(messages=request.messages, tools=request.tools).prompt
        except Exception as exc:  # a template may raise on role order etc.
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from None

    def _fitting(self, text: str, param: str) -> str:
        """`text`, unless it is too long for the context however it tokenizes (checked before
        tokenizing it: a 30 MB prompt would take the worker half a minute)."""
        fewest = -(-len(text.encode("utf-8", "surrogatepass")) // self.rt.max_piece_bytes)
        if fewest >= self.rt.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.rt.context_length} tokens, but the {param} has at "
                f"least {fewest} tokens ({len(text)} characters). Shorten the {param}.", param=param)
        return text

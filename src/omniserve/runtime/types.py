"""The one request type and the one output type that flow through the pipeline.

OpenAI shapes never reach this layer: routes translate into `OmniRequest`
and out of `OmniOutput`. Both are plain dataclasses so they pickle cheaply
across the worker pipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # None: up to the context window
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # also the prompt tokens' logprobs (completions' echo with logprobs)
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF the output must follow (structured output)
    lora: str | None = None  # the LoRA adapter to decode with (None: the base model)


@dataclass
class OmniRequest:
    request_id: str
    # Exactly one of `messages` (chat, rendered with the model's template) and
    # `prompt` (raw text or token ids) is set.
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    sampling: dict[str, SamplingParams] = field(default_factory=dict)  # per stage name
    output_modalities: list[str] = field(default_factory=lambda: ["text"])  # text, audio, image, video, embedding
    # Decoded media inputs; message parts refer to them by index. Audio: mono float32
    # at 16 kHz. Images (photos and sampled video frames): RGB uint8 arrays.
    audios: list[Any] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    # Executor-specific settings per stage name (voice, speed, language, task, ...), as the API derived them.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The caller's own settings per stage (sglang-omni's `stage_sampling`): the runtime checks them against
    # each stage's params model and puts them under `params` (runtime/routing.py).
    stage_sampling: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The stage a request to the model it names enters (`ServedModel.entry`); the runtime plans the rest of its
    # route from the graph, its media and its `output_modalities` (runtime/routing.py).
    entry: str = field(kw_only=True)
    # The stage that makes an output kind, where several could (two voice models after the thinker):
    # kind -> stage name. A kind not named goes to the nearest stage that makes it.
    makers: dict[str, str] = field(default_factory=dict)
    progress: bool = False  # every stage on the route reports to the caller (a long job's progress)
    # The kind of traffic it is ("realtime", or "" for HTTP): when slots are short, kinds take turns, so that
    # one kind does not starve another (runtime/admission.py).
    lane: str = ""
    # Function tools for a chat template that renders them itself (OpenAI's `tools` entries).
    tools: list[dict[str, Any]] | None = None

    def sampling_for(self, stage: str) -> SamplingParams:
        return self.sampling.get(stage) or SamplingParams()

    def params_for(self, stage: str) -> dict[str, Any]:
        return self.params.get(stage) or {}


# ---- media placeholders in messages ---------------------------------------------------
# A media part of a chat message becomes a placeholder pointing into `OmniRequest.audios`
# or `.images`. An upstream stage (speech to text, image description) turns each item
# into text, and `fill_media_parts` puts that text where the item was.

MEDIA_PART_TYPES = ("audio", "image", "video")


def audio_part(index: int) -> dict[str, Any]:
    return {"type": "audio", "audio_index": index}


def image_part(index: int) -> dict[str, Any]:
    return {"type": "image", "image_index": index}


def video_part(frames: list[int], timestamps: list[float], duration: float,
               audio_index: int | None) -> dict[str, Any]:
    """A video: its sampled frames (indices into `images`) with their times, and its sound, if kept."""
    return {"type": "video", "frames": frames, "timestamps": timestamps, "duration": duration,
            "audio_index": audio_index}


def media_kinds(messages: list[dict[str, Any]] | None) -> set[str]:
    """The kinds of upstream text a request's messages wait for: "audio" and/or "image"."""
    kinds = set()
    for message in messages or []:
        for part in message["content"] if isinstance(message.get("content"), list) else []:
            if part.get("type") == "audio":
                kinds.add("audio")
            elif part.get("type") == "image":
                kinds.add("image")
            elif part.get("type") == "video":
                kinds.add("image")
                if part["audio_index"] is not None:
                    kinds.add("audio")
    return kinds


def media_order(messages: list[dict[str, Any]] | None, kinds: set[str]) -> list[tuple[str, int]]:
    """The items of `kinds` ("audio", "image") in the order `fill_media_parts` puts their markers in: each
    part's, a video's frames and then its sound track."""
    order: list[tuple[str, int]] = []
    for message in messages or []:
        for part in message["content"] if isinstance(message.get("content"), list) else []:
            kind = part.get("type")
            if kind in ("audio", "image") and kind in kinds:
                order.append((kind, part[f"{kind}_index"]))
            elif kind == "video":
                order += [("image", i) for i in part["frames"]] if "image" in kinds else []
                if part["audio_index"] is not None and "audio" in kinds:
                    order.append(("audio", part["audio_index"]))
    return order


def fill_media_parts(messages: list[dict[str, Any]], texts: dict[tuple[str, int], str],
                     markers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Replace media placeholders with the text the upstream stages made of them
    (`texts[(kind, index)]`), keeping the order of parts, and flatten each message's
    parts into the one string a chat template expects. A kind in `markers` becomes its marker
    instead, where a multimodal model's own encoder output will go."""
    markers = markers or {}

    def item(kind: str, index: int) -> str:
        return markers[kind] if kind in markers else texts.get((kind, index), "").strip()

    def render(part: dict[str, Any]) -> str:
        kind = part.get("type")
        if kind == "audio":
            return item("audio", part["audio_index"])
        if kind == "image":
            return item("image", part["image_index"]) if "image" in markers else \
                f"[Image: {item('image', part['image_index'])}]"
        if kind == "video":
            frames = "; ".join(f"at {t:g} s, {item('image', i)}"
                               for i, t in zip(part["frames"], part["timestamps"], strict=True))
            out = f"[Video, {part['duration']:.1f} s long. Frames in time order: {frames}."
            if part["audio_index"] is not None:
                sound = item("audio", part["audio_index"])
                out += f" Its audio track: {sound}" if "audio" in markers else f' Its audio track says: "{sound}"'
            return out + "]"
        return part["text"]

    bare = set(markers.values())

    def join(pieces: list[str]) -> str:
        """Parts join with a space, but a bare marker touches its neighbours: the model's own wrapping tokens
        set the item apart, as its chat template puts them (Qwen's concatenate the parts)."""
        text, after_marker = "", True
        for piece in filter(None, pieces):
            text += ("" if after_marker or piece in bare else " ") + piece
            after_marker = piece in bare
        return text

    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": join([render(p) for p in content])}
        out.append(message)
    return out


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None: the prompt's first token, which nothing predicts
    token_bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


# ---- what an output carries besides text and audio --------------------------------------------


@dataclass
class EncodedChunk:
    """A piece of one media item as a multimodal thinker decodes it (libmtmd's chunks): the model's wrapping
    tokens, or a block of projected embeddings (an image's, or a 30 s window of audio)."""

    tokens: list[int] = field(default_factory=list)
    embd: Any = None  # (n, n_embd) float32 rows, or None for a chunk of tokens
    causal: bool = True  # False: the block's rows attend to each other both ways (decoded in one batch)
    # M-RoPE models (Qwen2-VL family, Qwen-Omni): each row's (t, y, x, z) positions, as offsets from the block's
    # first position, shape (4, n); an image's grid takes max(rows, columns) positions, fewer than its rows
    positions: Any = None
    span: int = 0  # positions the block takes in the sequence (text after it starts that far on)


@dataclass
class MediaReading:
    """An upstream stage's reading of one media item of a request (the output's `index`), for the stage
    waiting for it: a transcript, an image description, or a vision encoder's tokens and embeddings."""

    kind: Literal["audio", "image"]
    text: str = ""
    chunks: list[EncodedChunk] | None = None  # a multimodal model's own encoding of the item, in order
    language: str | None = None  # speech: the language heard
    duration: float | None = None  # speech: seconds of audio


@dataclass
class Embeddings:
    indices: list[int]  # the request's inputs these rows embed
    vectors: Any  # float32 array, one unit-length row per input


@dataclass
class GeneratedImage:
    image: Any  # RGB uint8 array
    revised_prompt: str | None = None


@dataclass
class VideoFrames:
    frames: Any  # (frames, height, width, 3) uint8 array


OutputData = MediaReading | Embeddings | GeneratedImage | VideoFrames


@dataclass(frozen=True)
class PayloadRef:
    """A payload left with the worker that made it (`holder`, a Ray actor's name), for the stage that reads it to
    fetch through Ray's object store: large tensors do not pass through the coordinator."""

    holder: str
    key: str
    nbytes: int


@dataclass
class OmniOutput:
    """An increment of one choice (`index`) of one request from one stage.

    `started` marks the first output of a request: it carries the prompt size
    and tells the route that validation passed, before any text exists.
    `finish_reason` closes a choice; `done` closes the whole request at that stage.
    """

    request_id: str
    stage: str = ""
    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # once per request, before its first token
    finish_reason: str | None = None
    started: bool = False
    done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Speech out: 16-bit mono PCM at `sample_rate`.
    audio: bytes = b""
    sample_rate: int = 0
    # Speech in: timed segments {start, end, text, ...}.
    segments: list[dict[str, Any]] = field(default_factory=list)
    data: OutputData | None = None  # what the output carries besides text and audio
    progress: int | None = None  # percent of a long job done (an image's denoising, a video's frames)
    # For the downstream stages only (hidden states, codec codes); the caller never sees it. On Ray, a large
    # one travels as a `PayloadRef`.
    payload: Any = None

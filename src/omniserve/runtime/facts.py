"""What a stage tells about its model when it loads: one typed record for every executor, so the API reads
`facts.sample_rate` without caring which executor spoke. It crosses the worker pipe and Ray, so it is a
frozen pydantic model (it pickles); `/get_model_info` shows it as each stage's `info`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_serializer

MediaKind = Literal["audio", "image", "video"]
ImageTask = Literal["T2I", "TI2I", "T2V", "TI2V"]  # SGLang Diffusion's names: text/text+image to image/video


class VoiceDetail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    language: str | None = None  # BCP 47
    gender: Literal["female", "male"] | None = None


class StageFacts(BaseModel):
    """Every fact is optional: an executor sets those that apply to it, and only those show in the JSON (a fact
    it set to None shows as null)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # every executor
    model_path: str | None = None
    device: str | None = None
    dtype: str | None = None
    # where it runs: the worker adds its pid, the Ray backend its node
    pid: int | None = None
    node: str | None = None
    node_ip: str | None = None
    # a chat model (a GGUF, or an omni checkpoint's thinker)
    context_length: int | None = None
    trained_context_length: int | None = None
    max_sequences: int | None = None
    n_vocab: int | None = None
    loras: dict[str, str] | None = None  # the adapters loaded at start, name -> path
    has_chat_template: bool | None = None
    template_tools: bool | None = None  # its template renders OpenAI tools itself
    architecture: str | None = None
    name: str | None = None
    native_media: list[MediaKind] | None = None  # what it reads as its own embeddings
    family: str | None = None  # an omni checkpoint's stages
    mem_fraction: float | None = None
    # embeddings (of texts, or of a speaker's voice)
    dimensions: int | None = None
    speaker_embeddings: bool | None = None
    # vision: a --mmproj projector, or the describer
    media: list[MediaKind] | None = None
    n_embd: int | None = None
    labels: int | None = None
    ocr: bool | None = None
    # speech to text
    multilingual: bool | None = None
    # speech
    sample_rate: int | None = None
    voices: list[str] | None = None  # its default first
    voice_details: dict[str, VoiceDetail] | None = None
    openai_voices: dict[str, str] | None = None  # OpenAI's voice names -> its own
    blends: bool | None = None
    clones: bool | None = None
    languages: list[str] | None = None
    code_groups: int | None = None
    chunk_frames: int | None = None
    max_chunk_frames: int | None = None
    left_context_frames: int | None = None
    right_context_frames: int | None = None
    # images and videos
    pipeline_name: str | None = None
    pipeline_class: str | None = None
    task_type: ImageTask | None = None
    tasks: list[ImageTask] | None = None
    edits: bool | None = None
    videos: bool | None = None
    lora: bool | None = None  # takes LoRA adapters (a diffusers denoiser)
    categories: list[str] | None = None  # what sketch-rnn draws

    @model_serializer(mode="wrap")
    def _told(self, handler: Any):  # no return type: the JSON schema stays the fields'
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def with_facts(self, other: StageFacts, names: list[str]) -> StageFacts:
        """These facts, with `names` taken from `other` (a served model's facts that another stage knows)."""
        return self.model_copy(update={name: getattr(other, name) for name in names if name in other.model_fields_set})

"""Request models of the LoRA routes: the chat model's (SGLang's and vLLM's `load_lora_adapter`)
and the image model's (SGLang Diffusion's `set_lora`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lora_path: str


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str


class SetLoraRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    lora_nickname: str | list[str]
    lora_path: str | list[str] | None = None
    target: str | list[str] = "all"
    strength: float | list[float] = 1.0


class LoraNameRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None

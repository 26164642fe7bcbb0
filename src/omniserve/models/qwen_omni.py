"""Qwen-Omni checkpoints (Hugging Face folders) as thinker ⇢ talker ⇢ code2wav stages:

    thinker (audio + vision encoders + LLM) ⇢ talker (+ code predictor) ⇢ code2wav

The family comes from `config.json` (`architectures`). This module only reads
files: it runs in the API process, which never imports torch. The stages load
their parts of the weights themselves (`executors/qwen_omni/`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniserve.errors import ConfigError
from omniserve.models.speech import TTS_OPENAI_NAMES

OMNI_EXTRA = "pip install 'omniserve[omni]' (torch, torchvision and transformers)"


@dataclass(frozen=True)
class Family:
    """What differs between Qwen-Omni generations: their classes and where their parts' settings live."""

    name: str
    config_class: str
    processor_class: str
    thinker: tuple[str, str, str]  # (class, sub-config attribute, weight prefix)
    talker: tuple[str, str, str]
    code2wav: tuple[str, str, str]
    sample_rate: int
    default_voice: str
    executors: tuple[str, str, str]  # the executors of its thinker, talker and code2wav stages


FAMILIES = {
    "Qwen2_5OmniForConditionalGeneration": Family(
        "qwen2_5_omni", "Qwen2_5OmniConfig", "Qwen2_5OmniProcessor",
        thinker=("Qwen2_5OmniThinkerForConditionalGeneration", "thinker_config", "thinker"),
        talker=("Qwen2_5OmniTalkerForConditionalGeneration", "talker_config", "talker"),
        code2wav=("Qwen2_5OmniToken2WavModel", "token2wav_config", "token2wav"),
        sample_rate=24000, default_voice="Chelsie",
        executors=("qwen_omni_thinker", "qwen_omni_talker", "qwen_omni_code2wav")),
    "Qwen3OmniMoeForConditionalGeneration": Family(
        "qwen3_omni_moe", "Qwen3OmniMoeConfig", "Qwen3OmniMoeProcessor",
        thinker=("Qwen3OmniMoeThinkerForConditionalGeneration", "thinker_config", "thinker"),
        talker=("Qwen3OmniMoeTalkerForConditionalGeneration", "talker_config", "talker"),
        code2wav=("Qwen3OmniMoeCode2Wav", "code2wav_config", "code2wav"),
        sample_rate=24000, default_voice="Ethan",
        executors=("qwen_omni_thinker", "qwen3_omni_talker", "qwen3_omni_code2wav")),
}
THINKER, TALKER, CODE2WAV = STAGES = ("thinker", "talker", "code2wav")
# Qwen2.5-Omni speaks only with this system prompt (its model card says so); a chat without one gets it.
QWEN_SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                      "perceiving auditory and visual inputs, as well as generating text and speech.")


@dataclass(frozen=True)
class OmniCheckpoint:
    path: Path
    family: Family
    config: dict[str, Any]

    @property
    def quantization(self) -> str | None:
        quant = self.config.get("quantization_config") or {}
        return quant.get("quant_method")


def is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and not Path(spec).exists()


def find_checkpoint(spec: str | None) -> OmniCheckpoint | None:
    """The Qwen-Omni checkpoint `--model-path` names, or None when it names something else (a GGUF, an
    alias). A folder with a config.json of another architecture, or a hub id not in the local cache,
    is a ConfigError."""
    if not spec:
        return None
    folder = Path(spec).expanduser()
    if not folder.is_dir() and is_hub_id(spec):
        folder = _cached_snapshot(spec)
    if not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--model-path {spec}: config.json is not readable JSON ({exc})") from None
    architectures = config.get("architectures") or []
    family = next((FAMILIES[a] for a in architectures if a in FAMILIES), None)
    if family is None:
        if any(folder.glob("*.gguf")):
            return None  # a GGUF folder that also holds a config.json
        known = ", ".join(FAMILIES)
        raise ConfigError(f"--model-path {spec}: unsupported architecture {architectures or config.get('model_type')}"
                          f"; omniserve serves Hugging Face folders of {known}, or GGUF files")
    checkpoint = OmniCheckpoint(folder.resolve(), family, config)
    _check_files(checkpoint, spec)
    return checkpoint


def _cached_snapshot(repo_id: str) -> Path:
    """The local Hugging Face cache's copy of a hub model; no download is tried."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ConfigError(f"--model-path {repo_id}: serving a Hugging Face checkpoint needs {OMNI_EXTRA}") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ConfigError(f"--model-path {repo_id}: not in the local Hugging Face cache ({HF_HUB_CACHE}) and "
                          "omniserve does not download; fetch it first (huggingface-cli download "
                          f"{repo_id}) or pass the folder that holds config.json and the weights") from None


def _check_files(checkpoint: OmniCheckpoint, spec: str) -> None:
    """Every weight file the index names is there, and the tokenizer and processor files too."""
    folder = checkpoint.path
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    else:
        shards = ["model.safetensors"]
    missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--model-path {spec}: weight file {missing[0]} is missing from {folder}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for needed in (("tokenizer.json", "vocab.json"), ("preprocessor_config.json", "processor_config.json")):
        if not any((folder / name).is_file() for name in needed):
            raise ConfigError(f"--model-path {spec}: {needed[0]} is missing from {folder}")


def cuda_device_count() -> int:
    """GPUs this process may use, counted without torch (the API process never imports it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def omni_stages(checkpoint: OmniCheckpoint, settings, ids: list[str]) -> dict[str, Any]:
    """The preset graph: thinker ⇢ talker ⇢ code2wav (the thinker alone with --text-only). The model
    answers to `ids` for chat, and for speech through all three stages."""
    devices = {"thinker": settings.gpu_thinker, "talker": settings.gpu_talker, "code2wav": settings.gpu_code2wav}
    count = None
    for name, index in devices.items():
        if index is not None:
            count = cuda_device_count() if count is None else count
            if index >= count:
                raise ConfigError(f"--gpu-{name} {index}: no such CUDA device (this machine has {count})")
    speaks = checkpoint.config.get("enable_audio_output", True)
    names = list(STAGES) if speaks and not settings.text_only else [THINKER]
    group = "omni" if settings.colocate else None
    # On a CPU the three stages run at once: each takes half the threads (torch's spinning threads in three
    # processes, each with all cores, made the tiny checkpoint's thinker 5x slower on 2 cores)
    threads = max(1, settings.resolved_threads() // 2)
    stages = []
    for name in names:
        args: dict[str, Any] = {"model_path": str(checkpoint.path), "dtype": settings.dtype, "threads": threads}
        if name != "code2wav":
            args["mem_fraction"] = settings.stage_mem_fraction(name)
        if name == "thinker" and settings.context_length:
            args["context_length"] = settings.context_length
        placement: dict[str, Any] = {"process_group": group}
        if devices[name] is not None:  # else the executor's own default (auto), or the YAML's args.device
            placement["device"] = f"cuda:{devices[name]}"
        executor = checkpoint.family.executors[STAGES.index(name)]
        stages.append({"name": name, "executor": executor, "args": args, "placement": placement})
    stages[0]["serves"] = [{"ids": ids, "kind": "chat"}]
    if len(names) > 1:  # the last stage speaks for all three: /v1/audio/speech, and voices from the talker
        stages[-1]["serves"] = [{"ids": ids, "kind": "tts", "aliases": list(TTS_OPENAI_NAMES), "entry": names[0],
                                 "facts_from": {TALKER: ["voices"]}}]
    edges = [{"src": a, "dst": b, "streaming": True} for a, b in zip(names, names[1:], strict=False)]
    return {"stages": stages, "edges": edges}

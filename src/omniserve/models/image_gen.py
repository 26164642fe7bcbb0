"""Image generation models: `--image-model KIND:PATH`.

`sketch-rnn:<dir>` is Magenta's sketch-rnn (Quick, Draw! categories; numpy
only). `diffusers:<dir>` is a diffusers pipeline folder, UNet (Stable
Diffusion, SD-Turbo) or Wan text-to-video, run as text encoder -> denoiser ->
VAE stages. No
image-generation model ships in a package registry, so there is no default:
point the flag at the weights (see the README for where to get them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omniserve.errors import ConfigError
from omniserve.models.diffusion_families import family_of

# kind -> (executor, served id)
KINDS = {"sketch-rnn": ("sketch_rnn", "sketch-rnn"), "diffusers": ("diffusers", None)}
DIFFUSION_STAGES = ("image_text_encoder", "image_denoiser", "image_vae")


@dataclass(frozen=True)
class ImageModel:
    id: str
    executor: str
    path: str


def resolve_image_model(spec: str | None) -> ImageModel | None:
    if not spec or spec.lower() == "none":
        return None
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS:
        raise ConfigError(f"--image-model {spec}: use KIND:PATH with KIND one of {', '.join(KINDS)} "
                          "(e.g. sketch-rnn:/models/sketch-rnn-quickdraw), or none")
    folder = Path(path).expanduser()
    executor, served_id = KINDS[kind]
    if executor == "diffusers":
        try:
            family_of(folder)
        except ConfigError as exc:
            raise ConfigError(f"--image-model {spec}: {exc}") from None
    elif not folder.is_dir() or not any(folder.glob("*.gen.json")):
        raise ConfigError(f"--image-model {spec}: {folder} is not a folder of sketch-rnn *.gen.json files")
    return ImageModel(served_id or folder.resolve().name, executor, str(folder.resolve()))

"""What differs between diffusers pipeline families, for the three diffusion stages.

The stages (`executors/diffusers_stages.py`) share one loop: the pipeline's own
`encode_prompt`, then a scheduler loop over the denoiser, then the VAE. A family
says which component denoises, the shape of the latents, what one batched
denoiser call looks like and how latents become frames. `UNetFamily` follows
diffusers' `StableDiffusionPipeline` (SD 1.x/2.x, SD-Turbo); `WanFamily` follows
`WanPipeline` (Wan 2.1 text-to-video, and its one-frame images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from omniserve.errors import ConfigError


class UNetFamily:
    denoiser: ClassVar[str] = "unet"
    videos: ClassVar[bool] = False

    def __init__(self, folder: Path, index: dict[str, Any]):
        vae = json.loads((folder / "vae" / "config.json").read_text())
        self.scale = 2 ** (len(vae["block_out_channels"]) - 1)
        self.multiple = self.scale  # what width and height must be divisible by

    def frames(self, requested: int) -> int:
        return 1

    def latent_shape(self, model, n: int, height: int, width: int, frames: int) -> tuple[int, ...]:
        return (n, model.config.in_channels, height // self.scale, width // self.scale)

    def first_latents(self, noise, scheduler):
        return noise * scheduler.init_noise_sigma

    def model_input(self, scheduler, rows, t):
        """One job's rows (its latents, doubled for guidance) at step t -> (model input, timesteps)."""
        return scheduler.scale_model_input(rows, t), t.repeat(len(rows))

    def predict_batch(self, model, inputs: list, times: list, contexts: list):
        """The predicted noise for the jobs' rows, in one model call."""
        import torch

        return model(torch.cat(inputs), torch.cat(times), encoder_hidden_states=torch.cat(contexts)).sample

    def decode(self, vae, latents):
        """Latents of one item (1, C, h, w) -> pixels (frames, 3, H, W) in [-1, 1]."""
        return vae.decode(latents / vae.config.scaling_factor).sample


class WanFamily:
    denoiser: ClassVar[str] = "transformer"
    videos: ClassVar[bool] = True

    def __init__(self, folder: Path, index: dict[str, Any]):
        if (index.get("transformer_2") or [None])[0] is not None:
            raise ConfigError(f"{folder}: Wan 2.2 pipelines with two transformers are not supported yet")
        vae = json.loads((folder / "vae" / "config.json").read_text())
        self.scale = 2 ** len(vae["temperal_downsample"])
        self.temporal = 2 ** sum(vae["temperal_downsample"])
        patch = json.loads((folder / "transformer" / "config.json").read_text())["patch_size"]
        self.multiple = self.scale * patch[1]
        self.expand_timesteps = bool(index.get("expand_timesteps"))

    def frames(self, requested: int) -> int:
        """Wan makes 4k + 1 frames (as WanPipeline rounds them)."""
        return requested // self.temporal * self.temporal + 1 if requested > 1 else 1

    def latent_shape(self, model, n: int, height: int, width: int, frames: int) -> tuple[int, ...]:
        return (n, model.config.in_channels, (frames - 1) // self.temporal + 1, height // self.scale,
                width // self.scale)

    def first_latents(self, noise, scheduler):
        return noise

    def model_input(self, scheduler, rows, t):
        if self.expand_timesteps:  # one timestep per 2x2 latent patch, as WanPipeline gives them
            tokens = rows.shape[2] * (rows.shape[3] // 2) * (rows.shape[4] // 2)
            return rows, t.repeat(len(rows), tokens)
        return rows, t.repeat(len(rows))

    def predict_batch(self, model, inputs: list, times: list, contexts: list):
        import torch

        return model(hidden_states=torch.cat(inputs), timestep=torch.cat(times),
                     encoder_hidden_states=torch.cat(contexts), return_dict=False)[0]

    def decode(self, vae, latents):
        """Latents of one item (1, C, f, h, w) -> pixels (frames, 3, H, W) in [-1, 1]."""
        import torch

        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape)
        std = torch.tensor(vae.config.latents_std).view(shape)
        return vae.decode(latents * std + mean).sample[0].transpose(0, 1)


TRANSFORMERS = {"WanTransformer3DModel": WanFamily}


def family_of(folder: str | Path) -> UNetFamily | WanFamily:
    """The family of a diffusers pipeline folder, from its `model_index.json`; a ConfigError
    that names what is supported otherwise."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads(index_file.read_text())
    if (folder / "unet").is_dir():
        return UNetFamily(folder, index)
    transformer = (index.get("transformer") or [None, None])[1]
    if transformer in TRANSFORMERS:
        return TRANSFORMERS[transformer](folder, index)
    raise ConfigError(f"{folder}: the {index.get('_class_name')} pipeline is not supported; omniserve runs "
                      "UNet pipelines (Stable Diffusion, SD-Turbo) and Wan text-to-video (WanTransformer3DModel)")

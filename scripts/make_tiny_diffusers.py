#!/usr/bin/env python3
"""Build a tiny random-weight Stable-Diffusion-style diffusers pipeline, fully offline.

    python scripts/make_tiny_diffusers.py OUT_DIR [--lora LORA_DIR] [--wan WAN_DIR [--wan-lora DIR]]

OUT_DIR gets a `StableDiffusionPipeline` folder (`model_index.json`, `unet/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) small enough to run in
well under a second on a CPU: a 2-block UNet, a 1-block VAE and a 2-layer CLIP
text encoder, with a character-level CLIP tokenizer written here (no hub).
Its images are noise; the tests use it to check the mechanics of the diffusers
stages. `--lora` also writes a tiny rank-4 LoRA for its UNet (peft), saved the
way diffusers' `load_lora_weights` reads it. `--wan` also writes a tiny
`WanPipeline` (text-to-video: a 2-layer UMT5 encoder with a character-level
Unigram tokenizer, a 2-layer WanTransformer3DModel and a small 3-D VAE), shaped
like the one in diffusers' own tests, and `--wan-lora` a LoRA for its transformer. Seeded, so a rebuild is the same.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path


def tokenizer_files(folder: Path) -> None:
    """A CLIP BPE tokenizer over single characters: every printable character is a token, no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer_files(out / "_tok")
    tokenizer = CLIPTokenizer(str(out / "_tok" / "vocab.json"), str(out / "_tok" / "merges.txt"), model_max_length=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)
    for leftover in (out / "_tok").iterdir():
        leftover.unlink()
    (out / "_tok").rmdir()


def build_wan(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    letters = string.ascii_lowercase + string.digits + string.punctuation
    pieces = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in letters]
              + [("\u2581" + c, -2.5) for c in string.ascii_lowercase])
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    tokenizer = T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)).save_pretrained(out)


def build_lora(model: Path, out: Path, denoiser: str = "unet") -> None:
    """A rank-4 LoRA for the pipeline's denoiser (`unet`, or a Wan `transformer`), saved the way
    the pipeline's `save_lora_weights` writes it."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    index = json.loads((model / "model_index.json").read_text())
    torch.manual_seed(1)
    component = getattr(diffusers, index[denoiser][1]).from_pretrained(model, subfolder=denoiser)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    if denoiser == "transformer":  # the tiny Wan's attention barely moves its output; its projections do
        targets += ["ffn.net.0.proj", "ffn.net.2", "proj_out"]
    component.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=targets))
    with torch.no_grad():  # gaussian init leaves lora_B at zero; make the adapter change something
        for name, param in component.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    getattr(diffusers, index["_class_name"]).save_lora_weights(
        out, **{f"{denoiser}_lora_layers": get_peft_model_state_dict(component)}, safe_serialization=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--lora", help="also write a tiny LoRA for the UNet here")
    parser.add_argument("--wan", help="also write a tiny Wan text-to-video pipeline here")
    parser.add_argument("--wan-lora", help="and a tiny LoRA for its transformer here (needs --wan)")
    args = parser.parse_args()
    out = Path(args.out)
    if not (out / "model_index.json").is_file():
        build(out)
    if args.lora and not (Path(args.lora) / "pytorch_lora_weights.safetensors").is_file():
        build_lora(out, Path(args.lora))
    if args.wan and not (Path(args.wan) / "model_index.json").is_file():
        build_wan(Path(args.wan))
    if args.wan_lora and not (Path(args.wan_lora) / "pytorch_lora_weights.safetensors").is_file():
        build_lora(Path(args.wan), Path(args.wan_lora), "transformer")
    return 0


if __name__ == "__main__":
    sys.exit(main())

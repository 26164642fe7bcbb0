#!/usr/bin/env python3
"""Build tiny random-weight Qwen-Omni checkpoints, fully offline, shaped like the real ones
(config.json, model.safetensors, tokenizer and processor files, generation_config.json, and
for Qwen2.5-Omni the speakers in spk_dict.pt), so that `omniserve serve --model-path DIR`
and transformers' own `from_pretrained` load them the same way as a hub download.

Usage:
    python make_tiny_omni.py OUT_DIR [--family qwen2_5_omni] [--width tiny|0.5b] [--force]

`--width 0.5b` gives the Qwen2.5-Omni thinker's language model the shape of a 0.5B-class one (Qwen2.5-0.5B:
24 layers of 896, 14 heads, 2 KV heads), the rest staying tiny: for benchmarks of the decode loop
(`bench/bench_omni_decode.py`), not for tests.

The tokenizer is a byte-level BPE trained here on a few paragraphs of English, with the
special tokens the Qwen-Omni processors look for. The model's answers are noise: tests
compare the server with transformers on the same weights, not with sense.

The talker's audio decoder is kept local on purpose: its DiT attends within blocks only
(no look-ahead or look-back layers), so decoding in chunks with a little left and right
context gives the same waveform as decoding all at once, which lets tests compare the
server's streamed audio with transformers' whole-answer `generate(return_audio=True)`.

Idempotent: a stamp with the build parameters means nothing is done.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from tiny_build import build_once

VERSION = 3
SEED = 0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
            "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<tts_pad>",
            "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>"]
# the name each Qwen-Omni processor reads from the tokenizer -> its token
TOKEN_ROLES = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
               "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
               "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}
SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                 "auditory and visual inputs, as well as generating text and speech.")
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = """
The quick brown fox jumps over the lazy dog. A small model speaks, listens and looks at pictures.
Hello, how are you today? I am fine, thank you. What do you see in this image? I hear a voice.
Omni models take text, images, audio and video in, and give text and speech out. The thinker
writes the answer; the talker turns it into sound, one frame after another, while it is written.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Colors: red, green, blue, yellow, black, white.
Once upon a time there was a cat who sat on a mat and watched the birds in the garden.
The weather is sunny with a light breeze; tomorrow it may rain in the afternoon.
"""



def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([CORPUS] * 4, trainer)
    tok = Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None, extra_special_tokens=TOKEN_ROLES)
    tok.add_tokens(["system", "user", "assistant"])  # one token each, as in Qwen's vocabulary
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


def ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}


# the thinker language model's shape: hidden, intermediate, layers, heads, KV heads, M-RoPE sections (of head/2)
TEXT_SHAPES = {"tiny": (32, 64, 2, 4, 2, [2, 1, 1]), "0.5b": (896, 4864, 24, 14, 2, [8, 12, 12])}


def qwen2_5_config(tok, width: str = "tiny"):
    from transformers import Qwen2_5OmniConfig

    i = ids(tok)
    vocab = len(tok)
    hidden, intermediate, layers, heads, kv_heads, sections = TEXT_SHAPES[width]
    thinker = {
        "audio_config": {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                         "d_model": 16, "max_source_positions": 1500, "n_window": 50, "output_dim": hidden},
        "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 14,
                          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                          "out_hidden_size": hidden, "fullatt_block_indexes": [0]},
        "text_config": {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
                        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                        "max_position_embeddings": 4096,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": sections},
                        "eos_token_id": i["<|im_end|>"], "pad_token_id": i["<|endoftext|>"],
                        "tie_word_embeddings": False},
        "audio_token_index": i["<|AUDIO|>"], "image_token_index": i["<|IMAGE|>"],
        "video_token_index": i["<|VIDEO|>"], "audio_start_token_id": i["<|audio_bos|>"],
        "audio_end_token_id": i["<|audio_eos|>"], "user_token_id": tok.convert_tokens_to_ids("user"),
        "vision_start_token_id": i["<|vision_bos|>"], "vision_end_token_id": i["<|vision_eos|>"],
        "position_id_per_seconds": 25, "seconds_per_chunk": 2,
    }
    codec = 64  # codec tokens 0..59, then pad, start, end, mask
    talker = {
        "vocab_size": codec, "tts_codec_pad_token_id": 60, "tts_codec_start_token_id": 61,
        "tts_codec_end_token_id": 62, "tts_codec_mask_token_id": 63,
        "tts_text_start_token_id": i["<tts_text_bos>"], "tts_text_end_token_id": i["<tts_text_eod>"],
        "tts_text_pad_token_id": i["<tts_pad>"],
        "audio_token_index": i["<|AUDIO|>"], "image_token_index": i["<|IMAGE|>"],
        "video_token_index": i["<|VIDEO|>"], "vision_start_token_id": i["<|vision_bos|>"],
        "vision_end_token_id": i["<|vision_eos|>"], "audio_start_token_id": i["<|audio_bos|>"],
        "audio_end_token_id": i["<|audio_eos|>"],
        "embedding_size": hidden, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    }
    token2wav = {
        "dit_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ff_mult": 2,
                       "emb_dim": 16, "head_dim": 16, "max_position_embeddings": 32768, "block_size": 8,
                       "look_ahead_layers": [], "look_backward_layers": [], "repeats": 2, "num_embeds": codec,
                       "mel_dim": 80, "dropout": 0.0, "enc_emb_dim": 16, "enc_dim": 16,
                       "enc_channels": [16, 16, 16, 16, 48], "enc_kernel_sizes": [5, 3, 3, 3, 1],
                       "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 8, "enc_res2net_scale": 2,
                       "enc_se_channels": 8},
        "bigvgan_config": {"mel_dim": 80, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                           "resblock_dilation_sizes": [[1, 3, 5]], "upsample_rates": [5, 4, 3, 2, 2],
                           "upsample_kernel_sizes": [11, 8, 7, 4, 4]},
    }
    return Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, token2wav_config=token2wav,
                             enable_audio_output=True)


def qwen2_5_processor(tok):
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok, chat_template=CHAT_TEMPLATE)


def speakers(config, torch) -> dict:
    """Two speakers as the real checkpoint names them, each a conditioning vector, a reference mel and
    the talker's text-start token."""
    dit = config.token2wav_config.dit_config
    g = torch.Generator().manual_seed(SEED + 1)
    bos = config.talker_config.tts_text_start_token_id
    return {name: {"cond": torch.randn(1, dit.enc_emb_dim, generator=g),
                   "ref_mel": torch.randn(1, 40, dit.mel_dim, generator=g) * 0.5,
                   "bos_token": bos}
            for name in ("Chelsie", "Ethan")}


def build_qwen2_5(out: Path, width: str = "tiny") -> None:
    import torch
    from transformers import GenerationConfig, Qwen2_5OmniForConditionalGeneration

    tok = build_tokenizer(out)
    config = qwen2_5_config(tok, width)
    torch.manual_seed(SEED)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    with torch.no_grad():  # random init leaves some norms at 1 and biases at 0: stir everything a little
        g = torch.Generator().manual_seed(SEED)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        model.token2wav.code2wav_bigvgan_model.conv_post.weight.mul_(300)  # audible, not a whisper
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=config.thinker_config.text_config.eos_token_id,
                     pad_token_id=config.thinker_config.text_config.pad_token_id).save_pretrained(out)
    qwen2_5_processor(tok).save_pretrained(out)
    torch.save(speakers(config, torch), out / "spk_dict.pt")


def qwen3_config(tok):
    from transformers import Qwen3OmniMoeConfig

    i = ids(tok)
    vocab = len(tok)
    hidden = 32
    moe = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "decoder_sparse_step": 1}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "interleaved": True}
    thinker = {
        "audio_config": {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                         "d_model": 16, "max_source_positions": 1500, "n_window": 50, "output_dim": hidden,
                         "n_window_infer": 400, "conv_chunksize": 500, "downsample_hidden_size": 8},
        "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 16,
                          "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": hidden,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        "text_config": {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                        "max_position_embeddings": 4096, "rope_parameters": rope, **moe,
                        "eos_token_id": i["<|im_end|>"], "pad_token_id": i["<|endoftext|>"]},
        "audio_token_id": i["<|AUDIO|>"], "image_token_id": i["<|IMAGE|>"], "video_token_id": i["<|VIDEO|>"],
        "audio_start_token_id": i["<|audio_bos|>"], "user_token_id": tok.convert_tokens_to_ids("user"),
        "vision_start_token_id": i["<|vision_bos|>"], "vision_end_token_id": i["<|vision_eos|>"],
        "audio_end_token_id": i["<|audio_eos|>"], "position_id_per_seconds": 25,
    }
    # codec tokens 0..47, then the talker's specials: transformers suppresses the top 1024 ids but its eos, as
    # in the real checkpoint (codebook 2048, vocab 3072)
    codec = 48 + 1024
    talker = {
        "text_config": {"vocab_size": codec, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                        "max_position_embeddings": 4096, "rope_parameters": rope, **moe,
                        "shared_expert_intermediate_size": 16},
        "code_predictor_config": {"vocab_size": 48, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "head_dim": 8, "max_position_embeddings": 64, "num_code_groups": 4},
        "num_code_groups": 4, "thinker_hidden_size": hidden, "accept_hidden_layer": 1,
        "codec_pad_id": 50, "codec_bos_id": 51, "codec_eos_token_id": 52, "codec_nothink_id": 53,
        "codec_think_bos_id": 54, "codec_think_eos_id": 55, "speaker_id": {"ethan": 56, "chelsie": 57},
        "audio_token_id": i["<|AUDIO|>"], "image_token_id": i["<|IMAGE|>"], "video_token_id": i["<|VIDEO|>"],
        "vision_start_token_id": i["<|vision_bos|>"], "audio_start_token_id": i["<|audio_bos|>"],
        "spatial_merge_size": 2,
    }
    code2wav = {"codebook_size": 48, "hidden_size": 32, "max_position_embeddings": 8000, "num_attention_heads": 2,
                "num_key_value_heads": 2, "sliding_window": 8, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_quantizers": 4, "upsample_rates": [5, 4, 3, 2], "upsampling_ratios": [2, 2],
                "decoder_dim": 32}
    return Qwen3OmniMoeConfig(
        thinker_config=thinker, talker_config=talker, code2wav_config=code2wav, enable_audio_output=True,
        im_start_token_id=i["<|im_start|>"], im_end_token_id=i["<|im_end|>"], tts_pad_token_id=i["<tts_pad>"],
        tts_bos_token_id=i["<tts_text_bos>"], tts_eos_token_id=i["<tts_text_eod>"],
        system_token_id=tok.convert_tokens_to_ids("system"), user_token_id=tok.convert_tokens_to_ids("user"),
        assistant_token_id=tok.convert_tokens_to_ids("assistant"))


def build_qwen3(out: Path) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLImageProcessor,
        Qwen3OmniMoeForConditionalGeneration,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = build_tokenizer(out)
    config = qwen3_config(tok)
    torch.manual_seed(SEED)
    model = Qwen3OmniMoeForConditionalGeneration(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(SEED)
        for name, p in model.named_parameters():  # transformers leaves the talker's experts uninitialized
            if ".experts." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        model.code2wav.decoder[-1].conv.weight.mul_(30)  # audible, not a whisper
        for projection in (model.talker.text_projection, model.talker.hidden_projection):  # the talker hears
            for linear in (projection.linear_fc1, projection.linear_fc2):  # the thinker as much as its codes
                linear.weight.mul_(30)
        # logits large enough that what the talker and its code predictor hear decides their codes
        model.talker.codec_head.weight.mul_(5)
        for head in model.talker.code_predictor.lm_head:
            head.weight.mul_(5)
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=config.thinker_config.text_config.eos_token_id,
                     pad_token_id=config.thinker_config.text_config.pad_token_id).save_pretrained(out)
    pixels = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 16, "patch_size": 16}
    Qwen3OmniMoeProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                          video_processor=Qwen2VLVideoProcessor(**pixels),
                          feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok,
                          chat_template=CHAT_TEMPLATE).save_pretrained(out)


FAMILIES = {"qwen2_5_omni": build_qwen2_5, "qwen3_omni_moe": build_qwen3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_5_omni")
    parser.add_argument("--width", choices=sorted(TEXT_SHAPES), default="tiny",
                        help="the thinker language model's shape (qwen2_5_omni)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    key = {"family": args.family, "version": VERSION, "seed": SEED}
    build = FAMILIES[args.family]
    if args.width != "tiny":
        if args.family != "qwen2_5_omni":
            parser.error("--width: only for qwen2_5_omni")
        key["width"] = args.width
        build = functools.partial(build_qwen2_5, width=args.width)
    build_once(Path(args.out), key, build, f"a {args.width} {args.family}", args.force, "tiny_omni.stamp.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

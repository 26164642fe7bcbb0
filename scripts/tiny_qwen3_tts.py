"""A tiny random-weight Qwen3-TTS (12 Hz, "Base": clones from a reference clip) in the Hugging Face layout of
Qwen/Qwen3-TTS-12Hz-*-Base, which llama.cpp's converter reads: config.json, model.safetensors (the talker, its
code predictor and the ECAPA-TDNN speaker encoder), the tokenizer with Qwen3-TTS's three text specials, and
speech_tokenizer/ (the codec's decoder: RVQ codebooks, a transformer, upsampling and DAC blocks).

transformers has no Qwen3-TTS classes, so the weights are written by name, with the shapes the converter and
libmtmd require: the codec vocabulary of 3072 (codes 0..2047, then its special tokens), 16 code groups, 2048
entries per codebook, a codec decoder of 8 transformer layers of 16 heads, two 2x upsampling blocks and four DAC
blocks; everything else is as small as that allows. Scales are chosen so that every stage passes a signal on.
"""
from __future__ import annotations

import json
from pathlib import Path

VERSION = 2  # of the weights' recipe
SEED = 0
TEXT_SPECIALS = ["<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"]
CODEC_VOCAB = 3072
CODEBOOK = 2048
GROUPS = 16
# the published checkpoint's codec ids
CODEC_IDS = {"codec_pad_id": 2148, "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
             "codec_nothink_id": 2155, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157}
LANGUAGES = {"english": 2050, "german": 2053, "spanish": 2054, "chinese": 2055, "japanese": 2058, "french": 2061,
             "korean": 2064, "russian": 2069, "italian": 2070, "portuguese": 2071}
TALKER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "text_hidden_size": 16}
PREDICTOR = {"vocab_size": CODEBOOK, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
SPEAKER = {"channels": 16, "attention": 8, "squeeze": 8}
CODEC = {"codebook_dim": 16, "latent_dim": 32, "hidden_size": 32, "intermediate_size": 64, "layers": 8, "heads": 16,
         "head_dim": 4, "decoder_dim": 32, "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2]}


def build(hf: Path, tokenizer_fn) -> None:
    """`tokenizer_fn(specials)`: a `tokenizers` BPE the converter recognises, with `specials` added."""
    import torch
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    hf.mkdir(parents=True, exist_ok=True)
    tk = tokenizer_fn(TEXT_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", unk_token=None,
                                        bos_token=None, eos_token=None)
    tokenizer.save_pretrained(hf)
    text_vocab = tk.get_vocab_size()
    ids = {t: tk.token_to_id(t) for t in TEXT_SPECIALS}
    g = torch.Generator().manual_seed(SEED)

    def rand(*shape, scale=0.1):
        return torch.randn(shape, generator=g) * scale

    def norm(n):
        return 1 + rand(n)

    h, hd, heads, kv = TALKER["hidden_size"], TALKER["head_dim"], TALKER["num_attention_heads"], \
        TALKER["num_key_value_heads"]
    ht, ff = TALKER["text_hidden_size"], TALKER["intermediate_size"]
    w = {"talker.model.text_embedding.weight": rand(text_vocab, ht, scale=1.0),
         "talker.text_projection.linear_fc1.weight": rand(ht, ht, scale=0.3),
         "talker.text_projection.linear_fc1.bias": rand(ht),
         "talker.text_projection.linear_fc2.weight": rand(h, ht, scale=0.3),
         "talker.text_projection.linear_fc2.bias": rand(h),
         "talker.model.codec_embedding.weight": rand(CODEC_VOCAB, h, scale=1.0),
         "talker.codec_head.weight": rand(CODEC_VOCAB, h, scale=0.5),
         "talker.model.norm.weight": norm(h)}
    for i in range(TALKER["num_hidden_layers"]):
        p = f"talker.model.layers.{i}."
        w.update({p + "input_layernorm.weight": norm(h), p + "post_attention_layernorm.weight": norm(h),
                  p + "self_attn.q_proj.weight": rand(heads * hd, h), p + "self_attn.k_proj.weight": rand(kv * hd, h),
                  p + "self_attn.v_proj.weight": rand(kv * hd, h), p + "self_attn.o_proj.weight": rand(h, heads * hd),
                  p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
                  p + "mlp.gate_proj.weight": rand(ff, h), p + "mlp.up_proj.weight": rand(ff, h),
                  p + "mlp.down_proj.weight": rand(h, ff)})
    c = PREDICTOR
    hc, hdc, fc = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    p = "talker.code_predictor."
    w[p + "model.norm.weight"] = norm(hc)
    for k in range(GROUPS - 1):
        w[f"{p}model.codec_embedding.{k}.weight"] = rand(CODEBOOK, h, scale=1.0)
        w[f"{p}lm_head.{k}.weight"] = rand(CODEBOOK, hc, scale=0.5)
    for i in range(c["num_hidden_layers"]):
        q = f"{p}model.layers.{i}."
        w.update({q + "input_layernorm.weight": norm(hc), q + "post_attention_layernorm.weight": norm(hc),
                  q + "self_attn.q_proj.weight": rand(c["num_attention_heads"] * hdc, hc),
                  q + "self_attn.k_proj.weight": rand(c["num_key_value_heads"] * hdc, hc),
                  q + "self_attn.v_proj.weight": rand(c["num_key_value_heads"] * hdc, hc),
                  q + "self_attn.o_proj.weight": rand(hc, c["num_attention_heads"] * hdc),
                  q + "self_attn.q_norm.weight": norm(hdc), q + "self_attn.k_norm.weight": norm(hdc),
                  q + "mlp.gate_proj.weight": rand(fc, hc), q + "mlp.up_proj.weight": rand(fc, hc),
                  q + "mlp.down_proj.weight": rand(hc, fc)})
    w.update(speaker_encoder(rand, h))
    save_file({k: v.contiguous() for k, v in w.items()}, str(hf / "model.safetensors"), metadata={"format": "pt"})

    talker = {**{k: v for k, v in TALKER.items()}, "vocab_size": CODEC_VOCAB, "text_vocab_size": text_vocab,
              "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 4096, "hidden_act": "silu",
              "rope_scaling": {"interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
              "num_code_groups": GROUPS, **CODEC_IDS, "codec_language_id": LANGUAGES, "spk_id": {},
              "spk_is_dialect": {},
              "code_predictor_config": {**PREDICTOR, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
                                        "num_code_groups": GROUPS, "max_position_embeddings": 64}}
    config = {"architectures": ["Qwen3TTSForConditionalGeneration"], "model_type": "qwen3_tts",
              "tts_model_type": "base", "tts_pad_token_id": ids["<tts_pad>"],
              "tts_bos_token_id": ids["<tts_text_bos>"], "tts_eos_token_id": ids["<tts_text_eod>"],
              "talker_config": talker,
              "speaker_encoder_config": {"mel_dim": 128, "enc_dim": h, "sample_rate": 24000,
                                         "enc_channels": [SPEAKER["channels"]] * 4 + [3 * SPEAKER["channels"]],
                                         "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_dilations": [1, 2, 3, 4, 1],
                                         "enc_attention_channels": SPEAKER["attention"], "enc_res2net_scale": 8,
                                         "enc_se_channels": SPEAKER["squeeze"]}}
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    codec_dir = hf / "speech_tokenizer"
    codec_dir.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in codec_decoder(rand, norm).items()}, str(codec_dir / "model.safetensors"),
              metadata={"format": "pt"})
    d = CODEC
    (codec_dir / "config.json").write_text(json.dumps({
        "model_type": "qwen3_tts_tokenizer_12hz", "input_sample_rate": 24000, "output_sample_rate": 24000,
        "decode_upsample_rate": 1920, "decoder_config": {
            "codebook_size": CODEBOOK, "codebook_dim": d["codebook_dim"], "num_quantizers": GROUPS,
            "latent_dim": d["latent_dim"], "hidden_size": d["hidden_size"], "intermediate_size": d["intermediate_size"],
            "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"], "num_key_value_heads": d["heads"],
            "head_dim": d["head_dim"], "sliding_window": 72, "rope_theta": 10000, "rms_norm_eps": 1e-5,
            "upsampling_ratios": d["upsampling_ratios"], "upsample_rates": d["upsample_rates"],
            "decoder_dim": d["decoder_dim"]}}, indent=2))


def speaker_encoder(rand, out_dim: int) -> dict:
    """ECAPA-TDNN: a stem, three SE-Res2Net blocks (scale 8), feature aggregation, attentive pooling, a projection."""
    ch, att, sq = SPEAKER["channels"], SPEAKER["attention"], SPEAKER["squeeze"]
    p = "speaker_encoder."
    w = {}

    def conv(name, out, inp, k):
        w[name + ".weight"] = rand(out, inp, k, scale=(1 / (inp * k)) ** 0.5)
        w[name + ".bias"] = rand(out)

    conv(p + "blocks.0.conv", ch, 128, 5)
    for b in (1, 2, 3):
        q = f"{p}blocks.{b}."
        conv(q + "tdnn1.conv", ch, ch, 1)
        conv(q + "tdnn2.conv", ch, ch, 1)
        for x in range(7):
            conv(f"{q}res2net_block.blocks.{x}.conv", ch // 8, ch // 8, 3)
        conv(q + "se_block.conv1", sq, ch, 1)
        conv(q + "se_block.conv2", ch, sq, 1)
    conv(p + "mfa.conv", 3 * ch, 3 * ch, 1)
    conv(p + "asp.tdnn.conv", att, 9 * ch, 1)
    conv(p + "asp.conv", 3 * ch, att, 1)
    conv(p + "fc", out_dim, 6 * ch, 1)
    w[p + "fc.weight"] *= 4  # a speaker embedding as large as the talker's other inputs: the voice is heard
    return w


def codec_decoder(rand, norm) -> dict:
    """The speech tokenizer's decoder: codes -> RVQ latents -> pre-conv -> transformer -> 2 x (2x upsample +
    ConvNeXt) -> DAC (4 blocks of snake, transposed conv, 3 residual units) -> snake -> conv to samples."""
    import torch

    d = CODEC
    dim, half, lat, hid = d["codebook_dim"], d["codebook_dim"] // 2, d["latent_dim"], d["hidden_size"]
    inner = d["heads"] * d["head_dim"]
    p = "decoder."
    w = {}
    for part, layers in (("rvq_first", 1), ("rvq_rest", GROUPS - 1)):
        q = f"{p}quantizer.{part}."
        w[q + "input_proj.weight"] = rand(half, dim, 1)
        w[q + "output_proj.weight"] = rand(dim, half, 1, scale=0.5)
        for i in range(layers):
            w[f"{q}vq.layers.{i}._codebook.embedding_sum"] = rand(CODEBOOK, half, scale=1.0)
            w[f"{q}vq.layers.{i}._codebook.cluster_usage"] = torch.ones(CODEBOOK)
    w[p + "pre_conv.conv.weight"], w[p + "pre_conv.conv.bias"] = rand(lat, dim, 3, scale=0.3), rand(lat)
    t = p + "pre_transformer."
    w.update({t + "input_proj.weight": rand(hid, lat, scale=0.3), t + "input_proj.bias": rand(hid),
              t + "output_proj.weight": rand(lat, hid, scale=0.3), t + "output_proj.bias": rand(lat),
              t + "norm.weight": norm(hid)})
    for i in range(d["layers"]):
        q = f"{t}layers.{i}."
        w.update({q + "input_layernorm.weight": norm(hid), q + "post_attention_layernorm.weight": norm(hid),
                  q + "self_attn.q_proj.weight": rand(inner, hid, scale=0.3),
                  q + "self_attn.k_proj.weight": rand(inner, hid, scale=0.3),
                  q + "self_attn.v_proj.weight": rand(inner, hid, scale=0.3),
                  q + "self_attn.o_proj.weight": rand(hid, inner, scale=0.3),
                  q + "self_attn_layer_scale.scale": 0.1 + rand(hid, scale=0.01),
                  q + "mlp.gate_proj.weight": rand(d["intermediate_size"], hid, scale=0.3),
                  q + "mlp.up_proj.weight": rand(d["intermediate_size"], hid, scale=0.3),
                  q + "mlp.down_proj.weight": rand(hid, d["intermediate_size"], scale=0.3),
                  q + "mlp_layer_scale.scale": 0.1 + rand(hid, scale=0.01)})
    for j in range(len(d["upsampling_ratios"])):
        q = f"{p}upsample.{j}."
        w.update({q + "0.conv.weight": rand(lat, lat, 2, scale=0.3), q + "0.conv.bias": rand(lat),
                  q + "1.dwconv.conv.weight": rand(lat, 1, 7, scale=0.3), q + "1.dwconv.conv.bias": rand(lat),
                  q + "1.norm.weight": norm(lat), q + "1.norm.bias": rand(lat),
                  q + "1.pwconv1.weight": rand(4 * lat, lat, scale=0.3), q + "1.pwconv1.bias": rand(4 * lat),
                  q + "1.pwconv2.weight": rand(lat, 4 * lat, scale=0.3), q + "1.pwconv2.bias": rand(lat),
                  q + "1.gamma": 0.1 + rand(lat, scale=0.01)})
    channels = [d["decoder_dim"] // 2 ** i for i in range(5)]

    def kernel(out, inp, k, transposed=False):  # variance kept from layer to layer: the waveform does not die out
        shape = (inp, out, k) if transposed else (out, inp, k)
        return rand(*shape, scale=(1 / (inp * k)) ** 0.5)

    w[p + "decoder.0.conv.weight"], w[p + "decoder.0.conv.bias"] = kernel(channels[0], lat, 7), rand(channels[0],
                                                                                                    scale=0.01)
    for b, rate in enumerate(d["upsample_rates"]):
        q = f"{p}decoder.{b + 1}.block."
        c_in, c_out = channels[b], channels[b + 1]
        w.update({q + "0.alpha": rand(c_in), q + "0.beta": rand(c_in),
                  q + "1.conv.weight": kernel(c_out, c_in, 2, transposed=True)[..., [0, 1] * rate],  # stride r: 2 taps
                  q + "1.conv.bias": rand(c_out, scale=0.01)})
        for r in (2, 3, 4):
            u = f"{q}{r}."
            w.update({u + "act1.alpha": rand(c_out), u + "act1.beta": rand(c_out),
                      u + "conv1.conv.weight": kernel(c_out, c_out, 7), u + "conv1.conv.bias": rand(c_out, scale=0.01),
                      u + "act2.alpha": rand(c_out), u + "act2.beta": rand(c_out),
                      u + "conv2.conv.weight": kernel(c_out, c_out, 1) * 0.3,
                      u + "conv2.conv.bias": rand(c_out, scale=0.01)})
    w.update({p + "decoder.5.alpha": rand(channels[4]), p + "decoder.5.beta": rand(channels[4]),
              p + "decoder.6.conv.weight": kernel(1, channels[4], 7) * 0.02,  # within [-1, 1], where libmtmd clamps
              p + "decoder.6.conv.bias": rand(1, scale=0.01)})
    return w

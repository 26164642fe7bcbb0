#!/usr/bin/env python3
"""Write a small LoRA adapter GGUF for a llama-architecture GGUF model, fully offline.

    python scripts/make_tiny_lora.py BASE.gguf OUT.gguf [--rank 1] [--scale 0.5] [--seed 0]

For every `blk.N.attn_q.weight` and `attn_v.weight` of the base model it writes a random
rank-`rank` pair (`lora_a`: rank x n_in, `lora_b`: n_out x rank, F32), with the keys llama.cpp's
adapter loader reads (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`).
The weights are noise: the tests use the adapter to show that a request with it answers
differently from the base model, and that unloading it restores the base answers.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    from gguf import GGUFReader, GGUFWriter

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("out")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--scale", type=float, default=0.5, help="the size of lora_b's entries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reader = GGUFReader(args.base)
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    rng = np.random.default_rng(args.seed)
    writer = GGUFWriter(args.out, arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(args.rank))  # scale alpha / rank = 1
    for tensor in reader.tensors:
        if not tensor.name.endswith(("attn_q.weight", "attn_v.weight")):
            continue
        n_in, n_out = (int(x) for x in tensor.shape[:2])  # ggml order: ne0 = inputs, ne1 = outputs
        base = tensor.name.removesuffix(".weight")
        a = (rng.standard_normal((args.rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal((n_out, args.rank)) * args.scale).astype(np.float32)
        writer.add_tensor(f"{base}.weight.lora_a", a)
        writer.add_tensor(f"{base}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

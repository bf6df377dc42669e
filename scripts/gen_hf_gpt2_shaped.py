#!/usr/bin/env python3
"""Writes a Hugging Face GPT-2 directory of a given shape with synthetic weights, for timing
`ccoe import` on real sizes when the real weights cannot be fetched:

    gen_hf_gpt2_shaped.py OUT_DIR [--dtype F32|BF16] [--shards N] [--layers L --embd C
                                   --heads H --positions P --vocab V]

Defaults are GPT-2 124M (12 layers, 768 channels, 12 heads, 1024 positions, 50257 ids),
saved the way save_pretrained does ("transformer." names, tied head omitted). The values are a
repeated block of small uniform numbers (cheap to write; the importer's work does not depend
on them). The tokenizer files are copied from tests/fixtures/hf-gpt2-tiny (265 ids, below any
vocab_size here, so the rest of the rows are padding)."""
import argparse
import json
import os
import random
import shutil
import struct

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--dtype", default="F32", choices=["F32", "BF16"])
ap.add_argument("--shards", type=int, default=1)
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--embd", type=int, default=768)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--positions", type=int, default=1024)
ap.add_argument("--vocab", type=int, default=50257)
a = ap.parse_args()
L, C, P, V = a.layers, a.embd, a.positions, a.vocab
F = 4 * C
tensors = [("transformer.wte.weight", [V, C]), ("transformer.wpe.weight", [P, C])]
for l in range(L):
    h = f"transformer.h.{l}."
    tensors += [(h + "ln_1.weight", [C]), (h + "ln_1.bias", [C]),
                (h + "attn.c_attn.weight", [C, 3 * C]), (h + "attn.c_attn.bias", [3 * C]),
                (h + "attn.c_proj.weight", [C, C]), (h + "attn.c_proj.bias", [C]),
                (h + "ln_2.weight", [C]), (h + "ln_2.bias", [C]),
                (h + "mlp.c_fc.weight", [C, F]), (h + "mlp.c_fc.bias", [F]),
                (h + "mlp.c_proj.weight", [F, C]), (h + "mlp.c_proj.bias", [C])]
tensors += [("transformer.ln_f.weight", [C]), ("transformer.ln_f.bias", [C])]
esize = 4 if a.dtype == "F32" else 2
rng = random.Random(1)
BLOCK = 1 << 16
vals = [rng.uniform(-0.05, 0.05) for _ in range(BLOCK)]
if a.dtype == "F32":
    block = struct.pack("<%df" % BLOCK, *vals)
else:
    block = b"".join(struct.pack("<f", v)[2:] for v in vals)


def data(n):
    nbytes = n * esize
    reps = nbytes // len(block) + 1
    return (block * reps)[:nbytes]


os.makedirs(a.out, exist_ok=True)
per = (len(tensors) + a.shards - 1) // a.shards
weight_map = {}
for k in range(a.shards):
    part = tensors[k * per:(k + 1) * per]
    name = "model.safetensors" if a.shards == 1 else \
        f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors"
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for t, shape in part:
        n = 1
        for d in shape:
            n *= d
        header[t] = {"dtype": a.dtype, "shape": shape, "data_offsets": [off, off + n * esize]}
        off += n * esize
        weight_map[t] = name
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(a.out, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for t, shape in part:
            n = 1
            for d in shape:
                n *= d
            f.write(data(n))
if a.shards > 1:
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
          "activation_function": "gelu_new", "n_layer": L, "n_embd": C, "n_head": a.heads,
          "n_positions": P, "n_ctx": P, "n_inner": None, "vocab_size": V,
          "layer_norm_epsilon": 1e-05, "tie_word_embeddings": True}
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "hf-gpt2-tiny")
for t in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(src, t), os.path.join(a.out, t))

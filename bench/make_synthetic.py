#!/usr/bin/env python3
"""Writes the synthetic benchmark models (random weights, real shapes) with gguf-py:

  moe.gguf:   Mixtral-shaped: 8 layers, hidden 512, 8 heads (2 KV), 8 experts top-2,
              expert FFN 1408, vocab 32000, Q4_0 (norms and routers f32), stacked experts
              as llama.cpp writes Mixtral.
  dense.gguf: the same with one FFN of 2816 = 2 x 1408: the MoE model's active parameters.
  smol.gguf:  SmolLM2-135M's shapes (30 layers, hidden 576, 9 heads (3 KV), FFN 1536,
              vocab 49152, tied embeddings) in Q4_1 with random weights: the real model's
              speed where the 92 MiB file cannot go (the GPU machine, bench/device/).

Both carry a 32000-entry SentencePiece-style vocabulary (<unk>, <s>, </s>, the 256 byte
tokens, then unique pieces) because llama.cpp refuses a GGUF without one.
Run: python bench/make_synthetic.py OUT_DIR [moe dense smol]   (default: moe dense)
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

E, K, F = 8, 2, 1408
# (layers, hidden, heads, kv heads, vocab, quant type, tied embeddings, rope base)
MIXTRAL_LIKE = (8, 512, 8, 2, 32000, Q.Q4_0, False, 1e6)
SMOL = (30, 576, 9, 3, 49152, Q.Q4_1, True, 1e5)
rng = np.random.default_rng(0)


def vocab(V):
    toks = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(toks) < V:
        n, s = i, ""
        while True:
            s = letters[n % 26] + s
            n //= 26
            if n == 0:
                break
        toks.append(("\u2581" + s).encode())
        types.append(gguf.TokenType.NORMAL)
        i += 1
    scores = [0.0] * 259 + [-float(j) for j in range(V - 259)]
    return toks, scores, types


def mat(*shape, scale=0.02):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def write(path, experts, ff, shape=MIXTRAL_LIKE):
    L, D, H, KVH, V, qtype, tied, rope_base = shape
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(os.path.basename(path))
    w.add_block_count(L)
    w.add_context_length(4096)
    w.add_embedding_length(D)
    w.add_feed_forward_length(ff)
    w.add_head_count(H)
    w.add_head_count_kv(KVH)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D // H)
    w.add_vocab_size(V)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0 if qtype == Q.Q4_0 else gguf.LlamaFileType.MOSTLY_Q4_1))
    if experts > 1:
        w.add_expert_count(experts)
        w.add_expert_used_count(K)
    toks, scores, types = vocab(V)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def q(name, arr):
        w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    q("token_embd.weight", mat(V, D))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    if not tied:
        q("output.weight", mat(V, D))
    hd = D // H
    for i in range(L):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(b + "ffn_norm.weight", np.ones(D, np.float32))
        q(b + "attn_q.weight", mat(H * hd, D))
        q(b + "attn_k.weight", mat(KVH * hd, D))
        q(b + "attn_v.weight", mat(KVH * hd, D))
        q(b + "attn_output.weight", mat(D, H * hd))
        if experts > 1:
            w.add_tensor(b + "ffn_gate_inp.weight", mat(experts, D, scale=0.5))
            q(b + "ffn_gate_exps.weight", mat(experts, ff, D))
            q(b + "ffn_up_exps.weight", mat(experts, ff, D))
            q(b + "ffn_down_exps.weight", mat(experts, D, ff))
        else:
            q(b + "ffn_gate.weight", mat(ff, D))
            q(b + "ffn_up.weight", mat(ff, D))
            q(b + "ffn_down.weight", mat(D, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path) // (1 << 20), "MiB")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    names = sys.argv[2:] or ["moe", "dense"]
    os.makedirs(out, exist_ok=True)
    models = {"moe": (E, F, MIXTRAL_LIKE), "dense": (1, K * F, MIXTRAL_LIKE), "smol": (1, 1536, SMOL)}
    for name in names:
        experts, ff, shape = models[name]
        write(os.path.join(out, name + ".gguf"), experts, ff, shape)

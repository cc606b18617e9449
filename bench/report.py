#!/usr/bin/env python3
"""Turns target/bench/*.json (bench/run.sh, or bench/device/run.sh's $OUT) into one table
of ratios. Models and engines without a file are left out."""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"


def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def have(name):
    return os.path.exists(os.path.join(out, name))


def llama(name):
    rows = load(name)
    pp = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    return pp["avg_ts"], tg["avg_ts"], rows[0].get("gpu_info", "")


print(f"{'model':10} {'engine':28} {'prefill tok/s':>14} {'decode tok/s':>13}   {'ours/it prefill':>15} {'ours/it decode':>14}")
MODELS = [m for m in ("smollm2", "smol", "moe", "dense") if have(f"webmoe-{m}.json")]
for m in MODELS:
    ours = load(f"webmoe-{m}.json")
    op, od = ours["prefill_tokens_per_s"]["median"], ours["decode_tokens_per_s"]["median"]
    name = f"webmoe ({ours['adapter'].split(',')[0].split(' (')[0][:16]}, {ours.get('gemv_lanes', 8)} lanes)"
    print(f"{m:10} {name:28} {op:14.2f} {od:13.2f}")
    for lanes in (8, 16, 32):   # A/B runs of other GEMV shapes, where made
        if have(f"webmoe-lanes{lanes}-{m}.json"):
            a = load(f"webmoe-lanes{lanes}-{m}.json")
            ap, ad = a["prefill_tokens_per_s"]["median"], a["decode_tokens_per_s"]["median"]
            print(f"{'':10} {f'webmoe, {lanes} lanes':28} {ap:14.2f} {ad:13.2f}")
    for variant in ("vulkan", "cpu"):
        if have(f"llama-{variant}-{m}.json"):
            p, d, gpu = llama(f"llama-{variant}-{m}.json")
            # ggml-vulkan without a usable device silently runs on the CPU: say so.
            name = "llama.cpp " + variant + (" (NO VULKAN DEVICE: CPU)" if variant == "vulkan" and not gpu else "")
            print(f"{'':10} {name:28} {p:14.2f} {d:13.2f}   {op / p:14.2f}x {od / d:13.2f}x")
if "moe" in MODELS and "dense" in MODELS:
    moe, dense = load("webmoe-moe.json"), load("webmoe-dense.json")
    ratio = (1 / moe["decode_tokens_per_s"]["median"]) / (1 / dense["decode_tokens_per_s"]["median"])
    print(f"\nMoE decode step / dense (same active parameters) decode step: {ratio:.2f}x (webmoe)")
for m in MODELS:
    r = load(f"webmoe-{m}.json")
    if r.get("copy_gb_per_s"):
        gemv = [k for k in r["decode_kernels"] if k.get("of_copy") is not None]
        total = sum(k["weight_bytes"] for k in gemv)
        secs = sum(k["seconds"] for k in gemv)
        eff = total / secs / 1e9 if secs else 0
        print(f"{m}: copy kernel {r['copy_gb_per_s']:.2f} GB/s; decode GEMVs {eff:.2f} GB/s = {eff / r['copy_gb_per_s'] * 100:.0f}% of copy"
              + "".join(f"\n    {k['kernel']:18} {k['gb_per_s']:.2f} GB/s ({k['of_copy'] * 100:.0f}%)" for k in gemv))
    print(f"{m}: buffers created while generating: {r['buffers_created_while_generating']}")
try:
    b = load("browser-smollm2.json")
    w, o = b["wllama"], b["webmoe"]
    print(f"\nbrowser (headless Chromium, {b['adapter']}), SmolLM2:")
    print(f"  wllama (CPU wasm, 2 threads)  prefill {w['prefill_tokens_per_s']:.2f}  decode {w['decode_tokens_per_s']:.2f} tok/s")
    print(f"  webmoe (WebGPU)               prefill {o['prefill_tokens_per_s']:.2f}  decode {o['decode_tokens_per_s']:.2f} tok/s")
    print(f"  ours/wllama                   prefill {o['prefill_tokens_per_s'] / w['prefill_tokens_per_s']:.2f}x  decode {o['decode_tokens_per_s'] / w['decode_tokens_per_s']:.2f}x")
except FileNotFoundError:
    pass

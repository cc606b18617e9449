//! Every WGSL kernel against its plain-Rust reference in `webmoe::cpu`, on fresh random
//! inputs, with outputs poisoned (NaN / 0xFFFFFFFF) beforehand so an unwritten element
//! fails. `broken_kernels_fail` then breaks each kernel on purpose (for example, skipping
//! its last output row) and requires its check to fail: the checks can catch real bugs.

mod common;

use common::*;
use webmoe::cpu;
use webmoe::gpu::kernels::ops;
use webmoe::gpu::{Gpu, GpuOptions, GpuWeight, Out, Rows, Shader};
use webmoe::tensor::{DType, to_f32};

/// Every storage type the weight loader (shaders/lib/weights.wgsl) reads.
const DTYPES: [DType; 8] =
    [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4K, DType::Q6K];

/// `base` rounded up to whole blocks of `dtype` (matmul inner dimensions must be).
fn inner_dim(dtype: DType, base: usize) -> usize {
    let b = dtype.block().unwrap().0.max(4);
    base.div_ceil(b) * b
}

/// Random weights in `dtype`, uploaded as consecutive parts (each `numel` long) in the
/// kernels' layout, with the exact f32 values the CPU reference uses.
fn weight(g: &Gpu, rng: &mut Rng, dtype: DType, parts: usize, numel: usize, scale: f32) -> (GpuWeight, Vec<Vec<f32>>) {
    let raw: Vec<Vec<u8>> = (0..parts).map(|_| random_blocks(rng, dtype, numel, scale)).collect();
    let vals = raw.iter().map(|r| to_f32(dtype, r)).collect();
    let refs: Vec<&[u8]> = raw.iter().map(|r| r.as_slice()).collect();
    (g.upload_weight("w", dtype, &refs).expect("upload"), vals)
}

fn step(g: &Gpu, n_rows: usize, pos0: usize) -> wgpu::Buffer {
    g.uniform("step", &[n_rows as u32, pos0 as u32, 0, 0])
}

type Check = fn(&Gpu, u64) -> Result<(), String>;

fn check_embed(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (vocab, t) = (50, 5);
    for dt in DTYPES {
        let dim = inner_dim(dt, 36);
        let (w, e) = weight(g, &mut rng, dt, 1, vocab * dim, 1.0);
        let e = &e[0];
        let toks: Vec<u32> = (0..t).map(|_| rng.below(vocab) as u32).collect();
        let (tb, xb) = (upload_u32(g, "tok", &toks), poisoned(g, "x", t * dim));
        let d = ops::embed(g, &w, &tb, &xb, dim, vocab).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let want: Vec<f32> = toks.iter().flat_map(|&k| e[k as usize * dim..(k as usize + 1) * dim].to_vec()).collect();
        close(&format!("embed {dt:?}"), &read_f32(g, &xb, t * dim), &want, 0.0, 0.0)?;
    }
    Ok(())
}

fn check_rmsnorm(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, dim, eps) = (4, 300, 1e-5);
    let x = rng.vec(t * dim, 2.0);
    let w = rng.vec(dim, 1.5);
    let want = cpu::rms_norm(&x, &w, eps);
    for last_only in [false, true] {
        let rows = if last_only { 1 } else { t };
        let (xb, wb, yb, s) =
            (upload_f32(g, "x", &x), upload_f32(g, "w", &w), poisoned(g, "y", rows * dim), step(g, t, 0));
        let d = ops::rms_norm(g, &s, &wb, &xb, &yb, dim, eps, last_only).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let want = if last_only { &want[(t - 1) * dim..] } else { &want[..] };
        close(&format!("rmsnorm last_only={last_only}"), &read_f32(g, &yb, rows * dim), want, 1e-5, 1e-5)?;
    }
    Ok(())
}

/// y (+)= x · W^T for every storage type and both accumulate modes, written into
/// columns `off..off+n` of rows `stride` wide (as q, k and v share one buffer).
fn check_matmul(
    g: &Gpu,
    seed: u64,
    prefill: bool,
    t: usize,
    n: usize,
    k_base: usize,
    dtypes: &[DType],
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for &dt in dtypes {
        let k = inner_dim(dt, k_base);
        for (accumulate, off, stride) in [(false, 0, n), (true, 0, n), (false, 3, n + 7)] {
            let (w, wv) = weight(g, &mut rng, dt, 1, n * k, 0.5);
            let x = rng.vec(t * k, 1.0);
            let y0 = rng.vec(t * stride, 1.0);
            let prod = cpu::matmul(&x, t, k, &wv[0], n);
            // Columns outside off..off+n keep their initial (poisoned) values.
            let mut want = if accumulate { y0.clone() } else { vec![f32::NAN; t * stride] };
            for r in 0..t {
                for j in 0..n {
                    let o = r * stride + off + j;
                    want[o] = if accumulate { y0[o] + prod[r * n + j] } else { prod[r * n + j] };
                }
            }
            let yb = if accumulate { upload_f32(g, "y", &y0) } else { poisoned(g, "y", t * stride) };
            let out = Out { buf: &yb, stride, off, accumulate };
            let (xb, s) = (upload_f32(g, "x", &x), step(g, t, 0));
            let d =
                if prefill { ops::gemm(g, "w", &s, &w, &xb, out, n, k) } else { ops::gemv(g, "w", &w, &xb, out, n, k) }
                    .map_err(|e| e.to_string())?;
            g.run(&[&d], t as u32);
            let got = read_f32(g, &yb, t * stride);
            let (got, want): (Vec<f32>, Vec<f32>) =
                got.iter().zip(&want).filter(|(_, w)| !w.is_nan()).map(|(g, w)| (*g, *w)).unzip();
            let name = format!(
                "{} {dt:?} accumulate={accumulate} cols {off}.. of {stride} [{t}x{k}]·[{n}x{k}]^T",
                if prefill { "gemm" } else { "gemv" }
            );
            close(&name, &got, &want, 1e-4, 1e-4)?;
        }
    }
    Ok(())
}

fn check_gemv(g: &Gpu, seed: u64) -> Result<(), String> {
    // K = 68 runs the 4-wide loop for plain floats; whole 32-blocks (96) the block path.
    check_matmul(g, seed, false, 3, 37, 68, &DTYPES)?;
    check_matmul(g, seed + 1, false, 2, 37, 96, &DTYPES)
}

fn check_gemm(g: &Gpu, seed: u64) -> Result<(), String> {
    check_matmul(g, seed, true, 45, 70, 100, &DTYPES)
}

fn check_rope_kv(g: &Gpu, seed: u64) -> Result<(), String> {
    for interleaved in [false, true] {
        check_rope_kv_mode(g, seed, interleaved)?;
    }
    Ok(())
}

fn check_rope_kv_mode(g: &Gpu, seed: u64, interleaved: bool) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx, t, pos0) = (4, 2, 24, 20, 5, 7);
    let stride = (heads + 2 * kvh) * hd;
    let qkv = rng.vec(t * stride, 1.0);
    let inv = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect::<Vec<_>>();
    let table = webmoe::config::rope_table(&inv, ctx);
    // Reference: split, rotate q and k, place k and v at positions pos0..pos0+t.
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in qkv.chunks(stride) {
        q.extend_from_slice(&row[..heads * hd]);
        k.extend_from_slice(&row[heads * hd..(heads + kvh) * hd]);
        v.extend_from_slice(&row[(heads + kvh) * hd..]);
    }
    cpu::rope(&mut q, heads, hd, pos0, &table, interleaved);
    cpu::rope(&mut k, kvh, hd, pos0, &table, interleaved);
    let (qb, tb, kc, vc, s) = (
        upload_f32(g, "qkv", &qkv),
        upload_f32(g, "table", &table),
        poisoned(g, "kc", kvh * ctx * hd),
        poisoned(g, "vc", kvh * ctx * hd),
        step(g, t, pos0),
    );
    let d = ops::rope_kv(g, &s, &tb, &qb, &kc, &vc, heads, kvh, hd, ctx, interleaved).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    let got = read_f32(g, &qb, t * stride);
    let got_q: Vec<f32> = got.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
    close(&format!("rope q interleaved={interleaved}"), &got_q, &q, 1e-5, 1e-5)?;
    let (gk, gv) = (read_f32(g, &kc, kvh * ctx * hd), read_f32(g, &vc, kvh * ctx * hd));
    for tt in 0..t {
        for h in 0..kvh {
            let c = (h * ctx + pos0 + tt) * hd;
            let r = (tt * kvh + h) * hd;
            close(&format!("rope k cache t={tt} head={h}"), &gk[c..c + hd], &k[r..r + hd], 1e-5, 1e-5)?;
            close(&format!("v cache t={tt} head={h}"), &gv[c..c + hd], &v[r..r + hd], 0.0, 0.0)?;
        }
    }
    Ok(())
}

/// The fused decode q/k/v projection: matmul, then rotary (adjacent pairs) on q into the
/// qkv rows and on k into the cache, v into the cache; as one matrix and as three.
fn check_qkv_rope(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx, t, pos0) = (4, 2, 24, 20, 3, 5);
    let (qd, kvd) = (heads * hd, kvh * hd);
    let stride = qd + 2 * kvd;
    let inv = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect::<Vec<_>>();
    let table = webmoe::config::rope_table(&inv, ctx);
    for (i, &dt) in DTYPES.iter().enumerate() {
        // Alternate the 4-wide loop (K = 68 for plain floats) and the 32-block path.
        let k = inner_dim(dt, if i % 2 == 0 { 68 } else { 96 });
        let x = rng.vec(t * k, 1.0);
        let (w, wv) = weight(g, &mut rng, dt, 1, stride * k, 0.5);
        let prod = cpu::matmul(&x, t, k, &wv[0], stride);
        let (mut q, mut kk, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for row in prod.chunks(stride) {
            q.extend_from_slice(&row[..qd]);
            kk.extend_from_slice(&row[qd..qd + kvd]);
            v.extend_from_slice(&row[qd + kvd..]);
        }
        cpu::rope(&mut q, heads, hd, pos0, &table, true);
        cpu::rope(&mut kk, kvh, hd, pos0, &table, true);
        for split in [false, true] {
            let (xb, tb, s) = (upload_f32(g, "x", &x), upload_f32(g, "table", &table), step(g, t, pos0));
            let (qb, kc, vc) =
                (poisoned(g, "qkv", t * stride), poisoned(g, "kc", kvh * ctx * hd), poisoned(g, "vc", kvh * ctx * hd));
            let shape = (heads, kvh, hd, ctx);
            let parts: Vec<(GpuWeight, usize, usize)> = if split {
                // Rows off..off+n of the same random matrix, uploaded on their own.
                [(0, qd), (qd, kvd), (qd + kvd, kvd)]
                    .iter()
                    .map(|&(off, n)| {
                        let rows = wv[0][off * k..(off + n) * k].to_vec();
                        let b = webmoe::tensor::from_f32(DType::F32, &rows);
                        (g.upload_weight("w", DType::F32, &[&b]).expect("upload"), n, off)
                    })
                    .collect()
            } else {
                vec![(w.clone(), stride, 0)]
            };
            let ds = parts
                .iter()
                .map(|(w, n, off)| ops::qkv_rope(g, &s, w, &xb, &tb, &qb, &kc, &vc, (*n, k, *off), shape))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            g.run(&ds.iter().collect::<Vec<_>>(), t as u32);
            let what = format!("qkv_rope {dt:?} split={split}");
            let got = read_f32(g, &qb, t * stride);
            let got_q: Vec<f32> = got.chunks(stride).flat_map(|r| r[..qd].to_vec()).collect();
            close(&format!("{what} q"), &got_q, &q, 1e-4, 1e-4)?;
            let (gk, gv) = (read_f32(g, &kc, kvh * ctx * hd), read_f32(g, &vc, kvh * ctx * hd));
            for tt in 0..t {
                for h in 0..kvh {
                    let c = (h * ctx + pos0 + tt) * hd;
                    let r = (tt * kvh + h) * hd;
                    close(&format!("{what} k cache t={tt} head={h}"), &gk[c..c + hd], &kk[r..r + hd], 1e-4, 1e-4)?;
                    close(&format!("{what} v cache t={tt} head={h}"), &gv[c..c + hd], &v[r..r + hd], 1e-4, 1e-4)?;
                }
            }
        }
    }
    Ok(())
}

fn check_attention(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    // head_dim 24 (not a power of two), 74 visible keys (more than one 64-key chunk).
    let (heads, kvh, hd, ctx, t, pos0) = (8, 2, 24, 200, 4, 70);
    for window in [None, Some(50)] {
        let stride = (heads + 2 * kvh) * hd;
        let qkv = rng.vec(t * stride, 1.0);
        let kc = rng.vec(kvh * ctx * hd, 1.0);
        let vc = rng.vec(kvh * ctx * hd, 1.0);
        let q: Vec<f32> = qkv.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
        let want = cpu::attention(&q, &kc, &vc, ctx, pos0, heads, kvh, hd, window);
        let (qb, kb, vb, ob, s) = (
            upload_f32(g, "qkv", &qkv),
            upload_f32(g, "k", &kc),
            upload_f32(g, "v", &vc),
            poisoned(g, "out", t * heads * hd),
            step(g, t, pos0),
        );
        let d = ops::attention(g, &s, &qb, &kb, &vb, &ob, heads, kvh, hd, ctx, window).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("attention window={window:?}"), &read_f32(g, &ob, t * heads * hd), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

/// Split-K attention (decode): several 256-position chunks, a window that empties some of
/// them, and a step inside the first chunk; both kernels (split, combine) run.
fn check_attention_split(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx) = (8, 2, 24, 1100);
    for (t, pos0, window) in [(3, 1000, None), (3, 1000, Some(300)), (1, 5, None), (2, 511, Some(40))] {
        let stride = (heads + 2 * kvh) * hd;
        let qkv = rng.vec(t * stride, 1.0);
        let kc = rng.vec(kvh * ctx * hd, 1.0);
        let vc = rng.vec(kvh * ctx * hd, 1.0);
        let q: Vec<f32> = qkv.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
        let want = cpu::attention(&q, &kc, &vc, ctx, pos0, heads, kvh, hd, window);
        let (qb, kb, vb, ob, s) = (
            upload_f32(g, "qkv", &qkv),
            upload_f32(g, "k", &kc),
            upload_f32(g, "v", &vc),
            poisoned(g, "out", t * heads * hd),
            step(g, t, pos0),
        );
        let pb = poisoned(g, "partials", ops::attention_partials_bytes(t, heads, hd, ctx) / 4);
        let [split, combine] = ops::attention_split(g, &s, &qb, &kb, &vb, &pb, &ob, heads, kvh, hd, ctx, window)
            .map_err(|e| e.to_string())?;
        g.run_at(&[&split, &combine], t as u32, pos0 as u32);
        let what = format!("split attention t={t} pos0={pos0} window={window:?}");
        close(&what, &read_f32(g, &ob, t * heads * hd), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

fn check_router(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, dim, e, k) = (6, 40, 16, 4);
    for norm in [true, false] {
        let (x, wg) = (rng.vec(t * dim, 1.0), rng.vec(e * dim, 0.5));
        let (ids, ws) = cpu::route(&x, dim, &wg, e, k, norm);
        let (xb, wb, ib, wsb) =
            (upload_f32(g, "x", &x), upload_f32(g, "wg", &wg), poisoned_u32(g, "ids", t * k), poisoned(g, "w", t * k));
        // Counts of layer 1 of 3 start from arbitrary values and gain one per choice.
        let hist0: Vec<u32> = (0..3 * e as u32).collect();
        let hb = upload_u32(g, "hist", &hist0);
        let d = ops::router(g, &wb, &xb, &ib, &wsb, &hb, dim, e, k, norm, 1).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        same_u32(&format!("router ids norm={norm}"), &read_u32(g, &ib, t * k), &ids)?;
        let mut hist = hist0.clone();
        ids.iter().for_each(|&i| hist[e + i as usize] += 1);
        same_u32(&format!("router choice counts norm={norm}"), &read_u32(g, &hb, 3 * e), &hist)?;
        close(&format!("router weights norm={norm}"), &read_f32(g, &wsb, t * k), &ws, 1e-6, 1e-5)?;
    }
    Ok(())
}

/// Random routing: k distinct experts per token, weights summing to 1.
fn routing(rng: &mut Rng, t: usize, e: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::new();
    let mut ws = Vec::new();
    for _ in 0..t {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < k {
            let c = rng.below(e) as u32;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        let w: Vec<f32> = (0..k).map(|_| rng.f32(0.5) + 0.6).collect();
        let s: f32 = w.iter().sum();
        ids.extend(chosen);
        ws.extend(w.iter().map(|x| x / s));
    }
    (ids, ws)
}

struct Experts {
    /// Per expert: gate [ff, dim], up [ff, dim], down [dim, ff].
    w1: Vec<Vec<f32>>,
    w3: Vec<Vec<f32>>,
    w2: Vec<Vec<f32>>,
    /// Stacked expert blocks: gate and up rows [2 ff, dim]; down [dim, ff].
    gate_up: GpuWeight,
    down: GpuWeight,
}

fn experts(g: &Gpu, rng: &mut Rng, e: usize, dim: usize, ff: usize, dt: DType) -> Experts {
    let mut raw = |n| random_blocks(rng, dt, n, 0.3);
    let blocks: Vec<[Vec<u8>; 3]> = (0..e).map(|_| [raw(ff * dim), raw(ff * dim), raw(dim * ff)]).collect();
    let gu: Vec<Vec<&[u8]>> = blocks.iter().map(|b| vec![b[0].as_slice(), b[1].as_slice()]).collect();
    let dn: Vec<Vec<&[u8]>> = blocks.iter().map(|b| vec![b[2].as_slice()]).collect();
    let vals = |i: usize| blocks.iter().map(|b| to_f32(dt, &b[i])).collect();
    Experts {
        w1: vals(0),
        w3: vals(1),
        w2: vals(2),
        gate_up: g.upload_experts("gate|up", dt, &gu).unwrap(),
        down: g.upload_experts("down", dt, &dn).unwrap(),
    }
}

/// Reference activation of assignment (token t, expert id).
fn act_ref(x: &[f32], t: usize, id: u32, ex: &Experts, dim: usize, ff: usize) -> Vec<f32> {
    let e = id as usize;
    cpu::swiglu_act(&x[t * dim..(t + 1) * dim], &ex.w1[e], &ex.w3[e], ff)
}

fn down_ref(a: &[f32], id: u32, ex: &Experts, dim: usize, ff: usize) -> Vec<f32> {
    cpu::matmul(a, 1, ff, &ex.w2[id as usize], dim)
}

fn check_moe_gemv_gate_up(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (3, 6, 2);
    // dim 40 takes the 4-wide loop for plain floats, 64 the whole-block path.
    for (dt, base) in DTYPES.iter().flat_map(|&d| [(d, 40), (d, 64)]) {
        let (dim, ff) = (inner_dim(dt, base), 52);
        let ex = experts(g, &mut rng, e, dim, inner_dim(dt, ff), dt);
        let ff = inner_dim(dt, ff);
        let x = rng.vec(t * dim, 1.0);
        let (ids, _) = routing(&mut rng, t, e, k);
        let want: Vec<f32> = (0..t * k).flat_map(|a| act_ref(&x, a / k, ids[a], &ex, dim, ff)).collect();
        let (xb, ib, ab) = (upload_f32(g, "x", &x), upload_u32(g, "ids", &ids), poisoned(g, "act", t * k * ff));
        let d = ops::moe_gemv_gate_up(g, &ex.gate_up, &xb, &ib, &ab, dim, ff, k).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("moe_gemv_gate_up {dt:?}"), &read_f32(g, &ab, t * k * ff), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

fn check_moe_gemv_down(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (3, 6, 2);
    for (dt, base) in DTYPES.iter().flat_map(|&d| [(d, 52), (d, 64)]) {
        let (dim, ff) = (40, inner_dim(dt, base));
        let ex = experts(g, &mut rng, e, inner_dim(dt, dim), ff, dt);
        let dim = inner_dim(dt, dim);
        let act = rng.vec(t * k * ff, 1.0);
        let x0 = rng.vec(t * dim, 1.0);
        let (ids, ws) = routing(&mut rng, t, e, k);
        let mut want = x0.clone();
        for a in 0..t * k {
            let y = down_ref(&act[a * ff..(a + 1) * ff], ids[a], &ex, dim, ff);
            let tt = a / k;
            want[tt * dim..(tt + 1) * dim].iter_mut().zip(&y).for_each(|(w, y)| *w += ws[a] * y);
        }
        let (ab, ib, wb, xb) =
            (upload_f32(g, "act", &act), upload_u32(g, "ids", &ids), upload_f32(g, "w", &ws), upload_f32(g, "x", &x0));
        let d = ops::moe_gemv_down(g, &ex.down, &ab, &ib, &wb, &xb, dim, ff, k).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("moe_gemv_down {dt:?}"), &read_f32(g, &xb, t * dim), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

fn check_moe_group(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (37, 8, 3);
    let (mut ids, _) = routing(&mut rng, t, e, k);
    // Leave one expert unused to cover empty groups.
    ids.iter_mut().for_each(|i| {
        if *i == 5 {
            *i = 6
        }
    });
    let (sorted, pos_of, starts) = cpu::group_by_expert(&ids, e);
    let (ib, sb, pb, stb, s) = (
        upload_u32(g, "ids", &ids),
        poisoned_u32(g, "sorted", t * k),
        poisoned_u32(g, "pos", t * k),
        poisoned_u32(g, "starts", e + 1),
        step(g, t, 0),
    );
    let d = ops::moe_group(g, &s, &ib, &sb, &pb, &stb, e, k).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    same_u32("moe_group sorted", &read_u32(g, &sb, t * k), &sorted)?;
    same_u32("moe_group pos_of", &read_u32(g, &pb, t * k), &pos_of)?;
    same_u32("moe_group starts", &read_u32(g, &stb, e + 1), &starts)
}

fn check_moe_gemm_gate_up(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    // 37 tokens x 2 = 74 assignments over 5 experts: several experts span 2-3 row tiles.
    let (t, e, k) = (37, 5, 2);
    for dt in DTYPES {
        let (dim, ff) = (inner_dim(dt, 40), inner_dim(dt, 52));
        let ex = experts(g, &mut rng, e, dim, ff, dt);
        let x = rng.vec(t * dim, 1.0);
        let (ids, _) = routing(&mut rng, t, e, k);
        let (sorted, _, starts) = cpu::group_by_expert(&ids, e);
        let want: Vec<f32> =
            sorted.iter().flat_map(|&a| act_ref(&x, a as usize / k, ids[a as usize], &ex, dim, ff)).collect();
        let (xb, sb, stb, ab) = (
            upload_f32(g, "x", &x),
            upload_u32(g, "sorted", &sorted),
            upload_u32(g, "starts", &starts),
            poisoned(g, "act", t * k * ff),
        );
        let d = ops::moe_gemm_gate_up(g, &ex.gate_up, &xb, &sb, &stb, &ab, dim, ff, k, e).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("moe_gemm_gate_up {dt:?}"), &read_f32(g, &ab, t * k * ff), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

fn check_moe_gemm_down(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (37, 5, 2);
    for dt in DTYPES {
        let (dim, ff) = (inner_dim(dt, 40), inner_dim(dt, 52));
        let ex = experts(g, &mut rng, e, dim, ff, dt);
        let (ids, _) = routing(&mut rng, t, e, k);
        let (sorted, _, starts) = cpu::group_by_expert(&ids, e);
        let act = rng.vec(t * k * ff, 1.0); // rows in sorted order
        let want: Vec<f32> = (0..t * k)
            .flat_map(|q| down_ref(&act[q * ff..(q + 1) * ff], ids[sorted[q] as usize], &ex, dim, ff))
            .collect();
        let (ab, stb, yb) =
            (upload_f32(g, "act", &act), upload_u32(g, "starts", &starts), poisoned(g, "y", t * k * dim));
        let d = ops::moe_gemm_down(g, &ex.down, &ab, &stb, &yb, dim, ff, k, e).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("moe_gemm_down {dt:?}"), &read_f32(g, &yb, t * k * dim), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

fn check_moe_combine(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k, dim) = (9, 4, 2, 300);
    let (ids, ws) = routing(&mut rng, t, e, k);
    let (_, pos_of, _) = cpu::group_by_expert(&ids, e);
    let y = rng.vec(t * k * dim, 1.0);
    let x0 = rng.vec(t * dim, 1.0);
    let mut want = x0.clone();
    for a in 0..t * k {
        let q = pos_of[a] as usize;
        for n in 0..dim {
            want[(a / k) * dim + n] += ws[a] * y[q * dim + n];
        }
    }
    let (yb, pb, wb, xb) =
        (upload_f32(g, "y", &y), upload_u32(g, "pos", &pos_of), upload_f32(g, "w", &ws), upload_f32(g, "x", &x0));
    let d = ops::moe_combine(g, &yb, &pb, &wb, &xb, dim, k).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    close("moe_combine", &read_f32(g, &xb, t * dim), &want, 1e-5, 1e-5).map(|_| ())
}

fn check_argmax(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (rows, n) = (3, 1000);
    let mut l = rng.vec(rows * n, 5.0);
    // Row 1: a tie between 613 and 900, which must resolve to the first.
    l[n + 613] = 9.0;
    l[n + 900] = 9.0;
    let want: Vec<u32> = l.chunks(n).map(cpu::argmax).collect();
    let (lb, ob) = (upload_f32(g, "logits", &l), poisoned_u32(g, "out", rows));
    let d = ops::argmax(g, &lb, &ob, n, Rows::PER_TOKEN).map_err(|e| e.to_string())?;
    g.run(&[&d], rows as u32);
    same_u32("argmax", &read_u32(g, &ob, rows), &want)
}

fn check_copy(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let n = 70_001; // vec4s, not a multiple of the workgroup
    let src = rng.vec(4 * n, 1.0);
    let (sb, db) = (upload_f32(g, "src", &src), poisoned(g, "dst", 4 * n));
    let d = ops::copy(g, &sb, &db, n).map_err(|e| e.to_string())?;
    g.run(&[&d], 1);
    close("copy", &read_f32(g, &db, 4 * n), &src, 0.0, 0.0).map(|_| ())
}

/// Every kernel, its check, and a deliberate break: (text in its .wgsl, replacement).
const KERNELS: &[(Shader, Check, &str, &str)] = &[
    (Shader::Embed, check_embed, "if (i >= p.dim) {", "if (i + 4u >= p.dim) {"),
    (
        Shader::RmsNorm,
        check_rmsnorm,
        "for (var i = lid; i < p.dim; i += WG) {\n        y[",
        "for (var i = lid; i + 1u < p.dim; i += WG) {\n        y[",
    ),
    (Shader::Gemv, check_gemv, "if (row < p.n) {", "if (row + 1u < p.n) {"),
    (Shader::Gemm, check_gemm, "if (row < m && col < p.n) {", "if (row + 1u < m && col < p.n) {"),
    (Shader::QkvRope, check_qkv_rope, "v_cache[ci + 1u] = b;", "v_cache[ci + 1u] = a;"),
    (Shader::RopeKv, check_rope_kv, "k_cache[cb + e.y] =", "k_cache[cb + e.x] ="),
    (Shader::Attention, check_attention, "if (j <= pos) {\n            let kb", "if (j < pos) {\n            let kb"),
    (
        Shader::AttentionSplit,
        check_attention_split,
        "let hi = min(pos + 1u, (s + 1u) * p.chunk);",
        "let hi = min(pos, (s + 1u) * p.chunk);",
    ),
    (
        Shader::AttentionCombine,
        check_attention_split,
        "for (var s = 0u; s < used; s++) {\n        let pb = base + s * (d + 2u);\n        l +=",
        "for (var s = 1u; s < used; s++) {\n        let pb = base + s * (d + 2u);\n        l +=",
    ),
    (Shader::Router, check_router, "weights[t * p.k + s] = prob;", "weights[t * p.k + s] = best_v;"),
    (Shader::MoeGemvGateUp, check_moe_gemv_gate_up, "let e = ids[a];", "let e = ids[t * p.k];"),
    (Shader::MoeGemvDown, check_moe_gemv_down, "acc += weights[a] * d;", "acc += weights[t * p.k] * d;"),
    (Shader::MoeGroup, check_moe_group, "starts[p.experts] = acc;", "starts[p.experts] = acc - 1u;"),
    (Shader::MoeGemmGateUp, check_moe_gemm_gate_up, "if (r < rows && f < p.ff) {", "if (r + 1u < rows && f < p.ff) {"),
    (
        Shader::MoeGemmDown,
        check_moe_gemm_down,
        "let n_tiles = (starts[e + 1u] - s + TILE - 1u) / TILE;",
        "let n_tiles = (starts[e + 1u] - s) / TILE;",
    ),
    (Shader::MoeCombine, check_moe_combine, "for (var s = 0u; s < p.k; s++) {", "for (var s = 1u; s < p.k; s++) {"),
    (Shader::Copy, check_copy, "if (i < p.n) {", "if (i + 1u < p.n) {"),
    (Shader::Argmax, check_argmax, "(ov == best_v[lid] && oi < mine)", "(ov == best_v[lid] && oi > mine)"),
];

fn seed() -> u64 {
    // Fresh inputs each run unless WEBMOE_TEST_SEED pins them (printed on failure).
    std::env::var("WEBMOE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}

fn run_check(shader: Shader) {
    let (_, check, _, _) = KERNELS.iter().find(|k| k.0 == shader).expect("kernel listed");
    let s = seed();
    if let Err(e) = check(&gpu(), s) {
        panic!("{e} (WEBMOE_TEST_SEED={s})");
    }
}

#[test]
fn embed() {
    run_check(Shader::Embed)
}
#[test]
fn rmsnorm() {
    run_check(Shader::RmsNorm)
}
#[test]
fn gemv() {
    run_check(Shader::Gemv)
}
#[test]
fn gemm() {
    run_check(Shader::Gemm)
}
#[test]
fn qkv_rope() {
    run_check(Shader::QkvRope)
}
#[test]
fn rope_kv() {
    run_check(Shader::RopeKv)
}
#[test]
fn attention() {
    run_check(Shader::Attention)
}
#[test]
fn attention_split() {
    run_check(Shader::AttentionSplit)
}
#[test]
fn router() {
    run_check(Shader::Router)
}
#[test]
fn moe_gemv_gate_up() {
    run_check(Shader::MoeGemvGateUp)
}
#[test]
fn moe_gemv_down() {
    run_check(Shader::MoeGemvDown)
}
#[test]
fn moe_group() {
    run_check(Shader::MoeGroup)
}
#[test]
fn moe_gemm_gate_up() {
    run_check(Shader::MoeGemmGateUp)
}
#[test]
fn moe_gemm_down() {
    run_check(Shader::MoeGemmDown)
}
#[test]
fn moe_combine() {
    run_check(Shader::MoeCombine)
}
#[test]
fn argmax() {
    run_check(Shader::Argmax)
}
#[test]
fn copy() {
    run_check(Shader::Copy)
}

/// The matmuls' workgroup-memory reductions (what browsers run today) on a device that may
/// also have subgroups, where the other tests run the subgroup path.
#[test]
fn matmuls_without_subgroups() {
    let _ = gpu(); // sets up the environment the adapter needs
    let g = webmoe::platform::block_on(Gpu::with_options(GpuOptions { subgroups: false })).expect("GPU");
    assert!(!g.subgroups);
    let s = seed();
    for (name, check) in [
        ("gemv", check_gemv as Check),
        ("moe_gemv_gate_up", check_moe_gemv_gate_up),
        ("moe_gemv_down", check_moe_gemv_down),
    ] {
        if let Err(e) = check(&g, s) {
            panic!("{name} without subgroups: {e} (WEBMOE_TEST_SEED={s})");
        }
    }
}

/// Where the adapter offers subgroups of at least 8 lanes, the kernels use them (so the
/// reference checks above exercise the subgroup path there).
#[test]
fn subgroups_used_where_offered() {
    let g = gpu();
    let offered = g.adapter_features().contains(wgpu::Features::SUBGROUP) && g.info.subgroup_min_size >= 8;
    let wanted = std::env::var("WEBMOE_SUBGROUPS").map_or(true, |v| v != "0");
    assert_eq!(
        g.subgroups,
        offered && wanted,
        "adapter {} subgroup sizes {}..{}",
        g.adapter_name(),
        g.info.subgroup_min_size,
        g.info.subgroup_max_size
    );
    println!(
        "{}: subgroups {} (sizes {}..{})",
        g.adapter_name(),
        g.subgroups,
        g.info.subgroup_min_size,
        g.info.subgroup_max_size
    );
}

/// A grid wider than 65535 workgroups is folded into z; the last rows must still be written.
#[test]
fn gemv_folded_grid() {
    let s = seed();
    if let Err(e) = check_matmul(&gpu(), s, false, 1, 65536 * 4 + 9, 8, &[DType::F32]) {
        panic!("{e} (WEBMOE_TEST_SEED={s})");
    }
}

#[test]
fn every_kernel_has_a_check() {
    use std::collections::HashSet;
    let listed: HashSet<&str> = KERNELS.iter().map(|k| k.0.name()).collect();
    let files: HashSet<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".wgsl")).map(str::to_owned))
        .collect();
    for f in &files {
        assert!(listed.contains(f.as_str()), "shaders/{f}.wgsl has no reference check in tests/kernels.rs");
    }
}

#[test]
fn broken_kernels_fail() {
    let g = fresh_gpu();
    let s = seed();
    for (shader, check, from, to) in KERNELS {
        let src = shader.source();
        assert!(src.contains(from), "{}: mutation anchor {from:?} not found", shader.name());
        g.replace_kernel_source(*shader, src.replacen(from, to, 1));
        let r = check(&g, s);
        g.replace_kernel_source(*shader, src.to_string());
        assert!(r.is_err(), "{}: a deliberately broken kernel passed its check (seed {s})", shader.name());
        println!("{} broken as intended -> {}", shader.name(), r.unwrap_err());
    }
}

//! Reference checks for the attention-side kernels: rotary + KV write (rope_kv, and fused
//! into the decode q/k/v projection, qkv_rope), q/k norms, attention and split-K attention.

use super::*;
use webmoe::model::plan::{RopePlan, RopeScaling};

/// A cache of `n` values as the kernels store it: f32, or (kv16) f16 pairs in u32 words.
fn cache_bytes(v: &[f32], kv16: bool) -> Vec<u8> {
    webmoe::tensor::from_f32(if kv16 { DType::F16 } else { DType::F32 }, v)
}

/// Values rounded as an f16 cache stores them (or unchanged).
fn as_cached(v: &[f32], kv16: bool) -> Vec<f32> {
    if kv16 { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { v.to_vec() }
}

/// A poisoned cache of `n` values (NaN in either storage).
fn poisoned_cache(g: &Gpu, name: &str, n: usize, kv16: bool) -> wgpu::Buffer {
    g.storage_init(name, &cache_bytes(&vec![f32::NAN; n], kv16)).expect("upload")
}

/// A cache's `n` values read back and widened.
fn read_cache(g: &Gpu, b: &wgpu::Buffer, n: usize, kv16: bool) -> Vec<f32> {
    let words = read_u32(g, b, if kv16 { n / 2 } else { n });
    webmoe::tensor::to_f32(if kv16 { DType::F16 } else { DType::F32 }, bytemuck::cast_slice(&words))
}

/// Tolerances for values compared after an f16 cache: one f16 step either way (WGSL
/// leaves the rounding direction of pack2x16float to the device).
fn cache_tol(kv16: bool, atol: f32, rtol: f32) -> (f32, f32) {
    if kv16 { (atol.max(1e-6), rtol.max(1.0 / 1024.0)) } else { (atol, rtol) }
}

/// A plain rotary table [ctx, d/2] of (cos, sin).
fn table(hd: usize, ctx: usize) -> Vec<f32> {
    webmoe::config::rope_table(&RopePlan { theta: 10000.0, scaling: RopeScaling::None }, hd, ctx)
}

pub fn check_rope_kv(g: &Gpu, seed: u64) -> Result<(), String> {
    for interleaved in [false, true] {
        for norm in [false, true] {
            check_rope_kv_mode(g, seed, interleaved, norm, false)?;
        }
    }
    // An f16 cache takes adjacent pairs only (the GPU weights' layout), and refuses others.
    for norm in [false, true] {
        check_rope_kv_mode(g, seed, true, norm, true)?;
    }
    let b = poisoned(g, "b", 64);
    let c = ops::Qkv { qkv: &b, k: &b, v: &b, kv16: true };
    if ops::rope_kv(g, &b, &b, c, None, (1, 1, 8, 4), false).is_ok() {
        return Err("rope_kv: an f16 cache with rotate-half pairs was accepted".into());
    }
    Ok(())
}

pub fn check_rope_kv_mode(g: &Gpu, seed: u64, interleaved: bool, norm: bool, kv16: bool) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx, t, pos0, eps) = (4, 2, 24, 20, 5, 7, 1e-6);
    let stride = (heads + 2 * kvh) * hd;
    let qkv = rng.vec(t * stride, 1.0);
    let table = table(hd, ctx);
    // Per-head norm weights, q's then k's.
    let nw = rng.vec(2 * hd, 1.5);
    // Reference: split, (normalise each head,) rotate q and k, place k and v at
    // positions pos0..pos0+t.
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in qkv.chunks(stride) {
        q.extend_from_slice(&row[..heads * hd]);
        k.extend_from_slice(&row[heads * hd..(heads + kvh) * hd]);
        v.extend_from_slice(&row[(heads + kvh) * hd..]);
    }
    if norm {
        q = cpu::rms_norm(&q, &nw[..hd], eps);
        k = cpu::rms_norm(&k, &nw[hd..], eps);
    }
    cpu::rope(&mut q, heads, hd, pos0, &table, interleaved);
    cpu::rope(&mut k, kvh, hd, pos0, &table, interleaved);
    let (qb, tb, kc, vc, s, nb) = (
        upload_f32(g, "qkv", &qkv),
        upload_f32(g, "table", &table),
        poisoned_cache(g, "kc", kvh * ctx * hd, kv16),
        poisoned_cache(g, "vc", kvh * ctx * hd, kv16),
        step(g, t, pos0),
        upload_f32(g, "norm", &nw),
    );
    let c = ops::Qkv { qkv: &qb, k: &kc, v: &vc, kv16 };
    let d = ops::rope_kv(g, &s, &tb, c, norm.then_some((&nb, eps)), (heads, kvh, hd, ctx), interleaved)
        .map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    let got = read_f32(g, &qb, t * stride);
    let got_q: Vec<f32> = got.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
    close(&format!("rope q interleaved={interleaved} norm={norm}"), &got_q, &q, 1e-5, 1e-5)?;
    let (gk, gv) = (read_cache(g, &kc, kvh * ctx * hd, kv16), read_cache(g, &vc, kvh * ctx * hd, kv16));
    let (k, v) = (as_cached(&k, kv16), as_cached(&v, kv16));
    let (ka, kr) = cache_tol(kv16, 1e-5, 1e-5);
    for tt in 0..t {
        for h in 0..kvh {
            let c = (h * ctx + pos0 + tt) * hd;
            let r = (tt * kvh + h) * hd;
            let what = format!("rope k cache t={tt} head={h} norm={norm} kv16={kv16}");
            close(&what, &gk[c..c + hd], &k[r..r + hd], ka, kr)?;
            let (va, vr) = cache_tol(kv16, 0.0, 0.0);
            close(&format!("v cache t={tt} head={h} kv16={kv16}"), &gv[c..c + hd], &v[r..r + hd], va, vr)?;
        }
    }
    Ok(())
}

/// RMSNorm over each token's whole q and whole k projection, in place; v untouched.
pub fn check_qk_norm(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, t, eps) = (6, 2, 24, 5, 1e-5);
    let (qd, kvd) = (heads * hd, kvh * hd);
    let stride = qd + 2 * kvd;
    let qkv = rng.vec(t * stride, 2.0);
    let nw = rng.vec(qd + kvd, 1.5);
    let mut want = Vec::with_capacity(qkv.len());
    for row in qkv.chunks(stride) {
        want.extend(cpu::rms_norm(&row[..qd], &nw[..qd], eps));
        want.extend(cpu::rms_norm(&row[qd..qd + kvd], &nw[qd..], eps));
        want.extend_from_slice(&row[qd + kvd..]);
    }
    let (qb, nb) = (upload_f32(g, "qkv", &qkv), upload_f32(g, "norm", &nw));
    let d = ops::qk_norm(g, &qb, &nb, heads, kvh, hd, eps).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    close("qk_norm", &read_f32(g, &qb, t * stride), &want, 1e-5, 1e-5).map(|_| ())
}

/// The fused decode q/k/v projection: matmul, then rotary (adjacent pairs) on q into the
/// qkv rows and on k into the cache, v into the cache; as one matrix and as three.
pub fn check_qkv_rope(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx, t, pos0) = (4, 2, 24, 20, 3, 5);
    let (qd, kvd) = (heads * hd, kvh * hd);
    let stride = qd + 2 * kvd;
    let table = table(hd, ctx);
    for (i, &dt) in DTYPES.iter().enumerate() {
        // Alternate the 4-wide loop (K = 68 for plain floats) and the 32-block path, and
        // q/k/v biases (Qwen2-MoE, gpt-oss) on and off.
        let k = inner_dim(dt, if i % 2 == 0 { 68 } else { 96 });
        let with_bias = i % 3 != 1;
        let x = rng.vec(t * k, 1.0);
        let (w, wv) = weight(g, &mut rng, dt, 1, stride * k, 0.5);
        let bias = rng.vec(stride, 1.0);
        let mut prod = cpu::matmul(&x, t, k, &wv[0], stride);
        if with_bias {
            prod.chunks_mut(stride).for_each(|r| r.iter_mut().zip(&bias).for_each(|(p, b)| *p += b));
        }
        let (mut q, mut kk, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for row in prod.chunks(stride) {
            q.extend_from_slice(&row[..qd]);
            kk.extend_from_slice(&row[qd..qd + kvd]);
            v.extend_from_slice(&row[qd + kvd..]);
        }
        cpu::rope(&mut q, heads, hd, pos0, &table, true);
        cpu::rope(&mut kk, kvh, hd, pos0, &table, true);
        // An f16 cache for every other type.
        let kv16 = i % 2 == 1;
        for split in [false, true] {
            let (xb, tb, s) = (upload_f32(g, "x", &x), upload_f32(g, "table", &table), step(g, t, pos0));
            let (qb, kc, vc) = (
                poisoned(g, "qkv", t * stride),
                poisoned_cache(g, "kc", kvh * ctx * hd, kv16),
                poisoned_cache(g, "vc", kvh * ctx * hd, kv16),
            );
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
            let bb = upload_f32(g, "bias", &bias);
            let bb = with_bias.then_some(&bb);
            let ds = parts
                .iter()
                .map(|(w, n, off)| {
                    let c = ops::Qkv { qkv: &qb, k: &kc, v: &vc, kv16 };
                    ops::qkv_rope(g, &s, w, &xb, &tb, c, bb, (*n, k, *off), shape)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            g.run(&ds.iter().collect::<Vec<_>>(), t as u32);
            let what = format!("qkv_rope {dt:?} split={split} bias={with_bias} kv16={kv16}");
            let got = read_f32(g, &qb, t * stride);
            let got_q: Vec<f32> = got.chunks(stride).flat_map(|r| r[..qd].to_vec()).collect();
            close(&format!("{what} q"), &got_q, &q, 1e-4, 1e-4)?;
            let (gk, gv) = (read_cache(g, &kc, kvh * ctx * hd, kv16), read_cache(g, &vc, kvh * ctx * hd, kv16));
            let (a, r) = cache_tol(kv16, 1e-4, 1e-4);
            for tt in 0..t {
                for h in 0..kvh {
                    let c = (h * ctx + pos0 + tt) * hd;
                    let rr = (tt * kvh + h) * hd;
                    close(&format!("{what} k cache t={tt} head={h}"), &gk[c..c + hd], &kk[rr..rr + hd], a, r)?;
                    close(&format!("{what} v cache t={tt} head={h}"), &gv[c..c + hd], &v[rr..rr + hd], a, r)?;
                }
            }
        }
    }
    Ok(())
}

/// Random q|k|v rows (T tokens from position pos0), KV caches and (with `sinks`) one
/// sink logit per head on the GPU, a poisoned output, the step, the spec and the CPU
/// reference: what both attention checks start from.
struct Case {
    qkv: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    out: wgpu::Buffer,
    step: wgpu::Buffer,
    sinks: Option<wgpu::Buffer>,
    spec: ops::AttnSpec,
    want: Vec<f32>,
    kv16: bool,
}

impl Case {
    fn qkv(&self) -> ops::Qkv<'_> {
        ops::Qkv { qkv: &self.qkv, k: &self.k, v: &self.v, kv16: self.kv16 }
    }
}

fn attention_case(
    g: &Gpu,
    rng: &mut Rng,
    (heads, kvh, hd, ctx): (usize, usize, usize, usize),
    (t, pos0): (usize, usize),
    window: Option<usize>,
    sinks: bool,
    kv16: bool,
) -> Case {
    let stride = (heads + 2 * kvh) * hd;
    let qkv = rng.vec(t * stride, 1.0);
    // The reference attends over the values the cache holds (rounded to f16 or not).
    let kc = as_cached(&rng.vec(kvh * ctx * hd, 1.0), kv16);
    let vc = as_cached(&rng.vec(kvh * ctx * hd, 1.0), kv16);
    // Sinks large enough to take a real share of the softmax; a scale that is not
    // 1/sqrt(d) (Granite's attention multiplier, Gemma's query_pre_attn_scalar).
    let sink = rng.vec(heads, 3.0);
    let scale = if sinks { 0.3 } else { 1.0 / (hd as f32).sqrt() };
    let q: Vec<f32> = qkv.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
    let want =
        cpu::attention(&q, (&kc, &vc, ctx), pos0, (heads, kvh, hd), window, scale, sinks.then_some(sink.as_slice()));
    Case {
        qkv: upload_f32(g, "qkv", &qkv),
        k: g.storage_init("k", &cache_bytes(&kc, kv16)).expect("upload"),
        v: g.storage_init("v", &cache_bytes(&vc, kv16)).expect("upload"),
        kv16,
        out: poisoned(g, "out", t * heads * hd),
        step: step(g, t, pos0),
        sinks: sinks.then(|| upload_f32(g, "sinks", &sink)),
        spec: ops::AttnSpec { heads, kv_heads: kvh, head_dim: hd, ctx, window, scale },
        want,
    }
}

pub fn check_attention(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    // head_dim 24 (not a power of two), 74 visible keys (more than one 64-key chunk).
    let (heads, kvh, hd, ctx, t, pos0) = (8, 2, 24, 200, 4, 70);
    let cases = [(None, false, false), (Some(50), false, true), (None, true, true), (Some(50), true, false)];
    for (window, sinks, kv16) in cases {
        let c = attention_case(g, &mut rng, (heads, kvh, hd, ctx), (t, pos0), window, sinks, kv16);
        let d = ops::attention(g, &c.step, c.qkv(), &c.out, c.sinks.as_ref(), &c.spec).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("attention window={window:?} sinks={sinks} kv16={kv16}");
        close(&what, &read_f32(g, &c.out, t * heads * hd), &c.want, 1e-5, 1e-4)?;
    }
    Ok(())
}

/// Split-K attention (decode): several 256-position chunks, a window that empties some of
/// them, a step inside the first chunk, and sinks; both kernels (split, combine) run.
pub fn check_attention_split(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx) = (8, 2, 24, 1100);
    let cases = [
        (3, 1000, None, false, false),
        (3, 1000, Some(300), true, true),
        (1, 5, None, true, false),
        (2, 511, Some(40), false, true),
    ];
    for (t, pos0, window, sinks, kv16) in cases {
        let c = attention_case(g, &mut rng, (heads, kvh, hd, ctx), (t, pos0), window, sinks, kv16);
        let pb = poisoned(g, "partials", ops::attention_partials_bytes(t, heads, hd, ctx) / 4);
        let [split, combine] = ops::attention_split(g, &c.step, c.qkv(), &pb, &c.out, c.sinks.as_ref(), &c.spec)
            .map_err(|e| e.to_string())?;
        g.run_at(&[&split, &combine], t as u32, pos0 as u32);
        let what = format!("split attention t={t} pos0={pos0} window={window:?} sinks={sinks} kv16={kv16}");
        close(&what, &read_f32(g, &c.out, t * heads * hd), &c.want, 1e-5, 1e-4)?;
    }
    Ok(())
}

//! Reference checks for the attention-side kernels: rotary + KV write (rope_kv, and fused
//! into the decode q/k/v projection, qkv_rope), attention and split-K attention.

use super::*;

pub fn check_rope_kv(g: &Gpu, seed: u64) -> Result<(), String> {
    for interleaved in [false, true] {
        check_rope_kv_mode(g, seed, interleaved)?;
    }
    Ok(())
}

pub fn check_rope_kv_mode(g: &Gpu, seed: u64, interleaved: bool) -> Result<(), String> {
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
pub fn check_qkv_rope(g: &Gpu, seed: u64) -> Result<(), String> {
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

/// Random q|k|v rows (T tokens from position pos0) and KV caches on the GPU, a poisoned
/// output, the step, and the CPU reference: what both attention checks start from.
fn attention_case(
    g: &Gpu,
    rng: &mut Rng,
    (heads, kvh, hd, ctx): (usize, usize, usize, usize),
    t: usize,
    pos0: usize,
    window: Option<usize>,
) -> (wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, Vec<f32>) {
    let stride = (heads + 2 * kvh) * hd;
    let qkv = rng.vec(t * stride, 1.0);
    let kc = rng.vec(kvh * ctx * hd, 1.0);
    let vc = rng.vec(kvh * ctx * hd, 1.0);
    let q: Vec<f32> = qkv.chunks(stride).flat_map(|r| r[..heads * hd].to_vec()).collect();
    let want = cpu::attention(&q, &kc, &vc, ctx, pos0, heads, kvh, hd, window);
    (
        upload_f32(g, "qkv", &qkv),
        upload_f32(g, "k", &kc),
        upload_f32(g, "v", &vc),
        poisoned(g, "out", t * heads * hd),
        step(g, t, pos0),
        want,
    )
}

pub fn check_attention(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    // head_dim 24 (not a power of two), 74 visible keys (more than one 64-key chunk).
    let (heads, kvh, hd, ctx, t, pos0) = (8, 2, 24, 200, 4, 70);
    for window in [None, Some(50)] {
        let (qb, kb, vb, ob, s, want) = attention_case(g, &mut rng, (heads, kvh, hd, ctx), t, pos0, window);
        let d = ops::attention(g, &s, &qb, &kb, &vb, &ob, heads, kvh, hd, ctx, window).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        close(&format!("attention window={window:?}"), &read_f32(g, &ob, t * heads * hd), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

/// Split-K attention (decode): several 256-position chunks, a window that empties some of
/// them, and a step inside the first chunk; both kernels (split, combine) run.
pub fn check_attention_split(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (heads, kvh, hd, ctx) = (8, 2, 24, 1100);
    for (t, pos0, window) in [(3, 1000, None), (3, 1000, Some(300)), (1, 5, None), (2, 511, Some(40))] {
        let (qb, kb, vb, ob, s, want) = attention_case(g, &mut rng, (heads, kvh, hd, ctx), t, pos0, window);
        let pb = poisoned(g, "partials", ops::attention_partials_bytes(t, heads, hd, ctx) / 4);
        let [split, combine] = ops::attention_split(g, &s, &qb, &kb, &vb, &pb, &ob, heads, kvh, hd, ctx, window)
            .map_err(|e| e.to_string())?;
        g.run_at(&[&split, &combine], t as u32, pos0 as u32);
        let what = format!("split attention t={t} pos0={pos0} window={window:?}");
        close(&what, &read_f32(g, &ob, t * heads * hd), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

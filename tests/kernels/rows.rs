//! Reference checks for the row-wise kernels: the embedding lookup, RMSNorm, the
//! post-norm residual add, argmax and the buffer copy.

use super::*;

pub fn check_embed(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (vocab, t) = (50, 5);
    for (i, &dt) in DTYPES.iter().enumerate() {
        let dim = inner_dim(dt, 36);
        let raw = random_blocks(&mut rng, dt, vocab * dim, 1.0);
        let e = &to_f32(dt, &raw);
        let w = g.upload_weight("w", dt, &[&raw]).expect("upload");
        // Every other type with an embedding multiplier (Granite's).
        let scale = if i % 2 == 1 { 12.5 } else { 1.0 };
        let toks: Vec<u32> = (0..t).map(|_| rng.below(vocab) as u32).collect();
        let (tb, xb) = (upload_u32(g, "tok", &toks), poisoned(g, "x", t * dim));
        let d = ops::embed(g, &w, (0, vocab), &tb, &xb, dim, vocab, scale).map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let want: Vec<f32> =
            toks.iter().flat_map(|&k| e[k as usize * dim..(k as usize + 1) * dim].iter().map(|v| v * scale)).collect();
        close(&format!("embed {dt:?} scale {scale}"), &read_f32(g, &xb, t * dim), &want, 0.0, 0.0)?;
        // The same table in row ranges (as one too large for a binding is uploaded), one
        // dispatch each, cut from the packed buffer by quant::split_rows.
        let packed = webmoe::quant::pack_matrix(dt, &[&raw]).unwrap();
        let max = packed.bytes.len() / 3;
        let parts = webmoe::quant::split_rows(&packed, vocab, dim, max).map_err(|e| e.to_string())?;
        if parts.len() < 3 {
            return Err(format!("embed {dt:?}: {} row ranges for a third of the bytes each", parts.len()));
        }
        let xb = poisoned(g, "x", t * dim);
        // A 50-row table: most ranges hold none of the 5 tokens, some several.
        let mut ds = Vec::new();
        for (p, r0, n) in &parts {
            let w = g.upload_packed("w part", p).map_err(|e| e.to_string())?;
            ds.push(ops::embed(g, &w, (*r0, *n), &tb, &xb, dim, vocab, scale).map_err(|e| e.to_string())?);
        }
        g.run(&ds.iter().collect::<Vec<_>>(), t as u32);
        close(&format!("embed {dt:?} in {} row ranges", parts.len()), &read_f32(g, &xb, t * dim), &want, 0.0, 0.0)?;
    }
    Ok(())
}

pub fn check_rmsnorm(g: &Gpu, seed: u64) -> Result<(), String> {
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

/// A post-norm: y += alpha · rmsnorm(branch) · w[off..], the branch zeroed after.
pub fn check_post_norm(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, dim, eps) = (4, 300, 1e-5);
    let x = rng.vec(t * dim, 2.0);
    let (off, alpha) = (7, 0.5);
    let w2 = rng.vec(off + dim, 1.5);
    let y0 = rng.vec(t * dim, 1.0);
    let norm = cpu::rms_norm(&x, &w2[off..], eps);
    let want: Vec<f32> = y0.iter().zip(&norm).map(|(y, n)| y + alpha * n).collect();
    let (xb, wb, yb, s) = (upload_f32(g, "x", &x), upload_f32(g, "w", &w2), upload_f32(g, "y", &y0), step(g, t, 0));
    let d = ops::rms_norm_add(g, &s, (&wb, off), &xb, &yb, dim, eps, alpha).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    close("rmsnorm post-norm add", &read_f32(g, &yb, t * dim), &want, 1e-5, 1e-5)?;
    close("rmsnorm post-norm clears its branch", &read_f32(g, &xb, t * dim), &vec![0.0; t * dim], 0.0, 0.0)?;
    Ok(())
}

/// y (+)= x · W^T for every storage type and both accumulate modes, written into
/// columns `off..off+n` of rows `stride` wide (as q, k and v share one buffer).
pub fn check_argmax(g: &Gpu, seed: u64) -> Result<(), String> {
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

pub fn check_copy(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let n = 70_001; // vec4s, not a multiple of the workgroup
    let src = rng.vec(4 * n, 1.0);
    let (sb, db) = (upload_f32(g, "src", &src), poisoned(g, "dst", 4 * n));
    let d = ops::copy(g, &sb, &db, n).map_err(|e| e.to_string())?;
    g.run(&[&d], 1);
    close("copy", &read_f32(g, &db, 4 * n), &src, 0.0, 0.0).map(|_| ())
}

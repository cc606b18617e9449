//! The CPU reference: a plain f32 forward pass, written to be read top to bottom. It is
//! the oracle every WGSL kernel is tested against, and `--device cpu` runs it.
//! Shapes are given as [rows, cols], row-major; `T` is tokens in this step.

use crate::config::{ModelConfig, rope_inv_freq, rope_table};
use crate::error::{Error, Result};
use crate::model::ModelFiles;

/// y[m, n] = sum_k x[m, k] * w[n, k]   (x: [m, k], w: [n, k] as HF Linear stores it)
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wj = &w[j * k..(j + 1) * k];
            y[i * n + j] = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
        }
    }
    y
}

/// Row-wise RMSNorm: y = x / sqrt(mean(x^2) + eps) * w   (x: [rows, dim])
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..dim {
            yr[i] = xr[i] * r * w[i];
        }
    }
    y
}

/// Rotary embedding. Pair i of a head is (i, i + d/2) in HF's rotate-half convention, or
/// (2i, 2i + 1) when `interleaved` (GGUF). `x`: [T, heads * d]; row t is at position
/// `pos0 + t`; `table`: [pos, d/2] of (cos, sin).
pub fn rope(x: &mut [f32], heads: usize, d: usize, pos0: usize, table: &[f32], interleaved: bool) {
    let half = d / 2;
    for (t, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let cs = &table[(pos0 + t) * half * 2..(pos0 + t + 1) * half * 2];
        for h in 0..heads {
            let v = &mut row[h * d..(h + 1) * d];
            for i in 0..half {
                let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                let (ia, ib) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                let (a, b) = (v[ia], v[ib]);
                v[ia] = a * c - b * s;
                v[ib] = b * c + a * s;
            }
        }
    }
}

/// Causal grouped-query attention over a KV cache.
/// q: [T, heads*d]; caches: [kv_heads, ctx, d]; query t sits at position pos0+t and sees keys
/// j <= pos0+t (and j > pos0+t-window with a sliding window). Returns [T, heads*d].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    ctx: usize,
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let t_len = q.len() / (heads * d);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0; q.len()];
    for t in 0..t_len {
        let p = pos0 + t;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..heads {
            let kvh = h / group;
            let qv = &q[(t * heads + h) * d..(t * heads + h + 1) * d];
            let scores: Vec<f32> = (lo..=p)
                .map(|j| {
                    let kv = &k_cache[(kvh * ctx + j) * d..(kvh * ctx + j + 1) * d];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f32 = e.iter().sum();
            let o = &mut out[(t * heads + h) * d..(t * heads + h + 1) * d];
            for (jj, j) in (lo..=p).enumerate() {
                let vv = &v_cache[(kvh * ctx + j) * d..(kvh * ctx + j + 1) * d];
                for i in 0..d {
                    o[i] += e[jj] / l * vv[i];
                }
            }
        }
    }
    out
}

/// Router: logits = x · wg^T, softmax over experts, top-k (ties to the lower index),
/// optionally renormalised. x: [T, hidden], wg: [experts, hidden].
/// Returns (ids [T, k], weights [T, k]).
pub fn route(x: &[f32], hidden: usize, wg: &[f32], experts: usize, k: usize, norm: bool) -> (Vec<u32>, Vec<f32>) {
    let t_len = x.len() / hidden;
    let logits = matmul(x, t_len, hidden, wg, experts);
    let mut ids = Vec::with_capacity(t_len * k);
    let mut ws = Vec::with_capacity(t_len * k);
    for row in logits.chunks_exact(experts) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        let probs: Vec<f32> = e.iter().map(|v| v / sum).collect();
        let mut taken = vec![false; experts];
        let start = ws.len();
        for _ in 0..k {
            let mut best = usize::MAX;
            for i in 0..experts {
                if !taken[i] && (best == usize::MAX || probs[i] > probs[best]) {
                    best = i;
                }
            }
            taken[best] = true;
            ids.push(best as u32);
            ws.push(probs[best]);
        }
        if norm {
            let s: f32 = ws[start..].iter().sum();
            ws[start..].iter_mut().for_each(|w| *w /= s);
        }
    }
    (ids, ws)
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The SwiGLU activation of one expert: silu(w1 · x) ⊙ (w3 · x).  x: [hidden] -> [ff]
pub fn swiglu_act(x: &[f32], w1: &[f32], w3: &[f32], ff: usize) -> Vec<f32> {
    let hidden = x.len();
    let g = matmul(x, 1, hidden, w1, ff);
    let u = matmul(x, 1, hidden, w3, ff);
    g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect()
}

/// One expert's SwiGLU FFN: w2 · (silu(w1 · x) ⊙ (w3 · x)).  x: [hidden] -> [hidden]
pub fn swiglu(x: &[f32], w1: &[f32], w2: &[f32], w3: &[f32], ff: usize) -> Vec<f32> {
    matmul(&swiglu_act(x, w1, w3, ff), 1, ff, w2, x.len())
}

/// Assignments a = t*K + s grouped by expert, in order of a within each expert (the
/// reference for `moe_group.wgsl`). Returns (sorted [T*K], pos_of [T*K], starts [E+1]).
pub fn group_by_expert(ids: &[u32], experts: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; experts + 1];
    for &e in ids {
        starts[e as usize + 1] += 1;
    }
    for e in 0..experts {
        starts[e + 1] += starts[e];
    }
    let mut next = starts.clone();
    let mut sorted = vec![0u32; ids.len()];
    let mut pos_of = vec![0u32; ids.len()];
    for (a, &e) in ids.iter().enumerate() {
        let q = next[e as usize];
        sorted[q as usize] = a as u32;
        pos_of[a] = q;
        next[e as usize] += 1;
    }
    (sorted, pos_of, starts)
}

/// Index of the largest value, the first one on ties (as torch.argmax).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

struct Expert {
    w1: Vec<f32>,
    w2: Vec<f32>,
    w3: Vec<f32>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    router: Option<Vec<f32>>,
    experts: Vec<Expert>,
    /// [kv_heads, ctx, head_dim]
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// The whole model in f32 on the CPU, with its own KV cache.
pub struct CpuModel {
    pub cfg: ModelConfig,
    pub ctx: usize,
    embed: Vec<f32>,
    final_norm: Vec<f32>,
    lm_head: Vec<f32>,
    rope: Vec<f32>,
    layers: Vec<Layer>,
    /// Tokens already in the KV cache.
    pub pos: usize,
}

impl CpuModel {
    pub fn new(m: &ModelFiles, ctx: usize) -> Result<Self> {
        let cfg = m.config.clone();
        let n = &m.names;
        let f = |name: &str| -> Result<Vec<f32>> { Ok(m.get(name)?.to_f32()) };
        let cache = cfg.kv_heads * ctx * cfg.head_dim;
        let mut layers = Vec::with_capacity(cfg.layers);
        for (li, l) in n.layers.iter().enumerate() {
            layers.push(Layer {
                attn_norm: f(&l.attn_norm)?,
                wq: f(&l.wq)?,
                wk: f(&l.wk)?,
                wv: f(&l.wv)?,
                wo: f(&l.wo)?,
                ffn_norm: f(&l.ffn_norm)?,
                router: l.router.as_deref().map(f).transpose()?,
                experts: (0..cfg.experts)
                    .map(|e| {
                        let [w1, w3, w2] = m.expert(li, e)?;
                        Ok(Expert { w1: w1.to_f32(), w2: w2.to_f32(), w3: w3.to_f32() })
                    })
                    .collect::<Result<_>>()?,
                k_cache: vec![0.0; cache],
                v_cache: vec![0.0; cache],
            });
        }
        let rope = rope_table(&rope_inv_freq(&cfg), ctx);
        Ok(CpuModel {
            embed: f(&n.embed)?,
            final_norm: f(&n.final_norm)?,
            lm_head: f(&n.lm_head)?,
            rope,
            layers,
            ctx,
            cfg,
            pos: 0,
        })
    }

    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Runs `tokens` at positions pos..pos+T, appending to the KV cache.
    /// Returns logits [T, vocab].
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = self.cfg.clone();
        let (t_len, hd, h) = (tokens.len(), c.head_dim, c.hidden);
        if self.pos + t_len > self.ctx {
            return Err(Error::input(format!(
                "{} tokens after {} cached exceed the context of {}",
                t_len, self.pos, self.ctx
            )));
        }
        // x: [T, hidden] residual stream
        let mut x = Vec::with_capacity(t_len * h);
        for &tok in tokens {
            let tok = tok as usize;
            if tok >= c.vocab {
                return Err(Error::input(format!("token id {tok} is outside the vocabulary of {}", c.vocab)));
            }
            x.extend_from_slice(&self.embed[tok * h..(tok + 1) * h]);
        }
        let pos0 = self.pos;
        for layer in &mut self.layers {
            // --- attention ---
            let xn = rms_norm(&x, &layer.attn_norm, c.eps);
            let mut q = matmul(&xn, t_len, h, &layer.wq, c.q_dim()); // [T, heads*hd]
            let mut k = matmul(&xn, t_len, h, &layer.wk, c.kv_dim()); // [T, kv_heads*hd]
            let v = matmul(&xn, t_len, h, &layer.wv, c.kv_dim());
            rope(&mut q, c.heads, hd, pos0, &self.rope, c.rope_interleaved);
            rope(&mut k, c.kv_heads, hd, pos0, &self.rope, c.rope_interleaved);
            for t in 0..t_len {
                for kh in 0..c.kv_heads {
                    let dst = (kh * self.ctx + pos0 + t) * hd;
                    let src = (t * c.kv_heads + kh) * hd;
                    layer.k_cache[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    layer.v_cache[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                }
            }
            let a = attention(
                &q,
                &layer.k_cache,
                &layer.v_cache,
                self.ctx,
                pos0,
                c.heads,
                c.kv_heads,
                hd,
                c.sliding_window,
            );
            let o = matmul(&a, t_len, c.q_dim(), &layer.wo, h);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            // --- mixture of experts (a dense FFN is one expert of weight 1) ---
            let xn = rms_norm(&x, &layer.ffn_norm, c.eps);
            let (ids, ws) = match &layer.router {
                Some(wg) => route(&xn, h, wg, c.experts, c.top_k, c.norm_topk),
                None => (vec![0; t_len], vec![1.0; t_len]),
            };
            for t in 0..t_len {
                let xt = &xn[t * h..(t + 1) * h];
                for s in 0..c.top_k {
                    let e = &layer.experts[ids[t * c.top_k + s] as usize];
                    let y = swiglu(xt, &e.w1, &e.w2, &e.w3, c.ff);
                    let w = ws[t * c.top_k + s];
                    x[t * h..(t + 1) * h].iter_mut().zip(&y).for_each(|(x, y)| *x += w * y);
                }
            }
        }
        self.pos += t_len;
        let xn = rms_norm(&x, &self.final_norm, c.eps);
        Ok(matmul(&xn, t_len, h, &self.lm_head, c.vocab))
    }
}

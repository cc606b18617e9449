//! The CPU reference: a plain f32 forward pass, written to be read top to bottom. It is
//! the oracle every WGSL kernel is tested against, and `--device cpu` runs it.
//! Shapes are given as [rows, cols], row-major; `T` is tokens in this step.

use crate::config::{ModelConfig, rope_table};
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::model::plan::{Act, FfnPlan, LayerPlan, RopePlan, RouterOrder, RouterPlan};
use crate::tensor::DType;

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
/// j <= pos0+t (and j > pos0+t-window with a sliding window). Scores are q·k · `scale`;
/// with `sinks` ([heads]) each head's sink logit joins the softmax and is then dropped.
/// Returns [T, heads*d].
pub fn attention(
    q: &[f32],
    (k_cache, v_cache, ctx): (&[f32], &[f32], usize),
    pos0: usize,
    (heads, kv_heads, d): (usize, usize, usize),
    window: Option<usize>,
    scale: f32,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    let t_len = q.len() / (heads * d);
    let group = heads / kv_heads;
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
            let sink = sinks.map(|s| s[h]);
            let m = scores.iter().cloned().chain(sink).fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f32 = e.iter().sum::<f32>() + sink.map_or(0.0, |s| (s - m).exp());
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

/// Router: logits = x · wg^T (+ bias), then per `plan.order` either a softmax over all
/// experts and the top-k (optionally renormalised), or the top-k logits and a softmax over
/// those k; weights times `plan.scale`. Ties go to the lower index.
/// x: [T, hidden], wg: [experts, hidden]. Returns (ids [T, k], weights [T, k]).
pub fn route(
    x: &[f32],
    hidden: usize,
    (wg, bias): (&[f32], Option<&[f32]>),
    experts: usize,
    k: usize,
    plan: &RouterPlan,
) -> (Vec<u32>, Vec<f32>) {
    let t_len = x.len() / hidden;
    let mut logits = matmul(x, t_len, hidden, wg, experts);
    if let Some(b) = bias {
        logits.chunks_exact_mut(experts).for_each(|r| r.iter_mut().zip(b).for_each(|(l, b)| *l += b));
    }
    let softmax = |v: &[f32]| -> Vec<f32> {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.iter().map(|x| x / sum).collect()
    };
    let mut ids = Vec::with_capacity(t_len * k);
    let mut ws = Vec::with_capacity(t_len * k);
    for row in logits.chunks_exact(experts) {
        let scores = match plan.order {
            RouterOrder::SoftmaxTopK => softmax(row),
            RouterOrder::TopKSoftmax => row.to_vec(),
        };
        let mut taken = vec![false; experts];
        let start = ws.len();
        for _ in 0..k {
            let mut best = usize::MAX;
            for i in 0..experts {
                if !taken[i] && (best == usize::MAX || scores[i] > scores[best]) {
                    best = i;
                }
            }
            taken[best] = true;
            ids.push(best as u32);
            ws.push(scores[best]);
        }
        let chosen = &mut ws[start..];
        match plan.order {
            RouterOrder::TopKSoftmax => chosen.copy_from_slice(&softmax(chosen)),
            RouterOrder::SoftmaxTopK if plan.renorm => {
                let s: f32 = chosen.iter().sum();
                chosen.iter_mut().for_each(|w| *w /= s);
            }
            RouterOrder::SoftmaxTopK => {}
        }
        if plan.scale != 1.0 {
            chosen.iter_mut().for_each(|w| *w *= plan.scale);
        }
    }
    (ids, ws)
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (transformers' gelu_pytorch_tanh).
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
}

/// The gated activation of gate `g` and up `u` (see `plan::Act`).
pub fn glu(act: Act, g: f32, u: f32) -> f32 {
    match act {
        Act::SiluGlu => silu(g) * u,
        Act::GeluTanhGlu => gelu_tanh(g) * u,
        Act::ClampedSwiGlu { alpha, limit } => {
            let g = g.min(limit);
            let u = u.clamp(-limit, limit);
            (u + 1.0) * (g * sigmoid(g * alpha))
        }
    }
}

/// One expert's activation: act(w1 · x + b_gate, w3 · x + b_up).  x: [hidden] -> [ff];
/// `bias`: the gate biases then the up biases [2 ff].
pub fn glu_act(x: &[f32], w1: &[f32], w3: &[f32], ff: usize, act: Act, bias: Option<&[f32]>) -> Vec<f32> {
    let hidden = x.len();
    let mut g = matmul(x, 1, hidden, w1, ff);
    let mut u = matmul(x, 1, hidden, w3, ff);
    if let Some(b) = bias {
        g.iter_mut().zip(&b[..ff]).for_each(|(v, b)| *v += b);
        u.iter_mut().zip(&b[ff..]).for_each(|(v, b)| *v += b);
    }
    g.iter().zip(&u).map(|(g, u)| glu(act, *g, *u)).collect()
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

/// An expert's (or dense MLP's) weights in f32: gate w1 [ff, d], up w3 [ff, d], down
/// w2 [d, ff], and gpt-oss-style biases (gate then up [2 ff], down [d]).
struct Expert {
    w1: Vec<f32>,
    w2: Vec<f32>,
    w3: Vec<f32>,
    bias: Option<(Vec<f32>, Vec<f32>)>,
}

impl Expert {
    /// down(act(gate(x), up(x))) (+ down bias).  x: [d] -> [d]
    fn run(&self, x: &[f32], ff: usize, act: Act) -> Vec<f32> {
        let a = glu_act(x, &self.w1, &self.w3, ff, act, self.bias.as_ref().map(|b| b.0.as_slice()));
        let mut y = matmul(&a, 1, ff, &self.w2, x.len());
        if let Some((_, b)) = &self.bias {
            y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
        y
    }
}

struct Layer {
    plan: LayerPlan,
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    /// [q_dim + 2 kv_dim]
    qkv_bias: Option<Vec<f32>>,
    o_bias: Option<Vec<f32>>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    sinks: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Post-attention and post-FFN norm weights (Gemma's sandwich norms).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    router: Option<(Vec<f32>, Option<Vec<f32>>)>,
    experts: Vec<Expert>,
    shared: Option<Expert>,
    shared_gate: Option<Vec<f32>>,
    /// Index into `CpuModel::ropes`.
    rope: usize,
    /// [kv_heads, ctx, head_dim]
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// The whole model in f32 on the CPU, with its own KV cache. `forward` walks the layer
/// plan (model/plan.rs) as the GPU program builder does, but with plain loops.
pub struct CpuModel {
    pub cfg: ModelConfig,
    pub ctx: usize,
    embed: Vec<f32>,
    final_norm: Vec<f32>,
    lm_head: Vec<f32>,
    /// One rotary table per distinct rope plan.
    ropes: Vec<Vec<f32>>,
    layers: Vec<Layer>,
    /// Tokens already in the KV cache.
    pub pos: usize,
    /// Every token's chosen experts, when recording (`crate::route`).
    pub routes: Option<crate::route::RouteTrace>,
    /// Keys and values rounded to f16 in the cache.
    kv16: bool,
}

/// RMSNorm of each `dim`-wide group of every row (per-head q/k norms: dim = head_dim).
fn rms_norm_groups(x: &mut [f32], w: &[f32], eps: f32) {
    let y = rms_norm(x, w, eps);
    x.copy_from_slice(&y);
}

impl CpuModel {
    /// `kv`: the cache's storage, F32, or F16 (values rounded to f16 as they are written,
    /// as the GPU's packed f16 cache stores them).
    pub fn new(m: &ModelFiles, ctx: usize, kv: DType) -> Result<Self> {
        let kv16 = kv.kv16()?;
        let cfg = m.config.clone();
        let n = &m.names;
        let f = |name: &str| -> Result<Vec<f32>> { Ok(m.get(name)?.to_f32()) };
        let cache = cfg.kv_heads * ctx * cfg.head_dim;
        let mut plans: Vec<RopePlan> = Vec::new();
        let mut ropes = Vec::new();
        let mut layers = Vec::with_capacity(cfg.layers);
        for (li, l) in n.layers.iter().enumerate() {
            let plan = cfg.plan[li].clone();
            let rope = match plans.iter().position(|r| *r == plan.attn.rope) {
                Some(i) => i,
                None => {
                    ropes.push(rope_table(&plan.attn.rope, cfg.head_dim, ctx));
                    plans.push(plan.attn.rope.clone());
                    ropes.len() - 1
                }
            };
            let expert = |e: usize| -> Result<Expert> {
                let [w1, w3, w2] = m.expert(li, e)?;
                Ok(Expert { w1: w1.to_f32(), w2: w2.to_f32(), w3: w3.to_f32(), bias: m.expert_bias(li, e)? })
            };
            let [wq, wk, wv] = m.qkv(li)?;
            let (attn_norm, ffn_norm) = m.layer_norms(li)?;
            layers.push(Layer {
                attn_norm,
                wq: wq.to_f32(),
                wk: wk.to_f32(),
                wv: wv.to_f32(),
                wo: f(&l.wo)?,
                qkv_bias: m.qkv_bias(li)?,
                o_bias: m.o_bias(li)?,
                qk_norm: m.qk_norm(li)?,
                sinks: m.sinks(li)?,
                ffn_norm,
                post_norms: m.post_norms(li)?,
                router: m.router(li)?,
                experts: (0..m.ffn_shape(li).0).map(expert).collect::<Result<_>>()?,
                shared: m.shared_expert(li)?.map(|[w1, w3, w2]| Expert {
                    w1: w1.to_f32(),
                    w2: w2.to_f32(),
                    w3: w3.to_f32(),
                    bias: None,
                }),
                shared_gate: m.shared_gate(li)?,
                rope,
                plan,
                k_cache: vec![0.0; cache],
                v_cache: vec![0.0; cache],
            });
        }
        Ok(CpuModel {
            embed: f(&n.embed)?,
            final_norm: m.final_norm()?,
            lm_head: f(&n.lm_head)?,
            ropes,
            layers,
            ctx,
            cfg,
            pos: 0,
            routes: None,
            kv16,
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
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
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
            x.extend(self.embed[tok * h..(tok + 1) * h].iter().map(|v| v * c.embed_scale));
        }
        let pos0 = self.pos;
        let rs = c.residual_scale;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            let a = &layer.plan.attn;
            // --- attention ---
            let xn = rms_norm(&x, &layer.attn_norm, c.eps);
            let mut q = matmul(&xn, t_len, h, &layer.wq, q_dim); // [T, heads*hd]
            let mut k = matmul(&xn, t_len, h, &layer.wk, kv_dim); // [T, kv_heads*hd]
            let mut v = matmul(&xn, t_len, h, &layer.wv, kv_dim);
            if let Some(b) = &layer.qkv_bias {
                for t in 0..t_len {
                    q[t * q_dim..(t + 1) * q_dim].iter_mut().zip(&b[..q_dim]).for_each(|(x, b)| *x += b);
                    k[t * kv_dim..(t + 1) * kv_dim].iter_mut().zip(&b[q_dim..]).for_each(|(x, b)| *x += b);
                    v[t * kv_dim..(t + 1) * kv_dim].iter_mut().zip(&b[q_dim + kv_dim..]).for_each(|(x, b)| *x += b);
                }
            }
            // q/k RMSNorm: per head ([head_dim] weights) or over the whole projection.
            if let Some((qn, kn)) = &layer.qk_norm {
                rms_norm_groups(&mut q, qn, c.eps);
                rms_norm_groups(&mut k, kn, c.eps);
            }
            let table = &self.ropes[layer.rope];
            rope(&mut q, c.heads, hd, pos0, table, c.rope_interleaved);
            rope(&mut k, c.kv_heads, hd, pos0, table, c.rope_interleaved);
            for t in 0..t_len {
                for kh in 0..c.kv_heads {
                    let dst = (kh * self.ctx + pos0 + t) * hd;
                    let src = (t * c.kv_heads + kh) * hd;
                    layer.k_cache[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                    layer.v_cache[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                    if self.kv16 {
                        for x in layer.k_cache[dst..dst + hd].iter_mut().chain(&mut layer.v_cache[dst..dst + hd]) {
                            *x = half::f16::from_f32(*x).to_f32();
                        }
                    }
                }
            }
            let att = attention(
                &q,
                (&layer.k_cache, &layer.v_cache, self.ctx),
                pos0,
                (c.heads, c.kv_heads, hd),
                a.window,
                a.scale,
                layer.sinks.as_deref(),
            );
            let mut o = matmul(&att, t_len, q_dim, &layer.wo, h);
            if let Some(b) = &layer.o_bias {
                o.chunks_exact_mut(h).for_each(|r| r.iter_mut().zip(b).for_each(|(x, b)| *x += b));
            }
            if let Some((post, _)) = &layer.post_norms {
                o = rms_norm(&o, post, c.eps);
            }
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += rs * o);

            // --- FFN: a dense MLP, or routed experts (plus a shared expert) ---
            let xn = rms_norm(&x, &layer.ffn_norm, c.eps);
            let mut y = vec![0.0; t_len * h];
            match &layer.plan.ffn {
                FfnPlan::Dense(mlp) => {
                    for t in 0..t_len {
                        let out = layer.experts[0].run(&xn[t * h..(t + 1) * h], mlp.ff, mlp.act);
                        y[t * h..(t + 1) * h].copy_from_slice(&out);
                    }
                }
                FfnPlan::Moe(moe) => {
                    let (wg, bias) = layer.router.as_ref().ok_or_else(|| Error::input("MoE layer without a router"))?;
                    let (ids, ws) = route(&xn, h, (wg, bias.as_deref()), moe.experts, moe.top_k, &moe.router);
                    if let Some(l) = self.routes.as_mut().and_then(|r| r.layers.iter_mut().find(|l| l.layer == li)) {
                        l.ids.extend_from_slice(&ids);
                    }
                    for t in 0..t_len {
                        let xt = &xn[t * h..(t + 1) * h];
                        let yt = &mut y[t * h..(t + 1) * h];
                        for s in 0..moe.top_k {
                            let out = layer.experts[ids[t * moe.top_k + s] as usize].run(xt, moe.ff, moe.act);
                            let w = ws[t * moe.top_k + s];
                            yt.iter_mut().zip(&out).for_each(|(y, o)| *y += w * o);
                        }
                        if let (Some(sh), Some(plan)) = (&layer.shared, &moe.shared) {
                            let out = sh.run(xt, plan.ff, moe.act);
                            let g = match &layer.shared_gate {
                                Some(wg) => sigmoid(xt.iter().zip(wg).map(|(a, b)| a * b).sum()),
                                None => 1.0,
                            };
                            yt.iter_mut().zip(&out).for_each(|(y, o)| *y += g * o);
                        }
                    }
                }
            }
            if let Some((_, post)) = &layer.post_norms {
                y = rms_norm(&y, post, c.eps);
            }
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += rs * y);
        }
        self.pos += t_len;
        let xn = rms_norm(&x, &self.final_norm, c.eps);
        let mut logits = matmul(&xn, t_len, h, &self.lm_head, c.vocab);
        if c.logit_scale != 1.0 {
            logits.iter_mut().for_each(|l| *l *= c.logit_scale);
        }
        Ok(logits)
    }
}

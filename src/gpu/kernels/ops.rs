//! Kernel constructors: one per WGSL kernel, filling its `params.rs` struct, binding its
//! buffers and returning a ready-to-encode `Dispatch`. Shapes follow the .wgsl headers;
//! `name` is the tensor named in errors.
#![allow(clippy::too_many_arguments)]

use super::*;
use crate::model::plan::{Act, RouterOrder, RouterPlan};
use params::*;
use wgpu::Buffer;

/// x[t] = scale · E[tokens[t]] for the tokens whose rows `w` holds: rows
/// `(row0, rows)` of the `vocab`-row table (all of it, or one of the ranges a table too
/// large for one binding is uploaded in).
#[allow(clippy::too_many_arguments)]
pub fn embed(
    g: &Gpu,
    w: &GpuWeight,
    (row0, rows): (usize, usize),
    tokens: &Buffer,
    x: &Buffer,
    dim: usize,
    vocab: usize,
    scale: f32,
) -> Result<Dispatch> {
    let d = inner("token embedding", w.dtype, dim)?;
    let p = EmbedParams {
        dim: d,
        vocab: u32_of("vocab", vocab)?,
        s_off: w.s_off,
        h_off: w.h_off,
        scale,
        row0: u32_of("embedding rows", row0)?,
        rows: u32_of("embedding rows", rows)?,
        ..Default::default()
    };
    g.make(Shader::Embed, w.dtype, &p, &[&w.buf, tokens, x], Grid { x: d.div_ceil(1024), y: Rows::PER_TOKEN })
}

pub fn rms_norm(
    g: &Gpu,
    step: &Buffer,
    w: &Buffer,
    x: &Buffer,
    y: &Buffer,
    dim: usize,
    eps: f32,
    last_only: bool,
) -> Result<Dispatch> {
    let rows = if last_only { Rows::Fixed(1) } else { Rows::PER_TOKEN };
    let p = RmsNormParams { dim: u32_of("norm", dim)?, last_only: last_only as u32, eps, ..Default::default() };
    g.make(Shader::RmsNorm, DType::F32, &p, &[step, w, x, y], Grid { x: 1, y: rows })
}

/// A post-norm: y += alpha · rmsnorm(branch) · w[w_off..w_off + dim] for every row of the
/// step, then the branch rows are zeroed (the next branch accumulates into them).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_add(
    g: &Gpu,
    step: &Buffer,
    (w, w_off): (&Buffer, usize),
    branch: &Buffer,
    y: &Buffer,
    dim: usize,
    eps: f32,
    alpha: f32,
) -> Result<Dispatch> {
    let p = PostNormParams { dim: u32_of("norm", dim)?, eps, alpha, g_off: u32_of("norm weight offset", w_off)? };
    g.make(Shader::PostNorm, DType::F32, &p, &[step, w, branch, y], Grid { x: 1, y: Rows::PER_TOKEN })
}

fn matmul_params(name: &str, w: &GpuWeight, out: &Out, n: usize, k: usize) -> Result<MatmulParams> {
    Ok(MatmulParams {
        n: u32_of(name, n)?,
        k: inner(name, w.dtype, k)?,
        accumulate: out.accumulate as u32,
        y_stride: u32_of(name, out.stride)?,
        y_off: u32_of(name, out.off)?,
        s_off: w.s_off,
        h_off: w.h_off,
        bias: out.bias.is_some() as u32,
        alpha: out.alpha,
        ..Default::default()
    })
}

/// out[T, n] (+)= alpha (x[T, k] · W[n, k]^T + b), one token per grid row (decode).
pub fn gemv(g: &Gpu, name: &str, w: &GpuWeight, x: &Buffer, out: Out, n: usize, k: usize) -> Result<Dispatch> {
    let p = matmul_params(name, w, &out, n, k)?;
    let grid = Grid { x: p.n.div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    let bufs = [&w.buf, x, out.buf, g.or_dummy(out.bias)];
    Ok(g.make(Shader::Gemv, w.dtype, &p, &bufs, grid)?.reading(w.buf.size()))
}

/// The decode q/k/v projection with rotary embedding and the KV-cache write fused in
/// (qkv_rope.wgsl): `w` holds rows `y_off..y_off + n` of [Wq; Wk; Wv] ([n, k]), with
/// rotary pairs in adjacent rows; `qkv` receives rotated q, the caches k and v; `bias`
/// ([q_dim + 2 kv_dim], by column) is added before rotating.
pub fn qkv_rope(
    g: &Gpu,
    step: &Buffer,
    w: &GpuWeight,
    x: &Buffer,
    table: &Buffer,
    c: Qkv,
    bias: Option<&Buffer>,
    (n, k, y_off): (usize, usize, usize),
    (heads, kv_heads, head_dim, ctx): (usize, usize, usize, usize),
) -> Result<Dispatch> {
    let name = "q/k/v projection";
    if head_dim % 2 != 0 || n % 2 != 0 || y_off % 2 != 0 {
        return Err(Error::gpu(format!(
            "{name}: rotary pairs need an even head_dim, row count and offset (got {head_dim}, {n}, {y_off})"
        )));
    }
    let p = QkvRopeParams {
        n: u32_of(name, n)?,
        k: inner(name, w.dtype, k)?,
        y_off: u32_of(name, y_off)?,
        s_off: w.s_off,
        h_off: w.h_off,
        heads: u32_of("heads", heads)?,
        kv_heads: u32_of("kv heads", kv_heads)?,
        head_dim: u32_of("head_dim", head_dim)?,
        ctx: u32_of("context", ctx)?,
        bias: bias.is_some() as u32,
        ..Default::default()
    };
    let grid = Grid { x: p.n.div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    let bufs = [step, &w.buf, x, table, c.qkv, c.k, c.v, g.or_dummy(bias)];
    let variant = Variant { kv16: c.kv16, ..w.dtype.into() };
    Ok(g.make(Shader::QkvRope, variant, &p, &bufs, grid)?.reading(w.buf.size()))
}

/// Tiled out[T, n] (+)= alpha (X[T, k] · W[n, k]^T + b) (prefill).
pub fn gemm(
    g: &Gpu,
    name: &str,
    step: &Buffer,
    w: &GpuWeight,
    x: &Buffer,
    out: Out,
    n: usize,
    k: usize,
) -> Result<Dispatch> {
    let p = matmul_params(name, w, &out, n, k)?;
    let grid = Grid { x: p.n.div_ceil(TILE), y: Rows::Tokens { mul: 1, div: TILE, add: 0 } };
    let bufs = [step, &w.buf, x, out.buf, g.or_dummy(out.bias)];
    Ok(g.make(Shader::Gemm, w.dtype, &p, &bufs, grid)?.reading(w.buf.size()))
}

/// Rotary embedding of q (in place) and k (into the cache), v copied to its cache; with
/// `norm` = (weights [2 d], eps) each q and k head is RMS-normalised first.
pub fn rope_kv(
    g: &Gpu,
    step: &Buffer,
    table: &Buffer,
    c: Qkv,
    norm: Option<(&Buffer, f32)>,
    (heads, kv_heads, head_dim, ctx): (usize, usize, usize, usize),
    interleaved: bool,
) -> Result<Dispatch> {
    if c.kv16 && !interleaved {
        // A thread writes one rotary pair; packed f16 needs the pair in one word.
        return Err(Error::gpu("rotary embedding: an f16 KV cache needs adjacent rotary pairs"));
    }
    let (h, kvh) = (u32_of("heads", heads)?, u32_of("kv heads", kv_heads)?);
    let p = RopeKvParams {
        heads: h,
        kv_heads: kvh,
        head_dim: u32_of("head_dim", head_dim)?,
        ctx: u32_of("context", ctx)?,
        interleaved: interleaved as u32,
        norm: norm.is_some() as u32,
        eps: norm.map_or(0.0, |n| n.1),
        ..Default::default()
    };
    let grid = Grid { x: h + kvh, y: Rows::PER_TOKEN };
    let bufs = [step, table, c.qkv, c.k, c.v, g.or_dummy(norm.map(|n| n.0))];
    g.make(Shader::RopeKv, c.variant(), &p, &bufs, grid)
}

/// RMSNorm over each token's whole q and whole k projection in `qkv`, in place (OLMoE);
/// `w` holds the q weights [heads * d] then the k weights [kv_heads * d].
pub fn qk_norm(
    g: &Gpu,
    qkv: &Buffer,
    w: &Buffer,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
) -> Result<Dispatch> {
    let p = QkNormParams {
        heads: u32_of("heads", heads)?,
        kv_heads: u32_of("kv heads", kv_heads)?,
        head_dim: u32_of("head_dim", head_dim)?,
        eps,
    };
    g.make(Shader::QkNorm, DType::F32, &p, &[qkv, w], Grid { x: 2, y: Rows::PER_TOKEN })
}

/// What the attention-side kernels read and write: the step's q|k|v rows [T, (H + 2 KVH) d]
/// and one layer's KV cache, keys and values [KVH, ctx, d] each, stored as f32 or (kv16)
/// as f16 packed two per u32 (`kv_cache_bytes`).
#[derive(Clone, Copy)]
pub struct Qkv<'a> {
    pub qkv: &'a Buffer,
    pub k: &'a Buffer,
    pub v: &'a Buffer,
    pub kv16: bool,
}

impl Qkv<'_> {
    fn variant(&self) -> Variant {
        Variant { kv16: self.kv16, ..DType::F32.into() }
    }
}

/// Bytes of one of a layer's caches (keys or values) for `ctx` positions.
pub fn kv_cache_bytes(kv_heads: usize, ctx: usize, head_dim: usize, kv16: bool) -> usize {
    kv_heads * ctx * head_dim * if kv16 { 2 } else { 4 }
}

/// What both attention kernels need to know about a layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// KV cache length.
    pub ctx: usize,
    pub window: Option<usize>,
    /// Multiplies q·k.
    pub scale: f32,
}

/// The parameters all three attention kernels share.
pub fn attention_params(a: &AttnSpec, sinks: bool) -> Result<AttentionParams> {
    Ok(AttentionParams {
        heads: u32_of("heads", a.heads)?,
        kv_heads: u32_of("kv heads", a.kv_heads)?,
        head_dim: u32_of("head_dim", a.head_dim)?,
        ctx: u32_of("context", a.ctx)?,
        window: a.window.map_or(Ok(0), |w| u32_of("sliding window", w))?,
        scale: a.scale,
        chunk: u32_of("kv chunk", kv_chunk(a.ctx))?,
        chunks: u32_of("kv chunks", a.ctx.div_ceil(kv_chunk(a.ctx)))?,
        sinks: sinks as u32,
        ..Default::default()
    })
}

pub fn attention(
    g: &Gpu,
    step: &Buffer,
    c: Qkv,
    out: &Buffer,
    sinks: Option<&Buffer>,
    a: &AttnSpec,
) -> Result<Dispatch> {
    let p = attention_params(a, sinks.is_some())?;
    let grid = Grid { x: p.heads, y: Rows::PER_TOKEN };
    g.make(Shader::Attention, c.variant(), &p, &[step, c.qkv, c.k, c.v, out, g.or_dummy(sinks)], grid)
}

/// KV positions per split-K chunk for a cache of `ctx` positions: 256, or more when
/// that keeps the chunks of a full cache at most `MAX_KV_CHUNKS`.
pub fn kv_chunk(ctx: usize) -> usize {
    ctx.div_ceil(MAX_KV_CHUNKS).next_multiple_of(64).max(256)
}

/// Bytes of the split-K partials buffer for steps of up to `rows` tokens.
pub fn attention_partials_bytes(rows: usize, heads: usize, head_dim: usize, ctx: usize) -> usize {
    rows * heads * ctx.div_ceil(kv_chunk(ctx)) * (head_dim + 2) * 4
}

/// Split-K attention for steps of few tokens (decode): one workgroup per (head, token,
/// chunk of KV positions) writes softmax partials, then a second kernel merges the
/// chunks (and the sinks). Reads what `attention` reads and writes the same `out`;
/// `partials` holds `attention_partials_bytes` for the largest step it will run.
pub fn attention_split(
    g: &Gpu,
    step: &Buffer,
    c: Qkv,
    partials: &Buffer,
    out: &Buffer,
    sinks: Option<&Buffer>,
    a: &AttnSpec,
) -> Result<[Dispatch; 2]> {
    if !a.head_dim.is_multiple_of(4) {
        return Err(Error::gpu(format!(
            "attention: head_dim {} is not a multiple of 4 (keys are read as vec4s)",
            a.head_dim
        )));
    }
    let p = attention_params(a, sinks.is_some())?;
    let grid = Grid { x: p.heads, y: Rows::PER_TOKEN };
    let mut split = g.make(Shader::AttentionSplit, c.variant(), &p, &[step, c.qkv, c.k, c.v, partials], grid)?;
    split.kv_chunk = p.chunk;
    let combine = g.make(Shader::AttentionCombine, DType::F32, &p, &[step, partials, out, g.or_dummy(sinks)], grid)?;
    Ok([split, combine])
}

/// What the router of one MoE layer computes.
#[derive(Clone, Copy, Debug)]
pub struct RouterSpec<'a> {
    pub dim: usize,
    pub experts: usize,
    pub k: usize,
    /// This layer's row of the choice counts.
    pub layer: usize,
    pub plan: &'a RouterPlan,
    /// The router buffer ends with the shared expert's gate row.
    pub shared_gate: bool,
}

/// The FFN's RMSNorm fused with the MoE router (router.wgsl): `xn` = rmsnorm(`x`) * `norm`
/// for the expert kernels, and each token's top-k expert ids and weights; `hist`
/// [layers, experts] counts the choices; `shared` [T] gets the shared expert's gate.
/// `wg` holds the router rows [E, D], then the bias [E] (with the plan's bias), then the
/// shared gate row [D].
pub fn router(
    g: &Gpu,
    wg: &Buffer,
    (norm, eps): (&Buffer, f32),
    x: &Buffer,
    xn: &Buffer,
    (ids, weights, hist, shared): (&Buffer, &Buffer, &Buffer, Option<&Buffer>),
    r: &RouterSpec,
) -> Result<Dispatch> {
    let p = RouterParams {
        dim: u32_of("router", r.dim)?,
        experts: u32_of("experts", r.experts)?,
        k: u32_of("top-k", r.k)?,
        norm: r.plan.renorm as u32,
        layer: u32_of("layer", r.layer)?,
        eps,
        order: match r.plan.order {
            RouterOrder::SoftmaxTopK => 0,
            RouterOrder::TopKSoftmax => 1,
        },
        bias: r.plan.bias as u32,
        scale: r.plan.scale,
        shared_gate: r.shared_gate as u32,
        ..Default::default()
    };
    if r.shared_gate && shared.is_none() {
        return Err(Error::gpu("router: a shared gate needs its output buffer"));
    }
    let bufs = [wg, norm, x, xn, ids, weights, hist, g.or_dummy(shared)];
    g.make(Shader::Router, DType::F32, &p, &bufs, Grid { x: 1, y: Rows::PER_TOKEN })
}

/// The shape of one layer's experts (or of a dense MLP / shared expert as one expert).
#[derive(Clone, Copy, Debug)]
pub struct ExpertSpec {
    pub dim: usize,
    pub ff: usize,
    /// Experts per token.
    pub k: usize,
    pub experts: usize,
    pub act: Act,
}

fn gate_up_params(what: &str, w: &GpuWeight, e: &ExpertSpec, bias: bool) -> Result<MoeGateUpParams> {
    let (act_alpha, act_limit) = e.act.params();
    Ok(MoeGateUpParams {
        dim: inner(what, w.dtype, e.dim)?,
        ff: u32_of("experts' ff", e.ff)?,
        k: u32_of("top-k", e.k)?,
        experts: u32_of("experts", e.experts)?,
        s_off: w.s_off,
        h_off: w.h_off,
        e_stride: w.expert_stride,
        bias: bias as u32,
        act_alpha,
        act_limit,
        ..Default::default()
    })
}

fn down_params(what: &str, w: &GpuWeight, e: &ExpertSpec, bias: bool, alpha: f32) -> Result<MoeDownParams> {
    Ok(MoeDownParams {
        dim: u32_of("hidden", e.dim)?,
        ff: inner(what, w.dtype, e.ff)?,
        k: u32_of("top-k", e.k)?,
        experts: u32_of("experts", e.experts)?,
        s_off: w.s_off,
        h_off: w.h_off,
        e_stride: w.expert_stride,
        bias: bias as u32,
        alpha,
        ..Default::default()
    })
}

fn variant(w: &GpuWeight, act: Act) -> Variant {
    Variant { dtype: w.dtype, act: act.shader_code(), kv16: false }
}

/// `w`: stacked experts, each its gate (W1) then up (W3) rows, [2 ff, dim]; `bias`
/// [E, 2 ff]; `slots` [E] u32: each expert's block in `w` (the identity when all are
/// resident), or NO_SLOT to leave its rows alone (src/gpu/paging.rs).
pub fn moe_gemv_gate_up(
    g: &Gpu,
    (w, slots): (&GpuWeight, &Buffer),
    x: &Buffer,
    ids: &Buffer,
    act: &Buffer,
    bias: Option<&Buffer>,
    e: &ExpertSpec,
) -> Result<Dispatch> {
    let p = gate_up_params("experts' w1/w3", w, e, bias.is_some())?;
    let grid = Grid { x: p.ff.div_ceil(g.gemv_rows()), y: Rows::Tokens { mul: p.k, div: 1, add: 0 } };
    // One token reads the k chosen experts' blocks.
    let bytes = w.expert_stride as u64 * 4 * e.k as u64;
    let bufs = [&w.buf, x, ids, act, g.or_dummy(bias), slots];
    Ok(g.make(Shader::MoeGemvGateUp, variant(w, e.act), &p, &bufs, grid)?.reading(bytes))
}

/// `w`: stacked experts, each its down projection (W2), [dim, ff]; `bias` [E, dim];
/// `alpha` scales what is added to the residual `x`.
pub fn moe_gemv_down(
    g: &Gpu,
    (w, slots): (&GpuWeight, &Buffer),
    act: &Buffer,
    (ids, weights): (&Buffer, &Buffer),
    x: &Buffer,
    bias: Option<&Buffer>,
    e: &ExpertSpec,
    alpha: f32,
) -> Result<Dispatch> {
    let p = down_params("experts' w2", w, e, bias.is_some(), alpha)?;
    let grid = Grid { x: p.dim.div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    let bytes = w.expert_stride as u64 * 4 * e.k as u64;
    let bufs = [&w.buf, act, ids, weights, x, g.or_dummy(bias), slots];
    Ok(g.make(Shader::MoeGemvDown, w.dtype, &p, &bufs, grid)?.reading(bytes))
}

pub fn moe_group(
    g: &Gpu,
    step: &Buffer,
    ids: &Buffer,
    sorted: &Buffer,
    pos_of: &Buffer,
    starts: &Buffer,
    experts: usize,
    k: usize,
) -> Result<Dispatch> {
    let p = MoeGroupParams { experts: u32_of("experts", experts)?, k: u32_of("top-k", k)?, ..Default::default() };
    let grid = Grid { x: 1, y: Rows::Fixed(1) };
    g.make(Shader::MoeGroup, DType::F32, &p, &[step, ids, sorted, pos_of, starts], grid)
}

pub fn moe_gemm_gate_up(
    g: &Gpu,
    (w, slots): (&GpuWeight, &Buffer),
    x: &Buffer,
    (sorted, starts): (&Buffer, &Buffer),
    act: &Buffer,
    bias: Option<&Buffer>,
    e: &ExpertSpec,
) -> Result<Dispatch> {
    let p = gate_up_params("experts' w1/w3", w, e, bias.is_some())?;
    let grid = Grid { x: p.ff.div_ceil(TILE), y: Rows::Tokens { mul: p.k, div: TILE, add: p.experts } };
    let bufs = [&w.buf, x, sorted, starts, act, g.or_dummy(bias), slots];
    g.make(Shader::MoeGemmGateUp, variant(w, e.act), &p, &bufs, grid)
}

pub fn moe_gemm_down(
    g: &Gpu,
    (w, slots): (&GpuWeight, &Buffer),
    act: &Buffer,
    starts: &Buffer,
    y: &Buffer,
    bias: Option<&Buffer>,
    e: &ExpertSpec,
) -> Result<Dispatch> {
    let p = down_params("experts' w2", w, e, bias.is_some(), 1.0)?;
    let grid = Grid { x: p.dim.div_ceil(TILE), y: Rows::Tokens { mul: p.k, div: TILE, add: p.experts } };
    g.make(Shader::MoeGemmDown, w.dtype, &p, &[&w.buf, act, starts, y, g.or_dummy(bias), slots], grid)
}

/// x[t] += alpha * sum_s weights[t, s] * y[pos_of[t, s]] (prefill).
pub fn moe_combine(
    g: &Gpu,
    y: &Buffer,
    pos_of: &Buffer,
    weights: &Buffer,
    x: &Buffer,
    dim: usize,
    k: usize,
    alpha: f32,
) -> Result<Dispatch> {
    let p = MoeCombineParams { dim: u32_of("hidden", dim)?, k: u32_of("top-k", k)?, alpha, ..Default::default() };
    let grid = Grid { x: p.dim.div_ceil(256), y: Rows::PER_TOKEN };
    g.make(Shader::MoeCombine, DType::F32, &p, &[y, pos_of, weights, x], grid)
}

/// Row-wise argmax of `logits` [rows, n] into `out`; `rows` grid rows (Fixed) or per token.
pub fn argmax(g: &Gpu, logits: &Buffer, out: &Buffer, n: usize, rows: Rows) -> Result<Dispatch> {
    let p = ArgmaxParams { n: u32_of("vocab", n)?, ..Default::default() };
    g.make(Shader::Argmax, DType::F32, &p, &[logits, out], Grid { x: 1, y: rows })
}

/// dst = src over `n` vec4s (the bandwidth probe).
pub fn copy(g: &Gpu, src: &Buffer, dst: &Buffer, n: usize) -> Result<Dispatch> {
    let p = CopyParams { n: u32_of("copy", n)?, ..Default::default() };
    g.make(Shader::Copy, DType::F32, &p, &[src, dst], Grid { x: p.n.div_ceil(256), y: Rows::Fixed(1) })
}

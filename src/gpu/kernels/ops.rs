//! Kernel constructors: one per WGSL kernel, binding its buffers and returning a ready-to-
//! encode `Dispatch`. Shapes follow the .wgsl headers; `name` is the tensor named in errors.
#![allow(clippy::too_many_arguments)]

use super::*;
use wgpu::Buffer;

pub fn embed(g: &Gpu, w: &GpuWeight, tokens: &Buffer, x: &Buffer, dim: usize, vocab: usize) -> Result<Dispatch> {
    let d = inner("token embedding", w.dtype, dim)?;
    let params = [d, u32_of("vocab", vocab)?, w.s_off, w.h_off];
    g.make(Shader::Embed, w.dtype, &params, &[&w.buf, tokens, x], Grid { x: d.div_ceil(1024), y: Rows::PER_TOKEN })
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
    let params = [u32_of("norm", dim)?, last_only as u32, eps.to_bits()];
    g.make(Shader::RmsNorm, DType::F32, &params, &[step, w, x, y], Grid { x: 1, y: rows })
}

fn matmul_params(name: &str, w: &GpuWeight, out: Out, n: usize, k: usize) -> Result<[u32; 7]> {
    Ok([
        u32_of(name, n)?,
        inner(name, w.dtype, k)?,
        out.accumulate as u32,
        u32_of(name, out.stride)?,
        u32_of(name, out.off)?,
        w.s_off,
        w.h_off,
    ])
}

/// out[T, n] (+)= x[T, k] · W[n, k]^T, one token per grid row (decode).
pub fn gemv(g: &Gpu, name: &str, w: &GpuWeight, x: &Buffer, out: Out, n: usize, k: usize) -> Result<Dispatch> {
    let params = matmul_params(name, w, out, n, k)?;
    let grid = Grid { x: params[0].div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    Ok(g.make(Shader::Gemv, w.dtype, &params, &[&w.buf, x, out.buf], grid)?.reading(w.buf.size()))
}

/// The decode q/k/v projection with rotary embedding and the KV-cache write fused in
/// (qkv_rope.wgsl): `w` holds rows `y_off..y_off + n` of [Wq; Wk; Wv] ([n, k]), with
/// rotary pairs in adjacent rows; `qkv` receives rotated q, the caches k and v.
pub fn qkv_rope(
    g: &Gpu,
    step: &Buffer,
    w: &GpuWeight,
    x: &Buffer,
    table: &Buffer,
    qkv: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    (n, k, y_off): (usize, usize, usize),
    (heads, kv_heads, head_dim, ctx): (usize, usize, usize, usize),
) -> Result<Dispatch> {
    let name = "q/k/v projection";
    if head_dim % 2 != 0 || n % 2 != 0 || y_off % 2 != 0 {
        return Err(Error::gpu(format!(
            "{name}: rotary pairs need an even head_dim, row count and offset (got {head_dim}, {n}, {y_off})"
        )));
    }
    let params = [
        u32_of(name, n)?,
        inner(name, w.dtype, k)?,
        u32_of(name, y_off)?,
        w.s_off,
        w.h_off,
        u32_of("heads", heads)?,
        u32_of("kv heads", kv_heads)?,
        u32_of("head_dim", head_dim)?,
        u32_of("context", ctx)?,
    ];
    let grid = Grid { x: params[0].div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    let bufs = [step, &w.buf, x, table, qkv, k_cache, v_cache];
    Ok(g.make(Shader::QkvRope, w.dtype, &params, &bufs, grid)?.reading(w.buf.size()))
}

/// Tiled out[T, n] (+)= X[T, k] · W[n, k]^T (prefill).
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
    let params = matmul_params(name, w, out, n, k)?;
    let grid = Grid { x: params[0].div_ceil(TILE), y: Rows::Tokens { mul: 1, div: TILE, add: 0 } };
    Ok(g.make(Shader::Gemm, w.dtype, &params, &[step, &w.buf, x, out.buf], grid)?.reading(w.buf.size()))
}

pub fn rope_kv(
    g: &Gpu,
    step: &Buffer,
    table: &Buffer,
    qkv: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ctx: usize,
    interleaved: bool,
) -> Result<Dispatch> {
    let (h, kvh) = (u32_of("heads", heads)?, u32_of("kv heads", kv_heads)?);
    let params = [h, kvh, u32_of("head_dim", head_dim)?, u32_of("context", ctx)?, interleaved as u32];
    let grid = Grid { x: h + kvh, y: Rows::PER_TOKEN };
    g.make(Shader::RopeKv, DType::F32, &params, &[step, table, qkv, k_cache, v_cache], grid)
}

pub fn attention(
    g: &Gpu,
    step: &Buffer,
    qkv: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    out: &Buffer,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ctx: usize,
    window: Option<usize>,
) -> Result<Dispatch> {
    let params = attention_params(heads, kv_heads, head_dim, ctx, window)?;
    let grid = Grid { x: params[0], y: Rows::PER_TOKEN };
    g.make(Shader::Attention, DType::F32, &params, &[step, qkv, k_cache, v_cache, out], grid)
}

/// The parameters both attention kernels start with: heads, kv heads, head_dim, context,
/// window (0: none), 1/sqrt(head_dim) as bits.
fn attention_params(
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ctx: usize,
    window: Option<usize>,
) -> Result<[u32; 6]> {
    Ok([
        u32_of("heads", heads)?,
        u32_of("kv heads", kv_heads)?,
        u32_of("head_dim", head_dim)?,
        u32_of("context", ctx)?,
        window.map_or(Ok(0), |w| u32_of("sliding window", w))?,
        (1.0 / (head_dim as f32).sqrt()).to_bits(),
    ])
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
/// chunks. Reads what `attention` reads and writes the same `out`; `partials` holds
/// `attention_partials_bytes` for the largest step it will run.
pub fn attention_split(
    g: &Gpu,
    step: &Buffer,
    qkv: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    partials: &Buffer,
    out: &Buffer,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ctx: usize,
    window: Option<usize>,
) -> Result<[Dispatch; 2]> {
    if !head_dim.is_multiple_of(4) {
        return Err(Error::gpu(format!(
            "attention: head_dim {head_dim} is not a multiple of 4 (keys are read as vec4s)"
        )));
    }
    let [h, kvh, d, c, w, scale] = attention_params(heads, kv_heads, head_dim, ctx, window)?;
    let chunk = u32_of("kv chunk", kv_chunk(ctx))?;
    let chunks = u32_of("kv chunks", ctx.div_ceil(kv_chunk(ctx)))?;
    let params = [h, kvh, d, c, w, scale, chunk, chunks];
    let grid = Grid { x: h, y: Rows::PER_TOKEN };
    let mut split =
        g.make(Shader::AttentionSplit, DType::F32, &params, &[step, qkv, k_cache, v_cache, partials], grid)?;
    split.kv_chunk = chunk;
    let combine = g.make(Shader::AttentionCombine, DType::F32, &params, &[step, partials, out], grid)?;
    Ok([split, combine])
}

/// The FFN's RMSNorm fused with the MoE router (router.wgsl): `xn` = rmsnorm(`x`) * `norm`
/// for the expert kernels, and each token's top-k expert ids and weights; `hist`
/// [layers, experts] counts the choices, this router being layer `layer`.
pub fn router(
    g: &Gpu,
    wg: &Buffer,
    (norm, eps): (&Buffer, f32),
    x: &Buffer,
    xn: &Buffer,
    (ids, weights, hist): (&Buffer, &Buffer, &Buffer),
    dim: usize,
    experts: usize,
    k: usize,
    renorm: bool,
    layer: usize,
) -> Result<Dispatch> {
    let params = [
        u32_of("router", dim)?,
        u32_of("experts", experts)?,
        u32_of("top-k", k)?,
        renorm as u32,
        u32_of("layer", layer)?,
        eps.to_bits(),
    ];
    let bufs = [wg, norm, x, xn, ids, weights, hist];
    g.make(Shader::Router, DType::F32, &params, &bufs, Grid { x: 1, y: Rows::PER_TOKEN })
}

/// `w`: stacked experts, each its gate (W1) then up (W3) rows, [2 ff, dim].
pub fn moe_gemv_gate_up(
    g: &Gpu,
    w: &GpuWeight,
    x: &Buffer,
    ids: &Buffer,
    act: &Buffer,
    dim: usize,
    ff: usize,
    k: usize,
) -> Result<Dispatch> {
    let (ff, k) = (u32_of("experts' ff", ff)?, u32_of("top-k", k)?);
    let params = [inner("experts' w1/w3", w.dtype, dim)?, ff, k, w.s_off, w.h_off, w.expert_stride];
    let grid = Grid { x: ff.div_ceil(g.gemv_rows()), y: Rows::Tokens { mul: k, div: 1, add: 0 } };
    // One token reads the k chosen experts' blocks.
    let bytes = w.expert_stride as u64 * 4 * k as u64;
    Ok(g.make(Shader::MoeGemvGateUp, w.dtype, &params, &[&w.buf, x, ids, act], grid)?.reading(bytes))
}

/// `w`: stacked experts, each its down projection (W2), [dim, ff].
pub fn moe_gemv_down(
    g: &Gpu,
    w: &GpuWeight,
    act: &Buffer,
    ids: &Buffer,
    weights: &Buffer,
    x: &Buffer,
    dim: usize,
    ff: usize,
    k: usize,
) -> Result<Dispatch> {
    let d = u32_of("hidden", dim)?;
    let params = [d, inner("experts' w2", w.dtype, ff)?, u32_of("top-k", k)?, w.s_off, w.h_off, w.expert_stride];
    let grid = Grid { x: d.div_ceil(g.gemv_rows()), y: Rows::PER_TOKEN };
    let bytes = w.expert_stride as u64 * 4 * k as u64;
    Ok(g.make(Shader::MoeGemvDown, w.dtype, &params, &[&w.buf, act, ids, weights, x], grid)?.reading(bytes))
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
    let params = [u32_of("experts", experts)?, u32_of("top-k", k)?];
    let grid = Grid { x: 1, y: Rows::Fixed(1) };
    g.make(Shader::MoeGroup, DType::F32, &params, &[step, ids, sorted, pos_of, starts], grid)
}

pub fn moe_gemm_gate_up(
    g: &Gpu,
    w: &GpuWeight,
    x: &Buffer,
    sorted: &Buffer,
    starts: &Buffer,
    act: &Buffer,
    dim: usize,
    ff: usize,
    k: usize,
    experts: usize,
) -> Result<Dispatch> {
    let (ff, k, e) = (u32_of("experts' ff", ff)?, u32_of("top-k", k)?, u32_of("experts", experts)?);
    let params = [inner("experts' w1/w3", w.dtype, dim)?, ff, k, e, w.s_off, w.h_off, w.expert_stride];
    let grid = Grid { x: ff.div_ceil(TILE), y: Rows::Tokens { mul: k, div: TILE, add: e } };
    g.make(Shader::MoeGemmGateUp, w.dtype, &params, &[&w.buf, x, sorted, starts, act], grid)
}

pub fn moe_gemm_down(
    g: &Gpu,
    w: &GpuWeight,
    act: &Buffer,
    starts: &Buffer,
    y: &Buffer,
    dim: usize,
    ff: usize,
    k: usize,
    experts: usize,
) -> Result<Dispatch> {
    let (d, k, e) = (u32_of("hidden", dim)?, u32_of("top-k", k)?, u32_of("experts", experts)?);
    let params = [d, inner("experts' w2", w.dtype, ff)?, k, e, w.s_off, w.h_off, w.expert_stride];
    let grid = Grid { x: d.div_ceil(TILE), y: Rows::Tokens { mul: k, div: TILE, add: e } };
    g.make(Shader::MoeGemmDown, w.dtype, &params, &[&w.buf, act, starts, y], grid)
}

pub fn moe_combine(
    g: &Gpu,
    y: &Buffer,
    pos_of: &Buffer,
    weights: &Buffer,
    x: &Buffer,
    dim: usize,
    k: usize,
) -> Result<Dispatch> {
    let d = u32_of("hidden", dim)?;
    let grid = Grid { x: d.div_ceil(256), y: Rows::PER_TOKEN };
    g.make(Shader::MoeCombine, DType::F32, &[d, u32_of("top-k", k)?], &[y, pos_of, weights, x], grid)
}

/// Row-wise argmax of `logits` [rows, n] into `out`; `rows` grid rows (Fixed) or per token.
pub fn argmax(g: &Gpu, logits: &Buffer, out: &Buffer, n: usize, rows: Rows) -> Result<Dispatch> {
    g.make(Shader::Argmax, DType::F32, &[u32_of("vocab", n)?], &[logits, out], Grid { x: 1, y: rows })
}

/// dst = src over `n` vec4s (the bandwidth probe).
pub fn copy(g: &Gpu, src: &Buffer, dst: &Buffer, n: usize) -> Result<Dispatch> {
    let n = u32_of("copy", n)?;
    g.make(Shader::Copy, DType::F32, &[n], &[src, dst], Grid { x: n.div_ceil(256), y: Rows::Fixed(1) })
}

//! The GPU program builder: walks the layer plan (model/plan.rs) once at load, uploads each
//! layer's weights and records the prefill (GEMM) and decode (GEMV) dispatches, bound to
//! buffers allocated once. The CPU reference (`crate::cpu`) walks the same plan.
//!
//! Per layer (T tokens, D hidden, H/KVH heads of d, E experts, K chosen, F expert width,
//! rs the residual scale):
//!   xn   = rmsnorm(x)                       [T, D]
//!   qkv  = xn · Wqkv^T (+ b)                [T, (H + 2 KVH) d]   (q, k, v fused at load)
//!   q/k norm, rope(q), rope(k) -> cache, v -> cache   caches [KVH, ctx, d]
//!          (decode without q/k norms: all of it in the matmul's epilogue)
//!   attn = attention(q, cache, sinks)       [T, H d]   (decode: split over KV chunks)
//!   x   += rs (attn · Wo^T (+ b))           (residual fused into the matmul)
//!   MoE:   xn = rmsnorm(x) and ids, w = router(xn), in one kernel      [T, K]
//!          x += rs sum_k w_k · down_k(act(gate_k xn (+b), up_k xn (+b))) (+ b)
//!          x += rs g · shared(xn)           (g = sigmoid(w_g · xn), or 1)
//!   dense: xn = rmsnorm(x); x += rs down(act(gate xn, up xn))  (one expert of weight 1)
//! Prefill (T > 1) uses tiled GEMMs with tokens grouped per expert; decode uses GEMVs.

use super::Gpu;
use super::kernels::ops::{AttnSpec, ExpertSpec, Qkv, RouterSpec};
use super::kernels::{Dispatch, GpuWeight, Out, Rows, ops};
use super::layers::{Experts, Uploader, load_layer, place_experts};
use super::model::{GEMM_MIN_ROWS, MAX_CHUNK, Path};
use super::paging::{PagedLayer, Residency};
use crate::config::rope_table;
use crate::error::{Error, Result};
use crate::model::Progress;
use crate::model::plan::{Act, FfnPlan, MoePlan, QkNorm, RopePlan};
use crate::tensor::DType;
use crate::weights::{Slot, WeightSource};
use wgpu::Buffer;

pub(super) struct Programs {
    /// Embedding + all layers, prefill (GEMM) kernels.
    pub body_prefill: Vec<Dispatch>,
    /// Embedding + all layers, decode (GEMV) kernels.
    pub body_decode: Vec<Dispatch>,
    /// Final norm + LM head for every row, GEMM / GEMV.
    pub head_all_prefill: Vec<Dispatch>,
    pub head_all_decode: Vec<Dispatch>,
    /// Final norm of the last row + LM head: logits of the next token in row 0.
    pub head_last: Vec<Dispatch>,
    /// Argmax of logits row 0 into the token buffer (greedy decoding stays on the GPU).
    pub argmax: Dispatch,
    /// Where paged layers stop for the host, in body order (empty when all is resident).
    pub sites_prefill: Vec<Site>,
    pub sites_decode: Vec<Site>,
}

/// What `build` leaves for the model: the programs and the buffers a step touches.
pub(super) struct Built {
    pub programs: Programs,
    pub max_rows: usize,
    pub step: Buffer,
    pub tokens: Buffer,
    pub hist: Buffer,
    pub logits: Buffer,
    pub staging: Buffer,
    /// Each MoE layer's router ids [max_rows, k], in layer order (`route::RouteTrace`).
    pub route_ids: Vec<(Buffer, usize)>,
    /// Bytes at the start of `staging` kept for a step's routing trace (before the
    /// logits or token it reads back, so that one map reads both).
    pub trace_bytes: u64,
    /// The paged MoE layers (src/gpu/paging.rs) and their ids read-back.
    pub paged: Vec<PagedLayer>,
    pub page_staging: Option<Buffer>,
    /// GPU bytes the model allocated (`Gpu::allocations`).
    pub counted_bytes: u64,
    /// Keeps weights, activations and caches alive (bind groups reference them).
    pub buffers: Vec<Buffer>,
    pub weight_bytes: u64,
}

/// Activations and routing buffers shared by every layer.
struct Scratch {
    step: Buffer,
    x: Buffer,
    xn: Buffer,
    qkv: Buffer,
    attn: Buffer,
    partials: Buffer,
    weights: Buffer,
    act: Buffer,
    ybuf: Buffer,
    sorted: Buffer,
    pos_of: Buffer,
    starts: Buffer,
    hist: Buffer,
    /// Every expert in its own block: the slot table of resident experts and dense FFNs.
    identity: Buffer,
    /// A dense MLP or shared expert is expert 0 (ids all 0) with weight 1, or its gate;
    /// its prefill grouping (identity, one expert) is computed once per step.
    dense: Option<DenseRouting>,
    /// Shared experts' sigmoid gates [T].
    shared_gate: Option<Buffer>,
    /// A block's output before its post-norm [T, D] (models with post-norms): zero
    /// between blocks (the post-norm kernel clears what it reads), so the FFN kernels
    /// accumulate into it as they do into x.
    branch: Option<Buffer>,
}

struct DenseRouting {
    ids: Buffer,
    ones: Buffer,
    sorted: Buffer,
    pos_of: Buffer,
    starts: Buffer,
}

/// A dense FFN (a dense layer's MLP, or a shared expert) as one expert of weight `w`.
struct DenseFfn<'a> {
    gate_up: &'a GpuWeight,
    down: &'a GpuWeight,
    weights: &'a Buffer,
    ff: usize,
    act: Act,
}

/// Where a paged MoE layer's step stops for the host (src/gpu/paging.rs): the body runs
/// up to `split` (its router, and the prefill grouping), the host reads `ids` (and the
/// next layer's predicted ids) and uploads, then the expert kernels `experts` run, once per
/// round (the last round's as part of the rest of the body).
#[derive(Clone)]
pub(super) struct Site {
    /// Index into `Built::paged`.
    pub paged: usize,
    pub split: usize,
    pub experts: std::ops::Range<usize>,
    pub ids: Buffer,
    pub k: usize,
    /// Lookahead: the next paged layer (index into `paged`), its predicted ids and k.
    pub predict: Option<(usize, Buffer, usize)>,
}

/// The lookahead router's outputs, apart from the real routing's (decode only).
struct Lookahead {
    xn: Buffer,
    weights: Buffer,
    hist: Buffer,
    shared: Buffer,
}

pub(super) fn build(
    g: &Gpu,
    src: &dyn WeightSource,
    (ctx, kv): (usize, DType),
    res: &Residency,
    progress: Option<&Progress>,
) -> Result<Built> {
    let c = src.config().clone();
    c.validate()?;
    if ctx == 0 {
        return Err(Error::input("context length must be at least 1"));
    }
    let kv16 = kv.kv16()?;
    let counted0 = g.allocations().1;
    let mut up = Uploader { gpu: g, src, buffers: Vec::new(), bytes: 0, pre: 0 };
    let (d, hd) = (c.hidden, c.head_dim);
    let (k, e, ff) = (c.max_top_k(), c.max_experts(), c.max_ff());
    let qkv_w = c.q_dim() + 2 * c.kv_dim();

    // Largest step that keeps every activation buffer within one binding.
    let max_bind = g.limits.max_storage_buffer_binding_size as usize;
    let per_row = [c.vocab * 4, k * ff * 4, k * d * 4, qkv_w * 4];
    let max_rows = per_row.iter().fold(MAX_CHUNK.min(ctx), |m, &b| m.min(max_bind / b.max(1))).max(1);

    let needs_dense = c.plan.iter().any(|l| match &l.ffn {
        FfnPlan::Dense(_) => true,
        FfnPlan::Moe(m) => m.shared.is_some(),
    });
    let step = g.uniform("step", &[0, 0, 0, 0]);
    let tokens = up.scratch("tokens", max_rows * 4)?;
    let decode_rows = max_rows.min(GEMM_MIN_ROWS - 1);
    let s = Scratch {
        x: up.scratch("hidden", max_rows * d * 4)?,
        xn: up.scratch("normed hidden", max_rows * d * 4)?,
        qkv: up.scratch("qkv", max_rows * qkv_w * 4)?,
        attn: up.scratch("attention out", max_rows * c.q_dim() * 4)?,
        partials: up.scratch("attention partials", ops::attention_partials_bytes(decode_rows, c.heads, hd, ctx))?,
        weights: up.scratch("router weights", max_rows * k * 4)?,
        act: up.scratch("expert activations", max_rows * k * ff * 4)?,
        ybuf: up.scratch("expert outputs", max_rows * k * d * 4)?,
        sorted: up.scratch("expert order", max_rows * k * 4)?,
        pos_of: up.scratch("expert positions", max_rows * k * 4)?,
        starts: up.scratch("expert starts", (e + 1) * 4)?,
        hist: up.scratch("expert choice counts", c.layers * e * 4)?,
        identity: up.words("identity slot table", &(0..e.max(1) as u32).collect::<Vec<_>>())?,
        dense: if needs_dense {
            let r = DenseRouting {
                ids: up.scratch("dense ids", max_rows * 4)?,
                ones: up.scratch("dense weights", max_rows * 4)?,
                sorted: up.scratch("dense order", max_rows * 4)?,
                pos_of: up.scratch("dense positions", max_rows * 4)?,
                starts: up.scratch("dense starts", 8)?,
            };
            g.write(&r.ids, 0, bytemuck::cast_slice(&vec![0u32; max_rows]));
            g.write(&r.ones, 0, bytemuck::cast_slice(&vec![1.0f32; max_rows]));
            Some(r)
        } else {
            None
        },
        // Bound by every router (written only with a gated shared expert): a shared
        // read-write dummy across kernels would cost barriers between dispatches.
        shared_gate: if c.is_moe() { Some(up.scratch("shared expert gates", max_rows * 4)?) } else { None },
        branch: if c.plan.iter().any(|l| l.post_norms) {
            Some(up.scratch("block output before its post-norm", max_rows * d * 4)?)
        } else {
            None
        },
        step,
    };
    g.write(&s.hist, 0, &vec![0u8; c.layers * e * 4]);
    let logits = up.scratch("logits", max_rows * c.vocab * 4)?;
    // [trace of every MoE layer's ids for max_rows tokens][logits of max_rows tokens]
    let k_sum: usize = c.plan.iter().filter_map(|l| l.moe().map(|m| m.top_k)).sum();
    let trace_bytes = ((max_rows * k_sum * 4) as u64).next_multiple_of(256);
    let staging = g.staging("logits and routing read-back", trace_bytes + (max_rows * c.vocab * 4) as u64);
    // Lazily loaded experts are always paged: they reach the GPU as the router asks.
    let lazy = src.lazy_experts().is_some();
    let paging = c.is_moe() && (res.experts.is_some() || res.gpu_memory.is_some() || lazy);
    let lookahead = if paging && res.prefetch {
        Some(Lookahead {
            xn: up.scratch("lookahead normed hidden", decode_rows * d * 4)?,
            weights: up.scratch("lookahead router weights", decode_rows * k * 4)?,
            hist: up.scratch("lookahead choice counts", c.layers * e * 4)?,
            shared: up.scratch("lookahead shared gates", decode_rows * 4)?,
        })
    } else {
        None
    };

    // One rotary table per distinct rope plan (Gemma-style local/global bases share none).
    let mut tables: Vec<(RopePlan, Buffer)> = Vec::new();
    for l in &c.plan {
        if !tables.iter().any(|(r, _)| *r == l.attn.rope) {
            let t = rope_table(&l.attn.rope, hd, ctx);
            tables.push((l.attn.rope.clone(), up.words("rope table", bytemuck::cast_slice(&t))?));
        }
    }

    // --- pass 1: the skeleton and the KV caches ---
    let embed = up.row_ranges(Slot::Embed, c.vocab, d)?.ok_or_else(|| Error::input("the model has no embedding"))?;
    let mut layers = Vec::with_capacity(c.layers);
    for li in 0..c.layers {
        if let Some(p) = progress {
            p.report("upload", &format!("layer {li}"), li as u64, c.layers as u64);
        }
        layers.push(load_layer(&mut up, &c, li, (ctx, kv16, max_rows), paging)?);
    }
    let final_norm = up.need(Slot::FinalNorm)?.buf;
    let lm_head = match up.row_ranges(Slot::LmHead, c.vocab, d)? {
        Some(w) => w,
        None => embed.clone(),
    };

    // --- the experts: whole, or a pool of slots per layer ---
    // (Also when a layer's experts do not fit one binding: they stayed on the host.)
    let paging = paging || layers.iter().any(|l| matches!(l.experts, Experts::Host(..)));
    let (paged, pools) = if paging {
        // What is still to come besides the pools: slot tables, predicted ids, the paging
        // read-back and the kernels' parameter blocks (an upper bound per dispatch).
        let dispatches = (c.layers * 2 * 24 + 16 + embed.len() + 4 * lm_head.len()) as u64;
        // A pool split over bindings adds a table and 4 expert dispatches (2 paths) per part:
        // bounded by the parts all of a layer's experts would take.
        let max_bind = g.limits.max_storage_buffer_binding_size.max(1);
        let extra_parts: u64 = layers
            .iter()
            .map(|l| match &l.experts {
                Experts::Host(a, b) => {
                    let widest = a.expert_stride.max(b.expert_stride) as u64 * 4;
                    (a.experts as u64 * widest).div_ceil(max_bind).saturating_sub(1)
                }
                _ => 0,
            })
            .sum();
        let later = c.layers as u64 * (e + decode_rows * k) as u64 * 4
            + 2 * (max_rows * k * 4) as u64
            + dispatches * 256
            + extra_parts * (e as u64 * 4 + 8 * 256);
        let fixed = g.allocations().1 - counted0 + up.pre + later;
        place_experts(&mut up, &c, &mut layers, res, fixed)?
    } else {
        (Vec::new(), (0..c.layers).map(|_| None).collect())
    };
    let page_staging =
        if paged.is_empty() { None } else { Some(g.staging("paging read-back", (2 * max_rows * k * 4) as u64)) };

    // --- pass 2: the dispatches ---
    let mut route_ids = Vec::new();
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    let (mut sites_pre, mut sites_dec) = (Vec::new(), Vec::new());
    for (w, r0, n) in &embed {
        pre.push(ops::embed(g, w, (*r0, *n), &tokens, &s.x, d, c.vocab, c.embed_scale)?);
        dec.push(ops::embed(g, w, (*r0, *n), &tokens, &s.x, d, c.vocab, c.embed_scale)?);
    }
    if let Some(r) = &s.dense {
        pre.push(ops::moe_group(g, &s.step, &r.ids, &r.sorted, &r.pos_of, &r.starts, 1, 1)?);
    }
    // Lookahead ids of each paged layer (predicted from the previous layer's residual).
    let predicted: Vec<Option<Buffer>> = (0..c.layers)
        .map(|li| match (&lookahead, &pools[li], c.plan[li].moe()) {
            (Some(_), Some(_), Some(m)) if li > 0 => {
                up.scratch(&format!("layer {li} predicted ids"), decode_rows * m.top_k * 4).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;

    for (li, (lp, lb)) in c.plan.iter().zip(&layers).enumerate() {
        let a = &lp.attn;
        // With post-norms each block writes into `branch`, normalised into x after it.
        let post = match (&lb.post, &s.branch) {
            (Some(w), Some(b)) => Some((w, b)),
            (None, _) => None,
            (Some(_), None) => return Err(Error::input("post-norm scratch")),
        };
        // Where a block's output goes and its scale there.
        let (target, ts) = match &post {
            Some((_, b)) => (*b, 1.0),
            None => (&s.x, c.residual_scale),
        };
        let table = &tables.iter().find(|(r, _)| *r == a.rope).ok_or_else(|| Error::input("rope table"))?.1;
        let spec =
            AttnSpec { heads: c.heads, kv_heads: c.kv_heads, head_dim: hd, ctx, window: a.window, scale: a.scale };
        let rs = c.residual_scale;
        let caches = Qkv { qkv: &s.qkv, k: &lb.k_cache, v: &lb.v_cache, kv16 };
        // The experts as the kernels bind them: (gate/up, down, slot table), once per
        // part of a pool split over bindings.
        let parts: Vec<(&GpuWeight, &GpuWeight, &Buffer)> = match (&lb.experts, &pools[li]) {
            (_, Some(p)) => p.iter().map(|(a, b, t)| (a, b, t)).collect(),
            (Experts::Resident(a, b), None) => vec![(a, b, &s.identity)],
            (Experts::Host(..) | Experts::Pooled, None) => {
                return Err(Error::input("experts left on the host without a pool"));
            }
        };
        let (w13, w2) = (parts[0].0, parts[0].1);
        if let (Some((_, ids)), Some(m)) = (&lb.router, lp.moe()) {
            route_ids.push((ids.clone(), m.top_k));
        }
        for (prog, path) in [(&mut pre, Path::Prefill), (&mut dec, Path::Decode)] {
            // --- attention ---
            prog.push(ops::rms_norm(g, &s.step, &lb.attn_norm, &s.x, &s.xn, d, c.eps, false)?);
            if path == Path::Decode && a.qk_norm == QkNorm::None {
                // Few tokens: rotary embedding and the cache write in the matmul's epilogue.
                for (w, n_out, off) in &lb.qkv_parts {
                    let shape = (*n_out, d, *off);
                    let heads = (c.heads, c.kv_heads, hd, ctx);
                    prog.push(ops::qkv_rope(g, &s.step, w, &s.xn, table, caches, lb.qkv_bias.as_ref(), shape, heads)?);
                }
            } else {
                // q/k norms need whole heads (or whole projections), which a GEMV
                // workgroup's rows do not hold in every lane shape: project, then norm and
                // rotate in rope_kv (and qk_norm for OLMoE's whole-projection norm).
                for (w, n_out, off) in &lb.qkv_parts {
                    let out = Out::cols(&s.qkv, qkv_w, *off).with_bias(lb.qkv_bias.as_ref());
                    prog.push(match path {
                        Path::Prefill => ops::gemm(g, "q/k/v projection", &s.step, w, &s.xn, out, *n_out, d)?,
                        Path::Decode => ops::gemv(g, "q/k/v projection", w, &s.xn, out, *n_out, d)?,
                    });
                }
                if a.qk_norm == QkNorm::Whole {
                    let w = lb.qk_norm.as_ref().ok_or_else(|| Error::input("q/k norm weights"))?;
                    prog.push(ops::qk_norm(g, &s.qkv, w, c.heads, c.kv_heads, hd, c.eps)?);
                }
                let norm = if a.qk_norm == QkNorm::PerHead { lb.qk_norm.as_ref().map(|w| (w, c.eps)) } else { None };
                // The GPU weights hold rotary pairs in adjacent rows (src/weights.rs).
                prog.push(ops::rope_kv(g, &s.step, table, caches, norm, (c.heads, c.kv_heads, hd, ctx), true)?);
            }
            match path {
                Path::Prefill => prog.push(ops::attention(g, &s.step, caches, &s.attn, lb.sinks.as_ref(), &spec)?),
                // Few tokens: split the positions across workgroups (flash-decoding).
                Path::Decode => prog.extend(ops::attention_split(
                    g,
                    &s.step,
                    caches,
                    &s.partials,
                    &s.attn,
                    lb.sinks.as_ref(),
                    &spec,
                )?),
            }
            let out = match &post {
                Some((_, b)) => Out::write(b, d).with_bias(lb.o_bias.as_ref()),
                None => Out::add(&s.x, d).with_bias(lb.o_bias.as_ref()).scaled(rs),
            };
            prog.push(match path {
                Path::Prefill => ops::gemm(g, "attention output", &s.step, &lb.wo, &s.attn, out, d, c.q_dim())?,
                Path::Decode => ops::gemv(g, "attention output", &lb.wo, &s.attn, out, d, c.q_dim())?,
            });
            if let Some((w, b)) = &post {
                prog.push(ops::rms_norm_add(g, &s.step, (w, 0), b, &s.x, d, c.eps, rs)?);
            }

            // --- FFN ---
            match &lp.ffn {
                FfnPlan::Dense(mlp) => {
                    prog.push(ops::rms_norm(g, &s.step, &lb.ffn_norm, &s.x, &s.xn, d, c.eps, false)?);
                    let ones = &s.dense.as_ref().ok_or_else(|| Error::input("dense routing"))?.ones;
                    let f = DenseFfn { gate_up: w13, down: w2, weights: ones, ff: mlp.ff, act: mlp.act };
                    dense_ffn(g, &s, prog, path, &f, d, (target, ts))?;
                }
                FfnPlan::Moe(m) => {
                    let (r, ids) = lb.router.as_ref().ok_or_else(|| Error::input("router"))?;
                    let rspec = router_spec(d, m, li);
                    let shared_out = s.shared_gate.as_ref();
                    let outs = (ids, &s.weights, &s.hist, shared_out);
                    // xn = rmsnorm(x) fused into the router, then routing.
                    prog.push(ops::router(g, r, (&lb.ffn_norm, c.eps), &s.x, &s.xn, outs, &rspec)?);
                    // Lookahead: the next layer's router on this residual, into its own buffers.
                    let mut predict = None;
                    if let (Path::Decode, Some(la), Some(Some(pids))) = (path, &lookahead, predicted.get(li + 1)) {
                        let (nl, nm) =
                            (&layers[li + 1], c.plan[li + 1].moe().ok_or_else(|| Error::input("lookahead"))?);
                        let (nr, _) = nl.router.as_ref().ok_or_else(|| Error::input("lookahead router"))?;
                        let nspec = router_spec(d, nm, li + 1);
                        let outs = (pids, &la.weights, &la.hist, Some(&la.shared));
                        prog.push(ops::router(g, nr, (&nl.ffn_norm, c.eps), &s.x, &la.xn, outs, &nspec)?);
                        let at = paged
                            .iter()
                            .position(|p| p.layer == li + 1)
                            .ok_or_else(|| Error::input("lookahead layer"))?;
                        predict = Some((at, pids.clone(), nm.top_k));
                    }
                    let es = ExpertSpec { dim: d, ff: m.ff, k: m.top_k, experts: m.experts, act: m.act };
                    let (b13, b2) = (lb.bias13.as_ref(), lb.bias2.as_ref());
                    if path == Path::Prefill {
                        prog.push(ops::moe_group(
                            g, &s.step, ids, &s.sorted, &s.pos_of, &s.starts, m.experts, m.top_k,
                        )?);
                    }
                    let split = prog.len();
                    // Each part computes the experts its table names (and leaves the rest).
                    for &(w13, w2, slots) in &parts {
                        match path {
                            Path::Prefill => {
                                let rows = (&s.sorted, &s.starts);
                                prog.push(ops::moe_gemm_gate_up(g, (w13, slots), &s.xn, rows, &s.act, b13, &es)?);
                                prog.push(ops::moe_gemm_down(g, (w2, slots), &s.act, &s.starts, &s.ybuf, b2, &es)?);
                            }
                            Path::Decode => {
                                prog.push(ops::moe_gemv_gate_up(g, (w13, slots), &s.xn, ids, &s.act, b13, &es)?);
                                let outs = (ids, &s.weights);
                                prog.push(ops::moe_gemv_down(g, (w2, slots), &s.act, outs, target, b2, &es, ts)?);
                            }
                        }
                    }
                    if let Some(at) = paged.iter().position(|p| p.layer == li) {
                        let site = Site {
                            paged: at,
                            split,
                            experts: split..prog.len(),
                            ids: ids.clone(),
                            k: m.top_k,
                            predict,
                        };
                        match path {
                            Path::Prefill => sites_pre.push(site),
                            Path::Decode => sites_dec.push(site),
                        }
                    }
                    if path == Path::Prefill {
                        prog.push(ops::moe_combine(g, &s.ybuf, &s.pos_of, &s.weights, target, d, m.top_k, ts)?);
                    }
                    if let Some((sh13, sh2, plan)) = &lb.shared {
                        let dense = s.dense.as_ref().ok_or_else(|| Error::input("dense routing"))?;
                        let weights =
                            if plan.gated { s.shared_gate.as_ref().unwrap_or(&dense.ones) } else { &dense.ones };
                        let f = DenseFfn { gate_up: sh13, down: sh2, weights, ff: plan.ff, act: m.act };
                        dense_ffn(g, &s, prog, path, &f, d, (target, ts))?;
                    }
                }
            }
            if let Some((w, b)) = &post {
                prog.push(ops::rms_norm_add(g, &s.step, (w, d), b, &s.x, d, c.eps, rs)?);
            }
        }
    }

    // The LM head in row ranges (a 262k vocabulary exceeds one binding): each range
    // writes its columns of the logits.
    let mut head_all_prefill = vec![ops::rms_norm(g, &s.step, &final_norm, &s.x, &s.xn, d, c.eps, false)?];
    let mut head_all_decode = vec![ops::rms_norm(g, &s.step, &final_norm, &s.x, &s.xn, d, c.eps, false)?];
    let mut head_last = vec![ops::rms_norm(g, &s.step, &final_norm, &s.x, &s.xn, d, c.eps, true)?];
    for (w, r0, n) in &lm_head {
        let out = Out::cols(&logits, c.vocab, *r0).scaled(c.logit_scale);
        head_all_prefill.push(ops::gemm(g, "LM head", &s.step, w, &s.xn, out, *n, d)?);
        head_all_decode.push(ops::gemv(g, "LM head", w, &s.xn, out, *n, d)?);
        // The last row only: normalised into row 0, one GEMV row of logits.
        let last = ops::gemv(g, "LM head", w, &s.xn, out, *n, d)?;
        let x = last.grid.x;
        head_last.push(last.with_grid(super::Grid { x, y: Rows::Fixed(1) }));
    }
    let argmax = ops::argmax(g, &logits, &tokens, c.vocab, Rows::Fixed(1))?;
    let counted = g.allocations().1 - counted0 + up.pre;
    if let Some(budget) = res.gpu_memory
        && counted > budget
    {
        return Err(Error::gpu(format!("the model allocated {counted} bytes on the GPU, over --gpu-memory {budget}")));
    }
    Ok(Built {
        programs: Programs {
            body_prefill: pre,
            body_decode: dec,
            head_all_prefill,
            head_all_decode,
            head_last,
            argmax,
            sites_prefill: sites_pre,
            sites_decode: sites_dec,
        },
        max_rows,
        step: s.step,
        tokens,
        hist: s.hist,
        logits,
        staging,
        route_ids,
        trace_bytes,
        paged,
        page_staging,
        counted_bytes: counted,
        buffers: up.buffers,
        weight_bytes: up.bytes,
    })
}

/// Layer `layer`'s router as the router kernel takes it.
fn router_spec(dim: usize, m: &MoePlan, layer: usize) -> RouterSpec<'_> {
    let shared_gate = m.shared.as_ref().is_some_and(|sh| sh.gated);
    RouterSpec { dim, experts: m.experts, k: m.top_k, layer, plan: &m.router, shared_gate }
}

/// y += rs · w · down(act(gate xn, up xn)) for a dense FFN run as one expert, with
/// (y, rs) the residual stream and its scale, or a post-norm's branch and 1.
fn dense_ffn(
    g: &Gpu,
    s: &Scratch,
    prog: &mut Vec<Dispatch>,
    path: Path,
    f: &DenseFfn,
    d: usize,
    (y, rs): (&Buffer, f32),
) -> Result<()> {
    let r = s.dense.as_ref().ok_or_else(|| Error::input("dense routing"))?;
    let identity = &s.identity;
    let es = ExpertSpec { dim: d, ff: f.ff, k: 1, experts: 1, act: f.act };
    match path {
        Path::Prefill => {
            prog.push(ops::moe_gemm_gate_up(
                g,
                (f.gate_up, identity),
                &s.xn,
                (&r.sorted, &r.starts),
                &s.act,
                None,
                &es,
            )?);
            prog.push(ops::moe_gemm_down(g, (f.down, identity), &s.act, &r.starts, &s.ybuf, None, &es)?);
            prog.push(ops::moe_combine(g, &s.ybuf, &r.pos_of, f.weights, y, d, 1, rs)?);
        }
        Path::Decode => {
            prog.push(ops::moe_gemv_gate_up(g, (f.gate_up, identity), &s.xn, &r.ids, &s.act, None, &es)?);
            prog.push(ops::moe_gemv_down(g, (f.down, identity), &s.act, (&r.ids, f.weights), y, None, &es, rs)?);
        }
    }
    Ok(())
}

//! The first pass of `program::build`: every layer's weights and KV caches on the GPU
//! (the skeleton), with each MoE layer's experts either uploaded whole or, when a
//! residency is asked for, kept on the host until the planner has sized their slot pools
//! (src/gpu/paging.rs). The second pass records the dispatches (program.rs).

use super::Gpu;
use super::kernels::{GpuWeight, ops};
use super::paging::{self, HostExperts, NO_SLOT, PagedLayer, PoolPart, Residency};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::plan::{FfnPlan, QkNorm, SharedExpert};
use crate::quant::PackedBuffer;
use crate::weights::{Slot, WeightSource};
use wgpu::Buffer;

pub(super) struct Uploader<'a> {
    pub gpu: &'a Gpu,
    pub src: &'a dyn WeightSource,
    pub buffers: Vec<Buffer>,
    pub bytes: u64,
    /// Bytes of the buffers taken already on the GPU (allocated before the build began).
    pub pre: u64,
}

impl Uploader<'_> {
    /// A buffer the source assembled on the GPU already.
    pub fn uploaded(&mut self, slot: Slot) -> Option<GpuWeight> {
        let w = self.src.uploaded(slot)?;
        self.bytes += w.buf.size();
        self.pre += w.buf.size();
        self.buffers.push(w.buf.clone());
        Some(w)
    }

    /// The weight buffer for `slot`, if the model has one.
    pub fn slot(&mut self, slot: Slot) -> Result<Option<GpuWeight>> {
        if let Some(w) = self.uploaded(slot) {
            return Ok(Some(w));
        }
        let Some(b) = self.src.buffer(slot)? else { return Ok(None) };
        self.upload(&self.src.describe(slot), &b).map(Some)
    }

    pub fn upload(&mut self, name: &str, b: &PackedBuffer) -> Result<GpuWeight> {
        if b.bytes.is_empty() {
            // A layout without bytes (experts fetched when needed) must never be uploaded.
            return Err(Error::input(format!("tensor '{name}' has no bytes here (its bytes are fetched when needed)")));
        }
        let w = self.gpu.upload_packed(name, b)?;
        self.bytes += w.buf.size();
        self.buffers.push(w.buf.clone());
        Ok(w)
    }

    /// A `rows` x `cols` matrix in as many row ranges as the adapter's binding size needs
    /// (one, usually): (weights, first row, rows) each.
    pub fn row_ranges(
        &mut self,
        slot: Slot,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Vec<(GpuWeight, usize, usize)>>> {
        if let Some(w) = self.uploaded(slot) {
            return Ok(Some(vec![(w, 0, rows)]));
        }
        let Some(b) = self.src.buffer(slot)? else { return Ok(None) };
        let max = self.gpu.limits.max_storage_buffer_binding_size as usize;
        let parts =
            if b.bytes.len() <= max { vec![(b, 0, rows)] } else { crate::quant::split_rows(&b, rows, cols, max)? };
        let name = self.src.describe(slot);
        let mut out = Vec::with_capacity(parts.len());
        for (p, r0, n) in parts {
            out.push((self.upload(&format!("{name} rows {r0}..{}", r0 + n), &p)?, r0, n));
        }
        Ok(Some(out))
    }

    pub fn need(&mut self, slot: Slot) -> Result<GpuWeight> {
        self.slot(slot)?.ok_or_else(|| Error::input(format!("the model has no weights for {}", slot.name())))
    }

    /// An optional buffer the plan says must be there (`want`), or none.
    pub fn want(&mut self, slot: Slot, want: bool) -> Result<Option<Buffer>> {
        if want { Ok(Some(self.need(slot)?.buf)) } else { Ok(None) }
    }

    pub fn scratch(&mut self, label: &str, bytes: usize) -> Result<Buffer> {
        let b = self.gpu.storage(label, bytes as u64)?;
        self.buffers.push(b.clone());
        Ok(b)
    }

    /// A storage buffer holding `words`.
    pub fn words(&mut self, label: &str, words: &[u32]) -> Result<Buffer> {
        let b = self.gpu.storage_init(label, bytemuck::cast_slice(words))?;
        self.buffers.push(b.clone());
        Ok(b)
    }
}

/// A layer's experts: on the GPU whole, or on the host until their pool is made.
pub(super) enum Experts {
    Resident(GpuWeight, GpuWeight),
    Host(PackedBuffer, PackedBuffer),
    /// Moved into the layer's slot pools (src/gpu/paging.rs).
    Pooled,
}

/// Everything one layer binds, bar its experts' pools.
pub(super) struct LayerBufs {
    pub attn_norm: Buffer,
    pub ffn_norm: Buffer,
    /// q, k and v as one matmul, or three writing their columns: (weights, outputs, column).
    pub qkv_parts: Vec<(GpuWeight, usize, usize)>,
    pub qkv_bias: Option<Buffer>,
    pub qk_norm: Option<Buffer>,
    pub sinks: Option<Buffer>,
    pub wo: GpuWeight,
    pub o_bias: Option<Buffer>,
    pub post: Option<Buffer>,
    pub k_cache: Buffer,
    pub v_cache: Buffer,
    /// The dense MLP's or the experts' gate/up and down.
    pub experts: Experts,
    /// MoE: the router and this layer's router ids [max_rows, k].
    pub router: Option<(Buffer, Buffer)>,
    pub bias13: Option<Buffer>,
    pub bias2: Option<Buffer>,
    pub shared: Option<(GpuWeight, GpuWeight, SharedExpert)>,
}

/// Uploads layer `li`'s skeleton and KV caches; its experts stay on the host when
/// `host_experts` (the planner decides their residency later).
pub(super) fn load_layer(
    up: &mut Uploader,
    c: &ModelConfig,
    li: usize,
    (ctx, kv16, max_rows): (usize, bool, usize),
    host_experts: bool,
) -> Result<LayerBufs> {
    let l = li as u32;
    let lp = &c.plan[li];
    let a = &lp.attn;
    let qkv_w = c.q_dim() + 2 * c.kv_dim();
    let attn_norm = up.need(Slot::AttnNorm(l))?.buf;
    let ffn_norm = up.need(Slot::FfnNorm(l))?.buf;
    // q, k and v as one matmul when they share a storage type (the usual case), else three
    // matmuls writing their columns of the same qkv rows.
    let qkv_parts = match up.slot(Slot::Qkv(l))? {
        Some(w) => vec![(w, qkv_w, 0)],
        None => vec![
            (up.need(Slot::Q(l))?, c.q_dim(), 0),
            (up.need(Slot::K(l))?, c.kv_dim(), c.q_dim()),
            (up.need(Slot::V(l))?, c.kv_dim(), c.q_dim() + c.kv_dim()),
        ],
    };
    let qkv_bias = up.want(Slot::QkvBias(l), a.qkv_bias)?;
    let qk_norm = up.want(Slot::QkNorm(l), a.qk_norm != QkNorm::None)?;
    let sinks = up.want(Slot::Sinks(l), a.sinks)?;
    let wo = up.need(Slot::Wo(l))?;
    let o_bias = up.want(Slot::OBias(l), a.o_bias)?;
    let post = up.want(Slot::PostNorms(l), lp.post_norms)?;
    let kv_bytes = ops::kv_cache_bytes(c.kv_heads, ctx, c.head_dim, kv16);
    let k_cache = up.scratch(&format!("layer {li} K cache"), kv_bytes)?;
    let v_cache = up.scratch(&format!("layer {li} V cache"), kv_bytes)?;
    let moe = lp.moe();
    let experts = match moe {
        Some(_) => moe_experts(up, l, host_experts)?,
        None => Experts::Resident(up.need(Slot::GateUp(l))?, up.need(Slot::Down(l))?),
    };
    let (router, bias13, bias2, shared) = match &lp.ffn {
        FfnPlan::Dense(_) => (None, None, None, None),
        FfnPlan::Moe(m) => (
            // Each layer keeps its own ids, so a step's whole routing can be read back.
            Some((
                up.need(Slot::Router(l))?.buf,
                up.scratch(&format!("layer {li} router ids"), max_rows * m.top_k * 4)?,
            )),
            up.want(Slot::GateUpBias(l), m.expert_bias)?,
            up.want(Slot::DownBias(l), m.expert_bias)?,
            match &m.shared {
                Some(sh) => Some((up.need(Slot::SharedGateUp(l))?, up.need(Slot::SharedDown(l))?, sh.clone())),
                None => None,
            },
        ),
    };
    Ok(LayerBufs {
        attn_norm,
        ffn_norm,
        qkv_parts,
        qkv_bias,
        qk_norm,
        sinks,
        wo,
        o_bias,
        post,
        k_cache,
        v_cache,
        experts,
        router,
        bias13,
        bias2,
        shared,
    })
}

/// An MoE layer's experts: on the GPU whole when they fit one binding and no residency
/// is asked for (`host_experts`); else on the host until their slot pools are made.
fn moe_experts(up: &mut Uploader, l: u32, host_experts: bool) -> Result<Experts> {
    if !host_experts {
        // Assembled on the GPU already (a page's packed load).
        if let Some(a) = up.uploaded(Slot::GateUp(l)) {
            return Ok(Experts::Resident(a, up.need(Slot::Down(l))?));
        }
    }
    let get =
        |s: Slot| up.src.buffer(s)?.ok_or_else(|| Error::input(format!("the model has no weights for {}", s.name())));
    let (gu, dn) = (get(Slot::GateUp(l))?, get(Slot::Down(l))?);
    let max = up.gpu.limits.max_storage_buffer_binding_size as usize;
    if host_experts || gu.bytes.len() > max || dn.bytes.len() > max {
        return Ok(Experts::Host(gu, dn));
    }
    let (a, b) = (up.src.describe(Slot::GateUp(l)), up.src.describe(Slot::Down(l)));
    Ok(Experts::Resident(up.upload(&a, &gu)?, up.upload(&b, &dn)?))
}

/// One part of a layer's pool as the expert kernels bind it: (gate/up, down, slot table).
pub(super) type Pool = (GpuWeight, GpuWeight, Buffer);
/// Per layer, its pool's parts (None: no pool).
pub(super) type Pools = Vec<Option<Vec<Pool>>>;

/// Sizes and makes each MoE layer's slot pools once the skeleton is on the GPU: N slots
/// per layer from `res.experts` and what `res.gpu_memory` leaves after `fixed` bytes (all
/// that is allocated whatever the residency). A pool larger than one binding is split into
/// parts of as many slots as a binding holds. A layer whose experts all fit one binding is
/// uploaded whole instead, unless its experts are fetched lazily (then its pool holds them
/// all as they come); one whose experts do not fit one binding gets a pool of all its
/// experts in parts, filled now. Returns the paged layers and each layer's pool parts.
pub(super) fn place_experts(
    up: &mut Uploader,
    c: &ModelConfig,
    layers: &mut [LayerBufs],
    res: &Residency,
    fixed: u64,
) -> Result<(Vec<PagedLayer>, Pools)> {
    let moe: Vec<(usize, usize, u64)> = layers
        .iter()
        .zip(&c.plan)
        .filter_map(|(lb, lp)| match (&lb.experts, lp.moe()) {
            (Experts::Host(a, b), Some(m)) => {
                Some((m.experts, m.top_k, (a.expert_stride as u64 + b.expert_stride as u64) * 4))
            }
            _ => None,
        })
        .collect();
    let mut n = res.experts.unwrap_or(usize::MAX);
    if let Some(budget) = res.gpu_memory {
        n = n.min(paging::plan_slots(budget, fixed, &moe)?);
    }
    let max_bind = up.gpu.limits.max_storage_buffer_binding_size;
    let mut paged = Vec::new();
    let mut pools: Pools = (0..c.layers).map(|_| None).collect();
    for (li, lb) in layers.iter_mut().enumerate() {
        let Some(m) = c.plan[li].moe() else { continue };
        if n < m.top_k {
            return Err(Error::input(format!(
                "--resident-experts {n} is below layer {li}'s top-k of {}: a token's experts must fit at once",
                m.top_k
            )));
        }
        let Experts::Host(gu, dn) = std::mem::replace(&mut lb.experts, Experts::Pooled) else {
            continue;
        };
        let l = li as u32;
        let lazy = up.src.lazy_experts();
        let fits = gu.bytes.len() as u64 <= max_bind && dn.bytes.len() as u64 <= max_bind;
        if n >= m.experts && lazy.is_none() && fits {
            let (a, b) = (up.src.describe(Slot::GateUp(l)), up.src.describe(Slot::Down(l)));
            lb.experts = Experts::Resident(up.upload(&a, &gu)?, up.upload(&b, &dn)?);
            continue;
        }
        let n = n.min(m.experts);
        // Slots per part: as many as one binding holds.
        let widest = gu.expert_stride.max(dn.expert_stride) as u64 * 4;
        let per = (max_bind / widest.max(1)) as usize;
        if per == 0 {
            return Err(Error::gpu(format!(
                "layer {li}: one expert of {widest} bytes does not fit one binding of {max_bind} bytes (max_storage_buffer_binding_size)"
            )));
        }
        let mut parts = Vec::new();
        let mut layer_pools = Vec::new();
        for first in (0..n).step_by(per) {
            let k = per.min(n - first);
            let mut pool = |b: &PackedBuffer, what: &str| -> Result<GpuWeight> {
                let label = format!("layer {li} {what} pool, slots {first}..{}", first + k);
                let buf = up.scratch(&label, k * b.expert_stride as usize * 4)?;
                up.bytes += buf.size();
                Ok(GpuWeight { buf, dtype: b.dtype, s_off: b.s_off, h_off: b.h_off, expert_stride: b.expert_stride })
            };
            let (pgu, pdn) = (pool(&gu, "gate/up")?, pool(&dn, "down")?);
            let table = up.words(&format!("layer {li} slot table, slots {first}..{}", first + k), &vec![NO_SLOT; m.experts])?;
            layer_pools.push((pgu.clone(), pdn.clone(), table.clone()));
            parts.push(PoolPart { first: first as u32, slots: k as u32, pools: [pgu.buf, pdn.buf], table });
        }
        pools[li] = Some(layer_pools);
        let strides = [gu.expert_stride as usize * 4, dn.expert_stride as usize * 4];
        let host = match lazy {
            Some(l) => HostExperts::Lazy(l),
            None => HostExperts::Memory([gu.bytes, dn.bytes]),
        };
        let mut layer = PagedLayer::new(li, m.experts, (host, strides), parts);
        // Every expert has a slot (they did not fit one binding): all go up now, and steps
        // never page.
        if n == m.experts && matches!(layer.host, HostExperts::Memory(_)) {
            let ups = layer.fill(usize::MAX);
            layer.put_memory(up.gpu, &ups);
            // They stay: no host copy is needed (without reuse, each step uploads again).
            if res.policy != paging::Policy::NoReuse {
                layer.host = HostExperts::Dropped;
            }
        }
        paged.push(layer);
    }
    Ok((paged, pools))
}

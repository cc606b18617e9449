//! The weight buffers a GPU model uploads, named by `Slot`, each already in the kernels'
//! layout (`quant::PackedBuffer`). A `WeightSource` hands them out: from model files
//! (repacking on the way) or from a packed web model (`pack`), whose shards hold exactly
//! these bytes so nothing is re-processed in the browser.
//!
//! Rotary layout: in these buffers the rows of Wq and Wk put each rotary pair in adjacent
//! rows (2i, 2i + 1) of its head, as GGUF files already do. Hugging Face checkpoints pair
//! (i, i + d/2) ("rotate half"), so their q/k rows are reordered here; q·k is unchanged
//! (both sides move alike), and the decode kernel can rotate a pair within one thread.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{ModelFiles, TensorRef};
use crate::quant::{PackedBuffer, pack_experts, pack_matrix};
use crate::tensor::{DType, from_f32};

/// One GPU weight buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Embed,
    AttnNorm(u32),
    /// q, k and v rows in one matrix (when they share a storage type).
    Qkv(u32),
    Q(u32),
    K(u32),
    V(u32),
    /// q|k|v biases [q_dim + 2 kv_dim] f32, indexed by output column.
    QkvBias(u32),
    /// q norm weights then k norm weights, f32 ([2 d] per head, or [q_dim + kv_dim]).
    QkNorm(u32),
    /// One sink logit per query head [heads] f32.
    Sinks(u32),
    Wo(u32),
    /// [hidden] f32.
    OBias(u32),
    FfnNorm(u32),
    /// The post-attention then the post-FFN norm weights [2 hidden] f32 (Gemma).
    PostNorms(u32),
    /// Router rows [E, D], then the router bias [E], then the shared expert's gate [D]
    /// (each when the model has it), f32.
    Router(u32),
    /// Stacked experts, each its gate rows then its up rows.
    GateUp(u32),
    /// Stacked experts, each its down projection.
    Down(u32),
    /// Expert biases [E, 2 ff] (gate then up) and [E, D], f32.
    GateUpBias(u32),
    DownBias(u32),
    /// The shared expert as a one-expert stack: gate then up rows; down.
    SharedGateUp(u32),
    SharedDown(u32),
    FinalNorm,
    /// Absent when the embeddings are tied.
    LmHead,
}

/// (name, constructor) of every per-layer slot, in upload (and packing) order.
type LayerSlot = (&'static str, fn(u32) -> Slot);
const LAYER_SLOTS: [LayerSlot; 19] = [
    ("attn_norm", Slot::AttnNorm),
    ("qkv", Slot::Qkv),
    ("q", Slot::Q),
    ("k", Slot::K),
    ("v", Slot::V),
    ("qkv_bias", Slot::QkvBias),
    ("qk_norm", Slot::QkNorm),
    ("sinks", Slot::Sinks),
    ("wo", Slot::Wo),
    ("o_bias", Slot::OBias),
    ("ffn_norm", Slot::FfnNorm),
    ("post_norms", Slot::PostNorms),
    ("router", Slot::Router),
    ("experts.gate_up", Slot::GateUp),
    ("experts.down", Slot::Down),
    ("experts.gate_up_bias", Slot::GateUpBias),
    ("experts.down_bias", Slot::DownBias),
    ("shared.gate_up", Slot::SharedGateUp),
    ("shared.down", Slot::SharedDown),
];

impl Slot {
    /// The layer and per-layer name of a layer slot.
    fn layer_part(self) -> Option<(u32, &'static str)> {
        LAYER_SLOTS.iter().find_map(|(name, make)| {
            let l = match self {
                Slot::AttnNorm(l)
                | Slot::Qkv(l)
                | Slot::Q(l)
                | Slot::K(l)
                | Slot::V(l)
                | Slot::QkvBias(l)
                | Slot::QkNorm(l)
                | Slot::Sinks(l)
                | Slot::Wo(l)
                | Slot::OBias(l)
                | Slot::FfnNorm(l)
                | Slot::PostNorms(l)
                | Slot::Router(l)
                | Slot::GateUp(l)
                | Slot::Down(l)
                | Slot::GateUpBias(l)
                | Slot::DownBias(l)
                | Slot::SharedGateUp(l)
                | Slot::SharedDown(l) => l,
                _ => return None,
            };
            (make(l) == self).then_some((l, *name))
        })
    }

    pub fn name(self) -> String {
        match self {
            Slot::Embed => "embed".into(),
            Slot::FinalNorm => "final_norm".into(),
            Slot::LmHead => "lm_head".into(),
            s => match s.layer_part() {
                Some((l, name)) => format!("layer.{l}.{name}"),
                None => format!("{s:?}"),
            },
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "embed" => return Some(Slot::Embed),
            "final_norm" => return Some(Slot::FinalNorm),
            "lm_head" => return Some(Slot::LmHead),
            _ => {}
        }
        let rest = s.strip_prefix("layer.")?;
        let (l, what) = rest.split_once('.')?;
        let l: u32 = l.parse().ok()?;
        LAYER_SLOTS.iter().find(|(name, _)| *name == what).map(|(_, make)| make(l))
    }

    /// Every slot a model of this shape can have, in upload (and packing) order.
    pub fn all(cfg: &ModelConfig) -> Vec<Slot> {
        let mut v = vec![Slot::Embed];
        for l in 0..cfg.layers as u32 {
            v.extend(LAYER_SLOTS.iter().map(|(_, make)| make(l)));
        }
        v.extend([Slot::FinalNorm, Slot::LmHead]);
        v
    }
}

/// What a slot holds for a model of a given config: stacked experts (1 for a plain
/// matrix or vector) of `elements` values each; `vector` slots (norms, biases, router
/// rows, sinks) are always f32. A packed manifest's tensors are checked against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    pub experts: u64,
    pub elements: u64,
    pub vector: bool,
}

impl Slot {
    /// The shape this slot has in a model of config `c`, or `None` when such a model has
    /// no such slot (a layer past the last, a dense layer's router, a bias the plan lacks,
    /// a tied LM head). Q/K/V and the fused Qkv are both possible: which one a model has
    /// depends on its storage types.
    pub fn shape(self, c: &ModelConfig) -> Option<SlotShape> {
        use crate::model::plan::{FfnPlan, QkNorm};
        let (d, q, kv) = (c.hidden as u64, c.q_dim() as u64, c.kv_dim() as u64);
        let vector = |n: u64| Some(SlotShape { experts: 1, elements: n, vector: true });
        let matrix = |e: u64, n: u64| Some(SlotShape { experts: e, elements: n, vector: false });
        let vocab = c.vocab as u64;
        let layer = |l: u32| c.plan.get(l as usize);
        match self {
            Slot::Embed => matrix(1, vocab * d),
            Slot::LmHead => (!c.tie_embeddings).then_some(matrix(1, vocab * d)).flatten(),
            Slot::FinalNorm => vector(d),
            Slot::AttnNorm(l) | Slot::FfnNorm(l) => layer(l).and(vector(d)),
            Slot::PostNorms(l) => layer(l).filter(|p| p.post_norms).and(vector(2 * d)),
            Slot::Qkv(l) => layer(l).and(matrix(1, (q + 2 * kv) * d)),
            Slot::Q(l) => layer(l).and(matrix(1, q * d)),
            Slot::K(l) | Slot::V(l) => layer(l).and(matrix(1, kv * d)),
            Slot::QkvBias(l) => layer(l).filter(|p| p.attn.qkv_bias).and(vector(q + 2 * kv)),
            Slot::QkNorm(l) => match layer(l)?.attn.qk_norm {
                QkNorm::None => None,
                QkNorm::PerHead => vector(2 * c.head_dim as u64),
                QkNorm::Whole => vector(q + kv),
            },
            Slot::Sinks(l) => layer(l).filter(|p| p.attn.sinks).and(vector(c.heads as u64)),
            Slot::Wo(l) => layer(l).and(matrix(1, d * q)),
            Slot::OBias(l) => layer(l).filter(|p| p.attn.o_bias).and(vector(d)),
            Slot::Router(l) => {
                let m = layer(l)?.moe()?;
                let e = m.experts as u64;
                let gate = m.shared.as_ref().is_some_and(|s| s.gated);
                vector(e * d + if m.router.bias { e } else { 0 } + if gate { d } else { 0 })
            }
            Slot::GateUp(l) | Slot::Down(l) => {
                let (e, ff) = match &layer(l)?.ffn {
                    FfnPlan::Dense(m) => (1, m.ff as u64),
                    FfnPlan::Moe(m) => (m.experts as u64, m.ff as u64),
                };
                matrix(e, if matches!(self, Slot::GateUp(_)) { 2 * ff * d } else { d * ff })
            }
            Slot::GateUpBias(l) | Slot::DownBias(l) => {
                let m = layer(l)?.moe().filter(|m| m.expert_bias)?;
                let (e, ff) = (m.experts as u64, m.ff as u64);
                vector(if matches!(self, Slot::GateUpBias(_)) { e * 2 * ff } else { e * d })
            }
            Slot::SharedGateUp(l) | Slot::SharedDown(l) => {
                let ff = layer(l)?.moe()?.shared.as_ref()?.ff as u64;
                matrix(1, if matches!(self, Slot::SharedGateUp(_)) { 2 * ff * d } else { d * ff })
            }
        }
    }
}

/// Where a GPU model's weights come from.
pub trait WeightSource {
    fn config(&self) -> &ModelConfig;
    /// The buffer for `slot`, or `None` when this model has none (a tied LM head, separate
    /// q/k/v when fused or the reverse, a dense layer's router).
    fn buffer(&self, slot: Slot) -> Result<Option<PackedBuffer>>;
    /// What to call the buffer in messages (the model's own tensor names where it has them).
    fn describe(&self, slot: Slot) -> String {
        slot.name()
    }
    /// Experts fetched one at a time when the router first asks for them (a packed model
    /// loaded lazily, src/lazy.rs); `buffer` then gives the experts' layouts with no bytes.
    fn lazy_experts(&self) -> Option<std::rc::Rc<crate::lazy::LazyExperts>> {
        None
    }
    /// The buffer for `slot` when it is already on the GPU in the kernels' layout (a
    /// packed model assembled there, src/gpu/assemble.rs); handed out once.
    fn uploaded(&self, _slot: Slot) -> Option<crate::gpu::GpuWeight> {
        None
    }
}

/// Rows of `data` ([heads * d] rows of equal size) reordered so that row h*d + 2i is row
/// h*d + i and row h*d + 2i + 1 is row h*d + i + d/2: rotate-half pairs become adjacent
/// rows. `None` when the rows do not divide evenly.
fn pairs_adjacent_bytes(data: &[u8], heads: usize, d: usize) -> Option<Vec<u8>> {
    let rows = heads * d;
    let row_bytes = data.len() / rows.max(1);
    if !d.is_multiple_of(2) || row_bytes * rows != data.len() {
        return None;
    }
    let half = d / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for i in 0..half {
            for src in [h * d + i, h * d + i + half] {
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

fn pairs_adjacent(t: TensorRef<'_>, heads: usize, d: usize) -> Result<Vec<u8>> {
    pairs_adjacent_bytes(t.data, heads, d).ok_or_else(|| {
        Error::tensor(t.file, t.name, format!("cannot reorder {} rows of head_dim {d} for rotary pairs", heads * d))
    })
}

/// A per-element vector of q or k ([heads * d]: biases, norm weights) in the same order.
fn pairs_adjacent_f32(v: &[f32], heads: usize, d: usize) -> Result<Vec<f32>> {
    let b = pairs_adjacent_bytes(bytemuck::cast_slice(v), heads, d)
        .ok_or_else(|| Error::input(format!("cannot reorder {} values of head_dim {d}", v.len())))?;
    Ok(bytemuck::cast_slice(&b).to_vec())
}

/// `t` with its bytes replaced by `data`, when there are replacement bytes.
fn with<'a>(t: TensorRef<'a>, data: &'a Option<Vec<u8>>) -> TensorRef<'a> {
    match data {
        Some(d) => TensorRef { data: d, ..t },
        None => t,
    }
}

fn f32_vec(v: &[f32]) -> Result<PackedBuffer> {
    pack_matrix(DType::F32, &[bytemuck::cast_slice(v)])
}

/// Matrix parts in their common storage type, or widened to f32 when they differ.
fn matrix(parts: &[TensorRef<'_>]) -> Result<PackedBuffer> {
    let first = parts[0].dtype;
    if parts.iter().all(|p| p.dtype == first) {
        pack_matrix(first, &parts.iter().map(|p| p.data).collect::<Vec<_>>())
    } else {
        let wide: Vec<Vec<u8>> = parts.iter().map(|p| from_f32(DType::F32, &p.to_f32())).collect();
        pack_matrix(DType::F32, &wide.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
    }
}

fn experts(e: &[Vec<TensorRef<'_>>]) -> Result<PackedBuffer> {
    let first = e[0][0].dtype;
    if e.iter().flatten().all(|p| p.dtype == first) {
        pack_experts(first, &e.iter().map(|x| x.iter().map(|p| p.data).collect()).collect::<Vec<_>>())
    } else {
        let wide: Vec<Vec<Vec<u8>>> =
            e.iter().map(|x| x.iter().map(|p| from_f32(DType::F32, &p.to_f32())).collect()).collect();
        pack_experts(DType::F32, &wide.iter().map(|x| x.iter().map(|p| p.as_slice()).collect()).collect::<Vec<_>>())
    }
}

impl WeightSource for ModelFiles {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn describe(&self, slot: Slot) -> String {
        let n = &self.names;
        let l = |i: u32| n.layers.get(i as usize);
        let name = match slot {
            Slot::Embed => Some(n.embed.clone()),
            Slot::LmHead => Some(n.lm_head.clone()),
            Slot::FinalNorm => Some(n.final_norm.clone()),
            Slot::AttnNorm(i) => l(i).map(|x| x.attn_norm.clone()),
            Slot::FfnNorm(i) => l(i).map(|x| x.ffn_norm.clone()),
            Slot::PostNorms(i) => l(i).and_then(|x| x.post_attn_norm.clone()).map(|b| format!("{b} + post-FFN norm")),
            Slot::Q(i) => l(i).map(|x| x.wq.clone()),
            Slot::K(i) => l(i).map(|x| x.wk.clone()),
            Slot::V(i) => l(i).map(|x| x.wv.clone()),
            Slot::Qkv(i) => l(i).map(|x| format!("{} + k + v", x.wq)),
            Slot::QkvBias(i) => l(i).and_then(|x| x.q_bias.clone()).map(|b| format!("{b} + k + v")),
            Slot::QkNorm(i) => l(i).and_then(|x| x.q_norm.clone()).map(|b| format!("{b} + k")),
            Slot::Sinks(i) => l(i).and_then(|x| x.sinks.clone()),
            Slot::Wo(i) => l(i).map(|x| x.wo.clone()),
            Slot::OBias(i) => l(i).and_then(|x| x.o_bias.clone()),
            Slot::Router(i) => l(i).and_then(|x| x.router.clone()),
            Slot::GateUp(i) => Some(format!("layer {i} experts' gate and up projections")),
            Slot::Down(i) => Some(format!("layer {i} experts' down projections")),
            Slot::GateUpBias(i) => Some(format!("layer {i} experts' gate and up biases")),
            Slot::DownBias(i) => Some(format!("layer {i} experts' down biases")),
            Slot::SharedGateUp(i) => Some(format!("layer {i} shared expert's gate and up projections")),
            Slot::SharedDown(i) => Some(format!("layer {i} shared expert's down projection")),
        };
        name.unwrap_or_else(|| slot.name())
    }

    fn buffer(&self, slot: Slot) -> Result<Option<PackedBuffer>> {
        let c = &self.config;
        let n = &self.names;
        let d = c.hidden;
        let layer = |l: u32| -> Result<&crate::model::LayerNames> {
            n.layers.get(l as usize).ok_or_else(|| Error::input(format!("no layer {l}")))
        };
        // q and k with rotary pairs in adjacent rows (see the module comment).
        let reordered = |t: &[TensorRef<'_>; 3]| -> Result<[Option<Vec<u8>>; 2]> {
            if c.rope_interleaved {
                return Ok([None, None]);
            }
            Ok([Some(pairs_adjacent(t[0], c.heads, c.head_dim)?), Some(pairs_adjacent(t[1], c.kv_heads, c.head_dim)?)])
        };
        // The same order for per-element vectors of q ([heads] of d) and k.
        let vec_order = |v: &[f32], heads: usize| -> Result<Vec<f32>> {
            if c.rope_interleaved { Ok(v.to_vec()) } else { pairs_adjacent_f32(v, heads, c.head_dim) }
        };
        let fused = |t: &[TensorRef<'_>; 3]| t[0].dtype == t[1].dtype && t[1].dtype == t[2].dtype;
        let li = |l: u32| l as usize;
        Ok(Some(match slot {
            Slot::Embed => matrix(&[self.expect(&n.embed, &[c.vocab, d])?])?,
            Slot::LmHead if n.lm_head == n.embed => return Ok(None),
            Slot::LmHead => matrix(&[self.expect(&n.lm_head, &[c.vocab, d])?])?,
            Slot::FinalNorm => f32_vec(&self.final_norm()?)?,
            Slot::AttnNorm(l) => f32_vec(&self.layer_norms(li(l))?.0)?,
            Slot::FfnNorm(l) => f32_vec(&self.layer_norms(li(l))?.1)?,
            Slot::PostNorms(l) => match self.post_norms(li(l))? {
                Some((a, f)) => f32_vec(&[a, f].concat())?,
                None => return Ok(None),
            },
            Slot::Qkv(l) => {
                let t = self.qkv(li(l))?;
                if !fused(&t) {
                    return Ok(None);
                }
                let r = reordered(&t)?;
                matrix(&[with(t[0], &r[0]), with(t[1], &r[1]), t[2]])?
            }
            Slot::Q(l) | Slot::K(l) | Slot::V(l) => {
                let t = self.qkv(li(l))?;
                if fused(&t) {
                    return Ok(None);
                }
                let r = reordered(&t)?;
                matrix(&[match slot {
                    Slot::Q(_) => with(t[0], &r[0]),
                    Slot::K(_) => with(t[1], &r[1]),
                    _ => t[2],
                }])?
            }
            Slot::QkvBias(l) => {
                let Some(b) = self.qkv_bias(li(l))? else { return Ok(None) };
                let (q, kv) = (c.q_dim(), c.kv_dim());
                let mut v = vec_order(&b[..q], c.heads)?;
                v.extend(vec_order(&b[q..q + kv], c.kv_heads)?);
                v.extend_from_slice(&b[q + kv..]);
                f32_vec(&v)?
            }
            Slot::QkNorm(l) => {
                let Some((qn, kn)) = self.qk_norm(li(l))? else { return Ok(None) };
                // Per-head weights [d] are one head's order; whole-projection weights span
                // every head.
                let whole = c.plan[li(l)].attn.qk_norm == crate::model::plan::QkNorm::Whole;
                let (qh, kh) = if whole { (c.heads, c.kv_heads) } else { (1, 1) };
                let mut v = vec_order(&qn, qh)?;
                v.extend(vec_order(&kn, kh)?);
                f32_vec(&v)?
            }
            Slot::Sinks(l) => match self.sinks(li(l))? {
                Some(s) => f32_vec(&s)?,
                None => return Ok(None),
            },
            Slot::Wo(l) => matrix(&[self.expect(&layer(l)?.wo, &[d, c.q_dim()])?])?,
            Slot::OBias(l) => match self.o_bias(li(l))? {
                Some(b) => f32_vec(&b)?,
                None => return Ok(None),
            },
            Slot::Router(l) => {
                let Some((mut w, bias)) = self.router(li(l))? else { return Ok(None) };
                w.extend(bias.unwrap_or_default());
                w.extend(self.shared_gate(li(l))?.unwrap_or_default());
                f32_vec(&w)?
            }
            Slot::GateUp(l) | Slot::Down(l) => {
                let (count, _) = self.ffn_shape(li(l));
                let mut v = Vec::with_capacity(count);
                for e in 0..count {
                    let [w1, w3, w2] = self.expert(li(l), e)?;
                    v.push(if matches!(slot, Slot::GateUp(_)) { vec![w1, w3] } else { vec![w2] });
                }
                experts(&v)?
            }
            Slot::GateUpBias(l) | Slot::DownBias(l) => {
                let (count, _) = self.ffn_shape(li(l));
                let mut v = Vec::new();
                for e in 0..count {
                    let Some((gu, dn)) = self.expert_bias(li(l), e)? else { return Ok(None) };
                    v.extend(if matches!(slot, Slot::GateUpBias(_)) { gu } else { dn });
                }
                f32_vec(&v)?
            }
            Slot::SharedGateUp(l) | Slot::SharedDown(l) => {
                let Some([w1, w3, w2]) = self.shared_expert(li(l))? else { return Ok(None) };
                experts(&[if matches!(slot, Slot::SharedGateUp(_)) { vec![w1, w3] } else { vec![w2] }])?
            }
        }))
    }
}

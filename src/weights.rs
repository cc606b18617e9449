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
    Wo(u32),
    FfnNorm(u32),
    Router(u32),
    /// Stacked experts, each its gate rows then its up rows.
    GateUp(u32),
    /// Stacked experts, each its down projection.
    Down(u32),
    FinalNorm,
    /// Absent when the embeddings are tied.
    LmHead,
}

impl Slot {
    pub fn name(self) -> String {
        match self {
            Slot::Embed => "embed".into(),
            Slot::FinalNorm => "final_norm".into(),
            Slot::LmHead => "lm_head".into(),
            Slot::AttnNorm(l) => format!("layer.{l}.attn_norm"),
            Slot::Qkv(l) => format!("layer.{l}.qkv"),
            Slot::Q(l) => format!("layer.{l}.q"),
            Slot::K(l) => format!("layer.{l}.k"),
            Slot::V(l) => format!("layer.{l}.v"),
            Slot::Wo(l) => format!("layer.{l}.wo"),
            Slot::FfnNorm(l) => format!("layer.{l}.ffn_norm"),
            Slot::Router(l) => format!("layer.{l}.router"),
            Slot::GateUp(l) => format!("layer.{l}.experts.gate_up"),
            Slot::Down(l) => format!("layer.{l}.experts.down"),
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
        Some(match what {
            "attn_norm" => Slot::AttnNorm(l),
            "qkv" => Slot::Qkv(l),
            "q" => Slot::Q(l),
            "k" => Slot::K(l),
            "v" => Slot::V(l),
            "wo" => Slot::Wo(l),
            "ffn_norm" => Slot::FfnNorm(l),
            "router" => Slot::Router(l),
            "experts.gate_up" => Slot::GateUp(l),
            "experts.down" => Slot::Down(l),
            _ => return None,
        })
    }

    /// Every slot a model of this shape can have, in upload (and packing) order.
    pub fn all(cfg: &ModelConfig) -> Vec<Slot> {
        let mut v = vec![Slot::Embed];
        for l in 0..cfg.layers as u32 {
            v.extend([
                Slot::AttnNorm(l),
                Slot::Qkv(l),
                Slot::Q(l),
                Slot::K(l),
                Slot::V(l),
                Slot::Wo(l),
                Slot::FfnNorm(l),
                Slot::Router(l),
                Slot::GateUp(l),
                Slot::Down(l),
            ]);
        }
        v.extend([Slot::FinalNorm, Slot::LmHead]);
        v
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
}

/// Rows of `t` ([heads * d, K]) reordered so that row h*d + 2i is row h*d + i and row
/// h*d + 2i + 1 is row h*d + i + d/2: rotate-half pairs become adjacent rows.
fn pairs_adjacent(t: TensorRef<'_>, heads: usize, d: usize) -> Result<Vec<u8>> {
    let rows = heads * d;
    let row_bytes = t.data.len() / rows.max(1);
    if !d.is_multiple_of(2) || row_bytes * rows != t.data.len() {
        return Err(Error::tensor(
            t.file,
            t.name,
            format!("cannot reorder {rows} rows of head_dim {d} for rotary pairs"),
        ));
    }
    let half = d / 2;
    let mut out = Vec::with_capacity(t.data.len());
    for h in 0..heads {
        for i in 0..half {
            for src in [h * d + i, h * d + i + half] {
                out.extend_from_slice(&t.data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// `t` with its bytes replaced by `data`, when there are replacement bytes.
fn with<'a>(t: TensorRef<'a>, data: &'a Option<Vec<u8>>) -> TensorRef<'a> {
    match data {
        Some(d) => TensorRef { data: d, ..t },
        None => t,
    }
}

fn f32_buffer(t: TensorRef<'_>) -> Result<PackedBuffer> {
    pack_matrix(DType::F32, &[&from_f32(DType::F32, &t.to_f32())])
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
            Slot::Q(i) => l(i).map(|x| x.wq.clone()),
            Slot::K(i) => l(i).map(|x| x.wk.clone()),
            Slot::V(i) => l(i).map(|x| x.wv.clone()),
            Slot::Qkv(i) => l(i).map(|x| format!("{} + k + v", x.wq)),
            Slot::Wo(i) => l(i).map(|x| x.wo.clone()),
            Slot::Router(i) => l(i).and_then(|x| x.router.clone()),
            Slot::GateUp(i) => Some(format!("layer {i} experts' gate and up projections")),
            Slot::Down(i) => Some(format!("layer {i} experts' down projections")),
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
        let qkv = |l: u32| -> Result<[TensorRef<'_>; 3]> {
            let ln = layer(l)?;
            Ok([
                self.expect(&ln.wq, &[c.q_dim(), d])?,
                self.expect(&ln.wk, &[c.kv_dim(), d])?,
                self.expect(&ln.wv, &[c.kv_dim(), d])?,
            ])
        };
        // q and k with rotary pairs in adjacent rows (see the module comment).
        let reordered = |t: &[TensorRef<'_>; 3]| -> Result<[Option<Vec<u8>>; 2]> {
            if c.rope_interleaved {
                return Ok([None, None]);
            }
            Ok([Some(pairs_adjacent(t[0], c.heads, c.head_dim)?), Some(pairs_adjacent(t[1], c.kv_heads, c.head_dim)?)])
        };

        let fused = |t: &[TensorRef<'_>; 3]| t[0].dtype == t[1].dtype && t[1].dtype == t[2].dtype;
        Ok(Some(match slot {
            Slot::Embed => matrix(&[self.expect(&n.embed, &[c.vocab, d])?])?,
            Slot::LmHead if n.lm_head == n.embed => return Ok(None),
            Slot::LmHead => matrix(&[self.expect(&n.lm_head, &[c.vocab, d])?])?,
            Slot::FinalNorm => f32_buffer(self.expect(&n.final_norm, &[d])?)?,
            Slot::AttnNorm(l) => f32_buffer(self.expect(&layer(l)?.attn_norm, &[d])?)?,
            Slot::FfnNorm(l) => f32_buffer(self.expect(&layer(l)?.ffn_norm, &[d])?)?,
            Slot::Qkv(l) => {
                let t = qkv(l)?;
                if !fused(&t) {
                    return Ok(None);
                }
                let r = reordered(&t)?;
                matrix(&[with(t[0], &r[0]), with(t[1], &r[1]), t[2]])?
            }
            Slot::Q(l) | Slot::K(l) | Slot::V(l) => {
                let t = qkv(l)?;
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
            Slot::Wo(l) => matrix(&[self.expect(&layer(l)?.wo, &[d, c.q_dim()])?])?,
            Slot::Router(l) => match &layer(l)?.router {
                Some(r) => f32_buffer(self.expect(r, &[c.experts, d])?)?,
                None => return Ok(None),
            },
            Slot::GateUp(l) | Slot::Down(l) => {
                let mut v = Vec::with_capacity(c.experts);
                for e in 0..c.experts {
                    let [w1, w3, w2] = self.expert(l as usize, e)?;
                    v.push(if matches!(slot, Slot::GateUp(_)) { vec![w1, w3] } else { vec![w2] });
                }
                experts(&v)?
            }
        }))
    }
}

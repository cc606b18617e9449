//! The tensors a layer plan needs, looked up by the names the family gave and checked
//! against the plan's shapes. Both executors read weights only through these accessors,
//! so a shape is checked in one place whichever executor asks.

use super::names::{ExpertBias, Experts};
use super::plan::{FfnPlan, QkNorm};
use super::{LayerNames, ModelFiles, TensorRef};
use crate::error::{Error, Result};

/// A router's rows [experts, d] and its optional bias [experts].
pub type RouterWeights = (Vec<f32>, Option<Vec<f32>>);

impl Experts {
    /// Every tensor holding these experts' weights.
    pub fn tensor_names(&self) -> Vec<&String> {
        match self {
            Experts::Separate(v) => v.iter().flat_map(|e| [&e.w1, &e.w2, &e.w3]).collect(),
            Experts::Stacked { gate, up, down } => vec![gate, up, down],
            Experts::StackedGateUp { gate_up, down } => vec![gate_up, down],
        }
    }
}

/// Rows `[from, from + rows)` (of `cols` each) of the leading-dimension slice `e` of `t`,
/// whose slices are `per` rows each.
fn rows_of<'a>(t: TensorRef<'a>, e: usize, per: usize, from: usize, rows: usize, cols: usize) -> Result<TensorRef<'a>> {
    let bytes = |n: usize| {
        t.dtype.bytes_for((n * cols) as u64).ok_or_else(|| {
            Error::tensor(t.file, t.name, format!("{n}x{cols} rows are not whole {} blocks", t.dtype.name()))
        })
    };
    let (slice, skip, len) = (bytes(per)? as usize, bytes(from)? as usize, bytes(rows)? as usize);
    let start = e * slice + skip;
    Ok(TensorRef { data: &t.data[start..start + len], ..t })
}

impl ModelFiles {
    fn layer_names(&self, l: usize) -> Result<&LayerNames> {
        self.names.layers.get(l).ok_or_else(|| Error::input(format!("no layer {l}")))
    }

    /// (experts, FFN width) of layer `l`'s experts; a dense MLP is one expert.
    pub fn ffn_shape(&self, l: usize) -> (usize, usize) {
        match &self.config.plan[l].ffn {
            FfnPlan::Dense(m) => (1, m.ff),
            FfnPlan::Moe(m) => (m.experts, m.ff),
        }
    }

    /// Expert `e` of layer `l`: (gate [ff, d], up [ff, d], down [d, ff]).
    pub fn expert(&self, l: usize, e: usize) -> Result<[TensorRef<'_>; 3]> {
        let (n, ff) = self.ffn_shape(l);
        self.expert_in(&self.layer_names(l)?.experts, n, ff, e)
            .map_err(|err| if let Error::Input(m) = err { Error::input(format!("layer {l}: {m}")) } else { err })
    }

    /// Expert `e` of `n` stored as `experts`, each FFN `ff` wide.
    fn expert_in(&self, experts: &Experts, n: usize, ff: usize, e: usize) -> Result<[TensorRef<'_>; 3]> {
        let d = self.config.hidden;
        match experts {
            Experts::Separate(v) => {
                let x = v.get(e).ok_or_else(|| Error::input(format!("no expert {e}")))?;
                Ok([self.expect(&x.w1, &[ff, d])?, self.expect(&x.w3, &[ff, d])?, self.expect(&x.w2, &[d, ff])?])
            }
            Experts::Stacked { gate, up, down } => Ok([
                rows_of(self.expect(gate, &[n, ff, d])?, e, ff, 0, ff, d)?,
                rows_of(self.expect(up, &[n, ff, d])?, e, ff, 0, ff, d)?,
                rows_of(self.expect(down, &[n, d, ff])?, e, d, 0, d, ff)?,
            ]),
            Experts::StackedGateUp { gate_up, down } => {
                let gu = self.expect(gate_up, &[n, 2 * ff, d])?;
                Ok([
                    rows_of(gu, e, 2 * ff, 0, ff, d)?,
                    rows_of(gu, e, 2 * ff, ff, ff, d)?,
                    rows_of(self.expect(down, &[n, d, ff])?, e, d, 0, d, ff)?,
                ])
            }
        }
    }

    /// Layer `l`'s shared expert: (gate [sff, d], up [sff, d], down [d, sff]).
    pub fn shared_expert(&self, l: usize) -> Result<Option<[TensorRef<'_>; 3]>> {
        let Some(sff) = self.config.plan[l].moe().and_then(|m| m.shared.as_ref()).map(|s| s.ff) else {
            return Ok(None);
        };
        let n = self.layer_names(l)?.shared.as_ref();
        let n = n.ok_or_else(|| Error::input(format!("layer {l}: no shared expert names")))?;
        self.expert_in(&n.expert, 1, sff, 0).map(Some)
    }

    /// Layer `l`'s shared-expert gate vector [d], when the shared expert is gated.
    pub fn shared_gate(&self, l: usize) -> Result<Option<Vec<f32>>> {
        let d = self.config.hidden;
        match self.layer_names(l)?.shared.as_ref().and_then(|s| s.gate_inp.as_ref()) {
            Some(n) => Ok(Some(self.expect_any(n, &[&[1, d], &[d]])?.to_f32())),
            None => Ok(None),
        }
    }

    /// Expert `e`'s biases: (gate then up [2 ff], down [d]).
    pub fn expert_bias(&self, l: usize, e: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let d = self.config.hidden;
        let (n, ff) = self.ffn_shape(l);
        let row = |name: &str, w: usize| -> Result<Vec<f32>> {
            Ok(rows_of(self.expect(name, &[n, w])?, e, 1, 0, 1, w)?.to_f32())
        };
        Ok(match &self.layer_names(l)?.expert_bias {
            None => None,
            Some(ExpertBias::Fused { gate_up, down }) => Some((row(gate_up, 2 * ff)?, row(down, d)?)),
            Some(ExpertBias::Split { gate, up, down }) => {
                let mut gu = row(gate, ff)?;
                gu.extend(row(up, ff)?);
                Some((gu, row(down, d)?))
            }
        })
    }

    /// The router [experts, d] and its bias [experts], of a MoE layer.
    pub fn router(&self, l: usize) -> Result<Option<RouterWeights>> {
        let (e, d) = (self.ffn_shape(l).0, self.config.hidden);
        let n = self.layer_names(l)?;
        let Some(r) = &n.router else { return Ok(None) };
        let bias = n.router_bias.as_ref().map(|b| self.expect(b, &[e]).map(|t| t.to_f32())).transpose()?;
        Ok(Some((self.expect(r, &[e, d])?.to_f32(), bias)))
    }

    /// The q, k and v projections ([q_dim, d], [kv_dim, d], [kv_dim, d]).
    pub fn qkv(&self, l: usize) -> Result<[TensorRef<'_>; 3]> {
        let c = &self.config;
        let n = self.layer_names(l)?;
        Ok([
            self.expect(&n.wq, &[c.q_dim(), c.hidden])?,
            self.expect(&n.wk, &[c.kv_dim(), c.hidden])?,
            self.expect(&n.wv, &[c.kv_dim(), c.hidden])?,
        ])
    }

    /// The q, k and v biases concatenated [q_dim + 2 kv_dim], when the plan has them.
    pub fn qkv_bias(&self, l: usize) -> Result<Option<Vec<f32>>> {
        let c = &self.config;
        let n = self.layer_names(l)?;
        let (Some(q), Some(k), Some(v)) = (&n.q_bias, &n.k_bias, &n.v_bias) else { return Ok(None) };
        let mut b = self.expect(q, &[c.q_dim()])?.to_f32();
        b.extend(self.expect(k, &[c.kv_dim()])?.to_f32());
        b.extend(self.expect(v, &[c.kv_dim()])?.to_f32());
        Ok(Some(b))
    }

    /// The output projection's bias [d].
    pub fn o_bias(&self, l: usize) -> Result<Option<Vec<f32>>> {
        match &self.layer_names(l)?.o_bias {
            Some(b) => Ok(Some(self.expect(b, &[self.config.hidden])?.to_f32())),
            None => Ok(None),
        }
    }

    /// An RMSNorm weight vector [len], as the norm uses it (`norm_offset` added).
    pub fn norm(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let off = self.config.norm_offset;
        let mut v = self.expect(name, &[len])?.to_f32();
        if off != 0.0 {
            v.iter_mut().for_each(|x| *x += off);
        }
        Ok(v)
    }

    /// Layer `l`'s pre-attention and pre-FFN norm weights [hidden] each.
    pub fn layer_norms(&self, l: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.layer_names(l)?;
        Ok((self.norm(&n.attn_norm, self.config.hidden)?, self.norm(&n.ffn_norm, self.config.hidden)?))
    }

    /// The final norm's weights [hidden].
    pub fn final_norm(&self) -> Result<Vec<f32>> {
        self.norm(&self.names.final_norm, self.config.hidden)
    }

    /// Layer `l`'s post-attention and post-FFN norm weights [hidden] each, when the plan
    /// has them.
    pub fn post_norms(&self, l: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        if !self.config.plan[l].post_norms {
            return Ok(None);
        }
        let n = self.layer_names(l)?;
        let (Some(a), Some(f)) = (&n.post_attn_norm, &n.post_ffn_norm) else {
            return Err(Error::input(format!("layer {l}: the plan has post-norms but no names for them")));
        };
        Ok(Some((self.norm(a, self.config.hidden)?, self.norm(f, self.config.hidden)?)))
    }

    /// The q and k norm weights: [head_dim] each per head, [q_dim] and [kv_dim] whole.
    pub fn qk_norm(&self, l: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let c = &self.config;
        let n = self.layer_names(l)?;
        let (qs, ks) = match c.plan[l].attn.qk_norm {
            QkNorm::None => return Ok(None),
            QkNorm::PerHead => (c.head_dim, c.head_dim),
            QkNorm::Whole => (c.q_dim(), c.kv_dim()),
        };
        let (Some(q), Some(k)) = (&n.q_norm, &n.k_norm) else {
            return Err(Error::input(format!("layer {l}: the plan has q/k norms but no names for them")));
        };
        Ok(Some((self.norm(q, qs)?, self.norm(k, ks)?)))
    }

    /// One sink logit per query head [heads].
    pub fn sinks(&self, l: usize) -> Result<Option<Vec<f32>>> {
        match &self.layer_names(l)?.sinks {
            Some(s) => Ok(Some(self.expect(s, &[self.config.heads])?.to_f32())),
            None => Ok(None),
        }
    }

    /// Checks every tensor the plan needs is there with the right shape and a type we
    /// compute with, so no executor meets a bad tensor halfway through loading.
    pub(super) fn validate(&self) -> Result<()> {
        let c = &self.config;
        let n = &self.names;
        let d = c.hidden;
        if n.layers.len() != c.layers {
            return Err(Error::input(format!("{} layers named for {} in the plan", n.layers.len(), c.layers)));
        }
        self.expect(&n.embed, &[c.vocab, d])?;
        self.expect(&n.final_norm, &[d])?;
        self.expect(&n.lm_head, &[c.vocab, d])?;
        for (li, l) in n.layers.iter().enumerate() {
            self.expect(&l.attn_norm, &[d])?;
            self.expect(&l.ffn_norm, &[d])?;
            self.post_norms(li)?;
            self.qkv(li)?;
            self.expect(&l.wo, &[d, c.q_dim()])?;
            let a = &c.plan[li].attn;
            if a.qkv_bias != self.qkv_bias(li)?.is_some() || a.o_bias != self.o_bias(li)?.is_some() {
                return Err(Error::input(format!("layer {li}: the plan's attention biases have no tensors")));
            }
            self.qk_norm(li)?;
            if a.sinks != self.sinks(li)?.is_some() {
                return Err(Error::input(format!("layer {li}: the plan's attention sinks have no tensor")));
            }
            let (experts, _) = self.ffn_shape(li);
            if let Some(m) = c.plan[li].moe() {
                if self.router(li)?.is_none_or(|(_, b)| b.is_some() != m.router.bias) {
                    return Err(Error::input(format!("layer {li}: the plan's router has no tensors")));
                }
                if m.shared.as_ref().is_some_and(|s| s.gated) && self.shared_gate(li)?.is_none() {
                    return Err(Error::input(format!("layer {li}: the shared expert's gate has no tensor")));
                }
                self.shared_expert(li)?;
            }
            for e in 0..experts {
                self.expert(li, e)?;
            }
            if c.plan[li].moe().is_some_and(|m| m.expert_bias) {
                self.expert_bias(li, 0)?;
            }
        }
        Ok(())
    }
}

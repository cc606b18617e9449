//! The resolved description of a model: global sizes plus one `LayerPlan` per layer
//! (`model::plan`). Every source (config.json through a family's file, GGUF metadata, a
//! packed manifest) ends in `ModelConfig::validate`, so later code can multiply sizes
//! without overflow worries and never meets a shape the kernels cannot run.

use crate::error::{Error, Result};
use crate::model::plan::{Act, FfnPlan, LayerPlan, MoePlan, RopePlan, RopeScaling};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// The family (`model::FAMILIES`) that read it, e.g. "mixtral", "qwen3moe".
    pub family: String,
    /// What the source called its architecture (HF `architectures[0]`, GGUF
    /// `general.architecture`).
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// The source's q/k rows pair rotary elements (2i, 2i + 1) (GGUF "normal" rope, whose
    /// converter permutes the rows) instead of (i, i + d/2) (HF rotate-half, GGUF "neox").
    pub rope_interleaved: bool,
    /// Multiplies the token embeddings (Granite's embedding_multiplier).
    pub embed_scale: f32,
    /// Multiplies each block's output before the residual add (Granite).
    pub residual_scale: f32,
    /// Multiplies the logits (Granite: 1 / logits_scaling).
    pub logit_scale: f32,
    /// Added to every RMSNorm weight as it is read (1 for Gemma's HF checkpoints, whose
    /// norms compute x̂ · (1 + w); llama.cpp's converter folds the 1 in).
    #[serde(default)]
    pub norm_offset: f32,
    /// One plan per layer.
    pub plan: Vec<LayerPlan>,
}

// Sanity bounds: far above any published model, low enough that products stay in u32/usize
// ranges the kernels index with.
pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_FF: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_HEAD_DIM: usize = 256;
pub const MAX_HEADS: usize = 1024;
pub const MAX_POSITIONS: usize = 1 << 24;
/// The router kernel keeps all expert logits in workgroup memory.
pub const MAX_EXPERTS: usize = 256;
pub const MAX_TOP_K: usize = 16;

impl ModelConfig {
    /// Width of the concatenated Q projection output.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Any layer routes among experts.
    pub fn is_moe(&self) -> bool {
        self.plan.iter().any(|l| l.moe().is_some())
    }
    /// The most experts any layer has (1 for a dense model): sizes per-layer expert tables.
    pub fn max_experts(&self) -> usize {
        self.plan.iter().map(|l| l.moe().map_or(1, |m| m.experts)).max().unwrap_or(1)
    }
    /// The most experts any layer runs per token (1 for a dense model).
    pub fn max_top_k(&self) -> usize {
        self.plan.iter().map(|l| l.moe().map_or(1, |m| m.top_k)).max().unwrap_or(1)
    }
    /// The widest FFN any layer has (a routed expert, a shared expert or a dense MLP).
    pub fn max_ff(&self) -> usize {
        self.plan
            .iter()
            .map(|l| match &l.ffn {
                FfnPlan::Dense(m) => m.ff,
                FfnPlan::Moe(m) => m.ff.max(m.shared.as_ref().map_or(0, |s| s.ff)),
            })
            .max()
            .unwrap_or(0)
    }
    /// Bytes of KV cache per token of context: keys and values in every layer, f32 or
    /// (kv16) f16.
    pub fn kv_bytes_per_token(&self, kv16: bool) -> u64 {
        (2 * self.layers * self.kv_dim() * if kv16 { 2 } else { 4 }) as u64
    }
    /// The MoE plan of the first MoE layer (what `info` shows as the model's experts).
    pub fn first_moe(&self) -> Option<&MoePlan> {
        self.plan.iter().find_map(|l| l.moe())
    }

    /// The checks every source must pass, whichever file it came from. Errors name the
    /// field and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |r: String| Err(Error::config(r));
        let range = |what: &str, v: usize, max: usize| -> Result<()> {
            if v == 0 || v > max {
                return Err(Error::config(format!("{what} = {v} is out of range (1..={max})")));
            }
            Ok(())
        };
        range("hidden size", self.hidden, MAX_HIDDEN)?;
        range("layers", self.layers, MAX_LAYERS)?;
        range("attention heads", self.heads, MAX_HEADS)?;
        range("KV heads", self.kv_heads, MAX_HEADS)?;
        range("head size", self.head_dim, MAX_HEAD_DIM)?;
        range("vocabulary", self.vocab, MAX_VOCAB)?;
        range("max positions", self.max_positions, MAX_POSITIONS)?;
        if self.plan.len() != self.layers {
            return bad(format!("{} layer plans for {} layers", self.plan.len(), self.layers));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!("{} attention heads are not a multiple of {} KV heads", self.heads, self.kv_heads));
        }
        // Keys are read as vec4s and rotary pairs need an even size.
        if !self.head_dim.is_multiple_of(4) {
            return bad(format!(
                "head size {} is not a multiple of 4, which the attention kernels need",
                self.head_dim
            ));
        }
        if !self.hidden.is_multiple_of(4) {
            return bad(format!("hidden size {} is not a multiple of 4, which the matmul kernels need", self.hidden));
        }
        if self.q_dim() > MAX_HIDDEN * 4 {
            return bad(format!("{} heads of {} exceed the supported projection width", self.heads, self.head_dim));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad(format!("RMSNorm epsilon {} is not in (0, 1)", self.eps));
        }
        for (what, v) in [
            ("embedding scale", self.embed_scale),
            ("residual scale", self.residual_scale),
            ("logit scale", self.logit_scale),
        ] {
            if !(v.is_finite() && v != 0.0) {
                return bad(format!("{what} {v} must be a finite, non-zero number"));
            }
        }
        if !self.norm_offset.is_finite() {
            return bad(format!("RMSNorm weight offset {} is not finite", self.norm_offset));
        }
        for (i, l) in self.plan.iter().enumerate() {
            let at = |r: String| Error::config(format!("layer {i}: {r}"));
            let a = &l.attn;
            if !(a.scale.is_finite() && a.scale > 0.0) {
                return Err(at(format!("attention scale {} must be a positive number", a.scale)));
            }
            if a.window == Some(0) {
                return Err(at("a sliding window of 0 positions".into()));
            }
            check_rope(&a.rope).map_err(|e| at(e.to_string()))?;
            match &l.ffn {
                FfnPlan::Dense(m) => {
                    range("dense FFN width", m.ff, MAX_FF).map_err(|e| at(e.to_string()))?;
                    check_act(m.act).map_err(|e| at(e.to_string()))?;
                }
                FfnPlan::Moe(m) => {
                    range("experts", m.experts, MAX_EXPERTS).map_err(|e| at(e.to_string()))?;
                    range("experts per token", m.top_k, MAX_TOP_K).map_err(|e| at(e.to_string()))?;
                    if m.top_k > m.experts {
                        return Err(at(format!("{} experts per token, but only {} experts", m.top_k, m.experts)));
                    }
                    range("expert FFN width", m.ff, MAX_FF).map_err(|e| at(e.to_string()))?;
                    check_act(m.act).map_err(|e| at(e.to_string()))?;
                    if !(m.router.scale.is_finite() && m.router.scale > 0.0) {
                        return Err(at(format!("router scale {} must be a positive number", m.router.scale)));
                    }
                    if let Some(s) = &m.shared {
                        range("shared expert width", s.ff, MAX_FF).map_err(|e| at(e.to_string()))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_act(a: Act) -> Result<()> {
    if let Act::ClampedSwiGlu { alpha, limit } = a
        && !(alpha.is_finite() && limit.is_finite() && limit > 0.0)
    {
        return Err(Error::config(format!("clamped GLU alpha {alpha} / limit {limit} must be finite, limit > 0")));
    }
    Ok(())
}

fn check_rope(r: &RopePlan) -> Result<()> {
    if !(r.theta > 1.0 && r.theta.is_finite()) {
        return Err(Error::config(format!("rope theta {} must be a finite number > 1", r.theta)));
    }
    let pos = |what: &str, v: f32| -> Result<()> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(Error::config(format!("rope scaling {what} {v} must be a positive number")))
        }
    };
    match r.scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } => pos("factor", factor),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => {
            pos("factor", factor)?;
            pos("low_freq_factor", low_freq_factor)?;
            pos("high_freq_factor", high_freq_factor)?;
            pos("original_max_position_embeddings", original_max_pos)?;
            if high_freq_factor <= low_freq_factor {
                return Err(Error::config("llama3 rope scaling needs high_freq_factor > low_freq_factor"));
            }
            Ok(())
        }
        RopeScaling::Yarn { factor, original_max_pos, beta_fast, beta_slow, attention_factor, .. } => {
            pos("factor", factor)?;
            pos("original_max_position_embeddings", original_max_pos)?;
            pos("beta_fast", beta_fast)?;
            pos("beta_slow", beta_slow)?;
            pos("attention_factor", attention_factor)
        }
    }
}

/// Rotary inverse frequencies for heads of `d`, one per rotated pair:
/// `inv_freq[i] = theta^(-2i/d)`, adjusted by the scaling. Computed like transformers
/// (f32 base powers; YaRN's ramp in f64 as Python computes its correction range).
pub fn rope_inv_freq(rope: &RopePlan, d: usize) -> Vec<f32> {
    let theta = rope.theta;
    let pos_freq: Vec<f32> = (0..d / 2).map(|i| theta.powf((2 * i) as f32 / d as f32)).collect();
    let base: Vec<f32> = pos_freq.iter().map(|p| 1.0 / p).collect();
    match rope.scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => {
            let low_wavelen = original_max_pos / low_freq_factor;
            let high_wavelen = original_max_pos / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth =
                            (original_max_pos / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Yarn { factor, original_max_pos, beta_fast, beta_slow, truncate, .. } => {
            // transformers' _compute_yarn_parameters: the correction range in Python floats.
            let dim = d as f64;
            let (base_f, orig) = (theta as f64, original_max_pos as f64);
            let corr = |rot: f64| dim * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base_f.ln());
            let (mut low, mut high) = (corr(beta_fast as f64), corr(beta_slow as f64));
            if truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            // The ramp in torch float32: (arange - low) / (high - low), clamped to [0, 1].
            let (lo32, span32) = (low as f32, (high - low) as f32);
            pos_freq
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let ramp = ((i as f32 - lo32) / span32).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    let inter = 1.0 / (factor * p);
                    let extra = 1.0 / p;
                    inter * (1.0 - extrapolation) + extra * extrapolation
                })
                .collect()
        }
    }
}

/// What multiplies cos and sin (YaRN's attention factor; 1 otherwise).
pub fn rope_attention_factor(rope: &RopePlan) -> f32 {
    match rope.scaling {
        RopeScaling::Yarn { attention_factor, .. } => attention_factor,
        _ => 1.0,
    }
}

/// Rotary table `[positions, d/2]` of `(cos, sin)` pairs, times the attention factor.
/// Computed on the host in f64 from the f32 angle so every GPU gets exactly the values
/// transformers uses (GPU `sin`/`cos` are only accurate near zero on many drivers).
pub fn rope_table(rope: &RopePlan, d: usize, positions: usize) -> Vec<f32> {
    let inv_freq = rope_inv_freq(rope, d);
    let f = rope_attention_factor(rope);
    let mut t = Vec::with_capacity(positions * inv_freq.len() * 2);
    for p in 0..positions {
        for &fr in &inv_freq {
            let angle = (p as f32 * fr) as f64;
            t.push(angle.cos() as f32 * f);
            t.push(angle.sin() as f32 * f);
        }
    }
    t
}

//! The layer plan: one description of what a model computes, walked by both executors
//! (`crate::cpu` and `crate::gpu::program`). A family's file (`model/<family>.rs`) reads its
//! config and emits this; nothing downstream knows family names. Every variant here is
//! something at least one published family needs (see ../shared/design/moe-families.md).
//!
//! Per layer (T tokens, D hidden), with rs the model's `residual_scale`:
//!   h   = x + rs · attn(rmsnorm(x))
//!   out = h + rs · ffn(rmsnorm(h))
//! or with `post_norms` (Gemma 2/3's "sandwich" norms) each branch normalised again
//! before its residual add: h = x + rs · rmsnorm(attn(rmsnorm(x))), likewise the FFN;
//! the embedding multiplied by `embed_scale` and the logits by `logit_scale`. Every RMSNorm
//! weight w is used as `norm_offset + w` (Gemma's HF checkpoints store w - 1).

use serde::{Deserialize, Serialize};

/// How rotary frequencies are derived from `theta` (see `config::rope_inv_freq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (transformers "linear").
    Linear {
        factor: f32,
    },
    /// Llama 3.x frequency-dependent scaling (transformers "llama3").
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_pos: f32,
    },
    /// YaRN (transformers "yarn"): low frequencies interpolated by `factor`, high ones kept,
    /// a linear ramp between the correction dimensions of `beta_fast` and `beta_slow`;
    /// cos and sin multiplied by `attention_factor`. `truncate` floors/ceils the
    /// correction range (transformers' default; gpt-oss turns it off).
    Yarn {
        factor: f32,
        original_max_pos: f32,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        truncate: bool,
    },
}

/// Rotary embedding of one layer: base and scaling. Layers with equal plans share a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopePlan {
    pub theta: f32,
    pub scaling: RopeScaling,
}

/// RMSNorm on queries and keys before rotary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QkNorm {
    None,
    /// RMSNorm(head_dim) on every head (Qwen3, Gemma 3): weights [head_dim] for q and for k.
    PerHead,
    /// RMSNorm over the whole q projection and the whole k projection (OLMoE): weights
    /// [heads * head_dim] and [kv_heads * head_dim].
    Whole,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnPlan {
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub qk_norm: QkNorm,
    /// One learned logit per query head joins every softmax and is then dropped (gpt-oss).
    pub sinks: bool,
    /// Keys older than this many positions are masked (key j visible iff pos - j < window).
    pub window: Option<usize>,
    pub rope: RopePlan,
    /// Multiplies q·k (1/sqrt(head_dim) unless the family says otherwise).
    pub scale: f32,
}

/// The gated activation between an FFN's up and down projections.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Act {
    /// silu(gate) * up (Llama, Mixtral, Qwen, OLMoE, Granite).
    SiluGlu,
    /// gelu_tanh(gate) * up (Gemma).
    GeluTanhGlu,
    /// gpt-oss: g = min(gate, limit), u = clamp(up, -limit, limit),
    /// (u + 1) * g * sigmoid(alpha * g).
    ClampedSwiGlu { alpha: f32, limit: f32 },
}

impl Act {
    /// The code the expert kernels switch on (WGSL override ACT).
    pub fn shader_code(self) -> u32 {
        match self {
            Act::SiluGlu => 0,
            Act::GeluTanhGlu => 1,
            Act::ClampedSwiGlu { .. } => 2,
        }
    }
    /// (alpha, limit) for the clamped GLU; unused otherwise.
    pub fn params(self) -> (f32, f32) {
        match self {
            Act::ClampedSwiGlu { alpha, limit } => (alpha, limit),
            _ => (0.0, 0.0),
        }
    }
}

/// The order of the router's softmax and top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouterOrder {
    /// Softmax over all experts, then the k largest (Mixtral, Qwen, OLMoE, Granite).
    SoftmaxTopK,
    /// The k largest logits, then a softmax over those k (gpt-oss).
    TopKSoftmax,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterPlan {
    pub order: RouterOrder,
    /// A learned bias added to the router logits (gpt-oss).
    pub bias: bool,
    /// Chosen weights renormalised to sum to 1 (only meaningful after SoftmaxTopK).
    pub renorm: bool,
    /// Multiplies the chosen weights (1 for every family here; DeepSeek's routed scale).
    pub scale: f32,
}

/// A dense gated MLP: down(act(gate(x), up(x))).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    pub ff: usize,
    pub act: Act,
}

/// An expert every token runs beside the routed ones (Qwen2-MoE), optionally scaled by
/// sigmoid(w · x) per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedExpert {
    pub ff: usize,
    pub gated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoePlan {
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's FFN width.
    pub ff: usize,
    pub router: RouterPlan,
    pub act: Act,
    /// Biases on the experts' gate/up and down projections (gpt-oss).
    pub expert_bias: bool,
    pub shared: Option<SharedExpert>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FfnPlan {
    Dense(Mlp),
    Moe(MoePlan),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerPlan {
    pub attn: AttnPlan,
    pub ffn: FfnPlan,
    /// RMSNorm on the attention output and on the FFN output before each residual add
    /// (weights [hidden] each).
    #[serde(default)]
    pub post_norms: bool,
}

impl LayerPlan {
    pub fn moe(&self) -> Option<&MoePlan> {
        match &self.ffn {
            FfnPlan::Moe(m) => Some(m),
            FfnPlan::Dense(_) => None,
        }
    }

    /// A one-line summary for `webmoe info`.
    pub fn describe(&self) -> String {
        let a = &self.attn;
        let mut attn = match a.window {
            Some(w) => format!("sliding {w}"),
            None => "full".to_string(),
        };
        if a.qkv_bias || a.o_bias {
            attn += if a.o_bias && a.qkv_bias {
                ", qkvo bias"
            } else if a.qkv_bias {
                ", qkv bias"
            } else {
                ", o bias"
            };
        }
        match a.qk_norm {
            QkNorm::None => {}
            QkNorm::PerHead => attn += ", q/k norm per head",
            QkNorm::Whole => attn += ", q/k norm over the projection",
        }
        if a.sinks {
            attn += ", sinks";
        }
        match &a.rope.scaling {
            RopeScaling::None => attn += &format!(", rope θ {}", a.rope.theta),
            s => attn += &format!(", rope θ {} {}", a.rope.theta, rope_kind(s)),
        }
        let ffn = match &self.ffn {
            FfnPlan::Dense(m) => format!("dense ff {} {:?}", m.ff, m.act),
            FfnPlan::Moe(m) => {
                let r = &m.router;
                let order = match r.order {
                    RouterOrder::SoftmaxTopK => "softmax→top-k",
                    RouterOrder::TopKSoftmax => "top-k→softmax",
                };
                let mut s = format!(
                    "MoE {} experts top-{} ff {} {:?}, router {order}{}{}",
                    m.experts,
                    m.top_k,
                    m.ff,
                    m.act,
                    if r.renorm { " renorm" } else { "" },
                    if r.bias { " +bias" } else { "" }
                );
                if m.expert_bias {
                    s += ", expert biases";
                }
                if let Some(sh) = &m.shared {
                    s += &format!(", shared expert ff {}{}", sh.ff, if sh.gated { " (sigmoid gate)" } else { "" });
                }
                s
            }
        };
        let post = if self.post_norms { "; post-norms" } else { "" };
        format!("attention {attn}; {ffn}{post}")
    }
}

fn rope_kind(s: &RopeScaling) -> &'static str {
    match s {
        RopeScaling::None => "default",
        RopeScaling::Linear { .. } => "linear",
        RopeScaling::Llama3 { .. } => "llama3",
        RopeScaling::Yarn { .. } => "yarn",
    }
}

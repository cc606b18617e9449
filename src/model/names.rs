//! Where each weight of a layer plan is stored: tensor names, per family and per file
//! format. Family files fill these in; `ModelFiles` checks every named tensor's shape
//! against the plan. GGUF names are the same for every family (llama.cpp's
//! `llama-arch.cpp` table), so `gguf_layer` serves all of them.

use super::plan::{FfnPlan, LayerPlan, QkNorm};

pub struct ExpertNames {
    /// Gate projection `[ff, hidden]` (the activation's side).
    pub w1: String,
    /// Down projection `[hidden, ff]`.
    pub w2: String,
    /// Up projection `[ff, hidden]`.
    pub w3: String,
}

/// How a layer's experts (or its dense MLP, as one expert) are stored.
pub enum Experts {
    /// One tensor per expert and projection (Hugging Face; old GGUF).
    Separate(Vec<ExpertNames>),
    /// All experts of a projection in one tensor: gate/up `[E, ff, hidden]`, down
    /// `[E, hidden, ff]` (GGUF `ffn_*_exps`; a dense GGUF FFN is E = 1 without the axis).
    Stacked { gate: String, up: String, down: String },
    /// Gate and up rows of each expert in one tensor `[E, 2 ff, hidden]`, gate first
    /// (Granite's `input_linear`; gpt-oss after de-interleaving), down `[E, hidden, ff]`.
    StackedGateUp { gate_up: String, down: String },
}

/// Biases of the experts' projections (gpt-oss).
pub enum ExpertBias {
    /// `[E, 2 ff]`, each expert's gate biases then its up biases.
    Fused { gate_up: String, down: String },
    /// `[E, ff]` each (GGUF `ffn_{gate,up}_exps.bias`), down `[E, hidden]`.
    Split { gate: String, up: String, down: String },
}

/// A shared expert: its projections stored like a layer's single expert (separate
/// `[ff, hidden]` / `[hidden, ff]` tensors, or gate and up fused), and its gate `[hidden]`.
pub struct SharedNames {
    pub expert: Experts,
    pub gate_inp: Option<String>,
}

pub struct LayerNames {
    pub attn_norm: String,
    pub wq: String,
    pub wk: String,
    pub wv: String,
    pub wo: String,
    /// `[q_dim]`, `[kv_dim]`, `[kv_dim]`, `[hidden]` when the plan has biases.
    pub q_bias: Option<String>,
    pub k_bias: Option<String>,
    pub v_bias: Option<String>,
    pub o_bias: Option<String>,
    /// `[head_dim]` each (per head) or `[q_dim]` / `[kv_dim]` (whole projection).
    pub q_norm: Option<String>,
    pub k_norm: Option<String>,
    /// `[heads]`
    pub sinks: Option<String>,
    pub ffn_norm: String,
    /// `[hidden]` each, when the plan has post-norms: on the attention output and on the
    /// FFN output.
    pub post_attn_norm: Option<String>,
    pub post_ffn_norm: Option<String>,
    /// Router `[experts, hidden]`; `None` for a dense layer.
    pub router: Option<String>,
    /// `[experts]`
    pub router_bias: Option<String>,
    pub experts: Experts,
    pub expert_bias: Option<ExpertBias>,
    pub shared: Option<SharedNames>,
}

pub struct ModelNames {
    pub embed: String,
    pub final_norm: String,
    /// Same name as `embed` when the embeddings are tied.
    pub lm_head: String,
    pub layers: Vec<LayerNames>,
}

/// A layer's optional attention tensors, named when its plan has them.
struct AttnExtras {
    q_bias: Option<String>,
    k_bias: Option<String>,
    v_bias: Option<String>,
    o_bias: Option<String>,
    q_norm: Option<String>,
    k_norm: Option<String>,
    sinks: Option<String>,
}

/// Biases as `<proj>.bias` (`proj(x)` names projection x: "q", "k", "v", "o"), the q/k
/// norms and the sinks as given.
fn attention_extras(
    plan: &LayerPlan,
    proj: impl Fn(&str) -> String,
    norms: (String, String),
    sinks: String,
) -> AttnExtras {
    let a = &plan.attn;
    let bias = |x: &str, on: bool| on.then(|| format!("{}.bias", proj(x)));
    let norm = a.qk_norm != QkNorm::None;
    AttnExtras {
        q_bias: bias("q", a.qkv_bias),
        k_bias: bias("k", a.qkv_bias),
        v_bias: bias("v", a.qkv_bias),
        o_bias: bias("o", a.o_bias),
        q_norm: norm.then(|| norms.0.clone()),
        k_norm: norm.then_some(norms.1),
        sinks: a.sinks.then_some(sinks),
    }
}

/// GGUF names of layer `l` (llama.cpp's names are shared by every architecture). `has`
/// says whether the file holds a tensor (old Mixtral GGUFs store experts one tensor
/// each); `ffn_norm` is the pre-FFN norm's name ("ffn_norm", or "post_attention_norm" in
/// gpt-oss).
pub fn gguf_layer(l: usize, plan: &LayerPlan, has: &dyn Fn(&str) -> bool, ffn_norm: &str) -> LayerNames {
    let p = format!("blk.{l}");
    let proj = |x: &str| {
        let n = match x {
            "q" => "attn_q",
            "k" => "attn_k",
            "v" => "attn_v",
            _ => "attn_output",
        };
        format!("{p}.{n}")
    };
    let x = attention_extras(
        plan,
        proj,
        (format!("{p}.attn_q_norm.weight"), format!("{p}.attn_k_norm.weight")),
        format!("{p}.attn_sinks.weight"),
    );
    let (router, router_bias, experts, expert_bias, shared) = match &plan.ffn {
        FfnPlan::Dense(_) => (
            None,
            None,
            Experts::Stacked {
                gate: format!("{p}.ffn_gate.weight"),
                up: format!("{p}.ffn_up.weight"),
                down: format!("{p}.ffn_down.weight"),
            },
            None,
            None,
        ),
        FfnPlan::Moe(m) => {
            let experts = if has(&format!("{p}.ffn_gate_exps.weight")) || !has(&format!("{p}.ffn_gate.0.weight")) {
                if has(&format!("{p}.ffn_gate_up_exps.weight")) {
                    Experts::StackedGateUp {
                        gate_up: format!("{p}.ffn_gate_up_exps.weight"),
                        down: format!("{p}.ffn_down_exps.weight"),
                    }
                } else {
                    Experts::Stacked {
                        gate: format!("{p}.ffn_gate_exps.weight"),
                        up: format!("{p}.ffn_up_exps.weight"),
                        down: format!("{p}.ffn_down_exps.weight"),
                    }
                }
            } else {
                Experts::Separate(
                    (0..m.experts)
                        .map(|e| ExpertNames {
                            w1: format!("{p}.ffn_gate.{e}.weight"),
                            w2: format!("{p}.ffn_down.{e}.weight"),
                            w3: format!("{p}.ffn_up.{e}.weight"),
                        })
                        .collect(),
                )
            };
            let expert_bias = m.expert_bias.then(|| ExpertBias::Split {
                gate: format!("{p}.ffn_gate_exps.bias"),
                up: format!("{p}.ffn_up_exps.bias"),
                down: format!("{p}.ffn_down_exps.bias"),
            });
            let shared = m.shared.as_ref().map(|s| SharedNames {
                expert: Experts::Stacked {
                    gate: format!("{p}.ffn_gate_shexp.weight"),
                    up: format!("{p}.ffn_up_shexp.weight"),
                    down: format!("{p}.ffn_down_shexp.weight"),
                },
                gate_inp: s.gated.then(|| format!("{p}.ffn_gate_inp_shexp.weight")),
            });
            (
                Some(format!("{p}.ffn_gate_inp.weight")),
                m.router.bias.then(|| format!("{p}.ffn_gate_inp.bias")),
                experts,
                expert_bias,
                shared,
            )
        }
    };
    LayerNames {
        attn_norm: format!("{p}.attn_norm.weight"),
        wq: format!("{}.weight", proj("q")),
        wk: format!("{}.weight", proj("k")),
        wv: format!("{}.weight", proj("v")),
        wo: format!("{}.weight", proj("o")),
        q_bias: x.q_bias,
        k_bias: x.k_bias,
        v_bias: x.v_bias,
        o_bias: x.o_bias,
        q_norm: x.q_norm,
        k_norm: x.k_norm,
        sinks: x.sinks,
        ffn_norm: format!("{p}.{ffn_norm}.weight"),
        post_attn_norm: plan.post_norms.then(|| format!("{p}.post_attention_norm.weight")),
        post_ffn_norm: plan.post_norms.then(|| format!("{p}.post_ffw_norm.weight")),
        router,
        router_bias,
        experts,
        expert_bias,
        shared,
    }
}

/// GGUF model-level names; a missing `output.weight` means tied embeddings.
pub fn gguf_model(layers: Vec<LayerNames>, has: &dyn Fn(&str) -> bool) -> ModelNames {
    let embed = "token_embd.weight".to_string();
    ModelNames {
        lm_head: if has("output.weight") { "output.weight".to_string() } else { embed.clone() },
        embed,
        final_norm: "output_norm.weight".to_string(),
        layers,
    }
}

/// Hugging Face's llama-style layer: `{p}.input_layernorm`, `{p}.self_attn.{q,k,v,o}_proj`,
/// `{p}.post_attention_layernorm` (the pre-FFN norm), optional biases, q/k norms
/// `{p}.self_attn.{q,k}_norm` and sinks `{p}.self_attn.sinks`, with the FFN given.
pub fn hf_layer(
    p: &str,
    plan: &LayerPlan,
    router: Option<(String, Option<String>)>,
    experts: Experts,
    expert_bias: Option<ExpertBias>,
    shared: Option<SharedNames>,
) -> LayerNames {
    let proj = |x: &str| format!("{p}.self_attn.{x}_proj");
    let x = attention_extras(
        plan,
        proj,
        (format!("{p}.self_attn.q_norm.weight"), format!("{p}.self_attn.k_norm.weight")),
        format!("{p}.self_attn.sinks"),
    );
    let (router, router_bias) = match router {
        Some((r, b)) => (Some(r), b),
        None => (None, None),
    };
    LayerNames {
        attn_norm: format!("{p}.input_layernorm.weight"),
        wq: format!("{}.weight", proj("q")),
        wk: format!("{}.weight", proj("k")),
        wv: format!("{}.weight", proj("v")),
        wo: format!("{}.weight", proj("o")),
        q_bias: x.q_bias,
        k_bias: x.k_bias,
        v_bias: x.v_bias,
        o_bias: x.o_bias,
        q_norm: x.q_norm,
        k_norm: x.k_norm,
        sinks: x.sinks,
        ffn_norm: format!("{p}.post_attention_layernorm.weight"),
        post_attn_norm: None,
        post_ffn_norm: None,
        router,
        router_bias,
        experts,
        expert_bias,
        shared,
    }
}

/// A Hugging Face dense gated MLP `{p}.{gate,up,down}_proj` as the one expert of a layer.
pub fn hf_mlp(p: &str) -> Experts {
    Experts::Separate(vec![ExpertNames {
        w1: format!("{p}.gate_proj.weight"),
        w2: format!("{p}.down_proj.weight"),
        w3: format!("{p}.up_proj.weight"),
    }])
}

/// Hugging Face model-level names under `model.`.
pub fn hf_model(layers: Vec<LayerNames>, tied: bool) -> ModelNames {
    let embed = "model.embed_tokens.weight".to_string();
    ModelNames {
        lm_head: if tied { embed.clone() } else { "lm_head.weight".to_string() },
        embed,
        final_norm: "model.norm.weight".to_string(),
        layers,
    }
}

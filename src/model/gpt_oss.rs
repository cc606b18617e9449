//! gpt-oss (`GptOssForCausalLM`, GGUF `gpt-oss`: gpt-oss-20b / 120b).
//! - attention: biases on q/k/v/o, one learned sink logit per query head, sliding (128)
//!   and full attention alternating per layer, YaRN rotary (NEOX pairs), scale 1/sqrt(d);
//! - router: W x + b, the top-k logits, a softmax over those k;
//! - experts: gate/up with biases, gate = min(gate, 7), up = clamp(up, ±7),
//!   out = ((up + 1) · gate · sigmoid(1.702 · gate)) W_down + b_down.
//!
//! Hugging Face stores experts as x @ W: gate_up_proj [E, d, 2 ff] with gate and up
//! interleaved (even, odd columns), down_proj [E, ff, d]. `fixup` rewrites them once into
//! the row-major [E, 2 ff, d] (gate rows, then up rows) / [E, d, ff] every other family
//! has, as llama.cpp's converter does. The GGUF does not record transformers' `truncate`
//! for YaRN; gpt-oss checkpoints set it false, so that is what is used (ggml truncates).

use super::hf::{self, HfConfig};
use super::names::{self, ExpertBias, Experts};
use super::plan::{Act, FfnPlan, LayerPlan, MoePlan, RopeScaling, RouterOrder, RouterPlan};
use super::{Family, Has, ModelFiles, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_EXPERTS, MAX_FF, MAX_POSITIONS, MAX_TOP_K, ModelConfig};
use crate::error::{Error, Result};
use crate::model::ggufmeta::GgufMeta;
use crate::model::names::ModelNames;
use crate::tensor::DType;

pub const GPT_OSS: Family = Family {
    name: "gpt-oss",
    hf: &["GptOssForCausalLM", "gpt_oss"],
    gguf: &["gpt-oss"],
    from_hf: gpt_oss_hf,
    from_gguf: gpt_oss_gguf,
    fixup: Some(fixup),
};

fn layer(attn: super::plan::AttnPlan, experts: usize, top_k: usize, ff: usize, act: Act) -> LayerPlan {
    LayerPlan {
        post_norms: false,
        attn,
        ffn: FfnPlan::Moe(MoePlan {
            experts,
            top_k,
            ff,
            router: RouterPlan { order: RouterOrder::TopKSoftmax, bias: true, renorm: false, scale: 1.0 },
            act,
            expert_bias: true,
            shared: None,
        }),
    }
}

fn gpt_oss_hf(c: &HfConfig, has: Has) -> Result<(ModelConfig, ModelNames)> {
    let k = hf::common(c, 1e-5)?;
    if has("model.layers.0.mlp.experts.gate_up_proj_blocks") {
        return Err(Error::config(
            "MXFP4 expert tensors (*_blocks / *_scales) in safetensors are not supported: convert the model to GGUF \
             with llama.cpp's convert_hf_to_gguf.py, or dequantize it",
        ));
    }
    let bias = c.flag("attention_bias")?.unwrap_or(true);
    let window = c.req("sliding_window", MAX_POSITIONS)?;
    let sliding = match c.layer_types(k.layers)? {
        Some(t) => t,
        None => (0..k.layers).map(|i| i % 2 == 0).collect(),
    };
    let act = Act::ClampedSwiGlu {
        alpha: c.float("swiglu_alpha")?.unwrap_or(1.702) as f32,
        limit: c.float("swiglu_limit")?.unwrap_or(7.0) as f32,
    };
    let (experts, top_k, ff) = (
        c.req("num_local_experts", MAX_EXPERTS)?,
        c.req("num_experts_per_tok", MAX_TOP_K)?,
        c.req("intermediate_size", MAX_FF)?,
    );
    let mut plan = Vec::with_capacity(k.layers);
    let mut layers = Vec::with_capacity(k.layers);
    for (l, &slides) in sliding.iter().enumerate() {
        let mut attn = plain_attention(&k.rope, k.head_dim, slides.then_some(window));
        (attn.qkv_bias, attn.o_bias, attn.sinks) = (bias, bias, true);
        let lp = layer(attn, experts, top_k, ff, act);
        let p = format!("model.layers.{l}");
        let m = format!("{p}.mlp");
        let ex = Experts::StackedGateUp {
            gate_up: format!("{m}.experts.gate_up_proj"),
            down: format!("{m}.experts.down_proj"),
        };
        let eb = ExpertBias::Fused {
            gate_up: format!("{m}.experts.gate_up_proj_bias"),
            down: format!("{m}.experts.down_proj_bias"),
        };
        let router = (format!("{m}.router.weight"), Some(format!("{m}.router.bias")));
        layers.push(names::hf_layer(&p, &lp, Some(router), ex, Some(eb), None));
        plan.push(lp);
    }
    Ok((model_config("gpt-oss", c.arch.clone(), &k, false, plan), names::hf_model(layers, k.tie)))
}

fn gpt_oss_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    let mut k = ggufmeta::common(m)?;
    if let RopeScaling::Yarn { truncate, .. } = &mut k.rope.scaling {
        *truncate = false;
    }
    let window = m.req("attention.sliding_window", MAX_POSITIONS)?;
    let ff = m.req("expert_feed_forward_length", MAX_FF)?;
    let (experts, top_k) = (m.req("expert_count", MAX_EXPERTS)?, m.req("expert_used_count", MAX_TOP_K)?);
    let act = Act::ClampedSwiGlu { alpha: 1.702, limit: 7.0 };
    // llama.cpp: even layers slide (swa pattern 2).
    let plan: Vec<LayerPlan> = (0..k.layers)
        .map(|l| {
            let mut attn = plain_attention(&k.rope, k.head_dim, (l % 2 == 0).then_some(window));
            attn.qkv_bias = has("blk.0.attn_q.bias");
            attn.o_bias = has("blk.0.attn_output.bias");
            attn.sinks = true;
            layer(attn, experts, top_k, ff, act)
        })
        .collect();
    let layers = (0..k.layers).map(|l| names::gguf_layer(l, &plan[l], has, "post_attention_norm")).collect();
    Ok((model_config("gpt-oss", m.arch.to_string(), &k, false, plan), names::gguf_model(layers, has)))
}

/// Element `bytes`-wide values of `src` ([E, rows, cols] row-major) written as
/// [E, cols', rows] where column c goes to row `order(c)`: a transpose, with the gate/up
/// de-interleave folded into the row order.
fn transpose(
    src: &[u8],
    experts: usize,
    rows: usize,
    cols: usize,
    elem: usize,
    order: impl Fn(usize) -> usize,
) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for e in 0..experts {
        let base = e * rows * cols * elem;
        for r in 0..rows {
            for c in 0..cols {
                let from = base + (r * cols + c) * elem;
                let to = base + (order(c) * rows + r) * elem;
                out[to..to + elem].copy_from_slice(&src[from..from + elem]);
            }
        }
    }
    out
}

/// Gate/up column c (interleaved: gate even, up odd) → row of the gate-then-up layout.
fn gate_up_row(c: usize, ff: usize) -> usize {
    if c.is_multiple_of(2) { c / 2 } else { ff + c / 2 }
}

fn fixup(m: &mut ModelFiles) -> Result<()> {
    let d = m.config.hidden;
    for l in 0..m.config.layers {
        let (e, ff) = m.ffn_shape(l);
        let p = format!("model.layers.{l}.mlp.experts");
        let moves =
            [(format!("{p}.gate_up_proj"), [e, d, 2 * ff], true), (format!("{p}.down_proj"), [e, ff, d], false)];
        for (name, shape, gate_up) in moves {
            let t = m.expect(&name, &shape)?;
            let elem = match t.dtype {
                DType::F32 => 4,
                DType::F16 | DType::BF16 => 2,
                other => {
                    return Err(Error::tensor(t.file, &name, format!("type {} cannot be transposed", other.name())));
                }
            };
            let (dtype, rows, cols) = (t.dtype, shape[1], shape[2]);
            let bytes = if gate_up {
                transpose(t.data, e, rows, cols, elem, |c| gate_up_row(c, ff))
            } else {
                transpose(t.data, e, rows, cols, elem, |c| c)
            };
            m.replace(&name, dtype, vec![e, cols, rows], bytes, "transposed to rows");
        }
        let name = format!("{p}.gate_up_proj_bias");
        let t = m.expect(&name, &[e, 2 * ff])?;
        let (dtype, elem) = (t.dtype, t.data.len() / (e * 2 * ff).max(1));
        let bytes = transpose(t.data, e, 1, 2 * ff, elem, |c| gate_up_row(c, ff));
        m.replace(&name, dtype, vec![e, 2 * ff], bytes, "gate then up");
    }
    Ok(())
}

//! `config.json` of a Hugging Face model directory, resolved into the few numbers the
//! engine needs. Accepts both the classic `rope_theta`/`rope_scaling` keys and the
//! transformers-5 `rope_parameters` object. Every size is range-checked here, so later
//! code can multiply them without overflow worries.

use crate::error::{Error, Result};
use serde_json::Value;

/// Model families we run. Dense Llama/Mistral run as a MoE with one expert of weight 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    Mixtral,
    Llama,
    Mistral,
}

/// How rotary frequencies are derived from `theta` (see `rope::inv_freq`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    /// Per-expert FFN width (`intermediate_size`).
    pub ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_positions: usize,
    /// Keys older than this many positions are masked (Mistral-style sliding window).
    pub sliding_window: Option<usize>,
    /// Experts per layer; 1 for a dense model.
    pub experts: usize,
    /// Experts chosen per token; 1 for a dense model.
    pub top_k: usize,
    /// Renormalise the chosen experts' probabilities to sum to 1 (Mixtral: always).
    pub norm_topk: bool,
    pub tie_embeddings: bool,
    /// Rotary pairs are adjacent elements (GGUF "normal" layout, whose converter permutes
    /// Q/K rows) instead of HF's rotate-half (i, i + d/2).
    pub rope_interleaved: bool,
}

// Sanity bounds: far above any published model, low enough that products stay in u32/usize
// ranges the kernels index with.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_FF: usize = 1 << 18;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_HEAD_DIM: usize = 256;
const MAX_HEADS: usize = 1024;
/// The router kernel keeps all expert logits in workgroup memory.
pub const MAX_EXPERTS: usize = 256;
pub const MAX_TOP_K: usize = 16;

impl ModelConfig {
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::format("config.json", format!("not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::config("top level is not a JSON object"))?;
        let arch_name = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .or_else(|| obj.get("model_type").and_then(|m| m.as_str()).map(str::to_owned))
            .ok_or_else(|| Error::config("neither 'architectures' nor 'model_type' is given"))?;
        let arch = match arch_name.as_str() {
            "MixtralForCausalLM" | "mixtral" => Arch::Mixtral,
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            other => {
                return Err(Error::config(format!(
                    "unknown architecture '{other}' (supported: MixtralForCausalLM, LlamaForCausalLM, MistralForCausalLM)"
                )));
            }
        };

        let hidden = req_usize(obj, "hidden_size", MAX_HIDDEN)?;
        let ff = req_usize(obj, "intermediate_size", MAX_FF)?;
        let layers = req_usize(obj, "num_hidden_layers", MAX_LAYERS)?;
        let heads = req_usize(obj, "num_attention_heads", MAX_HEADS)?;
        let kv_heads = opt_usize(obj, "num_key_value_heads", MAX_HEADS)?.unwrap_or(heads);
        let vocab = req_usize(obj, "vocab_size", MAX_VOCAB)?;
        let head_dim = match opt_usize(obj, "head_dim", MAX_HEAD_DIM)? {
            Some(d) => d,
            None => {
                if hidden % heads != 0 {
                    return Err(Error::config(format!(
                        "hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given"
                    )));
                }
                hidden / heads
            }
        };
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(Error::config(format!("head_dim {head_dim} must be even and at most {MAX_HEAD_DIM}")));
        }
        if heads % kv_heads != 0 {
            return Err(Error::config(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let eps = opt_f64(obj, "rms_norm_eps")?.unwrap_or(1e-6) as f32;
        let max_positions = opt_usize(obj, "max_position_embeddings", 1 << 24)?.unwrap_or(4096);

        let (rope_theta, rope_scaling) = parse_rope(obj)?;

        let sliding_window = match obj.get("sliding_window") {
            None | Some(Value::Null) => None,
            Some(_) => Some(req_usize(obj, "sliding_window", 1 << 24)?),
        };
        // Qwen2-style configs carry a window that is off unless use_sliding_window is set.
        let sliding_window = match obj.get("use_sliding_window").and_then(|v| v.as_bool()) {
            Some(false) => None,
            _ => sliding_window,
        };

        let (experts, top_k) = match arch {
            Arch::Mixtral => {
                let e = req_usize(obj, "num_local_experts", MAX_EXPERTS)?;
                let k = req_usize(obj, "num_experts_per_tok", MAX_TOP_K)?;
                if k > e {
                    return Err(Error::config(format!("num_experts_per_tok {k} exceeds num_local_experts {e}")));
                }
                (e, k)
            }
            Arch::Llama | Arch::Mistral => (1, 1),
        };
        let tie_embeddings = obj.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);

        for key in ["attention_bias", "mlp_bias"] {
            if obj.get(key).and_then(|v| v.as_bool()) == Some(true) {
                return Err(Error::config(format!("'{key}: true' is not supported yet")));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(|v| v.as_str())
            && act != "silu"
        {
            return Err(Error::config(format!("hidden_act '{act}' is not supported (only silu)")));
        }

        Ok(ModelConfig {
            arch,
            hidden,
            ff,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            eps,
            rope_theta,
            rope_scaling,
            max_positions,
            sliding_window,
            experts,
            top_k,
            norm_topk: true,
            tie_embeddings,
            rope_interleaved: false,
        })
    }

    /// The `llama` architecture of a GGUF file (dense, or MoE as llama.cpp writes Mixtral).
    pub fn from_gguf(g: &crate::gguf::Gguf) -> Result<Self> {
        let bad = |r: String| Error::format(&g.file, r);
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no general.architecture".into()))?;
        if arch != "llama" {
            return Err(bad(format!("unknown architecture '{arch}' (supported: llama)")));
        }
        let num = |key: &str, max: usize| -> Result<Option<usize>> {
            match g.get(&format!("llama.{key}")) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 && n <= max as u64 => Ok(Some(n as usize)),
                    _ => Err(bad(format!("llama.{key} = {v:?} is out of range (1..={max})"))),
                },
            }
        };
        let req = |key: &str, max: usize| num(key, max)?.ok_or_else(|| bad(format!("missing llama.{key}")));
        let float = |key: &str| -> Result<Option<f64>> {
            match g.get(&format!("llama.{key}")) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| bad(format!("llama.{key} is not a number"))),
            }
        };
        let hidden = req("embedding_length", MAX_HIDDEN)?;
        let heads = req("attention.head_count", MAX_HEADS)?;
        let kv_heads = num("attention.head_count_kv", MAX_HEADS)?.unwrap_or(heads);
        let head_dim = match num("attention.key_length", MAX_HEAD_DIM)? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => return Err(bad(format!("embedding_length {hidden} is not divisible by head_count {heads}"))),
        };
        if let Some(r) = num("rope.dimension_count", MAX_HEAD_DIM)?
            && r != head_dim
        {
            return Err(bad(format!(
                "partial rotary (rope.dimension_count {r} of head size {head_dim}) is not supported"
            )));
        }
        let vocab = match num("vocab_size", MAX_VOCAB)? {
            Some(v) => v,
            None => match g.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()) {
                Some(t) if !t.is_empty() && t.len() <= MAX_VOCAB => t.len(),
                _ => g
                    .tensors
                    .get("token_embd.weight")
                    .and_then(|t| t.shape.first().copied())
                    .ok_or_else(|| bad("cannot tell the vocabulary size".into()))?,
            },
        };
        let experts = num("expert_count", MAX_EXPERTS)?.unwrap_or(1);
        let top_k = if experts > 1 { req("expert_used_count", MAX_TOP_K)? } else { 1 };
        if top_k > experts {
            return Err(bad(format!("expert_used_count {top_k} exceeds expert_count {experts}")));
        }
        let rope_scaling = match g.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: float("rope.scaling.factor")?
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| bad("linear rope scaling needs llama.rope.scaling.factor".into()))?
                    as f32,
            },
            Some(other) => return Err(bad(format!("rope scaling '{other}' is not supported"))),
        };
        let cfg = ModelConfig {
            arch: if experts > 1 { Arch::Mixtral } else { Arch::Llama },
            hidden,
            ff: req("feed_forward_length", MAX_FF)?,
            layers: req("block_count", MAX_LAYERS)?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            rope_theta: float("rope.freq_base")?.unwrap_or(10000.0) as f32,
            rope_scaling,
            max_positions: num("context_length", 1 << 24)?.unwrap_or(4096),
            sliding_window: None,
            experts,
            top_k,
            norm_topk: true,
            tie_embeddings: !g.tensors.contains_key("output.weight"),
            rope_interleaved: true,
        };
        cfg.check().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Relations between sizes that every source must satisfy.
    fn check(&self) -> Result<()> {
        if !self.head_dim.is_multiple_of(2) || self.head_dim > MAX_HEAD_DIM {
            return Err(Error::config(format!("head size {} must be even and at most {MAX_HEAD_DIM}", self.head_dim)));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::config(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }

    /// Width of the concatenated Q projection output.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    pub fn is_moe(&self) -> bool {
        self.experts > 1
    }
}

fn parse_rope(obj: &serde_json::Map<String, Value>) -> Result<(f32, RopeScaling)> {
    // transformers 5 writes everything into `rope_parameters`; older configs use
    // `rope_theta` plus an optional `rope_scaling` object of the same shape.
    let params = obj.get("rope_parameters").filter(|v| !v.is_null());
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| obj.get("rope_theta"))
        .map(|v| v.as_f64().ok_or_else(|| Error::config("rope_theta is not a number")))
        .transpose()?
        .unwrap_or(10000.0);
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::config(format!("rope_theta {theta} must be a finite number > 1")));
    }
    let scaling = params.or_else(|| obj.get("rope_scaling").filter(|v| !v.is_null()));
    let Some(s) = scaling else { return Ok((theta as f32, RopeScaling::None)) };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        s.get(k)
            .and_then(|v| v.as_f64())
            .filter(|x| x.is_finite() && *x > 0.0)
            .map(|x| x as f32)
            .ok_or_else(|| Error::config(format!("rope scaling '{kind}' needs a positive number '{k}'")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_pos: num("original_max_position_embeddings")?,
        },
        other => return Err(Error::config(format!("rope type '{other}' is not supported (default, linear, llama3)"))),
    };
    Ok((theta as f32, scaling))
}

fn opt_usize(obj: &serde_json::Map<String, Value>, key: &str, max: usize) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n =
                v.as_u64().ok_or_else(|| Error::config(format!("'{key}' must be a non-negative integer, got {v}")))?;
            if n == 0 || n > max as u64 {
                return Err(Error::config(format!("'{key}' = {n} is out of range (1..={max})")));
            }
            Ok(Some(n as usize))
        }
    }
}

fn req_usize(obj: &serde_json::Map<String, Value>, key: &str, max: usize) -> Result<usize> {
    opt_usize(obj, key, max)?.ok_or_else(|| Error::config(format!("missing '{key}'")))
}

fn opt_f64(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::config(format!("'{key}' must be a number"))),
    }
}

/// Rotary inverse frequencies, one per rotated pair: `inv_freq[i] = theta^(-2i/d)`,
/// adjusted by the configured scaling. Computed like transformers (f32 base powers).
pub fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / d as f32)).collect();
    match cfg.rope_scaling {
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
    }
}

/// Rotary table `[positions, head_dim/2]` of `(cos, sin)` pairs. Computed on the host in
/// f64 from the f32 angle so every GPU gets exactly the values transformers uses (GPU
/// `sin`/`cos` are only accurate near zero on many drivers).
pub fn rope_table(inv_freq: &[f32], positions: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(positions * inv_freq.len() * 2);
    for p in 0..positions {
        for &f in inv_freq {
            let angle = (p as f32 * f) as f64;
            t.push(angle.cos() as f32);
            t.push(angle.sin() as f32);
        }
    }
    t
}

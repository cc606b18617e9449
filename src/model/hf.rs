//! Reading a Hugging Face `config.json`: typed, range-checked getters whose errors name the
//! key and its value, the sizes every llama-like family shares, and rotary parameters in
//! both the classic `rope_theta`/`rope_scaling` keys and transformers 5's `rope_parameters`.

use super::Sizes;
use super::plan::{Act, RopePlan, RopeScaling};
use crate::config::{MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB};
use crate::error::{Error, Result};
use serde_json::{Map, Value};

pub struct HfConfig {
    pub obj: Map<String, Value>,
    /// `architectures[0]`, or `model_type` when there is none.
    pub arch: String,
}

impl HfConfig {
    pub fn parse(bytes: &[u8]) -> Result<HfConfig> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::format("config.json", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = v else { return Err(Error::config("top level is not a JSON object")) };
        let arch = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .or_else(|| obj.get("model_type").and_then(|m| m.as_str()).map(str::to_owned))
            .ok_or_else(|| Error::config("neither 'architectures' nor 'model_type' is given"))?;
        Ok(HfConfig { obj, arch })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn opt(&self, key: &str, max: usize) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| Error::config(format!("'{key}' must be a non-negative integer, got {v}")))?;
                if n == 0 || n > max as u64 {
                    return Err(Error::config(format!("'{key}' = {n} is out of range (1..={max})")));
                }
                Ok(Some(n as usize))
            }
        }
    }

    pub fn req(&self, key: &str, max: usize) -> Result<usize> {
        self.opt(key, max)?.ok_or_else(|| Error::config(format!("missing '{key}'")))
    }

    /// The first of `keys` that is present (configs spell some sizes two ways, e.g.
    /// Qwen3-MoE's `num_experts` / `num_local_experts`).
    pub fn req_any(&self, keys: &[&str], max: usize) -> Result<usize> {
        for k in keys {
            if let Some(v) = self.opt(k, max)? {
                return Ok(v);
            }
        }
        Err(Error::config(format!("missing '{}'", keys.join("' or '"))))
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| Error::config(format!("'{key}' must be a finite number, got {v}"))),
        }
    }

    pub fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| Error::config(format!("'{key}' must be true or false, got {v}")))
            }
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// A list of non-negative integers (`mlp_only_layers`); absent is empty.
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .filter(|n| *n < MAX_LAYERS as u64)
                        .map(|n| n as usize)
                        .ok_or_else(|| Error::config(format!("'{key}' holds {x}, not a layer index")))
                })
                .collect(),
            Some(v) => Err(Error::config(format!("'{key}' must be a list, got {v}"))),
        }
    }

    /// Refuses a key that asks for something not implemented (set and not null/false/0).
    pub fn refuse(&self, key: &str, why: &str) -> Result<()> {
        match self.get(key) {
            None | Some(Value::Bool(false)) => Ok(()),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(()),
            Some(v) => Err(Error::config(format!("'{key}' = {v} is not supported ({why})"))),
        }
    }

    /// The activation named by `hidden_act` (or `key`), among those the kernels have.
    pub fn act(&self, key: &str, default: &str) -> Result<Act> {
        let name = self.str(key).unwrap_or(default);
        match name {
            "silu" | "swish" => Ok(Act::SiluGlu),
            "gelu_pytorch_tanh" => Ok(Act::GeluTanhGlu),
            other => Err(Error::config(format!("'{key}' = \"{other}\" is not supported (silu, gelu_pytorch_tanh)"))),
        }
    }

    /// Per-layer sliding flags from `layer_types` ("sliding_attention" / "full_attention").
    pub fn layer_types(&self, layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(v) = self.get("layer_types") else { return Ok(None) };
        let a = v.as_array().ok_or_else(|| Error::config(format!("'layer_types' must be a list, got {v}")))?;
        if a.len() != layers {
            return Err(Error::config(format!("'layer_types' has {} entries for {layers} layers", a.len())));
        }
        a.iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(Error::config(format!(
                    "'layer_types' entry {t} is not supported (sliding_attention, full_attention)"
                ))),
            })
            .collect::<Result<Vec<bool>>>()
            .map(Some)
    }
}

pub fn common(c: &HfConfig, default_eps: f64) -> Result<Sizes> {
    let hidden = c.req("hidden_size", MAX_HIDDEN)?;
    let heads = c.req("num_attention_heads", MAX_HEADS)?;
    let head_dim = match c.opt("head_dim", MAX_HEAD_DIM)? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(Error::config(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given"
            )));
        }
    };
    let eps = c.float("rms_norm_eps")?.unwrap_or(default_eps);
    Ok(Sizes {
        hidden,
        layers: c.req("num_hidden_layers", MAX_LAYERS)?,
        heads,
        kv_heads: c.opt("num_key_value_heads", MAX_HEADS)?.unwrap_or(heads),
        head_dim,
        vocab: c.req("vocab_size", MAX_VOCAB)?,
        eps: eps as f32,
        max_positions: c.opt("max_position_embeddings", MAX_POSITIONS)?.unwrap_or(4096),
        tie: c.flag("tie_word_embeddings")?.unwrap_or(false),
        rope: rope(c)?,
    })
}

/// Rotary base and scaling. transformers 5 writes everything into `rope_parameters`; older
/// configs use `rope_theta` plus an optional `rope_scaling` object of the same shape.
pub fn rope(c: &HfConfig) -> Result<RopePlan> {
    let params = c.get("rope_parameters");
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| c.get("rope_theta"))
        .map(|v| v.as_f64().ok_or_else(|| Error::config(format!("'rope_theta' must be a number, got {v}"))))
        .transpose()?
        .unwrap_or(10000.0);
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::config(format!("'rope_theta' = {theta} must be a finite number > 1")));
    }
    let scaling = params.or_else(|| c.get("rope_scaling"));
    let Some(s) = scaling else { return Ok(RopePlan { theta: theta as f32, scaling: RopeScaling::None }) };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
    let num =
        |k: &str| -> Result<Option<f32>> {
            match s.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_f64().filter(|x| x.is_finite() && *x > 0.0).map(|x| Some(x as f32)).ok_or_else(|| {
                    Error::config(format!("rope scaling '{kind}': '{k}' = {v} must be a positive number"))
                }),
            }
        };
    let need = |k: &str| -> Result<f32> {
        num(k)?.ok_or_else(|| Error::config(format!("rope scaling '{kind}' needs a positive number '{k}'")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_pos: need("original_max_position_embeddings")?,
        },
        "yarn" => {
            if num("mscale")?.is_some() || num("mscale_all_dim")?.is_some() {
                return Err(Error::config("rope scaling 'yarn' with 'mscale'/'mscale_all_dim' is not supported"));
            }
            let max_pos = c.opt("max_position_embeddings", MAX_POSITIONS)?.unwrap_or(4096) as f32;
            let original = num("original_max_position_embeddings")?.unwrap_or(max_pos);
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_pos / original,
            };
            // transformers' get_mscale(factor): 0.1 ln(factor) + 1 above a factor of 1.
            let attention_factor = match num("attention_factor")? {
                Some(f) => f,
                None if factor <= 1.0 => 1.0,
                None => (0.1 * (factor as f64).ln() + 1.0) as f32,
            };
            let truncate = match s.get("truncate") {
                None | Some(Value::Null) => true,
                Some(v) => v.as_bool().ok_or_else(|| Error::config(format!("rope scaling 'truncate' = {v}")))?,
            };
            RopeScaling::Yarn {
                factor,
                original_max_pos: original,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                attention_factor,
                truncate,
            }
        }
        other => {
            return Err(Error::config(format!(
                "rope scaling type '{other}' is not supported (default, linear, llama3, yarn)"
            )));
        }
    };
    Ok(RopePlan { theta: theta as f32, scaling })
}

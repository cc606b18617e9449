//! Reading a GGUF file's model metadata (`<arch>.<key>`, as llama.cpp's `llama-arch.cpp`
//! names them): range-checked getters whose errors name the key and value, and the sizes
//! every architecture shares.

use super::Sizes;
use super::plan::{RopePlan, RopeScaling};
use crate::config::{MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

pub struct GgufMeta<'a> {
    pub g: &'a Gguf,
    /// `general.architecture`.
    pub arch: &'a str,
}

impl<'a> GgufMeta<'a> {
    pub fn new(g: &'a Gguf) -> Result<GgufMeta<'a>> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::format(&g.file, "no general.architecture"))?;
        Ok(GgufMeta { g, arch })
    }

    pub fn bad(&self, r: impl std::fmt::Display) -> Error {
        Error::format(&self.g.file, r)
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.g.get(&format!("{}.{key}", self.arch))
    }

    pub fn opt(&self, key: &str, max: usize) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= max as u64 => Ok(Some(n as usize)),
                _ => Err(self.bad(format!("{}.{key} = {v:?} is out of range (1..={max})", self.arch))),
            },
        }
    }

    pub fn req(&self, key: &str, max: usize) -> Result<usize> {
        self.opt(key, max)?.ok_or_else(|| self.bad(format!("missing {}.{key}", self.arch)))
    }

    /// A count that may be 0 (`leading_dense_block_count`).
    pub fn count(&self, key: &str, max: usize) -> Result<usize> {
        match self.value(key) {
            None => Ok(0),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max as u64 => Ok(n as usize),
                _ => Err(self.bad(format!("{}.{key} = {v:?} is out of range (0..={max})", self.arch))),
            },
        }
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.bad(format!("{}.{key} = {v:?} is not a number", self.arch))),
        }
    }

    pub fn flag(&self, key: &str) -> Option<bool> {
        self.value(key).and_then(|v| v.as_bool())
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.value(key).and_then(|v| v.as_str())
    }

    pub fn has(&self, tensor: &str) -> bool {
        self.g.tensors.contains_key(tensor)
    }

    /// Refuses a key whose presence asks for something not implemented.
    pub fn refuse(&self, key: &str, why: &str) -> Result<()> {
        match self.value(key) {
            None => Ok(()),
            Some(v) if v.as_f64() == Some(0.0) || v.as_bool() == Some(false) => Ok(()),
            Some(v) => Err(self.bad(format!("{}.{key} = {v:?} is not supported ({why})", self.arch))),
        }
    }
}

pub fn common(m: &GgufMeta) -> Result<Sizes> {
    let hidden = m.req("embedding_length", MAX_HIDDEN)?;
    let heads = m.req("attention.head_count", MAX_HEADS)?;
    let kv_heads = m.opt("attention.head_count_kv", MAX_HEADS)?.unwrap_or(heads);
    let head_dim = match m.opt("attention.key_length", MAX_HEAD_DIM)? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => return Err(m.bad(format!("embedding_length {hidden} is not divisible by head_count {heads}"))),
    };
    if let Some(v) = m.opt("attention.value_length", MAX_HEAD_DIM)?
        && v != head_dim
    {
        return Err(m.bad(format!("value_length {v} differs from key_length {head_dim}, which is not supported")));
    }
    if let Some(r) = m.opt("rope.dimension_count", MAX_HEAD_DIM)?
        && r != head_dim
    {
        return Err(
            m.bad(format!("partial rotary (rope.dimension_count {r} of head size {head_dim}) is not supported"))
        );
    }
    let g = m.g;
    let vocab = match m.opt("vocab_size", MAX_VOCAB)? {
        Some(v) => v,
        None => match g.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()) {
            Some(t) if !t.is_empty() && t.len() <= MAX_VOCAB => t.len(),
            _ => g
                .tensors
                .get("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .ok_or_else(|| m.bad("cannot tell the vocabulary size"))?,
        },
    };
    Ok(Sizes {
        hidden,
        layers: m.req("block_count", MAX_LAYERS)?,
        heads,
        kv_heads,
        head_dim,
        vocab,
        eps: m.float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
        max_positions: m.opt("context_length", MAX_POSITIONS)?.unwrap_or(4096),
        tie: !m.has("output.weight"),
        rope: rope(m, m.float("rope.freq_base")?.unwrap_or(10000.0) as f32)?,
    })
}

/// Rotary base `theta` with the file's `rope.scaling.*`. YaRN's correction range is
/// taken untruncated unless `truncate` is given by the caller's family (ggml always
/// truncates; transformers' gpt-oss does not, and transformers is our reference).
pub fn rope(m: &GgufMeta, theta: f32) -> Result<RopePlan> {
    let pos = |key: &str| -> Result<f32> {
        m.float(key)?
            .filter(|f| *f > 0.0)
            .map(|f| f as f32)
            .ok_or_else(|| m.bad(format!("rope scaling needs a positive {}.{key}", m.arch)))
    };
    let scaling = match m.str("rope.scaling.type") {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear { factor: pos("rope.scaling.factor")? },
        Some("yarn") => {
            let factor = pos("rope.scaling.factor")?;
            if let Some(x) = m.float("rope.scaling.yarn_ext_factor")?
                && x != 1.0
            {
                return Err(m.bad(format!("{}.rope.scaling.yarn_ext_factor = {x} is not supported (only 1)", m.arch)));
            }
            RopeScaling::Yarn {
                factor,
                original_max_pos: pos("rope.scaling.original_context_length")?,
                beta_fast: m.float("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0) as f32,
                beta_slow: m.float("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0) as f32,
                attention_factor: match m.float("rope.scaling.yarn_attn_factor")? {
                    Some(f) if f > 0.0 => f as f32,
                    _ => (0.1 * (factor as f64).ln() + 1.0) as f32,
                },
                truncate: true,
            }
        }
        Some(other) => {
            return Err(m.bad(format!("{}.rope.scaling.type '{other}' is not supported (none, linear, yarn)", m.arch)));
        }
    };
    Ok(RopePlan { theta, scaling })
}

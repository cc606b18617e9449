//! Loading a Hugging Face model directory (config.json + safetensors, single or sharded)
//! into a validated set of named weights. Family-specific naming lives in one file per
//! family (`mixtral.rs`); everything here is shared.

pub mod mixtral;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::platform::ModelSource;
use crate::safetensors::{SafeTensors, TensorInfo, parse_index};
use crate::tensor::{DType, to_f32};
use std::collections::BTreeMap;

pub struct ExpertNames {
    /// Gate projection `[ff, hidden]` (SiLU side).
    pub w1: String,
    /// Down projection `[hidden, ff]`.
    pub w2: String,
    /// Up projection `[ff, hidden]`.
    pub w3: String,
}

pub struct LayerNames {
    pub attn_norm: String,
    pub wq: String,
    pub wk: String,
    pub wv: String,
    pub wo: String,
    pub ffn_norm: String,
    /// Router `[experts, hidden]`; `None` for a dense layer.
    pub router: Option<String>,
    pub experts: Vec<ExpertNames>,
}

pub struct ModelNames {
    pub embed: String,
    pub final_norm: String,
    /// Same name as `embed` when the embeddings are tied.
    pub lm_head: String,
    pub layers: Vec<LayerNames>,
}

/// A borrowed view of one stored tensor.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    pub fn to_f32(&self) -> Vec<f32> {
        to_f32(self.dtype, self.data)
    }
}

/// Parsed config, tensor names and the safetensors files that hold them. Every tensor the
/// model needs has been checked for presence, dtype and shape.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub names: ModelNames,
    files: Vec<SafeTensors>,
    /// tensor name -> (index into `files`, location)
    table: BTreeMap<String, (usize, TensorInfo)>,
}

/// Progress of a load, reported per file.
#[derive(Clone, Debug)]
pub struct LoadProgress {
    pub phase: &'static str,
    pub file: String,
    pub loaded: u64,
    pub total: u64,
}

impl ModelFiles {
    /// Reads `config.json`, then `model.safetensors.index.json` and its shards, or
    /// `model.safetensors` when there is no index.
    pub async fn load<S: ModelSource>(src: &S) -> Result<Self> {
        let cfg_bytes =
            src.read("config.json").await?.ok_or_else(|| Error::io(src.describe("config.json"), "not found"))?;
        let config = ModelConfig::from_json_bytes(&cfg_bytes)?;
        let shard_names = match src.read("model.safetensors.index.json").await? {
            Some(idx) => parse_index(&idx)?.0,
            None => vec!["model.safetensors".to_string()],
        };
        let mut files = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            let bytes = src.read(name).await?.ok_or_else(|| Error::io(src.describe(name), "not found"))?;
            files.push(SafeTensors::parse(name, bytes)?);
        }
        Self::from_parts(config, files)
    }

    pub fn from_parts(config: ModelConfig, files: Vec<SafeTensors>) -> Result<Self> {
        let mut table = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for (name, info) in &f.tensors {
                if let Some((j, _)) = table.insert(name.clone(), (i, info.clone())) {
                    return Err(Error::tensor(&f.file, name, format!("also stored in {}", files[j].file)));
                }
            }
        }
        let names = mixtral::tensor_names(&config);
        let m = ModelFiles { config, names, files, table };
        m.validate()?;
        Ok(m)
    }

    /// Looks a tensor up without shape checks.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, (i, info)) = self.table.get_key_value(name).ok_or_else(|| {
            let files: Vec<&str> = self.files.iter().map(|f| f.file.as_str()).collect();
            Error::tensor(files.join(", "), name, "missing")
        })?;
        let f = &self.files[*i];
        Ok(TensorRef { name: key, file: &f.file, dtype: info.dtype, shape: &info.shape, data: f.data(info) })
    }

    /// Looks a tensor up and checks it has exactly `shape` and a dtype we compute with.
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let t = self.get(name)?;
        if let DType::Unsupported(d) = t.dtype {
            return Err(Error::tensor(t.file, name, format!("dtype {d} is not supported (F32, F16, BF16)")));
        }
        if t.shape != shape {
            return Err(Error::tensor(
                t.file,
                name,
                format!("shape {:?} disagrees with config.json, which implies {:?}", t.shape, shape),
            ));
        }
        Ok(t)
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let n = &self.names;
        self.expect(&n.embed, &[c.vocab, c.hidden])?;
        self.expect(&n.final_norm, &[c.hidden])?;
        self.expect(&n.lm_head, &[c.vocab, c.hidden])?;
        for l in &n.layers {
            self.expect(&l.attn_norm, &[c.hidden])?;
            self.expect(&l.ffn_norm, &[c.hidden])?;
            self.expect(&l.wq, &[c.q_dim(), c.hidden])?;
            self.expect(&l.wk, &[c.kv_dim(), c.hidden])?;
            self.expect(&l.wv, &[c.kv_dim(), c.hidden])?;
            self.expect(&l.wo, &[c.hidden, c.q_dim()])?;
            if let Some(r) = &l.router {
                self.expect(r, &[c.experts, c.hidden])?;
            }
            for e in &l.experts {
                self.expect(&e.w1, &[c.ff, c.hidden])?;
                self.expect(&e.w3, &[c.ff, c.hidden])?;
                self.expect(&e.w2, &[c.hidden, c.ff])?;
            }
        }
        Ok(())
    }

    /// Total bytes of all stored tensors.
    pub fn total_bytes(&self) -> u64 {
        self.table.values().map(|(_, i)| (i.end - i.start) as u64).sum()
    }
}

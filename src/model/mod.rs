//! Loading a model — a Hugging Face directory (config.json + safetensors, single or
//! sharded) or a GGUF file — into a validated set of named weights. Family-specific naming
//! lives in one file per family (`mixtral.rs`); everything here is shared.

pub mod mixtral;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
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

/// How a layer's experts are stored.
pub enum Experts {
    /// One tensor per expert and projection (Hugging Face; old GGUF).
    Separate(Vec<ExpertNames>),
    /// All experts of a projection in one tensor: gate/up `[E, ff, hidden]`, down
    /// `[E, hidden, ff]` (GGUF `ffn_*_exps`; a dense GGUF FFN is E = 1 without the axis).
    Stacked { gate: String, up: String, down: String },
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
    pub experts: Experts,
}

pub struct ModelNames {
    pub embed: String,
    pub final_norm: String,
    /// Same name as `embed` when the embeddings are tied.
    pub lm_head: String,
    pub layers: Vec<LayerNames>,
}

/// A borrowed view of one stored tensor (or a run of its leading-dimension rows).
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub fn to_f32(&self) -> Vec<f32> {
        to_f32(self.dtype, self.data)
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The checked tensors of one model, wherever they came from.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub names: ModelNames,
    /// GGUF metadata (tokenizer, chat template...); empty for Hugging Face directories.
    pub metadata: BTreeMap<String, Value>,
    /// Other files of a Hugging Face directory that were present (tokenizer.json, ...).
    pub extra: BTreeMap<String, Vec<u8>>,
    /// (file name, bytes) of each file holding tensors.
    blobs: Vec<(String, Vec<u8>)>,
    /// tensor name -> (index into `blobs`, location)
    table: BTreeMap<String, (usize, TensorInfo)>,
}

/// Progress of a load: `phase` is "read", "quantize" or "upload"; `what` the file or
/// tensor; `done` of `total` bytes (read) or steps (quantize, upload).
#[derive(Clone, Debug)]
pub struct LoadProgress {
    pub phase: &'static str,
    pub what: String,
    pub done: u64,
    pub total: u64,
}

/// A progress callback (a terminal progress bar, a browser event).
#[derive(Clone)]
pub struct Progress(pub std::rc::Rc<dyn Fn(&LoadProgress)>);

impl Progress {
    pub fn report(&self, phase: &'static str, what: &str, done: u64, total: u64) {
        (self.0)(&LoadProgress { phase, what: what.to_string(), done, total });
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

pub struct Summary {
    pub params: u64,
    /// Parameters one token uses: everything but the experts it is not routed to.
    pub active_params: u64,
    pub weight_bytes: u64,
    /// Storage type -> (tensors, bytes).
    pub types: BTreeMap<&'static str, (usize, u64)>,
    /// KV cache bytes per token of context (f32 keys and values).
    pub kv_bytes_per_token: u64,
}

/// Files of a Hugging Face directory read when present, for the tokenizer and chat template.
pub const HF_EXTRA_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"];

impl ModelFiles {
    /// Reads a GGUF file, or a Hugging Face directory: `config.json`, then
    /// `model.safetensors.index.json` and its shards, or `model.safetensors`.
    pub async fn load<S: ModelSource>(src: &S) -> Result<Self> {
        if let Some(name) = src.single_file() {
            let bytes = src.read(name).await?.ok_or_else(|| Error::io(src.describe(name), "not found"))?;
            return Self::from_gguf(Gguf::parse(name, bytes)?);
        }
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
        let mut extra = BTreeMap::new();
        for name in HF_EXTRA_FILES {
            if let Some(b) = src.read(name).await? {
                extra.insert(name.to_string(), b);
            }
        }
        let mut m = Self::from_safetensors(config, files)?;
        m.extra = extra;
        Ok(m)
    }

    pub fn from_safetensors(config: ModelConfig, files: Vec<SafeTensors>) -> Result<Self> {
        let mut table = BTreeMap::new();
        let mut blobs = Vec::with_capacity(files.len());
        for (i, f) in files.into_iter().enumerate() {
            for (name, info) in f.tensors {
                if let Some((j, _)) = table.insert(name.clone(), (i, info)) {
                    let other: &(String, Vec<u8>) = &blobs[j];
                    return Err(Error::tensor(&f.file, name, format!("also stored in {}", other.0)));
                }
            }
            blobs.push((f.file, f.bytes));
        }
        let names = mixtral::hf_names(&config);
        let m = ModelFiles { config, names, metadata: BTreeMap::new(), extra: BTreeMap::new(), blobs, table };
        m.validate()?;
        Ok(m)
    }

    pub fn from_gguf(g: Gguf) -> Result<Self> {
        let config = ModelConfig::from_gguf(&g)?;
        let names = mixtral::gguf_names(&config, |n| g.tensors.contains_key(n));
        let table = g.tensors.into_iter().map(|(k, v)| (k, (0, v))).collect();
        let m = ModelFiles {
            config,
            names,
            metadata: g.metadata,
            extra: BTreeMap::new(),
            blobs: vec![(g.file, g.bytes)],
            table,
        };
        m.validate()?;
        Ok(m)
    }

    /// Looks a tensor up without shape checks.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, (i, info)) = self.table.get_key_value(name).ok_or_else(|| {
            let files: Vec<&str> = self.blobs.iter().map(|f| f.0.as_str()).collect();
            Error::tensor(files.join(", "), name, "missing")
        })?;
        let (file, bytes) = &self.blobs[*i];
        Ok(TensorRef { name: key, file, dtype: info.dtype, shape: &info.shape, data: &bytes[info.start..info.end] })
    }

    /// Looks a tensor up and checks it has exactly `shape` and a type we compute with.
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let t = self.get(name)?;
        if !t.dtype.is_supported() {
            return Err(Error::tensor(
                t.file,
                name,
                format!("type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)", t.dtype.name()),
            ));
        }
        // A dense GGUF FFN is the single expert of a stack: [ff, d] stands for [1, ff, d].
        let same = t.shape == shape || (shape.len() == 3 && shape[0] == 1 && t.shape == &shape[1..]);
        if !same {
            return Err(Error::tensor(
                t.file,
                name,
                format!("shape {:?} disagrees with the model config, which implies {:?}", t.shape, shape),
            ));
        }
        Ok(t)
    }

    /// Expert `e` of layer `l`: (w1 gate [ff, d], w3 up [ff, d], w2 down [d, ff]).
    pub fn expert(&self, l: usize, e: usize) -> Result<[TensorRef<'_>; 3]> {
        let c = &self.config;
        let (d, ff) = (c.hidden, c.ff);
        match &self.names.layers[l].experts {
            Experts::Separate(v) => {
                let x = &v[e];
                Ok([self.expect(&x.w1, &[ff, d])?, self.expect(&x.w3, &[ff, d])?, self.expect(&x.w2, &[d, ff])?])
            }
            Experts::Stacked { gate, up, down } => {
                let n = c.experts;
                fn slice(t: TensorRef<'_>, e: usize, rows: usize, cols: usize) -> Result<TensorRef<'_>> {
                    let bytes = t.dtype.bytes_for((rows * cols) as u64).ok_or_else(|| {
                        Error::tensor(
                            t.file,
                            t.name,
                            format!("an expert's {rows}x{cols} slice is not whole {} blocks", t.dtype.name()),
                        )
                    })? as usize;
                    Ok(TensorRef { data: &t.data[e * bytes..(e + 1) * bytes], ..t })
                }
                Ok([
                    slice(self.expect(gate, &[n, ff, d])?, e, ff, d)?,
                    slice(self.expect(up, &[n, ff, d])?, e, ff, d)?,
                    slice(self.expect(down, &[n, d, ff])?, e, d, ff)?,
                ])
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let n = &self.names;
        let d = c.hidden;
        self.expect(&n.embed, &[c.vocab, d])?;
        self.expect(&n.final_norm, &[d])?;
        self.expect(&n.lm_head, &[c.vocab, d])?;
        for (li, l) in n.layers.iter().enumerate() {
            self.expect(&l.attn_norm, &[d])?;
            self.expect(&l.ffn_norm, &[d])?;
            self.expect(&l.wq, &[c.q_dim(), d])?;
            self.expect(&l.wk, &[c.kv_dim(), d])?;
            self.expect(&l.wv, &[c.kv_dim(), d])?;
            self.expect(&l.wo, &[d, c.q_dim()])?;
            if let Some(r) = &l.router {
                self.expect(r, &[c.experts, d])?;
            }
            for e in 0..c.experts {
                self.expert(li, e)?;
            }
        }
        Ok(())
    }

    /// Quantizes every f32/f16/bf16 matrix (embeddings, projections, experts) to `dtype`
    /// (Q8_0, Q4_0 or Q4_1, bit-identical to gguf-py); norms and routers stay as they are.
    pub fn quantize(&mut self, dtype: DType, progress: Option<&Progress>) -> Result<()> {
        if !matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1) {
            return Err(Error::input(format!("cannot quantize to {} (q8_0, q4_0, q4_1)", dtype.name())));
        }
        let n = &self.names;
        let mut targets: Vec<String> = vec![n.embed.clone(), n.lm_head.clone()];
        for l in &n.layers {
            targets.extend([l.wq.clone(), l.wk.clone(), l.wv.clone(), l.wo.clone()]);
            match &l.experts {
                Experts::Separate(v) => {
                    v.iter().for_each(|e| targets.extend([e.w1.clone(), e.w2.clone(), e.w3.clone()]))
                }
                Experts::Stacked { gate, up, down } => targets.extend([gate.clone(), up.clone(), down.clone()]),
            }
        }
        targets.sort();
        targets.dedup();
        let total = targets.len() as u64;
        for (i, name) in targets.into_iter().enumerate() {
            if let Some(p) = progress {
                p.report("quantize", &name, i as u64, total);
            }
            let t = self.get(&name)?;
            if !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
                continue;
            }
            let cols = t.shape.last().copied().unwrap_or(0);
            if cols % 32 != 0 {
                return Err(Error::tensor(
                    t.file,
                    &name,
                    format!("rows of {cols} cannot be quantized in blocks of 32"),
                ));
            }
            let q = crate::quant::quantize(dtype, &t.to_f32())?;
            let info = TensorInfo { dtype, shape: t.shape.to_vec(), start: 0, end: q.len() };
            self.blobs.push((format!("{name} ({} on load)", dtype.name()), q));
            self.table.insert(name, (self.blobs.len() - 1, info));
        }
        Ok(())
    }

    /// Sizes for `webmoe info`: parameters in all and per token, bytes by storage type.
    pub fn summary(&self) -> Summary {
        let mut types: BTreeMap<&'static str, (usize, u64)> = BTreeMap::new();
        let mut params = 0u64;
        for (_, (_, i)) in self.table.iter() {
            let e = types.entry(i.dtype.name()).or_default();
            e.0 += 1;
            e.1 += (i.end - i.start) as u64;
            params += i.shape.iter().product::<usize>() as u64;
        }
        let c = &self.config;
        let mut expert_params = 0u64;
        if c.is_moe() {
            for l in &self.names.layers {
                let names: Vec<&String> = match &l.experts {
                    Experts::Separate(v) => v.iter().flat_map(|e| [&e.w1, &e.w2, &e.w3]).collect(),
                    Experts::Stacked { gate, up, down } => vec![gate, up, down],
                };
                for n in names {
                    expert_params += self.table.get(n).map_or(0, |(_, i)| i.shape.iter().product::<usize>() as u64);
                }
            }
        }
        let active = params - expert_params + expert_params * c.top_k as u64 / c.experts as u64;
        Summary {
            params,
            active_params: active,
            weight_bytes: self.total_bytes(),
            types,
            kv_bytes_per_token: (2 * c.layers * c.kv_heads * c.head_dim * 4) as u64,
        }
    }

    /// Total bytes of all stored tensors.
    pub fn total_bytes(&self) -> u64 {
        self.table.values().map(|(_, i)| (i.end - i.start) as u64).sum()
    }

    /// A GGUF metadata string, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.as_str())
    }

    /// Every tensor (name, type, shape), for `webmoe info`.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, DType, &[usize])> {
        self.table.iter().map(|(k, (_, i))| (k.as_str(), i.dtype, i.shape.as_slice()))
    }
}

//! Loading a model — a Hugging Face directory (config.json + safetensors, single or
//! sharded) or a GGUF file — into a validated set of named weights and a layer plan.
//! Each family lives in one file (`mixtral.rs`, `qwen_moe.rs`, ...) that reads its config,
//! names its tensors and emits the plan (`plan.rs`); `FAMILIES` lists them. Everything
//! else here is shared.

pub mod gemma;
pub mod ggufmeta;
pub mod gpt_oss;
pub mod granite;
pub mod hf;
pub mod mixtral;
pub mod names;
pub mod olmoe;
pub mod plan;
pub mod qwen_moe;
mod tensors;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};
use crate::platform::ModelSource;
use crate::safetensors::{SafeTensors, TensorInfo, parse_index};
use crate::tensor::{DType, to_f32};
use ggufmeta::GgufMeta;
use hf::HfConfig;
pub use names::{ExpertBias, ExpertNames, Experts, LayerNames, ModelNames, SharedNames};
use plan::{AttnPlan, LayerPlan, QkNorm, RopePlan};
use std::collections::BTreeMap;

/// Whether the file holds a tensor of this name (optional tensors, storage variants).
pub type Has<'a> = &'a dyn Fn(&str) -> bool;

/// One model family: how to recognise it, and how to read its config and name its tensors
/// in each file format.
pub struct Family {
    /// What `info` shows and `ModelConfig::family` holds.
    pub name: &'static str,
    /// `architectures[0]` (or `model_type`) values in config.json.
    pub hf: &'static [&'static str],
    /// `general.architecture` values in GGUF.
    pub gguf: &'static [&'static str],
    pub from_hf: fn(&HfConfig, Has) -> Result<(ModelConfig, ModelNames)>,
    pub from_gguf: fn(&GgufMeta, Has) -> Result<(ModelConfig, ModelNames)>,
    /// Rewrites Hugging Face tensors the GPU layout cannot take as stored (gpt-oss's
    /// transposed, interleaved experts), after loading and before validation.
    pub fixup: Option<fn(&mut ModelFiles) -> Result<()>>,
}

/// Every family webmoe reads. A new family is a new file and one line here.
pub const FAMILIES: &[&Family] = &[
    &mixtral::MIXTRAL,
    &mixtral::LLAMA,
    &qwen_moe::QWEN2MOE,
    &qwen_moe::QWEN3MOE,
    &olmoe::OLMOE,
    &granite::GRANITEMOE,
    &gpt_oss::GPT_OSS,
    &gemma::GEMMA3,
];

fn hf_family(arch: &str) -> Result<&'static Family> {
    FAMILIES.iter().copied().find(|f| f.hf.contains(&arch)).ok_or_else(|| {
        let known: Vec<&str> =
            FAMILIES.iter().flat_map(|f| f.hf.iter().copied()).filter(|a| a.contains("For")).collect();
        Error::config(format!("unknown architecture '{arch}' (supported: {})", known.join(", ")))
    })
}

fn gguf_family(g: &Gguf, arch: &str) -> Result<&'static Family> {
    FAMILIES.iter().copied().find(|f| f.gguf.contains(&arch)).ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().flat_map(|f| f.gguf.iter().copied()).collect();
        Error::format(&g.file, format!("unknown architecture '{arch}' (supported: {})", known.join(", ")))
    })
}

/// The sizes every llama-like family reads, from config.json (`hf::common`) or GGUF
/// (`ggufmeta::common`).
pub struct Sizes {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub max_positions: usize,
    pub tie: bool,
    pub rope: RopePlan,
}

/// A config with the given plan and no model-level multipliers.
pub fn model_config(
    family: &str,
    arch: String,
    k: &Sizes,
    rope_interleaved: bool,
    plan: Vec<LayerPlan>,
) -> ModelConfig {
    ModelConfig {
        family: family.to_string(),
        arch,
        hidden: k.hidden,
        layers: k.layers,
        heads: k.heads,
        kv_heads: k.kv_heads,
        head_dim: k.head_dim,
        vocab: k.vocab,
        eps: k.eps,
        max_positions: k.max_positions,
        tie_embeddings: k.tie,
        rope_interleaved,
        embed_scale: 1.0,
        residual_scale: 1.0,
        logit_scale: 1.0,
        norm_offset: 0.0,
        plan,
    }
}

/// Attention with no extras: no biases, norms or sinks; scale 1/sqrt(head_dim).
pub fn plain_attention(rope: &RopePlan, head_dim: usize, window: Option<usize>) -> AttnPlan {
    AttnPlan {
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::None,
        sinks: false,
        window,
        rope: rope.clone(),
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
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
    /// Reads a GGUF file, or a Hugging Face directory: `config.json` (its family is found
    /// first, so an unknown architecture fails before any weights are read), then
    /// `model.safetensors.index.json` and its shards, or `model.safetensors`.
    pub async fn load<S: ModelSource>(src: &S) -> Result<Self> {
        if let Some(name) = src.single_file() {
            let bytes = src.read(name).await?.ok_or_else(|| Error::io(src.describe(name), "not found"))?;
            return Self::from_gguf(Gguf::parse(name, bytes)?);
        }
        let cfg_bytes =
            src.read("config.json").await?.ok_or_else(|| Error::io(src.describe("config.json"), "not found"))?;
        let hf = HfConfig::parse(&cfg_bytes)?;
        hf_family(&hf.arch)?;
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
        let mut m = Self::from_safetensors(&hf, files)?;
        m.extra = extra;
        Ok(m)
    }

    /// A Hugging Face model from its parsed config.json and safetensors files.
    pub fn from_safetensors(hf: &HfConfig, files: Vec<SafeTensors>) -> Result<Self> {
        let family = hf_family(&hf.arch)?;
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
        let has = |n: &str| table.contains_key(n);
        let (config, names) = (family.from_hf)(hf, &has)?;
        config.validate()?;
        let mut m = ModelFiles { config, names, metadata: BTreeMap::new(), extra: BTreeMap::new(), blobs, table };
        if let Some(fix) = family.fixup {
            fix(&mut m)?;
        }
        m.validate()?;
        Ok(m)
    }

    pub fn from_gguf(g: Gguf) -> Result<Self> {
        let meta = GgufMeta::new(&g)?;
        let family = gguf_family(&g, meta.arch)?;
        let has = |n: &str| g.tensors.contains_key(n);
        let (config, names) = (family.from_gguf)(&meta, &has)?;
        config.validate().map_err(|e| e.config_in(&g.file))?;
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
        self.expect_any(name, &[shape])
    }

    /// `expect` with alternative shapes (a shared expert's gate is `[1, d]` or `[d]`).
    pub fn expect_any(&self, name: &str, shapes: &[&[usize]]) -> Result<TensorRef<'_>> {
        let t = self.get(name)?;
        if !t.dtype.is_supported() {
            return Err(Error::tensor(
                t.file,
                name,
                format!("type {} is not supported ({})", t.dtype.name(), DType::SUPPORTED.join(", ")),
            ));
        }
        // A dense GGUF FFN is the single expert of a stack: [ff, d] stands for [1, ff, d].
        let same = |shape: &[usize]| t.shape == shape || (shape.len() == 3 && shape[0] == 1 && t.shape == &shape[1..]);
        if !shapes.iter().any(|s| same(s)) {
            return Err(Error::tensor(
                t.file,
                name,
                format!("shape {:?} disagrees with the model config, which implies {:?}", t.shape, shapes[0]),
            ));
        }
        Ok(t)
    }

    /// Replaces a tensor's bytes, type and shape (family fix-ups; quantizing on load).
    pub fn replace(&mut self, name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>, why: &str) {
        let info = TensorInfo { dtype, shape, start: 0, end: bytes.len() };
        self.blobs.push((format!("{name} ({why})"), bytes));
        self.table.insert(name.to_string(), (self.blobs.len() - 1, info));
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
            targets.extend(l.experts.tensor_names().into_iter().cloned());
            if let Some(sh) = &l.shared {
                targets.extend(sh.expert.tensor_names().into_iter().cloned());
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
            let shape = t.shape.to_vec();
            let q = crate::quant::quantize(dtype, &t.to_f32())?;
            self.replace(&name, dtype, shape, q, &format!("{} on load", dtype.name()));
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
        // Routed experts count as top_k / experts of their parameters per token.
        let mut inactive = 0u64;
        for (l, plan) in self.names.layers.iter().zip(&c.plan) {
            if let Some(m) = plan.moe() {
                let numel: u64 = l
                    .experts
                    .tensor_names()
                    .iter()
                    .map(|n| self.table.get(*n).map_or(0, |(_, i)| i.shape.iter().product::<usize>() as u64))
                    .sum();
                inactive += numel - numel * m.top_k as u64 / m.experts as u64;
            }
        }
        let active = params - inactive;
        Summary {
            params,
            active_params: active,
            weight_bytes: self.total_bytes(),
            types,
            kv_bytes_per_token: c.kv_bytes_per_token(false),
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

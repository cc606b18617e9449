//! The user-facing engine shared by the CLI and the browser bindings: load a model onto a
//! device (the GPU kernels, or the CPU reference), then ask for logits, or generate —
//! sampling, stop tokens and strings, streamed text — with the KV cache kept between
//! calls: a prompt that extends what is cached (the next turn of a chat) only prefills
//! its new tokens.

use crate::chat::{ChatTemplate, Message};
use crate::cpu::{CpuModel, argmax};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::model::{GpuModel, MAX_CHUNK, Pred, Want};
use crate::gpu::paging::{PagingStats, Residency};
use crate::model::{ModelFiles, Progress};
use crate::pack::PackedModel;
use crate::platform::ModelSource;
use crate::route::RouteTrace;
use crate::sampling::{Sampler, SamplingParams};
use crate::stream::TextStream;
use crate::tensor::DType;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The WGSL kernels through wgpu.
    Gpu,
    /// The plain-Rust f32 reference.
    Cpu,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: Device,
    /// KV cache length; default min(max_position_embeddings, 4096).
    pub context: Option<usize>,
    /// Most prompt tokens per forward step; 1 runs every token through the decode kernels.
    pub prefill_chunk: usize,
    /// Quantize f32/f16/bf16 matrices on load (Q8_0, Q4_0 or Q4_1).
    pub quant: Option<DType>,
    /// The KV cache's storage: F32, or F16 (half the memory; keys and values rounded to
    /// f16 as they are written, on the GPU and in the CPU reference alike).
    pub kv: DType,
    /// How many experts stay on the GPU (all by default): slots per MoE layer, a GPU byte
    /// budget, the victim policy and lookahead prefetch (src/gpu/paging.rs). GPU only.
    pub residency: Residency,
    /// Told about quantizing and uploading (reading is the source's to report).
    pub progress: Option<Progress>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: Device::Gpu,
            context: None,
            prefill_chunk: MAX_CHUNK,
            quant: None,
            kv: DType::F32,
            residency: Residency::default(),
            progress: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings (which are not returned).
    pub stop: Vec<String>,
    /// Keep going through EOS and end-of-turn tokens.
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence / end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, the final stop token included.
    pub tokens: Vec<u32>,
    /// Generated text up to (not including) a stop token or string; empty without a tokenizer.
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens that had to be prefilled (the rest were already cached).
    pub prefilled_tokens: usize,
    /// Per generated token, microseconds the host spent outside the GPU step: sampling,
    /// detokenizing and stop strings, the caller's callback. Flat over a long reply
    /// (`stream::TextStream` decodes a short window of ids, not the whole reply).
    pub host_us: Vec<u32>,
}

/// What the streaming callback sees.
pub enum Event<'a> {
    /// A generated id (before any text it completes).
    Token(u32),
    /// New text, safe to show: never part of a stop string, never half a character.
    Text(&'a str),
}

enum Backend {
    Gpu(Box<GpuModel>),
    Cpu(Box<CpuModel>),
}

pub struct Engine {
    backend: Backend,
    cfg: crate::config::ModelConfig,
    opts: EngineOptions,
    pub vocab: usize,
    pub context: usize,
    pub tokenizer: Option<Tokenizer>,
    template: Option<ChatTemplate>,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
}

pub const DEFAULT_CONTEXT: usize = 4096;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine {
    /// A model from a directory, a `.gguf` file, or a packed model's `manifest.json`.
    pub async fn load<S: ModelSource>(src: &S, opts: EngineOptions, gpu: Option<Arc<Gpu>>) -> Result<Engine> {
        if let Some(name) = src.single_file().filter(|n| n.ends_with(".json")) {
            let packed = crate::pack::load(src, name).await?;
            return Engine::from_packed(packed, opts, gpu).await;
        }
        let mut files = ModelFiles::load(src).await?;
        if let Some(q) = opts.quant {
            files.quantize(q, opts.progress.as_ref())?;
        }
        Engine::from_files(&files, opts, gpu).await
    }

    pub async fn from_files(files: &ModelFiles, opts: EngineOptions, gpu: Option<Arc<Gpu>>) -> Result<Engine> {
        let tokenizer = Tokenizer::from_model(files)?;
        let cpu = match opts.device {
            Device::Cpu => Some(files),
            Device::Gpu => None,
        };
        Engine::from_parts(files, cpu, tokenizer, opts, gpu).await
    }

    /// A packed web model (`crate::pack`); it runs on the GPU only.
    pub async fn from_packed(model: PackedModel, opts: EngineOptions, gpu: Option<Arc<Gpu>>) -> Result<Engine> {
        if opts.device == Device::Cpu {
            return Err(Error::input("packed models run on the GPU only (use the original model with --device cpu)"));
        }
        let tokenizer = model.manifest.tokenizer.as_ref().map(Tokenizer::from_spec).transpose()?;
        Engine::from_parts(&model, None, tokenizer, opts, gpu).await
    }

    async fn from_parts(
        weights: &dyn WeightSource,
        cpu: Option<&ModelFiles>,
        tokenizer: Option<Tokenizer>,
        opts: EngineOptions,
        gpu: Option<Arc<Gpu>>,
    ) -> Result<Engine> {
        let cfg = weights.config().clone();
        let max_pos = cfg.max_positions;
        let context = match opts.context {
            Some(c) if c == 0 || c > max_pos => {
                return Err(Error::input(format!(
                    "context {c} must be between 1 and the model's max_position_embeddings {max_pos}"
                )));
            }
            Some(c) => c,
            None => max_pos.min(DEFAULT_CONTEXT),
        };
        if cpu.is_some() && opts.residency != Residency::default() {
            return Err(Error::input(
                "--resident-experts, --gpu-memory, --expert-policy and --prefetch apply to the GPU (the CPU reference keeps every expert)",
            ));
        }
        let template = match &tokenizer {
            Some(t) => match &t.chat_template {
                Some(src) => Some(ChatTemplate::new(src, &t.bos_token, &t.eos_token)?),
                None => None,
            },
            None => None,
        };
        let backend = match cpu {
            Some(files) => Backend::Cpu(Box::new(CpuModel::new(files, context, opts.kv)?)),
            None => {
                let gpu = match gpu {
                    Some(g) => g,
                    None => Arc::new(Gpu::new().await?),
                };
                Backend::Gpu(Box::new(
                    GpuModel::new(gpu, weights, (context, opts.kv), &opts.residency, opts.progress.as_ref()).await?,
                ))
            }
        };
        Ok(Engine { backend, opts, vocab: cfg.vocab, context, tokenizer, template, cached: Vec::new(), cfg })
    }

    /// Model facts for users (architecture, sizes, experts), as JSON.
    pub fn describe(&self) -> serde_json::Value {
        let c = &self.cfg;
        let moe = c.first_moe();
        serde_json::json!({
            "family": c.family,
            "architecture": c.arch,
            "layers": c.layers,
            "hidden": c.hidden,
            "heads": c.heads,
            "kv_heads": c.kv_heads,
            "head_dim": c.head_dim,
            "experts": moe.map_or(1, |m| m.experts),
            "experts_per_token": moe.map_or(1, |m| m.top_k),
            "vocab": c.vocab,
            "context": self.context,
            "kv": self.opts.kv.name(),
            "kv_bytes_per_token": c.kv_bytes_per_token(self.opts.kv == DType::F16),
            "sliding_window": c.plan.iter().filter_map(|l| l.attn.window).max(),
            "plan": c.plan.iter().map(|l| l.describe()).collect::<Vec<_>>(),
            "device": self.device_name(),
            "has_tokenizer": self.tokenizer.is_some(),
            "has_chat_template": self.template.is_some(),
        })
    }

    /// A one-line description of where the model runs.
    pub fn device_name(&self) -> String {
        match &self.backend {
            Backend::Gpu(m) => m.gpu.adapter_name(),
            Backend::Cpu(_) => "CPU reference".to_string(),
        }
    }

    fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::input("this model carries no tokenizer: give token ids instead of text"))
    }

    /// Token ids of `text`, with the special tokens the model's tokenizer adds (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text, true)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer()?.decode(ids, skip_special)
    }

    /// The conversation rendered by the model's chat template (ending where the assistant's
    /// reply begins) and tokenized as the template wrote it.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let t = self.template.as_ref().ok_or_else(|| {
            Error::input(
                "this model has no chat template (a base model?): give the text to continue as a plain prompt \
                 (--prompt on the command line, `prompt` instead of `messages` in the API)",
            )
        })?;
        let text = t.render(messages, true)?;
        self.tokenizer()?.encode(&text, false)
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Per layer, how often each expert was chosen since the last call (GPU only; empty
    /// for dense models and the CPU reference).
    pub async fn take_expert_counts(&mut self) -> Result<Vec<Vec<u32>>> {
        match &mut self.backend {
            Backend::Gpu(m) => m.take_expert_counts().await,
            Backend::Cpu(_) => Ok(Vec::new()),
        }
    }

    /// Starts recording every token's chosen experts (`crate::route`), or stops; returns
    /// what was recorded until now. Recording on the GPU adds no read-back while decoding.
    pub fn record_routes(&mut self, on: bool) -> Option<RouteTrace> {
        let slot = match &mut self.backend {
            Backend::Gpu(m) => &mut m.routes,
            Backend::Cpu(m) => &mut m.routes,
        };
        let old = slot.take();
        if on {
            *slot = Some(old.clone().unwrap_or_else(|| RouteTrace::new(&self.cfg)));
        }
        old
    }

    /// The choices recorded so far, while recording.
    pub fn routes(&mut self) -> Option<&mut RouteTrace> {
        match &mut self.backend {
            Backend::Gpu(m) => m.routes.as_mut(),
            Backend::Cpu(m) => m.routes.as_mut(),
        }
    }

    /// Expert paging's counters since the last call (hits, uploads, host-sync time,
    /// prefetch recall), then zeroed; None when every expert is resident or on the CPU.
    pub fn take_paging_stats(&mut self) -> Option<PagingStats> {
        match &mut self.backend {
            Backend::Gpu(m) if m.is_paged() => Some(std::mem::take(&mut m.paging)),
            _ => None,
        }
    }

    /// The GPU model, when the engine runs on the GPU (benchmarks look inside).
    pub fn gpu_model(&mut self) -> Option<&mut GpuModel> {
        match &mut self.backend {
            Backend::Gpu(m) => Some(m),
            Backend::Cpu(_) => None,
        }
    }

    /// The device the model runs on (none on the CPU reference).
    pub fn gpu(&self) -> Option<Arc<Gpu>> {
        match &self.backend {
            Backend::Gpu(m) => Some(m.gpu.clone()),
            Backend::Cpu(_) => None,
        }
    }

    /// The tokens whose keys and values the cache holds: the conversation so far. It lives
    /// on the host, so it outlives a lost device.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Makes the cache hold `tokens` by prefilling them from scratch (a conversation moved
    /// onto a new device); the next `generate` whose prompt extends them prefills only
    /// what is new.
    pub async fn restore(&mut self, tokens: &[u32]) -> Result<()> {
        self.reset();
        if tokens.len() >= self.context {
            return Err(Error::input(format!(
                "restoring {} tokens: more than the context length {}",
                tokens.len(),
                self.context
            )));
        }
        if !tokens.is_empty() {
            self.feed(tokens, Want::Nothing).await?;
        }
        Ok(())
    }

    /// After `Error::DeviceLost`: the same model loaded again from `src` onto a new device,
    /// with the same options, holding the conversation this engine held.
    pub async fn rebuilt<S: ModelSource>(&self, src: &S) -> Result<Engine> {
        let mut e = Engine::load(src, self.opts.clone(), None).await?;
        e.restore(&self.cached).await?;
        Ok(e)
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.cached.clear();
        match &mut self.backend {
            Backend::Gpu(m) => m.reset(),
            Backend::Cpu(m) => m.reset(),
        }
    }

    /// Logits [tokens.len(), vocab], row-major, for `tokens` as a new sequence.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.reset();
        let out = match &mut self.backend {
            Backend::Gpu(m) => m.logits(tokens, self.opts.prefill_chunk).await?,
            Backend::Cpu(m) => {
                let mut rows = Vec::with_capacity(tokens.len() * self.vocab);
                for part in tokens.chunks(self.opts.prefill_chunk.max(1)) {
                    rows.extend(m.forward(part)?);
                }
                rows
            }
        };
        self.cached = tokens.to_vec();
        Ok(out)
    }

    /// The logits of `tokens` as a new sequence, one row at a time: `each(position, row)`
    /// (rows in order), computed `prefill_chunk` rows per step so that a long window over
    /// a large vocabulary never holds more than one step's logits.
    pub async fn logits_each(&mut self, tokens: &[u32], mut each: impl FnMut(usize, &[f32])) -> Result<()> {
        self.reset();
        let (vocab, chunk) = (self.vocab, self.opts.prefill_chunk.max(1));
        for (c, part) in tokens.chunks(chunk).enumerate() {
            let rows = match &mut self.backend {
                Backend::Gpu(m) => m.logits(part, chunk).await?,
                Backend::Cpu(m) => m.forward(part)?,
            };
            for (r, row) in rows.chunks_exact(vocab).enumerate() {
                each(c * chunk + r, row);
            }
        }
        self.cached = tokens.to_vec();
        Ok(())
    }

    /// The BOS id the tokenizer puts before every text, if it does (none without a
    /// tokenizer: the caller's ids are taken as they are).
    pub fn bos_added(&self) -> Option<u32> {
        let t = self.tokenizer.as_ref()?;
        t.bos.filter(|b| t.encode("a", true).ok().and_then(|ids| ids.first().copied()) == Some(*b))
    }

    /// Appends `tokens` to the cached sequence; returns what `want` asks about the next one.
    async fn feed(&mut self, tokens: &[u32], want: Want) -> Result<Pred> {
        let vocab = self.vocab;
        let pred = match &mut self.backend {
            Backend::Gpu(m) => m.feed(tokens, self.opts.prefill_chunk, want).await?,
            Backend::Cpu(m) => {
                let mut last = Vec::new();
                for part in tokens.chunks(self.opts.prefill_chunk.max(1)) {
                    last = m.forward(part)?;
                }
                let row = last.get(last.len().saturating_sub(vocab)..).unwrap_or(&[]).to_vec();
                match want {
                    Want::Nothing => Pred::None,
                    Want::Token => Pred::Token(argmax(&row)),
                    Want::Logits => Pred::Logits(row),
                }
            }
        };
        self.cached.extend_from_slice(tokens);
        Ok(pred)
    }

    /// Makes the cache hold exactly `prompt`, prefilling only what is not cached already,
    /// and returns the prediction for the token after it and how many tokens were prefilled.
    async fn prime(&mut self, prompt: &[u32], want: Want) -> Result<(Pred, usize)> {
        if prompt.is_empty() {
            return Err(Error::input("no prompt tokens"));
        }
        // At least the last prompt token is fed again: its logits are needed.
        let keep = common_prefix(&self.cached, prompt).min(prompt.len() - 1);
        self.cached.truncate(keep);
        match &mut self.backend {
            Backend::Gpu(m) => m.set_pos(keep),
            Backend::Cpu(m) => m.pos = keep.min(m.pos),
        }
        let pred = self.feed(&prompt[keep..], want).await?;
        Ok((pred, prompt.len() - keep))
    }

    /// Generates after `prompt` (token ids; see `encode`, `encode_chat`). `on` sees every
    /// token and every piece of stable text as it is produced; returning false cancels.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on: impl FnMut(Event<'_>) -> bool,
    ) -> Result<Generation> {
        // A prompt that fills the context leaves no room for a reply; a reply that would
        // overflow it stops there with finish "length".
        if prompt.len() >= self.context {
            return Err(Error::input(format!(
                "prompt of {} tokens does not fit the context length {}",
                prompt.len(),
                self.context
            )));
        }
        let mut sampler = Sampler::new(opts.sampling.clone());
        sampler.add_context(prompt);
        let want = if opts.sampling.is_greedy() { Want::Token } else { Want::Logits };
        let stop_ids: Vec<u32> = if opts.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.as_ref().map(|t| t.stop_ids.clone()).unwrap_or_default()
        };
        let mut out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: Finish::Length,
            prompt_tokens: prompt.len(),
            prefilled_tokens: 0,
            host_us: Vec::new(),
        };
        if opts.max_tokens == 0 {
            return Ok(out);
        }
        let (mut pred, prefilled) = self.prime(prompt, want).await?;
        out.prefilled_tokens = prefilled;
        let mut text = self.tokenizer.as_ref().map(|_| TextStream::new(&opts.stop));
        loop {
            let t = web_time::Instant::now();
            let id = match pred {
                Pred::Token(id) => id,
                Pred::Logits(mut l) => sampler.sample(&mut l),
                Pred::None => return Err(Error::input("internal: no prediction")),
            };
            sampler.accept(id);
            out.tokens.push(id);
            if !on(Event::Token(id)) {
                out.finish = Finish::Cancelled;
                break;
            }
            let stop_token = stop_ids.contains(&id);
            let full = out.tokens.len() >= opts.max_tokens || self.cached.len() >= self.context;
            if let (Some(ts), Some(tok)) = (&mut text, &self.tokenizer) {
                // The stop token's own text is not part of the reply.
                let mut stopped = if stop_token { false } else { ts.push(tok, id)? };
                if !stopped && (stop_token || full) {
                    stopped = ts.finish(tok)?;
                }
                let piece = ts.take();
                if !piece.is_empty() && !on(Event::Text(piece)) {
                    out.finish = Finish::Cancelled;
                    break;
                }
                if stopped {
                    out.finish = Finish::Stop;
                    break;
                }
            }
            if stop_token {
                out.finish = Finish::Stop;
                break;
            }
            if full {
                out.finish = Finish::Length;
                break;
            }
            out.host_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            pred = self.feed(&[id], want).await?;
        }
        out.text = text.as_ref().map(|t| t.shown().to_string()).unwrap_or_default();
        Ok(out)
    }
}

//! The user-facing engine shared by the CLI and the browser bindings: load a model from a
//! source onto a device (the GPU kernels, or the CPU reference), then ask for logits or a
//! greedy continuation. Each call starts a fresh sequence.

use crate::cpu::{CpuModel, argmax};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::model::{GpuModel, MAX_CHUNK};
use crate::model::ModelFiles;
use crate::platform::ModelSource;
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { device: Device::Gpu, context: None, prefill_chunk: MAX_CHUNK }
    }
}

enum Backend {
    Gpu(GpuModel),
    Cpu(CpuModel),
}

pub struct Engine {
    backend: Backend,
    opts: EngineOptions,
    pub vocab: usize,
    pub context: usize,
}

pub const DEFAULT_CONTEXT: usize = 4096;

impl Engine {
    pub async fn load<S: ModelSource>(src: &S, opts: EngineOptions, gpu: Option<Arc<Gpu>>) -> Result<Engine> {
        let files = ModelFiles::load(src).await?;
        Engine::from_files(&files, opts, gpu).await
    }

    pub async fn from_files(files: &ModelFiles, opts: EngineOptions, gpu: Option<Arc<Gpu>>) -> Result<Engine> {
        let max_pos = files.config.max_positions;
        let context = match opts.context {
            Some(c) if c == 0 || c > max_pos => {
                return Err(Error::input(format!(
                    "context {c} must be between 1 and the model's max_position_embeddings {max_pos}"
                )));
            }
            Some(c) => c,
            None => max_pos.min(DEFAULT_CONTEXT),
        };
        let backend = match opts.device {
            Device::Cpu => Backend::Cpu(CpuModel::new(files, context)?),
            Device::Gpu => {
                let gpu = match gpu {
                    Some(g) => g,
                    None => Arc::new(Gpu::new().await?),
                };
                Backend::Gpu(GpuModel::new(gpu, files, context).await?)
            }
        };
        Ok(Engine { backend, opts, vocab: files.config.vocab, context })
    }

    /// Logits [tokens.len(), vocab], row-major, for `tokens` as a new sequence.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        match &mut self.backend {
            Backend::Gpu(m) => {
                m.reset();
                m.logits(tokens, self.opts.prefill_chunk).await
            }
            Backend::Cpu(m) => {
                m.reset();
                let mut out = Vec::with_capacity(tokens.len() * self.vocab);
                for part in tokens.chunks(self.opts.prefill_chunk.max(1)) {
                    out.extend(m.forward(part)?);
                }
                Ok(out)
            }
        }
    }

    /// Greedy continuation of `prompt` (a new sequence) by up to `max_new` tokens.
    /// `on_token` sees each token as it is produced and may return false to stop.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        match &mut self.backend {
            Backend::Gpu(m) => {
                m.reset();
                m.generate(prompt, max_new, self.opts.prefill_chunk, on_token).await
            }
            Backend::Cpu(m) => {
                m.reset();
                if prompt.is_empty() {
                    return Err(Error::input("no tokens given"));
                }
                let mut out = Vec::new();
                let mut logits = Vec::new();
                for part in prompt.chunks(self.opts.prefill_chunk.max(1)) {
                    logits = m.forward(part)?;
                }
                while out.len() < max_new {
                    let id = argmax(&logits[logits.len() - self.vocab..]);
                    out.push(id);
                    if !on_token(id) || out.len() >= max_new {
                        break;
                    }
                    logits = m.forward(&[id])?;
                }
                Ok(out)
            }
        }
    }

    /// A one-line description of where the model runs.
    pub fn device_name(&self) -> String {
        match &self.backend {
            Backend::Gpu(m) => m.gpu.adapter_name(),
            Backend::Cpu(_) => "CPU reference".to_string(),
        }
    }
}

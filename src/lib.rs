//! webmoe: sparse Mixture-of-Experts LLM inference whose WGSL kernels run through wgpu,
//! natively (Vulkan/Metal/DX12) and in the browser (WebGPU), from one crate.
//!
//! - `config`, `safetensors`, `model`: reading a Hugging Face model directory, checked.
//! - `cpu`: the plain-Rust reference forward pass every kernel is tested against.
//! - `gpu`: device setup, the kernels (`shaders/*.wgsl`) and the GPU-resident model.
//! - `engine`: the user-facing API shared by the CLI and the browser bindings.
//! - `platform`: the only place native and wasm differ.

pub mod bench;
pub mod chat;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod fuzz;
pub mod gguf;
pub mod gpu;
pub mod lazy;
pub mod model;
pub mod pack;
pub mod perplexity;
pub mod platform;
pub mod quant;
pub mod route;
pub mod safetensors;
pub mod sampling;
pub mod stream;
pub mod tensor;
pub mod tokenizer;
pub mod weights;

#[cfg(target_arch = "wasm32")]
mod web;

pub use error::{Error, Result};

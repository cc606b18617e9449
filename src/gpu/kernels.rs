//! The WGSL kernels (one file each under `shaders/`), their pipelines, and one constructor
//! per kernel that binds buffers and returns a ready-to-encode `Dispatch`. Every kernel has
//! a reference test against `crate::cpu` in tests/kernels.rs.
//!
//! Binding convention: binding 0 is the kernel's own `Params` uniform (a `params.rs` struct),
//! bindings 1.. are the buffers in the order the constructor takes them (as declared in
//! the .wgsl file). Optional inputs a model lacks (biases, norms, sinks) are bound to
//! `Gpu::dummy` and never read: a flag in the params says so.

use super::Gpu;
use super::params::{self, KernelParams};
use crate::error::{Error, Result};
use crate::tensor::DType;

const COMMON: &str = include_str!("../../shaders/lib/common.wgsl");
/// The shared weight loader, `shaders/lib/weights.wgsl`.
pub const WEIGHTS: &str = include_str!("../../shaders/lib/weights.wgsl");
const LANES_SHARED: &str = include_str!("../../shaders/lib/lanes_shared.wgsl");
const LANES_SUBGROUP: &str = include_str!("../../shaders/lib/lanes_subgroup.wgsl");
const GEMV_ROWS_LIB: &str = include_str!("../../shaders/lib/gemv_rows.wgsl");
const GEMM_TILE_LIB: &str = include_str!("../../shaders/lib/gemm_tile.wgsl");
const EXPERT_TILES_LIB: &str = include_str!("../../shaders/lib/expert_tiles.wgsl");
const WG_REDUCE_LIB: &str = include_str!("../../shaders/lib/wg_reduce.wgsl");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Embed,
    RmsNorm,
    PostNorm,
    Gemv,
    QkvRope,
    Gemm,
    RopeKv,
    Attention,
    AttentionSplit,
    AttentionCombine,
    QkNorm,
    Router,
    MoeGemvGateUp,
    MoeGemvDown,
    MoeGroup,
    MoeGemmGateUp,
    MoeGemmDown,
    MoeCombine,
    Argmax,
    Copy,
}

impl Shader {
    pub fn name(self) -> &'static str {
        match self {
            Shader::Embed => "embed",
            Shader::RmsNorm => "rmsnorm",
            Shader::PostNorm => "post_norm",
            Shader::Gemv => "gemv",
            Shader::QkvRope => "qkv_rope",
            Shader::Gemm => "gemm",
            Shader::RopeKv => "rope_kv",
            Shader::Attention => "attention",
            Shader::AttentionSplit => "attention_split",
            Shader::AttentionCombine => "attention_combine",
            Shader::QkNorm => "qk_norm",
            Shader::Router => "router",
            Shader::MoeGemvGateUp => "moe_gemv_gate_up",
            Shader::MoeGemvDown => "moe_gemv_down",
            Shader::MoeGroup => "moe_group",
            Shader::MoeGemmGateUp => "moe_gemm_gate_up",
            Shader::MoeGemmDown => "moe_gemm_down",
            Shader::MoeCombine => "moe_combine",
            Shader::Argmax => "argmax",
            Shader::Copy => "copy",
        }
    }

    /// Kernels that read a weight matrix get `lib/weights.wgsl` (the `w4` loader).
    pub fn reads_weights(self) -> bool {
        matches!(
            self,
            Shader::Embed
                | Shader::Gemv
                | Shader::QkvRope
                | Shader::Gemm
                | Shader::MoeGemvGateUp
                | Shader::MoeGemvDown
                | Shader::MoeGemmGateUp
                | Shader::MoeGemmDown
        )
    }

    /// Kernels that sum across the lanes of a row group get `lanes_sum` (subgroup shuffles,
    /// or workgroup memory where the device has no subgroups).
    pub fn sums_lanes(self) -> bool {
        matches!(self, Shader::Gemv | Shader::QkvRope | Shader::MoeGemvGateUp | Shader::MoeGemvDown)
    }

    /// Kernels built on the shared decode-matmul loop (`lib/gemv_rows.wgsl`): the same set.
    pub fn uses_gemv_rows(self) -> bool {
        self.sums_lanes()
    }

    /// The prefill matmuls, built on `lib/gemm_tile.wgsl`.
    pub fn uses_gemm_tile(self) -> bool {
        matches!(self, Shader::Gemm | Shader::MoeGemmGateUp | Shader::MoeGemmDown)
    }

    /// The prefill MoE matmuls, which find their expert's tile with `lib/expert_tiles.wgsl`.
    pub fn uses_expert_tiles(self) -> bool {
        matches!(self, Shader::MoeGemmGateUp | Shader::MoeGemmDown)
    }

    /// Kernels with workgroup-wide sums or maxima (`lib/wg_reduce.wgsl`).
    pub fn uses_wg_reduce(self) -> bool {
        matches!(
            self,
            Shader::RmsNorm
                | Shader::PostNorm
                | Shader::Router
                | Shader::Attention
                | Shader::AttentionSplit
                | Shader::RopeKv
                | Shader::QkNorm
        )
    }

    /// Every kernel, for tests that walk them all.
    pub const ALL: [Shader; 20] = [
        Shader::Embed,
        Shader::RmsNorm,
        Shader::PostNorm,
        Shader::Gemv,
        Shader::QkvRope,
        Shader::Gemm,
        Shader::RopeKv,
        Shader::Attention,
        Shader::AttentionSplit,
        Shader::AttentionCombine,
        Shader::QkNorm,
        Shader::Router,
        Shader::MoeGemvGateUp,
        Shader::MoeGemvDown,
        Shader::MoeGroup,
        Shader::MoeGemmGateUp,
        Shader::MoeGemmDown,
        Shader::MoeCombine,
        Shader::Argmax,
        Shader::Copy,
    ];

    /// The field names of the Rust struct mirroring this kernel's WGSL `Params`.
    pub fn params_fields(self) -> &'static [&'static str] {
        use params::*;
        match self {
            Shader::Embed => EmbedParams::FIELDS,
            Shader::RmsNorm => RmsNormParams::FIELDS,
            Shader::PostNorm => PostNormParams::FIELDS,
            Shader::Gemv | Shader::Gemm => MatmulParams::FIELDS,
            Shader::QkvRope => QkvRopeParams::FIELDS,
            Shader::RopeKv => RopeKvParams::FIELDS,
            Shader::Attention | Shader::AttentionSplit | Shader::AttentionCombine => AttentionParams::FIELDS,
            Shader::QkNorm => QkNormParams::FIELDS,
            Shader::Router => RouterParams::FIELDS,
            Shader::MoeGemvGateUp | Shader::MoeGemmGateUp => MoeGateUpParams::FIELDS,
            Shader::MoeGemvDown | Shader::MoeGemmDown => MoeDownParams::FIELDS,
            Shader::MoeGroup => MoeGroupParams::FIELDS,
            Shader::MoeCombine => MoeCombineParams::FIELDS,
            Shader::Argmax => ArgmaxParams::FIELDS,
            Shader::Copy => CopyParams::FIELDS,
        }
    }

    /// The kernel's own WGSL (without the shared prelude).
    pub fn source(self) -> &'static str {
        match self {
            Shader::Embed => include_str!("../../shaders/embed.wgsl"),
            Shader::RmsNorm => include_str!("../../shaders/rmsnorm.wgsl"),
            Shader::PostNorm => include_str!("../../shaders/post_norm.wgsl"),
            Shader::Gemv => include_str!("../../shaders/gemv.wgsl"),
            Shader::QkvRope => include_str!("../../shaders/qkv_rope.wgsl"),
            Shader::Gemm => include_str!("../../shaders/gemm.wgsl"),
            Shader::RopeKv => include_str!("../../shaders/rope_kv.wgsl"),
            Shader::Attention => include_str!("../../shaders/attention.wgsl"),
            Shader::AttentionSplit => include_str!("../../shaders/attention_split.wgsl"),
            Shader::AttentionCombine => include_str!("../../shaders/attention_combine.wgsl"),
            Shader::QkNorm => include_str!("../../shaders/qk_norm.wgsl"),
            Shader::Router => include_str!("../../shaders/router.wgsl"),
            Shader::MoeGemvGateUp => include_str!("../../shaders/moe_gemv_gate_up.wgsl"),
            Shader::MoeGemvDown => include_str!("../../shaders/moe_gemv_down.wgsl"),
            Shader::MoeGroup => include_str!("../../shaders/moe_group.wgsl"),
            Shader::MoeGemmGateUp => include_str!("../../shaders/moe_gemm_gate_up.wgsl"),
            Shader::MoeGemmDown => include_str!("../../shaders/moe_gemm_down.wgsl"),
            Shader::MoeCombine => include_str!("../../shaders/moe_combine.wgsl"),
            Shader::Argmax => include_str!("../../shaders/argmax.wgsl"),
            Shader::Copy => include_str!("../../shaders/copy.wgsl"),
        }
    }
}

/// How many workgroups along y, given the step's token count T:
/// `Fixed(n)`, or `ceil(T * mul / div) + add`.
#[derive(Clone, Copy, Debug)]
pub enum Rows {
    Fixed(u32),
    Tokens { mul: u32, div: u32, add: u32 },
}

impl Rows {
    pub const PER_TOKEN: Rows = Rows::Tokens { mul: 1, div: 1, add: 0 };
    pub fn count(self, n_rows: u32) -> u32 {
        match self {
            Rows::Fixed(n) => n,
            Rows::Tokens { mul, div, add } => (n_rows * mul).div_ceil(div) + add,
        }
    }
}

/// Workgroups: `x` in total (folded into x and z past the per-dimension limit) by `y` rows.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub x: u32,
    pub y: Rows,
}

/// A kernel with its buffers bound: everything needed to record it into a compute pass.
pub struct Dispatch {
    pub shader: Shader,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    pub grid: Grid,
    /// Weight bytes one token's pass reads (for effective-bandwidth reports; 0 if none).
    pub weight_bytes: u64,
    /// Nonzero: `grid.x` is per chunk of this many KV positions, and the step dispatches
    /// it once per chunk of the positions written so far (split-K attention).
    pub kv_chunk: u32,
}

impl Dispatch {
    /// The grid for a step of `n_rows` tokens starting at position `pos0`.
    pub fn workgroups(&self, n_rows: u32, pos0: u32, max_dim: u32) -> [u32; 3] {
        let y = self.grid.y.count(n_rows);
        let mut x = self.grid.x;
        if self.kv_chunk > 0 {
            x *= (pos0 + n_rows).div_ceil(self.kv_chunk);
        }
        if x <= max_dim { [x, y, 1] } else { [max_dim, y, x.div_ceil(max_dim)] }
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_rows: u32, pos0: u32, max_dim: u32) {
        let [x, y, z] = self.workgroups(n_rows, pos0, max_dim);
        if x == 0 || y == 0 || z == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }

    fn reading(mut self, bytes: u64) -> Self {
        self.weight_bytes = bytes;
        self
    }

    /// The same kernel with its grid replaced.
    pub fn with_grid(mut self, grid: Grid) -> Self {
        self.grid = grid;
        self
    }
}

/// What a pipeline is specialised to (WGSL override constants): the weight storage type
/// (WDTYPE), the FFN activation (ACT, `plan::Act::shader_code`) and the KV cache's storage
/// (KVF16: f16 pairs packed in u32, or f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub dtype: DType,
    pub act: u32,
    pub kv16: bool,
}

impl From<DType> for Variant {
    fn from(dtype: DType) -> Variant {
        Variant { dtype, act: 0, kv16: false }
    }
}

impl Gpu {
    /// The compute pipeline for `shader` specialised to `variant`, compiled once.
    pub fn pipeline(&self, shader: Shader, variant: impl Into<Variant>) -> Result<wgpu::ComputePipeline> {
        let variant = variant.into();
        let code = variant.dtype.shader_code();
        if code == u32::MAX {
            return Err(Error::gpu(format!("{}: weight dtype {} has no kernel", shader.name(), variant.dtype.name())));
        }
        let key = (shader, variant);
        if let Some(p) = self.pipelines.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(p);
        }
        let replaced = self.sources.lock().ok().and_then(|m| m.get(&shader).cloned());
        let source = replaced.as_deref().unwrap_or(shader.source());
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name()),
            source: wgpu::ShaderSource::Wgsl(self.compose(shader, source).into()),
        });
        let constants = [("WDTYPE", code as f64), ("ACT", variant.act as f64), ("KVF16", variant.kv16 as u32 as f64)];
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.name()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.check_errors()?;
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(key, pipeline.clone());
        }
        Ok(pipeline)
    }

    /// The full module: the shared libraries the kernel uses, then the kernel.
    fn compose(&self, shader: Shader, source: &str) -> String {
        let subgroups = self.subgroups && shader.sums_lanes();
        let lanes = match (shader.sums_lanes(), subgroups) {
            (false, _) => String::new(),
            (true, true) => format!("const LANES: u32 = {}u;\n{LANES_SUBGROUP}", self.lanes),
            (true, false) => format!("const LANES: u32 = {}u;\n{LANES_SHARED}", self.lanes),
        };
        let replaced = self.weights_source.lock().ok().and_then(|m| m.clone());
        let weights = match (shader.reads_weights(), &replaced) {
            (false, _) => "",
            (true, Some(w)) => w.as_str(),
            (true, None) => WEIGHTS,
        };
        let rows = if shader.uses_gemv_rows() { GEMV_ROWS_LIB } else { "" };
        let tile = if shader.uses_gemm_tile() { GEMM_TILE_LIB } else { "" };
        let experts = if shader.uses_expert_tiles() { EXPERT_TILES_LIB } else { "" };
        let reduce = if shader.uses_wg_reduce() { WG_REDUCE_LIB } else { "" };
        // No `enable subgroups;`: Naga (wgpu 30) rejects the directive and instead accepts
        // the subgroup built-ins when the device was opened with Features::SUBGROUP.
        format!("{COMMON}\n{weights}\n{lanes}\n{rows}\n{tile}\n{experts}\n{reduce}\n{source}")
    }

    /// Compiles `shader` from `source` from now on. Tests use it to prove that a broken
    /// kernel fails its reference test; nothing else should.
    pub fn replace_kernel_source(&self, shader: Shader, source: String) {
        if let Ok(mut m) = self.sources.lock() {
            m.insert(shader, source);
        }
        if let Ok(mut m) = self.pipelines.lock() {
            m.retain(|(s, _), _| *s != shader);
        }
    }

    /// Compiles every kernel that reads weights with `source` in place of
    /// lib/weights.wgsl (`None`: the real one) from now on. For tests, like
    /// `replace_kernel_source`.
    pub fn replace_weights_source(&self, source: Option<String>) {
        if let Ok(mut m) = self.weights_source.lock() {
            *m = source;
        }
        if let Ok(mut m) = self.pipelines.lock() {
            m.retain(|(s, _), _| !s.reads_weights());
        }
    }

    /// Binds `params` (binding 0) and `buffers` (bindings 1..) for `pipeline`.
    pub fn bind<P: KernelParams>(
        &self,
        shader: Shader,
        pipeline: wgpu::ComputePipeline,
        params: &P,
        buffers: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Dispatch {
        let uniform = self.uniform_bytes(shader.name(), bytemuck::bytes_of(params));
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(shader.name()),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { shader, pipeline, bind_group, grid, weight_bytes: 0, kv_chunk: 0 }
    }

    fn make<P: KernelParams>(
        &self,
        shader: Shader,
        variant: impl Into<Variant>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<Dispatch> {
        let pipeline = self.pipeline(shader, variant)?;
        Ok(self.bind(shader, pipeline, params, buffers, grid))
    }

    /// `b`, or the dummy buffer when the input is absent.
    pub fn or_dummy<'a>(&'a self, b: Option<&'a wgpu::Buffer>) -> &'a wgpu::Buffer {
        b.unwrap_or(&self.dummy)
    }
}

/// A weight matrix on the GPU in the layout of `crate::quant` (any storage type).
#[derive(Clone)]
pub struct GpuWeight {
    pub buf: wgpu::Buffer,
    pub dtype: DType,
    /// Word offsets of the scale and (Q6_K) high-bit regions (within each expert's block).
    pub s_off: u32,
    pub h_off: u32,
    /// Words between stacked experts' blocks; 0 for a single matrix.
    pub expert_stride: u32,
}

/// Where a matmul writes: columns `off..off+n` of rows `stride` wide, written or added, as
/// alpha * (W x + bias[off + n]).
#[derive(Clone, Copy)]
pub struct Out<'a> {
    pub buf: &'a wgpu::Buffer,
    pub stride: usize,
    pub off: usize,
    pub accumulate: bool,
    /// Indexed by output column (`off + n`): q|k|v biases share one buffer.
    pub bias: Option<&'a wgpu::Buffer>,
    pub alpha: f32,
}

impl<'a> Out<'a> {
    /// The whole output row, overwritten.
    pub fn write(buf: &'a wgpu::Buffer, n: usize) -> Self {
        Out { buf, stride: n, off: 0, accumulate: false, bias: None, alpha: 1.0 }
    }
    /// The whole output row, added to (fuses a residual add).
    pub fn add(buf: &'a wgpu::Buffer, n: usize) -> Self {
        Out { accumulate: true, ..Out::write(buf, n) }
    }
    /// Columns `off..` of rows `stride` wide, overwritten.
    pub fn cols(buf: &'a wgpu::Buffer, stride: usize, off: usize) -> Self {
        Out { stride, off, ..Out::write(buf, stride) }
    }
    /// Adds `bias` (when there is one) before scaling.
    pub fn with_bias(self, bias: Option<&'a wgpu::Buffer>) -> Self {
        Out { bias, ..self }
    }
    /// Multiplies the result (a residual or logit scale).
    pub fn scaled(self, alpha: f32) -> Self {
        Out { alpha, ..self }
    }
}

/// The reduction dimension must be whole vec4s and whole quantization blocks.
fn inner(what: &str, dtype: DType, n: usize) -> Result<u32> {
    let block = dtype.block().map_or(1, |b| b.0).max(4);
    if !n.is_multiple_of(block) {
        return Err(Error::gpu(format!(
            "{what}: inner dimension {n} is not a multiple of {block}, which {} matmuls need",
            dtype.name()
        )));
    }
    u32_of(what, n)
}

fn u32_of(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::gpu(format!("{what}: size {n} exceeds 32-bit indexing")))
}

const TILE: u32 = 32;
/// Most split-K attention chunks per (head, token): bounds the partials buffer.
const MAX_KV_CHUNKS: usize = 128;

/// Kernel constructors (`kernels/ops.rs`).
pub mod ops;

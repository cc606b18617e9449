//! The GPU side: device setup with the adapter's own limits, buffers that say which tensor
//! did not fit, read-back, and the WGSL kernels (`kernels`) composed into a model (`model`).

pub mod assemble;
pub mod kernels;
mod layers;
pub mod model;
pub mod paging;
pub mod params;
pub mod program;

use crate::error::{Error, Result};
use crate::platform;
use crate::quant::{PackedBuffer, pack_experts, pack_matrix};
use crate::tensor::DType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

pub use kernels::{Dispatch, GpuWeight, Grid, Out, Rows, Shader, Variant};

/// Optional device features to use when the adapter has them, and kernel shapes.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// Use subgroup operations where the adapter has them (`None`: yes).
    pub subgroups: Option<bool>,
    /// Threads per group of GEMV rows (LANES in lib/gemv_rows.wgsl: 8, 16 or 32);
    /// `None`: chosen for the adapter (`gemv_lanes`).
    pub gemv_lanes: Option<u32>,
}

impl GpuOptions {
    /// From the environment (native): WEBMOE_SUBGROUPS=0 keeps kernels off subgroups,
    /// WEBMOE_GEMV_LANES=8|16|32 sets the GEMV shape (for A/B runs on a new device).
    pub fn from_env() -> Result<GpuOptions> {
        let gemv_lanes = match platform::env_var("WEBMOE_GEMV_LANES") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| Error::gpu(format!("WEBMOE_GEMV_LANES={v}: expected 8, 16 or 32")))?,
            ),
        };
        Ok(GpuOptions { subgroups: platform::env_flag("WEBMOE_SUBGROUPS"), gemv_lanes })
    }
}

/// The GEMV shape for an adapter: how many threads share a group of 4 output rows. CPU
/// devices (lavapipe, SwiftShader) run a workgroup's threads as SIMD loops, where a long
/// loop per thread is cheap and cross-lane sums are not: 8 (measured best on lavapipe).
/// GPUs want many workgroups in flight to cover memory latency: a full 32-wide subgroup
/// per row group puts a 4096-row projection on 256 workgroups instead of 64. Where
/// subgroups are smaller (Intel: 8 or 16) the row group matches the subgroup, so the lane
/// sum stays a shuffle.
pub fn gemv_lanes(info: &wgpu::AdapterInfo, subgroups: bool) -> u32 {
    if info.device_type == wgpu::DeviceType::Cpu {
        8
    } else if subgroups {
        info.subgroup_min_size.clamp(8, 32).next_power_of_two()
    } else {
        32
    }
}

/// A wgpu device plus what we learned about its adapter.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub info: wgpu::AdapterInfo,
    /// Errors wgpu reported outside an error scope (it would panic otherwise).
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it has been.
    lost: Arc<Mutex<Option<String>>>,
    /// Buffers created and their bytes (allocation tests and `bench` read these).
    allocated: std::sync::atomic::AtomicU64,
    allocated_bytes: std::sync::atomic::AtomicU64,
    pub features: wgpu::Features,
    /// Everything the adapter offered (`features` is what was asked for).
    adapter_features: wgpu::Features,
    /// Whether kernels use subgroup operations (the adapter has them and they were wanted).
    pub subgroups: bool,
    /// Threads per group of GEMV rows (`gemv_lanes`).
    pub lanes: u32,
    pipelines: Mutex<HashMap<(Shader, Variant), wgpu::ComputePipeline>>,
    /// Bound in place of absent optional inputs (`dummy`).
    dummy: wgpu::Buffer,
    /// Kernel sources replaced at run time (tests build deliberately broken kernels).
    sources: Mutex<HashMap<Shader, String>>,
    /// A replacement for lib/weights.wgsl (tests break a format's loader with it).
    weights_source: Mutex<Option<String>>,
}

impl Gpu {
    /// Opens the default adapter and requests everything it offers in limits (WebGPU's
    /// defaults, 128 MiB per binding, are far below what most adapters allow). No optional
    /// features are required: every kernel runs without shader-f16 or subgroups. Subgroups
    /// are used where the adapter has them, unless WEBMOE_SUBGROUPS=0 (native) says not to.
    pub async fn new() -> Result<Gpu> {
        Gpu::with_options(GpuOptions::from_env()?).await
    }

    /// `new` with the optional features chosen: `subgroups: Some(false)` keeps every kernel
    /// on its workgroup-memory path even where the adapter has subgroups.
    pub async fn with_options(opts: GpuOptions) -> Result<Gpu> {
        let instance = wgpu::Instance::new(platform::instance_descriptor());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::gpu(format!("no GPU adapter available ({e}); natively, install a Vulkan driver (Mesa's lavapipe works on a CPU); in a browser, WebGPU must be enabled")))?;
        let limits = adapter.limits();
        let info = adapter.get_info();
        // Optional: GPU timestamps for per-kernel timings (`webmoe bench --kernels`).
        let mut features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let offered = opts.subgroups.unwrap_or(true) && adapter.features().contains(wgpu::Features::SUBGROUP);
        let lanes = match opts.gemv_lanes {
            None => gemv_lanes(&info, offered),
            Some(l @ (8 | 16 | 32)) => l,
            Some(l) => return Err(Error::gpu(format!("GEMV lanes {l}: expected 8, 16 or 32"))),
        };
        // Subgroup lane sums need every row group inside one subgroup.
        let subgroups = offered && info.subgroup_min_size >= lanes;
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webmoe"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::gpu(format!("could not open the device on '{}': {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(if msg.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {msg}") });
            }
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("absent optional input"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            dummy,
            device,
            queue,
            limits,
            info,
            errors,
            lost,
            allocated: Default::default(),
            allocated_bytes: Default::default(),
            features,
            adapter_features: adapter.features(),
            subgroups,
            lanes,
            pipelines: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            weights_source: Mutex::new(None),
        })
    }

    /// A short description of the adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    /// Browsers often withhold the name; then the driver fields, or just the backend.
    pub fn adapter_name(&self) -> String {
        let i = &self.info;
        let parts: Vec<&str> = [i.name.as_str(), i.driver.as_str(), i.driver_info.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let name = if parts.is_empty() { "unnamed adapter".to_string() } else { parts.join(", ") };
        format!("{name} ({:?})", i.backend)
    }

    /// Output rows per workgroup of the GEMV kernels (ROWS in lib/gemv_rows.wgsl).
    pub fn gemv_rows(&self) -> u32 {
        128 / self.lanes * 4
    }

    /// The features the adapter offers (not all are requested).
    pub fn adapter_features(&self) -> wgpu::Features {
        self.adapter_features
    }

    /// Why the device was lost, if it was (driver reset, browser reclaiming the GPU...).
    /// A lost device never comes back: `Engine::rebuilt` opens a new one (calls on this one
    /// fail with `Error::DeviceLost`).
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// `Error::DeviceLost` once the device is lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost() {
            Some(why) => Err(Error::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// Destroys the device, as a driver reset would lose it: the test hook behind the
    /// device-loss tests (natively and in the browser). Everything on it is gone; the
    /// lost callback reports it and every later call fails with `Error::DeviceLost`.
    pub fn destroy_for_test(&self) {
        self.device.destroy();
    }

    /// Fails with the first error wgpu reported asynchronously, if any.
    pub fn check_errors(&self) -> Result<()> {
        if let Some(why) = self.lost() {
            return Err(Error::DeviceLost(why));
        }
        let mut v = self.errors.lock().map_err(|_| Error::gpu("error log poisoned"))?;
        if let Some(first) = v.first().cloned() {
            let n = v.len();
            v.clear();
            return Err(Error::gpu(if n > 1 { format!("{first} (and {} more)", n - 1) } else { first }));
        }
        Ok(())
    }

    fn check_fits(&self, name: &str, size: u64) -> Result<()> {
        let bind = self.limits.max_storage_buffer_binding_size;
        let buf = self.limits.max_buffer_size;
        if size > bind {
            return Err(Error::gpu(format!(
                "tensor '{name}' needs {size} bytes but this adapter binds at most {bind} bytes per storage buffer (max_storage_buffer_binding_size)"
            )));
        }
        if size > buf {
            return Err(Error::gpu(format!(
                "tensor '{name}' needs {size} bytes but this adapter's largest buffer is {buf} bytes (max_buffer_size)"
            )));
        }
        Ok(())
    }

    /// (buffers created, bytes) so far by this device's helpers.
    pub fn allocations(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.allocated.load(Relaxed), self.allocated_bytes.load(Relaxed))
    }

    fn count(&self, size: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.allocated.fetch_add(1, Relaxed);
        self.allocated_bytes.fetch_add(size, Relaxed);
    }

    /// An uninitialised storage buffer of `size` bytes (rounded up to 4, at least 16).
    pub fn storage(&self, name: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(16).next_multiple_of(4);
        self.check_fits(name, size)?;
        self.count(size);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes` (zero-padded to a multiple of 4).
    pub fn storage_init(&self, name: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let buf = self.storage(name, bytes.len() as u64)?;
        self.write(&buf, 0, bytes);
        Ok(buf)
    }

    /// Writes `bytes` at `offset`, padding the tail to the 4-byte granularity wgpu needs.
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buf, offset, &padded);
        }
    }

    /// Uploads a weight buffer in the kernels' layout (`crate::quant::PackedBuffer`).
    pub fn upload_packed(&self, name: &str, b: &PackedBuffer) -> Result<GpuWeight> {
        if !b.dtype.is_supported() {
            return Err(Error::gpu(format!("tensor '{name}': storage type {} has no kernel", b.dtype.name())));
        }
        let buf = self.storage_init(name, &b.bytes)?;
        Ok(GpuWeight { buf, dtype: b.dtype, s_off: b.s_off, h_off: b.h_off, expert_stride: b.expert_stride })
    }

    /// Uploads tensors of one storage type as one matrix, concatenated along their first
    /// dimension, in the kernels' layout.
    pub fn upload_weight(&self, name: &str, dtype: DType, parts: &[&[u8]]) -> Result<GpuWeight> {
        self.upload_packed(name, &pack_matrix(dtype, parts)?)
    }

    /// Uploads stacked experts (see `crate::quant::pack_experts`).
    pub fn upload_experts(&self, name: &str, dtype: DType, experts: &[Vec<&[u8]>]) -> Result<GpuWeight> {
        self.upload_packed(name, &pack_experts(dtype, experts)?)
    }

    pub fn uniform(&self, name: &str, words: &[u32]) -> wgpu::Buffer {
        self.uniform_bytes(name, bytemuck::cast_slice(words))
    }

    /// A uniform buffer holding `bytes`, zero-padded to a multiple of 16.
    pub fn uniform_bytes(&self, name: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut w = bytes.to_vec();
        w.resize(bytes.len().next_multiple_of(16).max(16), 0);
        self.count(w.len() as u64);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: &w,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// A 16-byte storage buffer bound where a kernel's optional input is absent (a bias
    /// the model does not have); the kernel's flag keeps it from being read.
    pub fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    /// A buffer the host can map to read results back.
    pub fn staging(&self, name: &str, size: u64) -> wgpu::Buffer {
        let size = size.max(4).next_multiple_of(4);
        self.count(size);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `staging` (already filled by a submitted copy) and returns its first `size` bytes.
    pub async fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.map_read_range(staging, 0, size).await
    }

    /// `size` bytes at `offset` (a multiple of 8) of a staging buffer, in one map.
    pub async fn map_read_range(&self, staging: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(offset..offset + size.max(4).next_multiple_of(4));
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        platform::poll_wait(&self.device)?;
        let mapped = rx.await;
        // A map that fails on a lost device is the loss, not a fault of its own.
        self.check_lost()?;
        mapped
            .map_err(|_| Error::DeviceLost("the map callback was dropped while reading results back".into()))?
            .map_err(|e| Error::gpu(format!("mapping results failed: {e}")))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| Error::gpu(format!("mapped range: {e}")))?;
            view[..size as usize].to_vec()
        };
        staging.unmap();
        self.check_errors()?;
        Ok(out)
    }

    /// Copies `size` bytes at `offset` of `buf` back to the host (allocates a staging
    /// buffer: for tests and one-off reads; the model keeps its own).
    pub async fn read(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.staging("read-back", size);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, size.next_multiple_of(4));
        self.queue.submit([enc.finish()]);
        self.map_read(&staging, size).await
    }

    pub async fn read_f32(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_slice(&self.read(buf, 0, n as u64 * 4).await?).to_vec())
    }

    pub async fn read_u32(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::cast_slice(&self.read(buf, 0, n as u64 * 4).await?).to_vec())
    }

    /// Records `dispatches` into one compute pass and submits it.
    pub fn run(&self, dispatches: &[&Dispatch], n_rows: u32) {
        self.run_at(dispatches, n_rows, 0)
    }

    /// `run` for a step whose first token is at position `pos0` (sizes split-K grids).
    pub fn run_at(&self, dispatches: &[&Dispatch], n_rows: u32, pos0: u32) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.encode(&mut pass, n_rows, pos0, self.limits.max_compute_workgroups_per_dimension);
            }
        }
        self.queue.submit([enc.finish()]);
    }
}

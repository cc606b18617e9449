//! A model resident on the GPU: weights uploaded once, activations and KV cache allocated
//! once, and every dispatch of a forward step bound once at load (`program::build` walks
//! the layer plan). A step is then: write the step uniform (T, pos0), record the prepared
//! dispatches into one compute pass, submit. Routing decisions never leave the GPU; the
//! host reads back logits or one token id.

use super::Gpu;
use super::kernels::Dispatch;
use super::paging::{PagedLayer, PagingStats, Residency};
use super::program::Programs;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Progress;
use crate::route::RouteTrace;
use crate::tensor::DType;
use crate::weights::WeightSource;
use std::sync::Arc;
use wgpu::Buffer;

/// Prefill chunk limit: bounds activation memory whatever the prompt length.
pub const MAX_CHUNK: usize = 256;

pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    /// KV cache length in positions.
    pub ctx: usize,
    /// Most tokens one step takes.
    pub max_rows: usize,
    /// Tokens already in the KV cache.
    pub pos: usize,
    step: Buffer,
    tokens: Buffer,
    /// [layers, experts] how often each expert was chosen since the last read.
    hist: Buffer,
    logits: Buffer,
    /// [routing trace: trace_bytes][logits or token]: what a step reads back, in one map.
    staging: Buffer,
    trace_bytes: u64,
    /// Each MoE layer's router ids and its k.
    route_ids: Vec<(Buffer, usize)>,
    /// Every token's chosen experts since recording began (`record_routes`): each step
    /// copies its layers' ids beside what it reads back anyway, so recording adds no
    /// read-back to decoding (a prefill chunk that reads nothing else reads its trace).
    pub routes: Option<RouteTrace>,
    programs: Programs,
    /// Keeps weights, activations and caches alive (bind groups reference them).
    _buffers: Vec<Buffer>,
    /// Bytes of weights uploaded.
    pub weight_bytes: u64,
    /// GPU bytes the model allocated, as `Gpu::allocations` counts them.
    pub gpu_bytes: u64,
    /// Paged MoE layers (empty when every expert is resident), their ids read-back, the
    /// residency asked for, the counters, each paged layer's prediction for the current
    /// step (lookahead), and the step count that orders uses for LRU.
    paged: Vec<PagedLayer>,
    page_staging: Option<Buffer>,
    residency: Residency,
    pub paging: PagingStats,
    predictions: Vec<Option<Vec<u32>>>,
    tick: u64,
    /// Every paged layer's table names all its experts (src/gpu/paging.rs `complete`).
    tables_full: bool,
    /// The token id the last argmax left in the token buffer, not yet fed.
    on_gpu: Option<u32>,
}

/// What a step should produce besides extending the KV cache.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Want {
    Nothing,
    /// The most likely next token, chosen on the GPU (4 bytes read back).
    Token,
    /// The next token's logits (one vocabulary row read back), for sampling.
    Logits,
}

/// What a step produced.
#[derive(Debug)]
pub enum Pred {
    None,
    Token(u32),
    Logits(Vec<f32>),
}

/// How the step's matmuls are run: GEMM tiles for prompts, GEMV rows for few tokens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Path {
    Prefill,
    Decode,
}

/// Below this many rows a step runs the GEMV kernels (one weight pass per row beats a
/// mostly empty 32-row tile), as llama.cpp switches to mat-vec for batches up to 8.
pub const GEMM_MIN_ROWS: usize = 8;

impl Path {
    pub fn for_rows(n: usize) -> Path {
        if n >= GEMM_MIN_ROWS { Path::Prefill } else { Path::Decode }
    }
}

impl GpuModel {
    /// Uploads the model and prepares every dispatch. `ctx` is the KV cache length.
    /// `kv`: the KV cache's storage, F32 or F16 (packed two per u32).
    /// `res`: how many experts stay on the GPU (all by default; src/gpu/paging.rs).
    pub async fn new(
        gpu: Arc<Gpu>,
        src: &dyn WeightSource,
        (ctx, kv): (usize, DType),
        res: &Residency,
        progress: Option<&Progress>,
    ) -> Result<Self> {
        let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let built = super::program::build(&gpu, src, (ctx, kv), res, progress);
        let oom_err = oom.pop().await;
        let val_err = validation.pop().await;
        let model = Self::from_built(gpu, src.config().clone(), ctx, res, built?);
        if let Some(e) = oom_err {
            return Err(Error::gpu(format!("out of GPU memory while loading the model: {e}")));
        }
        if let Some(e) = val_err {
            return Err(Error::gpu(format!("loading the model failed: {e}")));
        }
        Ok(model)
    }

    fn from_built(gpu: Arc<Gpu>, cfg: ModelConfig, ctx: usize, res: &Residency, b: super::program::Built) -> Self {
        GpuModel {
            cfg,
            ctx,
            max_rows: b.max_rows,
            pos: 0,
            step: b.step,
            tokens: b.tokens,
            hist: b.hist,
            logits: b.logits,
            staging: b.staging,
            trace_bytes: b.trace_bytes,
            route_ids: b.route_ids,
            routes: None,
            programs: b.programs,
            on_gpu: None,
            _buffers: b.buffers,
            weight_bytes: b.weight_bytes,
            gpu_bytes: b.counted_bytes,
            predictions: vec![None; b.paged.len()],
            paged: b.paged,
            page_staging: b.page_staging,
            residency: res.clone(),
            paging: PagingStats::default(),
            tick: 0,
            tables_full: false,
            gpu,
        }
    }

    /// Whether some MoE layer keeps fewer experts on the GPU than it has.
    pub fn is_paged(&self) -> bool {
        !self.paged.is_empty()
    }

    /// Lazily loaded experts (src/lazy.rs): how many were fetched, and their bytes.
    pub fn lazy_fetched(&self) -> Option<(u64, u64)> {
        self.paged.iter().find_map(|l| match &l.host {
            super::paging::HostExperts::Lazy(src) => Some(src.fetched.get()),
            super::paging::HostExperts::Memory(_) | super::paging::HostExperts::Dropped => None,
        })
    }

    /// A background fill of lazily loaded experts: fetches and uploads up to `max` experts
    /// not yet resident into the free slots of pools that hold every expert (no eviction,
    /// so nothing a step needs moves). Returns how many such experts are still missing;
    /// at 0 with every layer complete, steps run without read-backs.
    pub async fn fill_experts(&mut self, max: usize) -> Result<usize> {
        let mut left = max;
        for l in self.paged.iter_mut() {
            let ups = l.fill(left);
            left -= ups.len();
            if !ups.is_empty() {
                l.write(&self.gpu, &ups, None).await?;
            }
        }
        Ok(self.paged.iter().map(|l| l.unfilled()).sum())
    }

    /// Whether every paged layer holds all its experts (steps then run without read-backs).
    pub fn all_resident(&self) -> bool {
        self.paged.iter().all(|l| l.complete())
    }

    /// Slots per paged layer ((plan layer, slots, experts)).
    pub fn residency(&self) -> Vec<(usize, usize, usize)> {
        self.paged.iter().map(|p| (p.layer, p.slots, p.experts)).collect()
    }

    pub fn reset(&mut self) {
        self.set_pos(0);
    }

    /// How often each expert of each layer was chosen since the last call ([layer][expert];
    /// empty for a dense model), then zeroes the counts. One small read, outside any step.
    pub async fn take_expert_counts(&mut self) -> Result<Vec<Vec<u32>>> {
        let (l, e) = (self.cfg.layers, self.cfg.max_experts());
        if !self.cfg.is_moe() {
            return Ok(Vec::new());
        }
        let raw = self.gpu.read(&self.hist, 0, (l * e * 4) as u64).await?;
        self.gpu.write(&self.hist, 0, &vec![0u8; l * e * 4]);
        let v: &[u32] = bytemuck::cast_slice(&raw);
        Ok(v.chunks(e).map(|c| c.to_vec()).collect())
    }

    /// Forgets everything in the KV cache from `pos` on (the cache keeps its contents, but
    /// attention never reads past the current position).
    pub fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.pos);
        self.on_gpu = None;
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::input("no tokens given"));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::input(format!("token id {t} is outside the vocabulary of {}", self.cfg.vocab)));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(Error::input(format!(
                "{} tokens after {} already cached exceed the context length {}",
                tokens.len(),
                self.pos,
                self.ctx
            )));
        }
        Ok(())
    }

    /// Records and submits one step of `n` rows: the body for `path`, then `head`, then a
    /// copy of what the caller reads back into the staging buffer. `tokens`, if given, are
    /// uploaded first; otherwise the token buffer already holds the previous argmax.
    /// `from`: the first body dispatch to record (a paged step has run those before it).
    fn submit_step(&self, tokens: Option<&[u32]>, n: usize, path: Path, head: Head, from: usize) -> Readback {
        let g = &self.gpu;
        if from == 0 {
            self.write_step(tokens, n);
        }
        let p = &self.programs;
        let body = match path {
            Path::Prefill => &p.body_prefill,
            Path::Decode => &p.body_decode,
        };
        let vocab_bytes = (self.cfg.vocab * 4) as u64;
        let (head, argmax, read): (&[Dispatch], bool, Option<(&Buffer, u64)>) = match (head, path) {
            (Head::None, _) => (&[], false, None),
            (Head::AllLogits, Path::Prefill) => {
                (&p.head_all_prefill, false, Some((&self.logits, n as u64 * vocab_bytes)))
            }
            (Head::AllLogits, Path::Decode) => {
                (&p.head_all_decode, false, Some((&self.logits, n as u64 * vocab_bytes)))
            }
            (Head::LastLogits, _) => (&p.head_last, false, Some((&self.logits, vocab_bytes))),
            (Head::NextToken, _) => (&p.head_last, true, Some((&self.tokens, 4))),
        };
        let mut enc = g.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let max = g.limits.max_compute_workgroups_per_dimension;
            for d in body[from..].iter().chain(head).chain(argmax.then_some(&p.argmax)) {
                d.encode(&mut pass, n as u32, self.pos as u32, max);
            }
        }
        let payload = read.map_or(0, |(_, b)| b.next_multiple_of(4));
        if let Some((src, _)) = read {
            enc.copy_buffer_to_buffer(src, 0, &self.staging, self.trace_bytes, payload);
        }
        // The routing trace ends where the payload starts: [layer 0 ids [n, k0]][layer 1 ...].
        let trace = if self.routes.is_some() {
            (self.route_ids.iter().map(|(_, k)| n * k * 4).sum::<usize>() as u64).next_multiple_of(8)
        } else {
            0
        };
        let mut at = self.trace_bytes - trace;
        for (ids, k) in self.routes.as_ref().map_or(&[][..], |_| &self.route_ids[..]) {
            let bytes = (n * k * 4) as u64;
            enc.copy_buffer_to_buffer(ids, 0, &self.staging, at, bytes);
            at += bytes;
        }
        g.queue.submit([enc.finish()]);
        Readback { n, trace, payload }
    }

    fn write_step(&self, tokens: Option<&[u32]>, n: usize) {
        let g = &self.gpu;
        if let Some(t) = tokens {
            g.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(t));
        }
        g.queue.write_buffer(&self.step, 0, bytemuck::cast_slice(&[n as u32, self.pos as u32, 0, 0]));
    }

    /// One step: in one submission when every expert is resident; else stopping after each
    /// paged layer's router for its ids (src/gpu/paging.rs), uploading what is missing,
    /// and running its experts in as many rounds as its slots need.
    async fn run_step(&mut self, tokens: Option<&[u32]>, n: usize, path: Path, head: Head) -> Result<Readback> {
        if self.paged.is_empty() {
            return Ok(self.submit_step(tokens, n, path, head, 0));
        }
        // Lazily loaded layers whose pools now hold every expert: their full tables go up
        // once, and steps run in one submission again, with no read-back.
        if self.paged.iter().all(|l| l.complete()) {
            if !self.tables_full {
                self.paged.iter().for_each(|l| l.write_tables(&self.gpu, l.full_table()));
                self.tables_full = true;
            }
            return Ok(self.submit_step(tokens, n, path, head, 0));
        }
        self.tables_full = false;
        let g = self.gpu.clone();
        let staging = self.page_staging.clone().ok_or_else(|| Error::gpu("paging read-back buffer"))?;
        self.write_step(tokens, n);
        self.tick += 1;
        self.paging.steps += 1;
        self.paging.tokens += n as u64;
        let (policy, tick) = (self.residency.policy, self.tick);
        let sites = match path {
            Path::Prefill => self.programs.sites_prefill.clone(),
            Path::Decode => self.programs.sites_decode.clone(),
        };
        let max = g.limits.max_compute_workgroups_per_dimension;
        let pos = self.pos as u32;
        let mut from = 0;
        for site in &sites {
            let body = match path {
                Path::Prefill => &self.programs.body_prefill,
                Path::Decode => &self.programs.body_decode,
            };
            let encode = |range: std::ops::Range<usize>, copies: &[(&Buffer, u64, u64)]| {
                let mut enc = g.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for d in &body[range] {
                        d.encode(&mut pass, n as u32, pos, max);
                    }
                }
                for &(src, at, bytes) in copies {
                    enc.copy_buffer_to_buffer(src, 0, &staging, at, bytes);
                }
                g.queue.submit([enc.finish()]);
            };
            // Up to the router: its ids (and the lookahead's) come back.
            let id_bytes = (n * site.k * 4) as u64;
            let mut copies = vec![(&site.ids, 0, id_bytes)];
            if let Some((_, pids, k2)) = &site.predict {
                copies.push((pids, id_bytes, (n * k2 * 4) as u64));
            }
            encode(from..site.split, &copies);
            let t0 = web_time::Instant::now();
            let total: u64 = copies.iter().map(|c| c.2).sum();
            let raw = g.map_read_range(&staging, 0, total).await?;
            self.paging.sync_seconds += t0.elapsed().as_secs_f64();
            let words: &[u32] = bytemuck::cast_slice(&raw);
            let ids = &words[..n * site.k];
            if let Some(pred) = self.predictions[site.paged].take() {
                let mut needed: Vec<u32> = ids.to_vec();
                needed.sort_unstable();
                needed.dedup();
                self.paging.needed_predictable += needed.len() as u64;
                self.paging.predicted_needed += needed.iter().filter(|e| pred.contains(e)).count() as u64;
            }
            let layer = &mut self.paged[site.paged];
            let rounds = layer.plan(ids, tick, policy, &mut self.paging)?;
            for (i, round) in rounds.iter().enumerate() {
                if let Err(e) = layer.write(&g, &round.uploads, Some(&round.table)).await {
                    // The later rounds' uploads were planned but will not happen either.
                    rounds[i..].iter().for_each(|r| layer.forget(&r.uploads));
                    return Err(e);
                }
                if i + 1 < rounds.len() {
                    encode(site.experts.clone(), &[]);
                }
            }
            // The next layer's predicted experts go up before this layer's experts run.
            if let Some((at, _, _)) = &site.predict {
                let pred: Vec<u32> = words[n * site.k..].to_vec();
                let next = &mut self.paged[*at];
                let ups = next.prefetch(&pred, tick, policy, &mut self.paging)?;
                next.write(&g, &ups, None).await?;
                self.predictions[*at] = Some(pred);
            }
            from = site.split;
        }
        Ok(self.submit_step(None, n, path, head, from))
    }

    /// Maps what `submit_step` copied (nothing when it copied nothing), records the
    /// routing trace, and returns the payload.
    async fn read_back(&mut self, r: Readback) -> Result<Vec<u8>> {
        if r.trace + r.payload == 0 {
            return Ok(Vec::new());
        }
        let start = self.trace_bytes - r.trace;
        let raw = self.gpu.map_read_range(&self.staging, start, r.trace + r.payload).await?;
        if let Some(trace) = self.routes.as_mut() {
            let ids: &[u32] = bytemuck::cast_slice(&raw[..(r.trace as usize) & !3]);
            let mut at = 0;
            for l in trace.layers.iter_mut() {
                l.ids.extend_from_slice(&ids[at..at + r.n * l.k]);
                at += r.n * l.k;
            }
        }
        Ok(raw[r.trace as usize..].to_vec())
    }

    /// Logits [T, vocab] for `tokens` appended at the current position. Prompts longer
    /// than `chunk` (at most `max_rows`) run as several steps; a chunk of 1 uses the
    /// decode kernels throughout.
    pub async fn logits(&mut self, tokens: &[u32], chunk: usize) -> Result<Vec<f32>> {
        self.gpu.check_errors()?;
        self.check_tokens(tokens)?;
        let chunk = chunk.clamp(1, self.max_rows);
        let vocab = self.cfg.vocab;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for part in tokens.chunks(chunk) {
            let path = Path::for_rows(part.len());
            let r = self.run_step(Some(part), part.len(), path, Head::AllLogits).await?;
            self.pos += part.len();
            self.on_gpu = None;
            let raw = self.read_back(r).await?;
            out.extend_from_slice(bytemuck::cast_slice::<u8, f32>(&raw[..part.len() * vocab * 4]));
        }
        Ok(out)
    }

    /// Appends `tokens` to the sequence (in steps of at most `chunk`) and returns what
    /// `want` asks for about the token after them. Feeding the single token that the last
    /// `Want::Token` step chose skips its upload: it is already in the token buffer.
    pub async fn feed(&mut self, tokens: &[u32], chunk: usize, want: Want) -> Result<Pred> {
        self.gpu.check_errors()?;
        self.check_tokens(tokens)?;
        let chunk = chunk.clamp(1, self.max_rows);
        let parts: Vec<&[u32]> = tokens.chunks(chunk).collect();
        let mut raw = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let path = Path::for_rows(part.len());
            let head = match (i + 1 == parts.len(), want) {
                (false, _) | (true, Want::Nothing) => Head::None,
                (true, Want::Token) => Head::NextToken,
                (true, Want::Logits) => Head::LastLogits,
            };
            let upload = if *part == [self.on_gpu.unwrap_or(u32::MAX)] { None } else { Some(*part) };
            let r = self.run_step(upload, part.len(), path, head).await?;
            self.pos += part.len();
            self.on_gpu = None;
            raw = self.read_back(r).await?;
        }
        Ok(match want {
            Want::Nothing => Pred::None,
            Want::Token => {
                let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                self.on_gpu = Some(id);
                Pred::Token(id)
            }
            Want::Logits => Pred::Logits(bytemuck::cast_slice::<u8, f32>(&raw[..self.cfg.vocab * 4]).to_vec()),
        })
    }
}

/// What a submitted step left in the staging buffer: its routing trace (`trace` bytes,
/// ending at `trace_bytes`) and the payload after it.
#[derive(Clone, Copy)]
struct Readback {
    n: usize,
    trace: u64,
    payload: u64,
}

/// What follows the layers in a step.
#[derive(Clone, Copy)]
enum Head {
    None,
    AllLogits,
    LastLogits,
    NextToken,
}

impl GpuModel {
    /// Runs one step over `tokens` (prefill kernels for 8 or more, else decode kernels) and
    /// returns (kernel, seconds) for every dispatch in order: GPU time from timestamp
    /// queries where the adapter has them, else wall time with a wait after each kernel.
    /// The bool says which (true: timestamps). Each entry: (kernel, seconds, weight bytes).
    pub async fn profile_step(&mut self, tokens: &[u32]) -> Result<(Vec<(&'static str, f64, u64)>, bool)> {
        self.check_tokens(tokens)?;
        if !self.paged.is_empty() {
            return Err(Error::input("profiling needs every expert resident (no --resident-experts or --gpu-memory)"));
        }
        let n = tokens.len();
        let g = self.gpu.clone();
        g.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
        g.queue.write_buffer(&self.step, 0, bytemuck::cast_slice(&[n as u32, self.pos as u32, 0, 0]));
        let p = &self.programs;
        let (body, head) = match Path::for_rows(n) {
            Path::Decode => (&p.body_decode, &p.head_all_decode),
            Path::Prefill => (&p.body_prefill, &p.head_all_prefill),
        };
        let all: Vec<&Dispatch> = body.iter().chain(head).collect();
        let max = g.limits.max_compute_workgroups_per_dimension;
        let mut out = Vec::with_capacity(all.len());
        let timestamps = g.features.contains(wgpu::Features::TIMESTAMP_QUERY);
        if timestamps {
            let count = (2 * all.len()) as u32;
            let qs = g.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let resolve = g.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: count as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = g.device.create_command_encoder(&Default::default());
            for (i, d) in all.iter().enumerate() {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &qs,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.encode(&mut pass, n as u32, self.pos as u32, max);
            }
            enc.resolve_query_set(&qs, 0..count, &resolve, 0);
            g.queue.submit([enc.finish()]);
            let raw = g.read(&resolve, 0, count as u64 * 8).await?;
            let ticks: &[u64] = bytemuck::cast_slice(&raw);
            let period = g.queue.get_timestamp_period() as f64 * 1e-9;
            for (i, d) in all.iter().enumerate() {
                out.push((
                    d.shader.name(),
                    ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period,
                    d.weight_bytes,
                ));
            }
        } else {
            let probe = g.storage("profile probe", 4)?;
            for d in &all {
                let t = web_time::Instant::now();
                let mut enc = g.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    d.encode(&mut pass, n as u32, self.pos as u32, max);
                }
                g.queue.submit([enc.finish()]);
                g.read(&probe, 0, 4).await?;
                out.push((d.shader.name(), t.elapsed().as_secs_f64(), d.weight_bytes));
            }
        }
        self.pos += n;
        self.on_gpu = None;
        Ok((out, timestamps))
    }
}

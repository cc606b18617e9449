//! `webmoe bench` (and the browser's `engine.bench()`): prefill and decode tokens/s, time to
//! first token, GPU memory, medians over repetitions; with `kernels`, a per-kernel time
//! breakdown and each decode GEMV's effective bandwidth against a plain copy kernel on the
//! same adapter (a roofline). Absolute numbers depend on the device; compare ratios from
//! one run.

use crate::engine::{Engine, Event, GenerateOptions};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::kernels::ops;
use crate::gpu::model::Want;
use crate::gpu::paging::PagingStats;
use serde::Serialize;
use std::collections::BTreeMap;
use web_time::Instant;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub kernels: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { prompt_tokens: 128, gen_tokens: 64, reps: 5, kernels: false }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat { median, min: v.first().copied().unwrap_or(0.0), max: v.last().copied().unwrap_or(0.0) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub calls: usize,
    pub seconds: f64,
    /// Weight bytes the calls read, and what that is per second.
    pub weight_bytes: u64,
    pub gb_per_s: Option<f64>,
    /// gb_per_s as a fraction of the copy kernel's bandwidth.
    pub of_copy: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    /// Whether the matmul kernels reduced with subgroup operations.
    pub subgroups: bool,
    /// Threads per group of GEMV rows (the adapter's GEMV shape).
    pub gemv_lanes: u32,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub prefill_tokens_per_s: Stat,
    pub decode_tokens_per_s: Stat,
    pub time_to_first_token_s: Stat,
    /// Bytes of GPU buffers the engine created (weights, activations, KV cache, staging).
    pub gpu_bytes: u64,
    pub gpu_buffers: u64,
    /// Buffers created during the timed repetitions (should be 0: nothing per token).
    pub buffers_created_while_generating: u64,
    pub copy_gb_per_s: Option<f64>,
    /// Kernel times from GPU timestamps (else wall time around each kernel).
    pub timestamps: bool,
    pub prefill_kernels: Vec<KernelRow>,
    pub decode_kernels: Vec<KernelRow>,
}

/// The achievable streaming bandwidth: a vec4 copy of `bytes` (read + write), best of 5.
pub async fn copy_bandwidth(g: &Gpu, bytes: u64) -> Result<f64> {
    let bytes = bytes.min(g.limits.max_storage_buffer_binding_size).min(g.limits.max_buffer_size) / 16 * 16;
    let src = g.storage("copy source", bytes)?;
    let dst = g.storage("copy destination", bytes)?;
    let d = ops::copy(g, &src, &dst, (bytes / 16) as usize)?;
    let probe = g.storage("copy probe", 4)?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        g.run(&[&d], 1);
        g.read(&probe, 0, 4).await?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * bytes as f64 / best / 1e9)
}

fn rows(prof: &[(&'static str, f64, u64)], copy: Option<f64>, tokens: usize) -> Vec<KernelRow> {
    let mut agg: BTreeMap<&str, (usize, f64, u64)> = BTreeMap::new();
    for (k, t, b) in prof {
        let e = agg.entry(k).or_default();
        e.0 += 1;
        e.1 += t;
        e.2 += b;
    }
    let mut v: Vec<KernelRow> = agg
        .into_iter()
        .map(|(k, (calls, seconds, bytes))| {
            // Weights are read once per token on the GEMV path (once per tile row for GEMM).
            let bytes = if tokens < crate::gpu::model::GEMM_MIN_ROWS { bytes * tokens as u64 } else { bytes };
            let gb = (bytes > 0 && seconds > 0.0).then(|| bytes as f64 / seconds / 1e9);
            KernelRow {
                kernel: k.to_string(),
                calls,
                seconds,
                weight_bytes: bytes,
                gb_per_s: gb,
                of_copy: gb.zip(copy).map(|(a, c)| a / c),
            }
        })
        .collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    v
}

/// Benchmarks a loaded engine (GPU).
pub async fn run(engine: &mut Engine, opts: &BenchOptions) -> Result<BenchReport> {
    let vocab = engine.vocab as u32;
    let adapter = engine.device_name();
    if opts.prompt_tokens == 0 || opts.gen_tokens < 2 || opts.reps == 0 {
        return Err(Error::input("bench needs at least 1 prompt token, 2 generated tokens and 1 repetition"));
    }
    if opts.prompt_tokens + opts.gen_tokens > engine.context {
        return Err(Error::input(format!(
            "{} + {} tokens exceed the context of {}",
            opts.prompt_tokens, opts.gen_tokens, engine.context
        )));
    }
    let gpu = engine.gpu_model().map(|m| m.gpu.clone()).ok_or_else(|| Error::input("bench runs the GPU kernels"))?;
    // A fixed, varied prompt (ids spread over the vocabulary).
    let prompt: Vec<u32> = (0..opts.prompt_tokens as u32).map(|i| 1 + (i * 7919) % (vocab - 1)).collect();
    let gopts = GenerateOptions { max_tokens: opts.gen_tokens, ignore_eos: true, ..Default::default() };
    // Warm-up: compiles pipelines, touches every buffer.
    engine.reset();
    engine
        .generate(&prompt[..prompt.len().min(8)], &GenerateOptions { max_tokens: 2, ..gopts.clone() }, |_| true)
        .await?;
    let before = gpu.allocations().0;
    let (mut pre, mut dec, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        engine.reset();
        let t0 = Instant::now();
        let mut first: Option<Instant> = None;
        let g = engine
            .generate(&prompt, &gopts, |ev| {
                if matches!(ev, Event::Token(_)) && first.is_none() {
                    first = Some(Instant::now());
                }
                true
            })
            .await?;
        let t1 = Instant::now();
        let f = first.unwrap_or(t1);
        let tt = (f - t0).as_secs_f64();
        ttft.push(tt);
        pre.push(opts.prompt_tokens as f64 / tt);
        dec.push((g.tokens.len() - 1) as f64 / (t1 - f).as_secs_f64());
    }
    let created = gpu.allocations().0 - before;
    let (mut copy_bw, mut timestamps, mut prefill_kernels, mut decode_kernels) = (None, false, Vec::new(), Vec::new());
    if opts.kernels {
        let bw = copy_bandwidth(&gpu, 256 << 20).await?;
        copy_bw = Some(bw);
        engine.reset();
        let m = engine.gpu_model().ok_or_else(|| Error::input("bench runs the GPU kernels"))?;
        let (p, ts) = m.profile_step(&prompt).await?;
        let (d, _) = m.profile_step(&prompt[..1]).await?;
        timestamps = ts;
        prefill_kernels = rows(&p, Some(bw), prompt.len());
        decode_kernels = rows(&d, Some(bw), 1);
        engine.reset();
    }
    let (buffers, bytes) = gpu.allocations();
    Ok(BenchReport {
        adapter,
        subgroups: gpu.subgroups,
        gemv_lanes: gpu.lanes,
        prompt_tokens: opts.prompt_tokens,
        gen_tokens: opts.gen_tokens,
        reps: opts.reps,
        prefill_tokens_per_s: Stat::of(pre),
        decode_tokens_per_s: Stat::of(dec),
        time_to_first_token_s: Stat::of(ttft),
        gpu_bytes: bytes,
        gpu_buffers: buffers,
        buffers_created_while_generating: created,
        copy_gb_per_s: copy_bw,
        timestamps,
        prefill_kernels,
        decode_kernels,
    })
}

/// One row of the expert-residency table (`webmoe bench --residency`): decode with a
/// residency and policy, and what paging cost per generated token.
#[derive(Clone, Debug, Serialize)]
pub struct PagingRow {
    /// Slots per MoE layer and the experts there are.
    pub resident: usize,
    pub experts: usize,
    /// "all" (nothing paged), "none" (no reuse), "lru", "lru+prefetch".
    pub mode: String,
    pub decode_tokens_per_s: Stat,
    /// Over the decode steps: needed experts found resident; predicted among needed.
    pub hit_rate: f64,
    pub prefetch_recall: Option<f64>,
    pub mb_per_token: f64,
    pub host_sync_ms_per_token: f64,
    pub rounds_per_token: f64,
    /// Decode rate the upload bytes alone allow over a 16 and a 32 GB/s link.
    pub pcie16_tokens_per_s: Option<f64>,
    pub pcie32_tokens_per_s: Option<f64>,
}

/// One decode repetition for the residency table: `tokens[..prompt]` as the prompt
/// (untimed), then each of the next `gen_tokens` fed one step at a time (the same inputs
/// for every residency: text, not each run's own greedy choices, which a random-weight
/// model repeats). Returns the decode rate and the paging counters of the decode steps.
pub async fn decode_rep(engine: &mut Engine, tokens: &[u32], prompt: usize) -> Result<(f64, PagingStats)> {
    if prompt == 0 || tokens.len() <= prompt || tokens.len() > engine.context {
        return Err(Error::input(
            "bench: the prompt and the decoded tokens must fit the context, with 1 or more of each",
        ));
    }
    engine.reset();
    let m = engine.gpu_model().ok_or_else(|| Error::input("bench runs the GPU kernels"))?;
    let chunk = m.max_rows;
    m.feed(&tokens[..prompt], chunk, Want::Token).await?;
    std::mem::take(&mut m.paging);
    let t0 = Instant::now();
    for &t in &tokens[prompt..] {
        m.feed(&[t], 1, Want::Token).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = std::mem::take(&mut m.paging);
    engine.reset();
    Ok(((tokens.len() - prompt) as f64 / secs, s))
}

/// A residency table row from its repetitions (`decode_rep`).
pub fn paging_row(engine: &mut Engine, mode: &str, reps: &[(f64, PagingStats)]) -> Result<PagingRow> {
    let m = engine.gpu_model().ok_or_else(|| Error::input("bench runs the GPU kernels"))?;
    let experts = m.cfg.max_experts();
    let resident = m.residency().iter().map(|r| r.1).max().unwrap_or(experts);
    let mut t = PagingStats::default();
    for (_, s) in reps {
        t.hits += s.hits;
        t.misses += s.misses;
        t.upload_bytes += s.upload_bytes;
        t.predicted_needed += s.predicted_needed;
        t.needed_predictable += s.needed_predictable;
        t.rounds += s.rounds;
        t.sync_seconds += s.sync_seconds;
        t.tokens += s.tokens;
    }
    let tokens = t.tokens.max(1) as f64;
    let bytes = t.upload_bytes as f64 / tokens;
    let link = |gb: f64| (bytes > 0.0).then(|| gb * 1e9 / bytes);
    Ok(PagingRow {
        resident,
        experts,
        mode: mode.to_string(),
        decode_tokens_per_s: Stat::of(reps.iter().map(|r| r.0).collect()),
        hit_rate: if m.is_paged() { t.hit_rate() } else { 1.0 },
        prefetch_recall: (t.needed_predictable > 0).then(|| t.recall()),
        mb_per_token: bytes / 1e6,
        host_sync_ms_per_token: 1e3 * t.sync_seconds / tokens,
        rounds_per_token: t.rounds as f64 / tokens,
        pcie16_tokens_per_s: link(16.0),
        pcie32_tokens_per_s: link(32.0),
    })
}

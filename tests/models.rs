//! End to end: every fixture model's logits, computed by the WGSL kernels (prefill GEMM
//! path, decode GEMV path, and a mix) and by the CPU reference, against Hugging Face
//! transformers (tests/fixtures/generate.py), plus greedy generation token for token.

mod common;

use common::*;
use webmoe::engine::{Device, Engine, EngineOptions, Event, Finish, GenerateOptions};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};
use webmoe::sampling::SamplingParams;
use webmoe::tensor::DType;

/// The acceptance bound: max |Δ| against transformers at every position.
const TOL: f32 = 1e-3;
/// The bound for the GPU against the CPU reference when both keep an f16 KV cache.
const KV16_TOL: f32 = 1e-2;

fn engine(files: &ModelFiles, device: Device, chunk: usize) -> Engine {
    let opts = EngineOptions { device, prefill_chunk: chunk, ..Default::default() };
    block_on(Engine::from_files(files, opts, Some(gpu()))).expect("engine")
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, ..Default::default() }
}

fn max_diff(got: &[f32], want: &[Vec<f32>]) -> f32 {
    let flat: Vec<f32> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), flat.len(), "logits shape");
    got.iter().zip(&flat).map(|(a, b)| if a.is_nan() { f32::INFINITY } else { (a - b).abs() }).fold(0.0, f32::max)
}

fn check_logits(device: Device, chunk: usize) {
    let mut report = Vec::new();
    for dir in fixtures() {
        let r = reference(&dir);
        let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
        let mut e = engine(&files, device, chunk);
        let got = block_on(e.logits(&r.tokens)).expect("logits");
        let d = max_diff(&got, &r.logits);
        report.push(format!("{:40} max|Δ| {d:.2e}", dir.file_name().unwrap().to_string_lossy()));
        // Running again must give the same answer (state is reset per call).
        let again = block_on(e.logits(&r.tokens)).expect("logits");
        assert_eq!(got, again, "{}: a second run differs", dir.display());
        assert!(d <= TOL, "{}: max |Δ| {d} > {TOL} ({device:?}, chunk {chunk})", dir.display());
    }
    println!("{device:?} chunk {chunk}:\n  {}", report.join("\n  "));
}

#[test]
fn gpu_prefill_matches_transformers() {
    check_logits(Device::Gpu, 256);
}

#[test]
fn gpu_decode_matches_transformers() {
    check_logits(Device::Gpu, 1);
}

#[test]
fn gpu_chunked_prefill_matches_transformers() {
    // 12 tokens as 9 (GEMM kernels) + 3 (GEMV kernels over several rows).
    check_logits(Device::Gpu, 9);
}

#[test]
fn cpu_reference_matches_transformers() {
    check_logits(Device::Cpu, 256);
}

#[test]
fn greedy_generation_matches_transformers() {
    for dir in fixtures() {
        let r = reference(&dir);
        if r.greedy_tokens.is_empty() {
            continue;
        }
        let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
        for device in [Device::Gpu, Device::Cpu] {
            let mut e = engine(&files, device, 256);
            let mut streamed = Vec::new();
            let opts = greedy(r.greedy_tokens.len());
            let got = block_on(e.generate(&r.greedy_prompt, &opts, |ev| {
                if let Event::Token(t) = ev {
                    streamed.push(t);
                }
                true
            }))
            .expect("generate");
            assert_eq!(got.tokens, r.greedy_tokens, "{} on {device:?}", dir.display());
            assert_eq!(streamed, got.tokens);
            assert_eq!(got.finish, Finish::Length);
        }
    }
}

#[test]
fn generation_stops_when_asked() {
    let dir = &fixtures_dir().join("mixtral-e4-top1-mha");
    let r = reference(dir);
    let files = block_on(ModelFiles::load(&DirSource::new(dir))).expect("load");
    let mut e = engine(&files, Device::Gpu, 256);
    let got = block_on(e.generate(&r.greedy_prompt, &greedy(8), |_| false)).expect("generate");
    assert_eq!((got.tokens.len(), got.finish), (1, Finish::Cancelled));
}

#[test]
fn bad_requests_are_errors() {
    let dir = &fixtures_dir().join("mixtral-e4-top1-mha");
    let files = block_on(ModelFiles::load(&DirSource::new(dir))).expect("load");
    for device in [Device::Gpu, Device::Cpu] {
        let opts = EngineOptions { device, context: Some(8), ..Default::default() };
        let mut e = block_on(Engine::from_files(&files, opts, Some(gpu()))).expect("engine");
        let long: Vec<u32> = (0..9).collect();
        let err = block_on(e.logits(&long)).unwrap_err().to_string();
        assert!(err.contains("context"), "{device:?}: {err}");
        let err = block_on(e.logits(&[1, 256])).unwrap_err().to_string();
        assert!(err.contains("token id 256") && err.contains("vocabulary"), "{device:?}: {err}");
        let err = block_on(e.generate(&[1; 8], &greedy(7), |_| true)).unwrap_err().to_string();
        assert!(err.contains("context"), "{device:?}: {err}");
        // A prompt that fits stops at the end of the context rather than failing.
        let g = block_on(e.generate(&[1, 2, 3], &greedy(100), |_| true)).expect("generate");
        assert_eq!((g.tokens.len(), g.finish), (6, Finish::Length));
        // The engine is still usable after refusing.
        assert_eq!(block_on(e.logits(&[1, 2])).expect("logits").len(), 2 * 256);
    }
    let opts = EngineOptions { device: Device::Gpu, context: Some(1 << 20), ..Default::default() };
    let err = block_on(Engine::from_files(&files, opts, Some(gpu()))).err().expect("too long").to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

/// A tensor larger than the adapter allows per binding is refused by name, not by a
/// validation panic deep inside wgpu; the embedding and LM head, which can be cut into row
/// ranges, are (and the model still computes the same logits).
#[test]
fn a_tensor_that_does_not_fit_is_named() {
    let limited = |dir: &std::path::Path, bytes: u64| {
        let files = block_on(ModelFiles::load(&DirSource::new(model_path(dir)))).expect("load");
        let mut g = fresh_gpu();
        g.limits.max_storage_buffer_binding_size = bytes;
        block_on(Engine::from_files(&files, EngineOptions::default(), Some(std::sync::Arc::new(g))))
    };
    // 32 KiB: the 64 KiB embedding goes in row ranges, but the 48 KiB fused q|k|v cannot.
    let err = limited(&fixtures_dir().join("mixtral-e4-top1-mha"), 32 << 10).err().expect("must not fit").to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight")
            && err.contains("49152 bytes")
            && err.contains("max_storage_buffer_binding_size"),
        "{err}"
    );
    // Gemma 3's tied 49152 x 32 bf16 table (3 MiB) in 1 MiB: embedding and LM head run in
    // row ranges, with the same logits.
    for dir in [fixtures_dir().join("gemma3"), fixtures_dir().join("gemma3-gguf")] {
        let mut e = limited(&dir, 1 << 20).expect("fits in row ranges");
        let r = reference(&dir);
        let got = block_on(e.logits(&r.tokens)).expect("logits");
        let d = max_diff(&got, &r.logits);
        assert!(d <= TOL, "{}: row-range embedding and LM head: max |Δ| {d}", dir.display());
    }
}

/// Past the first split-K chunk (256 positions): 600 positions in steps of 7 tokens run the
/// decode kernels (split attention over up to three chunks, windowed or not) and must match
/// the CPU reference at every position.
#[test]
fn long_context_decode_matches_reference() {
    let mut rng = Rng::new(7);
    for name in ["mixtral-e8-top2-gqa2-bf16-sharded", "mixtral-e8-top2-swa5"] {
        let mut files = block_on(ModelFiles::load(&DirSource::new(fixtures_dir().join(name)))).expect("load");
        // The fixtures were saved with 64 positions; their weights work at any position.
        files.config.max_positions = 640;
        let tokens: Vec<u32> = (0..600).map(|_| rng.below(files.config.vocab) as u32).collect();
        let open = |device, chunk| {
            let opts = EngineOptions { device, prefill_chunk: chunk, context: Some(640), ..Default::default() };
            block_on(Engine::from_files(&files, opts, Some(gpu()))).expect("engine")
        };
        let got = block_on(open(Device::Gpu, 7).logits(&tokens)).expect("gpu logits");
        let want = block_on(open(Device::Cpu, 256).logits(&tokens)).expect("cpu logits");
        let vocab = files.config.vocab;
        let d = max_diff(&got, &want.chunks(vocab).map(|r| r.to_vec()).collect::<Vec<_>>());
        println!("{name}: 600 positions in 7-token decode steps, max|Δ| vs CPU {d:.2e}");
        assert!(d <= TOL, "{name}: max |Δ| {d} > {TOL}");
    }
}

/// A prompt that extends the cached sequence prefills only its new tokens, and gives what
/// a fresh engine gives.
#[test]
fn kv_cache_is_reused_across_calls() {
    let dir = fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let files = block_on(ModelFiles::load(&DirSource::new(&dir))).expect("load");
    for device in [Device::Gpu, Device::Cpu] {
        let mut e = engine(&files, device, 256);
        let first = block_on(e.generate(&[5, 6, 7, 8, 9], &greedy(4), |_| true)).unwrap();
        assert_eq!(first.prefilled_tokens, 5);
        // The next "turn": everything so far plus three new tokens.
        let mut turn2: Vec<u32> = vec![5, 6, 7, 8, 9];
        turn2.extend(&first.tokens);
        turn2.extend([10, 11, 12]);
        let second = block_on(e.generate(&turn2, &greedy(6), |_| true)).unwrap();
        // The last generated token was never fed, so it is prefilled with the new ones.
        assert_eq!(second.prefilled_tokens, 4, "{device:?}");
        let mut fresh = engine(&files, device, 256);
        let want = block_on(fresh.generate(&turn2, &greedy(6), |_| true)).unwrap();
        assert_eq!(second.tokens, want.tokens, "{device:?}");
        // A prompt that diverges early re-prefills from the divergence.
        let third = block_on(e.generate(&[5, 6, 99, 100], &greedy(2), |_| true)).unwrap();
        assert_eq!(third.prefilled_tokens, 2, "{device:?}");
        let want = block_on(fresh.generate(&[5, 6, 99, 100], &greedy(2), |_| true)).unwrap();
        assert_eq!(third.tokens, want.tokens, "{device:?}");
    }
}

/// Seeded sampling repeats itself on every backend; other seeds explore.
#[test]
fn seeded_sampling_is_reproducible() {
    let dir = fixtures_dir().join("mixtral-e4-top1-mha");
    let files = block_on(ModelFiles::load(&DirSource::new(&dir))).expect("load");
    let opts = |seed| GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams { temperature: 1.5, top_p: 0.95, seed: Some(seed), ..Default::default() },
        ..Default::default()
    };
    let mut runs = Vec::new();
    for device in [Device::Gpu, Device::Gpu, Device::Cpu] {
        let mut e = engine(&files, device, 256);
        runs.push(block_on(e.generate(&[1, 2, 3], &opts(7), |_| true)).unwrap().tokens);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2], "GPU and CPU logits agree closely enough to sample the same");
    let mut e = engine(&files, Device::Gpu, 256);
    let other = block_on(e.generate(&[1, 2, 3], &opts(8), |_| true)).unwrap().tokens;
    assert_ne!(runs[0], other);
}

/// `--quant` quantizes f32/f16/bf16 weights on load: the kernels and the CPU reference then
/// agree on the quantized model, which stays close to the original.
#[test]
fn quantize_on_load() {
    use webmoe::tensor::DType;
    let dir = fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let r = reference(&dir);
    for q in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
        let mut files = block_on(ModelFiles::load(&DirSource::new(&dir))).expect("load");
        files.quantize(q, None).expect("quantize");
        assert_eq!(files.get("model.layers.1.block_sparse_moe.experts.7.w2.weight").unwrap().dtype, q);
        assert_eq!(files.get("model.norm.weight").unwrap().dtype, DType::BF16, "norms stay");
        let gpu = block_on(engine(&files, Device::Gpu, 256).logits(&r.tokens)).unwrap();
        let cpu = block_on(engine(&files, Device::Cpu, 256).logits(&r.tokens)).unwrap();
        let d = gpu.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-4, "{q:?}: GPU and CPU differ by {d}");
        let drift = max_diff(&gpu, &r.logits);
        // A 64-wide random model is as sensitive as models get: 4-bit weights move it a lot.
        let bound = if q == DType::Q8_0 { 0.15 } else { 2.0 };
        println!("{q:?}: GPU vs CPU {d:.1e}, vs unquantized transformers {drift:.3}");
        assert!(drift < bound, "{q:?}: quantization moved logits by {drift}");
    }
}

/// The router counts its choices on the GPU; reading them is separate from any step.
#[test]
fn expert_choice_counts() {
    let dir = fixtures_dir().join("mixtral-e16-top4-gqa4-hd16-f16");
    let files = block_on(ModelFiles::load(&DirSource::new(&dir))).expect("load");
    let mut e = engine(&files, Device::Gpu, 256);
    let r = reference(&dir);
    block_on(e.logits(&r.tokens)).unwrap();
    let counts = block_on(e.take_expert_counts()).unwrap();
    assert_eq!(counts.len(), 2);
    for layer in &counts {
        assert_eq!(layer.len(), 16);
        assert_eq!(layer.iter().sum::<u32>() as usize, r.tokens.len() * 4, "T x top-4 choices per layer");
    }
    // Taking resets them.
    assert!(block_on(e.take_expert_counts()).unwrap().iter().flatten().all(|&c| c == 0));
}

/// A decode step allocates nothing: 32 greedy and 32 sampled steps create no GPU buffer.
#[test]
fn decoding_allocates_no_gpu_buffers() {
    let dir = fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let files = block_on(ModelFiles::load(&DirSource::new(&dir))).expect("load");
    let g = fresh_gpu();
    let g = std::sync::Arc::new(g);
    let mut e = block_on(Engine::from_files(&files, EngineOptions::default(), Some(g.clone()))).unwrap();
    block_on(e.generate(&[1, 2, 3], &greedy(2), |_| true)).unwrap();
    let before = g.allocations();
    let got = block_on(e.generate(&[4, 5, 6], &greedy(33), |_| true)).unwrap();
    let sampled = GenerateOptions {
        max_tokens: 33,
        sampling: SamplingParams { temperature: 1.0, seed: Some(3), ..Default::default() },
        ..Default::default()
    };
    block_on(e.generate(&[7, 8, 9], &sampled, |_| true)).unwrap();
    assert_eq!(got.tokens.len(), 33);
    assert_eq!(g.allocations(), before, "GPU buffers created while decoding (count, bytes)");
}

/// An f16 KV cache (`EngineOptions::kv`): on every fixture the GPU equals the CPU reference
/// that rounds its cache the same way (prefill and decode), and the measured distance to
/// transformers' f32 logits, the price of half the cache memory, is printed.
#[test]
fn f16_kv_cache_matches_its_reference() {
    let mut report = Vec::new();
    for dir in fixtures() {
        let r = reference(&dir);
        let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
        let run = |device, chunk| {
            let opts = EngineOptions { device, prefill_chunk: chunk, kv: DType::F16, ..Default::default() };
            let mut e = block_on(Engine::from_files(&files, opts, Some(gpu()))).expect("engine");
            block_on(e.logits(&r.tokens)).expect("logits")
        };
        let want = run(Device::Cpu, 256);
        let rows: Vec<Vec<f32>> = want.chunks(files.config.vocab).map(|c| c.to_vec()).collect();
        let mut worst = 0.0f32;
        for chunk in [256, 1] {
            let d = max_diff(&run(Device::Gpu, chunk), &rows);
            // Both round to f16, but from f32 values that differ in the last bits (summation
            // order): a value near a rounding boundary lands one f16 step (2^-11 relative)
            // apart, which later layers carry. Wrong packing or indexing moves logits by 0.1+.
            assert!(d <= KV16_TOL, "{}: f16 KV, chunk {chunk}: GPU vs CPU reference max |Δ| {d}", dir.display());
            worst = worst.max(d);
        }
        let vs_f32 = max_diff(&want, &r.logits);
        report.push(format!(
            "{:40} GPU vs CPU (both f16 KV) {worst:.2e}; f16 KV vs transformers (f32) {vs_f32:.2e}",
            dir.file_name().unwrap().to_string_lossy()
        ));
    }
    println!("f16 KV cache:\n  {}", report.join("\n  "));
}

//! End to end: every fixture model's logits, computed by the WGSL kernels (prefill GEMM
//! path, decode GEMV path, and a mix) and by the CPU reference, against Hugging Face
//! transformers (tests/fixtures/generate.py), plus greedy generation token for token.

mod common;

use common::*;
use webmoe::engine::{Device, Engine, EngineOptions};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};

/// The acceptance bound: max |Δ| against transformers at every position.
const TOL: f32 = 1e-3;

fn engine(files: &ModelFiles, device: Device, chunk: usize) -> Engine {
    let opts = EngineOptions { device, context: None, prefill_chunk: chunk };
    block_on(Engine::from_files(files, opts, Some(gpu()))).expect("engine")
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
    check_logits(Device::Gpu, 5);
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
            let got = block_on(e.generate(&r.greedy_prompt, r.greedy_tokens.len(), |t| {
                streamed.push(t);
                true
            }))
            .expect("generate");
            assert_eq!(got, r.greedy_tokens, "{} on {device:?}", dir.display());
            assert_eq!(streamed, got);
        }
    }
}

#[test]
fn generation_stops_when_asked() {
    let dir = &fixtures_dir().join("mixtral-e4-top1-mha");
    let r = reference(dir);
    let files = block_on(ModelFiles::load(&DirSource::new(dir))).expect("load");
    let mut e = engine(&files, Device::Gpu, 256);
    let got = block_on(e.generate(&r.greedy_prompt, 8, |_| false)).expect("generate");
    assert_eq!(got.len(), 1);
}

#[test]
fn bad_requests_are_errors() {
    let dir = &fixtures_dir().join("mixtral-e4-top1-mha");
    let files = block_on(ModelFiles::load(&DirSource::new(dir))).expect("load");
    for device in [Device::Gpu, Device::Cpu] {
        let opts = EngineOptions { device, context: Some(8), prefill_chunk: 256 };
        let mut e = block_on(Engine::from_files(&files, opts, Some(gpu()))).expect("engine");
        let long: Vec<u32> = (0..9).collect();
        let err = block_on(e.logits(&long)).unwrap_err().to_string();
        assert!(err.contains("context"), "{device:?}: {err}");
        let err = block_on(e.logits(&[1, 256])).unwrap_err().to_string();
        assert!(err.contains("token id 256") && err.contains("vocabulary"), "{device:?}: {err}");
        let err = block_on(e.generate(&[1, 2, 3], 7, |_| true)).unwrap_err().to_string();
        assert!(err.contains("context"), "{device:?}: {err}");
        // The engine is still usable after refusing.
        assert_eq!(block_on(e.logits(&[1, 2])).expect("logits").len(), 2 * 256);
    }
    let opts = EngineOptions { device: Device::Gpu, context: Some(1 << 20), prefill_chunk: 256 };
    let err = block_on(Engine::from_files(&files, opts, Some(gpu()))).err().expect("too long").to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

/// A tensor larger than the adapter allows per binding is refused by name, not by a
/// validation panic deep inside wgpu.
#[test]
fn a_tensor_that_does_not_fit_is_named() {
    let dir = fixtures_dir().join("mixtral-e4-top1-mha");
    let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
    let mut g = fresh_gpu();
    // Pretend the adapter binds at most 32 KiB: the 64 KiB embedding table cannot fit.
    g.limits.max_storage_buffer_binding_size = 32 << 10;
    let opts = EngineOptions { device: Device::Gpu, context: None, prefill_chunk: 256 };
    let err = block_on(Engine::from_files(&files, opts, Some(std::sync::Arc::new(g))))
        .err()
        .expect("must not fit")
        .to_string();
    assert!(
        err.contains("model.embed_tokens.weight")
            && err.contains("65536 bytes")
            && err.contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

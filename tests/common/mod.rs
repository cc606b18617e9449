//! Helpers shared by the integration tests: a GPU, random inputs, NaN-poisoned outputs,
//! comparisons that report where they failed, and the transformers fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use webmoe::gpu::Gpu;
use webmoe::platform::block_on;
use webmoe::tensor::{DType, from_f32};

/// One GPU for the whole test binary. No adapter is a failure, not a skip: CI installs
/// lavapipe so the kernels are always exercised.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| Arc::new(fresh_gpu())).clone()
}

/// A GPU of its own (for tests that replace kernel sources).
pub fn fresh_gpu() -> Gpu {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Silences the Vulkan loader's warning on headless machines.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    block_on(Gpu::new())
        .unwrap_or_else(|e| panic!("GPU tests need an adapter (install mesa-vulkan-drivers for lavapipe): {e}"))
}

/// xorshift64*: deterministic per seed, different per test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-scale, scale).
    pub fn f32(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(scale)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `numel` random weights of about `scale` stored as `dtype`, in GGUF block layout:
/// plain types from random floats, Q8_0/Q4_0/Q4_1 quantized from random floats, K-quants
/// as random bytes with modest, finite f16 super-block scales.
pub fn random_blocks(rng: &mut Rng, dtype: DType, numel: usize, scale: f32) -> Vec<u8> {
    let f16 = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => from_f32(dtype, &rng.vec(numel, scale)),
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => webmoe::quant::quantize(dtype, &rng.vec(numel, scale)).unwrap(),
        DType::Q4K => (0..numel / 256)
            .flat_map(|_| {
                // |value| <= d * 63 * 15 + dmin * 63
                let mut b = f16(scale / 945.0 * (0.5 + rng.f32(0.5).abs())).to_vec();
                b.extend(f16(scale / 63.0 * rng.f32(0.5).abs()));
                b.extend((0..140).map(|_| rng.next_u64() as u8));
                b
            })
            .collect(),
        DType::Q6K => (0..numel / 256)
            .flat_map(|_| {
                // |value| <= d * 128 * 32
                let mut b: Vec<u8> = (0..208).map(|_| rng.next_u64() as u8).collect();
                b.extend(f16(scale / 4096.0 * (0.5 + rng.f32(0.5).abs())));
                b
            })
            .collect(),
        DType::MXFP4 => (0..numel / 32)
            .flat_map(|_| {
                // |value| <= 12 * 2^(e - 128): e within 3 of where that is about `scale`.
                let top = 128.0 + (scale / 12.0).log2();
                let e = (top - (rng.next_u64() % 4) as f32).clamp(1.0, 254.0) as u8;
                let mut b = vec![e];
                b.extend((0..16).map(|_| rng.next_u64() as u8));
                b
            })
            .collect(),
        // The rest: random bytes, with the f16 scales at these byte offsets of each block
        // set so that |value| <= (about) scale: (block bytes, [(offset, largest |q * s|)]).
        other => {
            let (elems, size) = other.block().unwrap();
            let scales: &[(usize, f32)] = match other {
                DType::Q5_0 => &[(0, 16.0)],
                DType::Q5_1 => &[(0, 31.0 * 2.0), (2, -2.0)], // m is the block's (negative) minimum
                DType::Q5K => &[(0, 63.0 * 31.0), (2, 63.0)],
                DType::Q2K => &[(80, 15.0 * 3.0), (82, 15.0)],
                DType::Q3K => &[(108, 32.0 * 4.0)],
                DType::IQ4NL => &[(0, 127.0)],
                DType::IQ4XS => &[(0, 32.0 * 127.0)],
                _ => unreachable!("{other:?}"),
            };
            (0..numel / elems)
                .flat_map(|_| {
                    let mut b: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
                    for &(off, mul) in scales {
                        let v = scale / mul * (0.5 + rng.f32(0.5).abs());
                        b[off..off + 2].copy_from_slice(&f16(v));
                    }
                    b
                })
                .collect()
        }
    }
}

pub fn upload_f32(g: &Gpu, name: &str, v: &[f32]) -> wgpu::Buffer {
    g.storage_init(name, bytemuck::cast_slice(v)).expect("upload")
}

pub fn upload_u32(g: &Gpu, name: &str, v: &[u32]) -> wgpu::Buffer {
    g.storage_init(name, bytemuck::cast_slice(v)).expect("upload")
}

/// An output buffer of `n` f32 filled with NaN, so any element a kernel fails to write
/// shows up in the comparison.
pub fn poisoned(g: &Gpu, name: &str, n: usize) -> wgpu::Buffer {
    upload_f32(g, name, &vec![f32::NAN; n])
}

/// An output buffer of `n` u32 filled with 0xFFFFFFFF.
pub fn poisoned_u32(g: &Gpu, name: &str, n: usize) -> wgpu::Buffer {
    upload_u32(g, name, &vec![u32::MAX; n])
}

pub fn read_f32(g: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    block_on(g.read_f32(b, n)).expect("read back")
}

pub fn read_u32(g: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<u32> {
    block_on(g.read_u32(b, n)).expect("read back")
}

/// Ok when every |got - want| <= atol + rtol * |want| (NaN never passes); otherwise says
/// where the first and the worst mismatch are.
pub fn close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if !(d <= atol + rtol * w.abs()) {
            return Err(format!("{what}: element {i} is {g}, expected {w} (|diff| {d})"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

pub fn same_u32(what: &str, got: &[u32], want: &[u32]) -> Result<(), String> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!("{what}: {} values, expected {}", got.len(), want.len())),
        Some(i) => Err(format!("{what}: element {i} is {}, expected {}", got[i], want[i])),
    }
}

/// A real model that `scripts/fetch-models.sh FETCH` puts in ~/.cache/webmoe/models (or
/// $WEBMOE_MODELS). Missing, the test is skipped with a note, except under `CI=true`,
/// where a missing model fails the suite: CI fetches them, so absence there is a bug.
pub fn real_model(file: &str, fetch: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("WEBMOE_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/webmoe/models")))
        .unwrap_or_default();
    let p = dir.join(file);
    if p.exists() {
        return Some(p);
    }
    let msg = format!("{} not found; run scripts/fetch-models.sh {fetch}", p.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What `--model` takes for a fixture directory: the directory, or its model.gguf.
pub fn model_path(dir: &Path) -> PathBuf {
    let g = dir.join("model.gguf");
    if g.exists() { g } else { dir.to_path_buf() }
}

/// Every fixture model directory (those with a reference.json); with WEBMOE_FIXTURES set,
/// only those whose name contains one of its comma-separated words (for working on one).
pub fn fixtures() -> Vec<PathBuf> {
    let only: Vec<String> = std::env::var("WEBMOE_FIXTURES")
        .map(|v| v.split(',').filter(|w| !w.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join("reference.json").exists() && (p.join("config.json").exists() || p.join("model.gguf").exists())
        })
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            only.is_empty() || only.iter().any(|w| name.contains(w.as_str()))
        })
        .collect();
    v.sort();
    if only.is_empty() {
        assert!(v.len() >= 8, "expected the fixture models in tests/fixtures, found {}", v.len());
    }
    v
}

pub struct Reference {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_prompt: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
}

pub fn reference(dir: &Path) -> Reference {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).expect("json");
    let u32s = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u32).collect()
    };
    let tokens = u32s(&v["tokens"]);
    // Logits inline, or (real vocabularies) as f32 LE rows [tokens, vocab] in a file.
    let logits = match v["logits_file"].as_str() {
        Some(f) => {
            let raw = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {f}: {e}", dir.display()));
            let flat: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let vocab = flat.len() / tokens.len();
            flat.chunks(vocab).map(|r| r.to_vec()).collect()
        }
        None => v["logits"]
            .as_array()
            .expect("logits")
            .iter()
            .map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("float") as f32).collect())
            .collect(),
    };
    Reference {
        tokens,
        logits,
        greedy_prompt: if v["greedy"].is_null() { vec![] } else { u32s(&v["greedy"]["prompt"]) },
        greedy_tokens: if v["greedy"].is_null() { vec![] } else { u32s(&v["greedy"]["tokens"]) },
    }
}

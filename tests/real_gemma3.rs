//! Gemma 3 270M (base, GGUF Q4_K_M as published: F32, Q5_0, Q4_K, Q8_0 and Q6_K tensors;
//! fetched by `scripts/fetch-models.sh gemma3`) against transformers running the same file
//! dequantized to f32 (tests/fixtures/generate_gemma3.py writes gemma3-270m/). Skipped,
//! with a message, when the model is absent.

mod common;

use common::{fixtures_dir, real_model};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use webmoe::engine::{Device, Engine, EngineOptions, GenerateOptions};
use webmoe::platform::{DirSource, block_on};

/// Logit tolerance, as for SmolLM2 (tests/real_model.rs): both sides compute in f32 from
/// bit-identical dequantized weights and differ by summation order only.
const TOL: f32 = 1e-3;

fn gemma3() -> Option<PathBuf> {
    real_model("gemma-3-270m-q4_k_m.gguf", "gemma3")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures_dir().join("gemma3-270m/reference.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load(model: &PathBuf, device: Device) -> Engine {
    block_on(Engine::load(&DirSource::new(model), EngineOptions { device, ..Default::default() }, None)).expect("load")
}

/// The tokenizer (262k SentencePiece pieces from the GGUF, byte fallback, no space prefix)
/// gives transformers' ids, and greedy decoding continues each prompt with transformers'
/// 24 tokens.
#[test]
fn greedy_continuations_match_transformers() {
    let Some(model) = gemma3() else { return };
    let r = reference();
    let mut e = load(&model, Device::Gpu);
    for case in r["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = e.encode(prompt).unwrap();
        assert_eq!(ids, u32s(&case["ids"]), "tokens of {prompt:?}");
        let want = u32s(&case["greedy_ids"]);
        let opts = GenerateOptions { max_tokens: want.len(), ignore_eos: true, ..Default::default() };
        let got = block_on(e.generate(&ids, &opts, |_| true)).expect("generate");
        assert_eq!(got.tokens, want, "greedy continuation of {prompt:?}");
        println!("{prompt:?} -> {:?}", case["greedy"].as_str().unwrap());
    }
}

#[test]
fn prompt_logits_match_transformers() {
    let Some(model) = gemma3() else { return };
    let r = reference();
    let cols = u32s(&r["columns"]);
    for device in [Device::Gpu, Device::Cpu] {
        let mut e = load(&model, device);
        let mut worst = 0.0f32;
        for case in r["cases"].as_array().unwrap() {
            let ids = u32s(&case["ids"]);
            let logits = block_on(e.logits(&ids)).unwrap();
            let v = e.vocab;
            for (t, row) in case["logits"].as_array().unwrap().iter().enumerate() {
                let ours = &logits[t * v..(t + 1) * v];
                for (c, w) in cols.iter().zip(row["values"].as_array().unwrap()) {
                    worst = worst.max((ours[*c as usize] - w.as_f64().unwrap() as f32).abs());
                }
                for (id, w) in u32s(&row["top_ids"]).iter().zip(row["top_values"].as_array().unwrap()) {
                    worst = worst.max((ours[*id as usize] - w.as_f64().unwrap() as f32).abs());
                }
                assert_eq!(webmoe::cpu::argmax(ours), u32s(&row["top_ids"])[0], "{device:?}: top-1 at position {t}");
            }
        }
        println!("{device:?}: max |Δ| over the prompts' positions = {worst:.2e}");
        assert!(worst <= TOL, "{device:?}: max |Δ| {worst} > {TOL}");
    }
}

/// A base model has no chat template: asking it to chat is an error that says what to do.
#[test]
fn chat_without_a_template_suggests_a_prompt() {
    let Some(model) = gemma3() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["generate", "--model", model.to_str().unwrap(), "--chat", "Hello"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no chat template") && err.contains("--prompt"), "{err}");
}

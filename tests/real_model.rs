//! SmolLM2-135M-Instruct (GGUF Q4_1, fetched by scripts/fetch-models.sh) against
//! transformers running the same file dequantized to f32
//! (tests/fixtures/generate_smollm2.py). Skipped, with a message, when the model is absent.

mod common;

use common::{fixtures_dir, real_model};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use webmoe::chat::Message;
use webmoe::engine::{Device, Engine, EngineOptions, GenerateOptions};
use webmoe::platform::{DirSource, block_on};
use webmoe::tensor::DType;

/// Logit tolerance. Both sides compute in f32 from bit-identical dequantized weights
/// (tests/quant.rs), so they differ only by summation order and fused multiply-adds: about
/// 1e-7 relative per dot product, grown through 30 layers. Measured here: 1.0e-4 (GPU) and
/// 0.9e-4 (CPU reference) on logits of magnitude up to ~20. 1e-3 leaves 10x headroom for
/// other drivers' rounding while staying far below what a wrong kernel, scale or rotary
/// convention does (those move logits by 0.1 or more and change the top token).
const TOL: f32 = 1e-3;

fn smollm2() -> Option<PathBuf> {
    real_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures_dir().join("smollm2/reference.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn chat_answer_matches_transformers_exactly() {
    let Some(model) = smollm2() else { return };
    let r = reference();
    let out = Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["generate", "--model", model.to_str().unwrap(), "--chat", r["question"].as_str().unwrap()])
        .args(["--temperature", "0"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got, format!("{}\n", r["answer"].as_str().unwrap()));
    println!("webmoe: {got:?}");
}

#[test]
fn prompt_logits_match_transformers() {
    let Some(model) = smollm2() else { return };
    let r = reference();
    let q = r["question"].as_str().unwrap();
    let cols = u32s(&r["columns"]);
    for device in [Device::Gpu, Device::Cpu] {
        let mut e =
            block_on(Engine::load(&DirSource::new(&model), EngineOptions { device, ..Default::default() }, None))
                .expect("load");
        let ids = e.encode_chat(&[Message::new("user", q)]).unwrap();
        assert_eq!(ids, u32s(&r["prompt_ids"]), "chat template + tokenizer differ from transformers");
        let logits = block_on(e.logits(&ids)).unwrap();
        let v = e.vocab;
        let mut worst = 0.0f32;
        for (t, row) in r["prompt_logits"].as_array().unwrap().iter().enumerate() {
            let ours = &logits[t * v..(t + 1) * v];
            let want = row["values"].as_array().unwrap();
            for (c, w) in cols.iter().zip(want) {
                worst = worst.max((ours[*c as usize] - w.as_f64().unwrap() as f32).abs());
            }
            for (id, w) in u32s(&row["top_ids"]).iter().zip(row["top_values"].as_array().unwrap()) {
                worst = worst.max((ours[*id as usize] - w.as_f64().unwrap() as f32).abs());
            }
            assert_eq!(webmoe::cpu::argmax(ours), u32s(&row["top_ids"])[0], "{device:?}: top-1 at position {t}");
        }
        println!("{device:?}: max |Δ| over {} positions = {worst:.2e}", ids.len());
        assert!(worst <= TOL, "{device:?}: max |Δ| {worst} > {TOL}");
    }
}

/// An f16 KV cache on the real model: the greedy chat answer is unchanged, and the prompt
/// logits' distance to the f32 cache's is measured (printed) and bounded.
#[test]
fn f16_kv_cache_keeps_the_answer() {
    let Some(model) = smollm2() else { return };
    let r = reference();
    let q = r["question"].as_str().unwrap();
    let mut logits = Vec::new();
    for kv in [DType::F32, DType::F16] {
        let opts = EngineOptions { kv, ..Default::default() };
        let mut e = block_on(Engine::load(&DirSource::new(&model), opts, None)).expect("load");
        let ids = e.encode_chat(&[Message::new("user", q)]).unwrap();
        let g =
            block_on(e.generate(&ids, &GenerateOptions { max_tokens: 64, ..Default::default() }, |_| true)).unwrap();
        assert_eq!(g.text, r["answer"].as_str().unwrap(), "{kv:?} KV cache: greedy answer");
        logits.push(block_on(e.logits(&ids)).unwrap());
    }
    let d = logits[0].iter().zip(&logits[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("SmolLM2 prompt logits, f16 vs f32 KV cache: max |Δ| {d:.2e}");
    assert!(d < 0.1, "f16 KV moved the prompt logits by {d}");
}

/// `webmoe chat` keeps the KV cache between turns: the second turn prefills only the
/// tokens the first did not already leave in the cache.
#[test]
fn chat_keeps_the_cache_between_turns() {
    use std::io::Write;
    let Some(model) = smollm2() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(["chat", "--model", model.to_str().unwrap(), "--temperature", "0", "--max-tokens", "12"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("WEBMOE_STATS", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"What is the capital of France?\nAnd of Italy?\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let turns: Vec<(usize, usize)> = err
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .map(|l| {
            let n: Vec<usize> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok()).take(2).collect();
            (n[0], n[1])
        })
        .collect();
    assert_eq!(turns.len(), 2, "{err}");
    let (prompt2, prefilled2) = turns[1];
    assert!(prompt2 > turns[0].0 && prefilled2 < prompt2 / 2, "second turn re-prefilled too much: {turns:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Paris"), "{stdout}");
    println!("turns (prompt tokens, prefilled): {turns:?}\n{stdout}");
}

/// SmolLM2's GGUF names the `smollm` pre-tokenizer: digits split one by one, then GPT-2's
/// regex (as its original tokenizer.json does). Ids equal llama.cpp's llama-tokenize on
/// the same file (tests/fixtures/smollm2/llama_tokenize.json), so perplexities compare.
#[test]
fn tokenizer_splits_like_llama_cpp() {
    let Some(model) = smollm2() else { return };
    let r: Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("smollm2/llama_tokenize.json")).unwrap()).unwrap();
    let e = block_on(Engine::load(
        &DirSource::new(&model),
        EngineOptions { device: Device::Cpu, ..Default::default() },
        None,
    ))
    .expect("load");
    for case in r["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(e.encode(text).unwrap(), u32s(&case["ids"]), "{:?}", &text[..text.len().min(60)]);
    }
}

//! Malformed model directories: each must give a clear error naming the file, the tensor
//! and the problem, never a panic, and never an allocation sized by an unchecked number.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};

const MODEL: &str = "mixtral-e4-top1-mha";

/// A copy of a fixture model in a fresh temporary directory.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixtures_dir().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

fn load_err(dir: &Path) -> String {
    match block_on(ModelFiles::load(&DirSource::new(dir))) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Splits a safetensors file into (header JSON, data).
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn edit_safetensors(dir: &Path, f: impl FnOnce(&mut Value, &mut Vec<u8>)) {
    let p = dir.join("model.safetensors");
    let (mut h, mut d) = split(&std::fs::read(&p).unwrap());
    f(&mut h, &mut d);
    std::fs::write(&p, join(&h, &d)).unwrap();
}

fn assert_has(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
}

#[test]
fn truncated_file() {
    let (_t, dir) = copy_fixture(MODEL);
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert_has(&err, &["model.safetensors", "past the end"]);
    // Cut inside the header and inside the length prefix.
    std::fs::write(&p, &bytes[..100]).unwrap();
    assert_has(&load_err(&dir), &["model.safetensors", "truncated"]);
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert_has(&load_err(&dir), &["model.safetensors", "truncated"]);
}

#[test]
fn header_length_of_2_pow_60_is_refused_without_allocating() {
    let (_t, dir) = copy_fixture(MODEL);
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    assert_has(&load_err(&dir), &["model.safetensors", "header length"]);
}

#[test]
fn header_offsets_past_the_end() {
    let (_t, dir) = copy_fixture(MODEL);
    let name = "model.layers.1.self_attn.o_proj.weight";
    edit_safetensors(&dir, |h, d| {
        let end = d.len() as u64;
        h[name]["data_offsets"] = json!([end - 100, end + 16284]);
    });
    assert_has(&load_err(&dir), &["model.safetensors", name, "past the end"]);
}

#[test]
fn offsets_that_disagree_with_the_shape() {
    let (_t, dir) = copy_fixture(MODEL);
    let name = "model.norm.weight";
    edit_safetensors(&dir, |h, _| {
        let b = h[name]["data_offsets"][0].as_u64().unwrap();
        h[name]["data_offsets"] = json!([b, b + 8]);
    });
    assert_has(&load_err(&dir), &["model.safetensors", name, "needs 256 bytes"]);
}

#[test]
fn missing_tensor() {
    let (_t, dir) = copy_fixture(MODEL);
    let name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    edit_safetensors(&dir, |h, _| {
        h.as_object_mut().unwrap().remove(name);
    });
    assert_has(&load_err(&dir), &["model.safetensors", name, "missing"]);
}

#[test]
fn wrong_shape() {
    let (_t, dir) = copy_fixture(MODEL);
    let name = "model.layers.0.self_attn.q_proj.weight";
    // Same byte size, different shape: [64, 64] stored as [32, 128].
    edit_safetensors(&dir, |h, _| h[name]["shape"] = json!([32, 128]));
    assert_has(&load_err(&dir), &["model.safetensors", name, "[32, 128]", "[64, 64]"]);
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let (_t, dir) = copy_fixture(MODEL);
    let p = dir.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    c["num_local_experts"] = json!(5);
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
    assert_has(&load_err(&dir), &["block_sparse_moe.gate.weight", "[4, 64]", "[5, 64]"]);
    c["num_local_experts"] = json!(4);
    c["intermediate_size"] = json!(40);
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
    assert_has(&load_err(&dir), &["w1.weight", "shape", "[40, 64]"]);
}

#[test]
fn unsupported_dtype() {
    let (_t, dir) = copy_fixture(MODEL);
    let name = "model.norm.weight";
    edit_safetensors(&dir, |h, _| h[name]["dtype"] = json!("I32"));
    assert_has(&load_err(&dir), &[name, "I32", "not supported"]);
}

#[test]
fn bad_configs() {
    let (_t, dir) = copy_fixture(MODEL);
    let p = dir.join("config.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let cases: Vec<(Box<dyn Fn(&mut Value)>, &str)> = vec![
        (Box::new(|c| c["architectures"] = json!(["GPT2LMHeadModel"])), "unknown architecture 'GPT2LMHeadModel'"),
        (Box::new(|c| c["num_key_value_heads"] = json!(3)), "4 attention heads are not a multiple of 3 KV heads"),
        (Box::new(|c| c["hidden_size"] = json!(-1)), "'hidden_size' must be a non-negative integer"),
        (Box::new(|c| c["vocab_size"] = json!(1u64 << 40)), "'vocab_size' = 1099511627776 is out of range"),
        (Box::new(|c| c["num_experts_per_tok"] = json!(9)), "9 experts per token, but only 4 experts"),
        (
            Box::new(|c| c["rope_parameters"] = json!({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
            "rope scaling type 'dynamic' is not supported",
        ),
        (Box::new(|c| c["hidden_act"] = json!("gelu")), "'hidden_act' = \"gelu\" is not supported"),
        (Box::new(|c| c["architectures"] = json!(["PhimoeForCausalLM"])), "unknown architecture 'PhimoeForCausalLM'"),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("num_hidden_layers");
            }),
            "missing 'num_hidden_layers'",
        ),
    ];
    for (edit, want) in cases {
        let mut c = orig.clone();
        edit(&mut c);
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_has(&load_err(&dir), &["config.json", want]);
    }
    std::fs::write(&p, b"{ not json").unwrap();
    assert_has(&load_err(&dir), &["config.json", "not valid JSON"]);
}

#[test]
fn missing_files() {
    let (_t, dir) = copy_fixture(MODEL);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_has(&load_err(&dir), &["model.safetensors", "not found"]);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_has(&load_err(&dir), &["config.json", "not found"]);
    assert_has(&load_err(&dir.join("nope")), &["nope", "not a directory"]);
}

#[test]
fn sharded_index_problems() {
    let name = "mixtral-e8-top2-gqa2-bf16-sharded";
    let (_t, dir) = copy_fixture(name);
    let idx = dir.join("model.safetensors.index.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&idx).unwrap()).unwrap();
    let shard = orig["weight_map"]["model.norm.weight"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    assert_has(&load_err(&dir), &[&shard, "not found"]);
    let mut bad = orig.clone();
    bad["weight_map"]["model.norm.weight"] = json!("../../etc/passwd");
    std::fs::write(&idx, serde_json::to_vec(&bad).unwrap()).unwrap();
    assert_has(&load_err(&dir), &["model.safetensors.index.json", "not a plain .safetensors file name"]);
}

// ---- GGUF -------------------------------------------------------------------------

const GGUF_MODEL: &str = "gguf-mixtral-e4-top1-q4_0";

/// A minimal GGUF v3: one string metadata entry and one F32 tensor of `n` elements whose
/// data sits at `offset` (relative to the aligned data section).
fn tiny_gguf(n: u64, offset: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(8u32.to_le_bytes()); // string
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    let name = b"output_norm.weight";
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name);
    b.extend(1u32.to_le_bytes());
    b.extend(n.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(offset.to_le_bytes());
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend(vec![0u8; n as usize * 4]);
    b
}

fn gguf_err(bytes: Vec<u8>) -> String {
    match webmoe::gguf::Gguf::parse("model.gguf", bytes) {
        Ok(_) => panic!("a hostile GGUF parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_reader_accepts_the_well_formed_baseline() {
    assert!(webmoe::gguf::Gguf::parse("model.gguf", tiny_gguf(8, 0)).is_ok());
}

#[test]
fn gguf_truncated() {
    let bytes = std::fs::read(fixtures_dir().join(GGUF_MODEL).join("model.gguf")).unwrap();
    for cut in [3, 20, 200, bytes.len() / 2, bytes.len() - 1] {
        let err = gguf_err(bytes[..cut].to_vec());
        assert!(
            err.starts_with("model.gguf: ") && (err.contains("truncated") || err.contains("past the end")),
            "{cut}: {err}"
        );
        // No hostile number survives into an allocation: the error comes before.
        assert_eq!(err.lines().count(), 1);
    }
}

#[test]
fn gguf_tensor_offset_past_the_end() {
    let err = gguf_err(tiny_gguf(8, 1 << 20));
    assert_has(&err, &["model.gguf", "output_norm.weight", "past the end of the file"]);
    let err = gguf_err(tiny_gguf(8, u64::MAX - 31));
    assert_has(&err, &["output_norm.weight", "past the end"]);
}

#[test]
fn gguf_tensor_count_of_2_pow_40() {
    let mut b = tiny_gguf(8, 0);
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_has(&gguf_err(b), &["model.gguf", "tensor count 1099511627776 is impossible"]);
}

#[test]
fn gguf_string_length_of_2_pow_60() {
    let mut b = tiny_gguf(8, 0);
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_has(&gguf_err(b), &["model.gguf", "string length 1152921504606846976 exceeds"]);
}

#[test]
fn gguf_other_hostile_headers() {
    let mut b = tiny_gguf(8, 0);
    b[..4].copy_from_slice(b"GGML");
    assert_has(&gguf_err(b), &["not a GGUF file"]);
    let mut b = tiny_gguf(8, 0);
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_has(&gguf_err(b), &["version 1 is not supported"]);
    let mut b = tiny_gguf(8, 0);
    b[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_has(&gguf_err(b), &["metadata count", "impossible"]);
    // Dimension product overflowing u64.
    let mut b = tiny_gguf(8, 0);
    let dim_at = b.windows(18).position(|w| w == b"output_norm.weight").unwrap() + 18 + 4;
    b[dim_at..dim_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_has(&gguf_err(b), &["output_norm.weight", "too many"]);
}

#[test]
fn gguf_model_problems_are_named() {
    // A file that parses but is not a model we run.
    let err = match block_on(ModelFiles::load(&DirSource::new(write_tmp("x.gguf", tiny_gguf(8, 0)).1))) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert_has(&err, &["x.gguf", "missing llama.embedding_length"]);
}

fn write_tmp(name: &str, bytes: Vec<u8>) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (t, p)
}

/// A config asking for something not implemented is refused by key and value, never run
/// with silently wrong numbers.
#[test]
fn unimplemented_config_keys_are_named() {
    let cases: [(&str, &str, Value, &str); 6] = [
        ("olmoe", "clip_qkv", json!(8.0), "'clip_qkv' = 8.0 is not supported"),
        ("qwen3moe", "hidden_act", json!("relu"), "'hidden_act' = \"relu\" is not supported"),
        (
            "qwen2moe",
            "rope_parameters",
            json!({"rope_type": "longrope", "rope_theta": 10000.0}),
            "rope scaling type 'longrope' is not supported",
        ),
        (
            "gpt-oss",
            "rope_parameters",
            json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0}),
            "'mscale'",
        ),
        ("granitemoe", "architectures", json!(["PhimoeForCausalLM"]), "unknown architecture 'PhimoeForCausalLM'"),
        ("qwen2moe", "num_experts_per_tok", json!(9), "9 experts per token, but only 8 experts"),
    ];
    for (fixture, key, value, want) in cases {
        let (_t, dir) = copy_fixture(fixture);
        let p = dir.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        c[key] = value;
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_has(&load_err(&dir), &["config.json", want]);
    }
}

/// Each family's optional tensors are checked like the others: a missing sink or bias is
/// named, not skipped.
#[test]
fn family_tensors_are_required() {
    for (fixture, name) in [
        ("gpt-oss", "model.layers.1.self_attn.sinks"),
        ("gpt-oss", "model.layers.0.mlp.router.bias"),
        ("qwen2moe", "model.layers.1.mlp.shared_expert_gate.weight"),
        ("qwen3moe", "model.layers.0.self_attn.k_norm.weight"),
        ("qwen2moe", "model.layers.0.self_attn.v_proj.bias"),
    ] {
        let (_t, dir) = copy_fixture(fixture);
        edit_safetensors(&dir, |h, _| {
            h.as_object_mut().unwrap().remove(name);
        });
        assert_has(&load_err(&dir), &[name, "missing"]);
    }
}

/// A GGUF whose tensor has a type webmoe does not compute with (the IQ2/IQ3/IQ1 families,
/// the ternary TQ types) parses, and loading it names the type, the tensor and what is
/// supported. (The type is patched into a real file: a size smaller than Q4_0's keeps
/// the tensor inside the file.)
#[test]
fn unsupported_gguf_types_are_named_with_the_tensor() {
    let bytes = std::fs::read(fixtures_dir().join(GGUF_MODEL).join("model.gguf")).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).expect("tensor") + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    assert_eq!(u32::from_le_bytes(bytes[ty_at..ty_at + 4].try_into().unwrap()), 2, "fixture's q is Q4_0");
    for (id, ty) in [(16u32, "IQ2_XXS"), (18, "IQ3_XXS"), (19, "IQ1_S"), (34, "TQ1_0")] {
        let mut b = bytes.clone();
        b[ty_at..ty_at + 4].copy_from_slice(&id.to_le_bytes());
        let (_t, p) = write_tmp("model.gguf", b);
        let err = match block_on(ModelFiles::load(&DirSource::new(&p))) {
            Ok(_) => panic!("{ty} loaded"),
            Err(e) => e.to_string(),
        };
        assert_has(&err, &["blk.0.attn_q.weight", &format!("type {ty} is not supported"), "Q5_K", "IQ4_XS"]);
    }
}

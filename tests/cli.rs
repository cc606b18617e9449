//! The command line as users (and acceptance checks) call it: `webmoe logits` prints one
//! JSON object, `webmoe generate` prints token ids, errors are one line on stderr.

mod common;

use common::*;
use std::process::{Command, Output};

fn webmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run webmoe")
}

fn csv(t: &[u32]) -> String {
    t.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

#[test]
fn logits_prints_one_json_object_matching_transformers() {
    for dir in fixtures() {
        let r = reference(&dir);
        for device in ["gpu", "cpu"] {
            let model = model_path(&dir);
            let out = webmoe(&[
                "logits",
                "--model",
                model.to_str().unwrap(),
                "--tokens",
                &csv(&r.tokens),
                "--device",
                device,
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
            let rows = v["logits"].as_array().expect("logits");
            assert_eq!(rows.len(), r.tokens.len());
            for (row, want) in rows.iter().zip(&r.logits) {
                let row: Vec<f32> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                close(&format!("{} {device}", dir.display()), &row, want, 1e-3, 0.0).unwrap();
            }
        }
    }
}

#[test]
fn generate_prints_greedy_token_ids() {
    let dir = &fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let r = reference(dir);
    let n = r.greedy_tokens.len().to_string();
    let out = webmoe(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &csv(&r.greedy_prompt),
        "--max-tokens",
        &n,
        "--temperature",
        "0",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<u32> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, r.greedy_tokens);
}

#[test]
fn errors_are_one_line_and_exit_nonzero() {
    let dir = fixtures_dir().join("mixtral-e4-top1-mha").to_str().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["logits", "--model", "/nonexistent/model", "--tokens", "1"], "/nonexistent/model"),
        (&["logits", "--model", &dir, "--tokens", "1,x,3"], "'x' is not a token id"),
        (&["logits", "--model", &dir, "--tokens", "1,99999"], "token id 99999"),
        (&["logits", "--model", &dir, "--tokens", "1,2,3,4,5", "--context", "4"], "exceed the context length 4"),
        (&["generate", "--model", &dir, "--tokens", "", "--max-tokens", "3"], "no token ids"),
    ];
    for (args, want) in cases {
        let out = webmoe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line: {err}");
        assert!(err.starts_with("webmoe: error: ") && err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: printed to stdout");
    }
}

#[test]
fn hostile_gguf_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hostile.gguf");
    let mut b = std::fs::read(fixtures_dir().join("gguf-mixtral-e4-top1-q4_0/model.gguf")).unwrap();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let out = webmoe(&["info", "--model", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("hostile.gguf") && err.contains("tensor count 1099511627776"), "{err}");
}

/// `webmoe info` names the family and prints the layer plan: attention kind, router kind,
/// experts and shared expert, per run of layers.
#[test]
fn info_shows_the_family_and_the_plan() {
    let cases = [
        ("qwen2moe-mixed", "qwen2moe", &["0 ", "dense ff 64", "shared expert ff 32 (sigmoid gate)", "qkv bias"][..]),
        ("gpt-oss-gguf", "gpt-oss", &["sliding 4", "full", "sinks", "top-k→softmax", "expert biases", "yarn"][..]),
        ("olmoe", "olmoe", &["q/k norm over the projection", "MoE 8 experts top-2"][..]),
        ("qwen3moe-gguf", "qwen3moe", &["q/k norm per head", "16 experts top-4", "renorm"][..]),
        ("granitemoe", "granitemoe", &["multipliers:    embedding 12, residual 0.22, logits 0.25"][..]),
        ("granitemoe-shared-gguf", "granitemoe", &["shared expert ff 48", "top-1"][..]),
        ("mixtral-e8-top2-swa5", "mixtral", &["0-2", "sliding 5", "softmax→top-k renorm"][..]),
    ];
    for (fixture, family, wants) in cases {
        let model = model_path(&fixtures_dir().join(fixture));
        let out = webmoe(&["info", "--model", model.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("family:         {family} (")), "{fixture}:\n{text}");
        for w in wants {
            assert!(text.contains(w), "{fixture}: `info` should show {w:?}:\n{text}");
        }
    }
}

/// `webmoe perplexity --json` on a model with a real vocabulary (SmolLM2's, in the Qwen3-MoE
/// fixture's GGUF): one object with the counts llama-perplexity reports; too short a text
/// is a one-line error.
#[test]
fn perplexity_prints_one_json_object() {
    let model = fixtures_dir().join("qwen3moe-gguf/model.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    let line = "In the beginning God created the heaven and the earth. And the earth was without form.\n";
    std::fs::write(&text, line.repeat(12)).unwrap();
    let out = webmoe(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        text.to_str().unwrap(),
        "--context",
        "32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (tokens, windows) = (v["tokens"].as_u64().unwrap(), v["windows"].as_u64().unwrap());
    assert_eq!(windows, tokens / 32, "{v}");
    assert!(windows >= 2 && v["scored"].as_u64() == Some(windows * 15), "{v}");
    let p = v["perplexity"].as_f64().unwrap();
    assert!(p.is_finite() && p > 1.0 && v["plus_minus"].as_f64().unwrap() > 0.0, "{v}");
    std::fs::write(&text, line).unwrap();
    let out = webmoe(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        text.to_str().unwrap(),
        "--context",
        "32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        !out.status.success() && last.starts_with("webmoe: error: ") && last.contains("needs at least 64"),
        "{err}"
    );
}

/// Expert residency from the command line: the same logits with 2 of 8 experts resident
/// (and prefetch), a budget too small refused in one line with the minimum, and
/// `bench --residency` printing its rows as JSON.
#[test]
fn residency_options() {
    let dir = fixtures_dir().join("mixtral-e8-top2-swa5");
    let r = reference(&dir);
    let (model, tokens) = (dir.to_str().unwrap(), csv(&r.tokens));
    let run = |extra: &[&str]| {
        let mut a = vec!["logits", "--model", model, "--tokens", &tokens];
        a.extend_from_slice(extra);
        let out = webmoe(&a);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect::<Vec<f64>>()
    };
    let all = run(&[]);
    for extra in [
        &["--resident-experts", "2"][..],
        &["--resident-experts", "3", "--prefetch", "--expert-policy", "lfu"],
        &["--gpu-memory", "600K"],
    ] {
        let got = run(extra);
        let d = got.iter().zip(&all).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(d <= 1e-5, "{extra:?}: max|Δ| {d}");
    }
    let out = webmoe(&["logits", "--model", model, "--tokens", "1,2", "--gpu-memory", "64K"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1 && err.contains("at least"), "{err}");
    let out = webmoe(&[
        "bench",
        "--model",
        model,
        "--residency",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "4",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "3 residencies x 3 modes + all resident");
    assert!(rows.iter().all(|r| r["decode_tokens_per_s"]["median"].as_f64().unwrap() > 0.0));
    assert_eq!(rows.iter().filter(|r| r["mode"] == "none").filter(|r| r["hit_rate"] == 0.0).count(), 3);
}

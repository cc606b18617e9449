//! The fuzz targets' seeds and every case a fuzzing run found (`fuzz/regressions/TARGET/`),
//! replayed through the same functions the cargo-fuzz targets call (`webmoe::fuzz`), with
//! truncations and byte flips of each seed: CI keeps the found cases fixed without a
//! nightly toolchain. `WEBMOE_FUZZ_SEEDS=DIR` also writes the seeds to DIR/TARGET/, which
//! is how `scripts/fuzz.sh` seeds a run's corpus.

mod common;

use common::{Rng, fixtures_dir, model_path};
use std::path::{Path, PathBuf};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};
use webmoe::tokenizer::Tokenizer;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn files_named(pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(fixtures_dir()).unwrap() {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            if pred(f.file_name().unwrap().to_str().unwrap()) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn named(p: &Path) -> String {
    let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
    format!("{dir}-{}", p.file_name().unwrap().to_string_lossy())
}

fn tokenizer(gguf: &str) -> Tokenizer {
    let p = fixtures_dir().join("tokenizers").join(gguf);
    let g = webmoe::gguf::Gguf::parse(gguf, read(&p)).unwrap();
    Tokenizer::from_gguf(&g.metadata).unwrap()
}

/// A packed manifest of a fixture (its tokenizer too, where it has one).
fn manifest_of(dir: &str) -> Vec<u8> {
    let files = block_on(ModelFiles::load(&DirSource::new(model_path(&fixtures_dir().join(dir))))).unwrap();
    let tok = Tokenizer::from_model(&files).unwrap().map(|t| t.to_spec().unwrap());
    let (m, _) = webmoe::pack::pack(&files, dir, tok, 1 << 16, None).unwrap();
    serde_json::to_vec(&m).unwrap()
}

/// What each target starts from: the fixtures, which are real files of each kind.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let join = |a: &[u8], b: &[u8]| [a, b"\0", b].concat();
    match target {
        "gguf" => files_named(|n| n.ends_with(".gguf")).iter().map(|p| (named(p), read(p))).collect(),
        "safetensors" => files_named(|n| n.ends_with(".safetensors")).iter().map(|p| (named(p), read(p))).collect(),
        "hf_json" => files_named(|n| n == "config.json" || n.ends_with(".index.json"))
            .iter()
            .map(|p| (named(p), read(p)))
            .collect(),
        "manifest" => ["mixtral-e4-top1-mha", "qwen2moe-mixed", "gpt-oss", "gguf-mixtral-e4-top1-q4_0"]
            .iter()
            .map(|d| (format!("{d}.json"), manifest_of(d)))
            .collect(),
        "tokenizer_json" => {
            let hf = fixtures_dir().join("tokenizers/hf-spm");
            let mut v = vec![(
                "hf-spm".into(),
                join(&read(&hf.join("tokenizer.json")), &read(&hf.join("tokenizer_config.json"))),
            )];
            for g in ["bpe-smollm2.gguf", "spm-llama.gguf"] {
                v.push((g.replace(".gguf", ".json"), tokenizer(g).to_spec().unwrap().json.into_bytes()));
            }
            v
        }
        "chat_template" => {
            let hostile = b"<img src=x onerror=alert(1)> {{ 7*7 }} {% for i in range(9) %}";
            let mut v = vec![(
                "hf-spm.jinja".to_string(),
                join(&read(&fixtures_dir().join("tokenizers/hf-spm/chat_template.jinja")), hostile),
            )];
            for g in ["bpe-smollm2.gguf", "spm-llama.gguf"] {
                if let Some(t) = tokenizer(g).chat_template {
                    v.push((g.replace(".gguf", ".jinja"), join(t.as_bytes(), hostile)));
                }
            }
            v
        }
        _ => panic!("no seeds for {target}"),
    }
}

#[test]
fn fuzz_seeds_and_found_cases_replay() {
    let out = std::env::var_os("WEBMOE_FUZZ_SEEDS").map(PathBuf::from);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut rng = Rng::new(13);
    for &(target, run) in webmoe::fuzz::TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target}: no seeds");
        let mut found = Vec::new();
        if let Ok(dir) = std::fs::read_dir(root.join(target)) {
            for f in dir {
                found.push(read(&f.unwrap().path()));
            }
        }
        let mut runs = 0;
        for (name, bytes) in &seeds {
            if let Some(out) = &out {
                std::fs::create_dir_all(out.join(target)).unwrap();
                std::fs::write(out.join(target).join(name), bytes).unwrap();
            }
            run(bytes);
            // Cut short anywhere, and with a few bytes changed.
            for cut in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
                run(&bytes[..cut.min(bytes.len())]);
            }
            for _ in 0..8 {
                let mut b = bytes.clone();
                for _ in 0..4 {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                run(&b);
            }
            runs += 14;
        }
        for case in &found {
            run(case);
        }
        eprintln!("{target}: {} seeds ({runs} runs with their variants), {} found cases", seeds.len(), found.len());
    }
}

//! Routing traces: the GPU's record of every token's chosen experts (each MoE layer's
//! router ids, copied beside what a step reads back) against the CPU reference's, in every
//! kernel path; recording while decoding; windows as separate sequences; and the learned-
//! routing model's locality on held-out text.

mod common;

use common::*;
use webmoe::engine::{Device, Engine, EngineOptions, GenerateOptions};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};
use webmoe::route::RouteTrace;

fn engine(files: &ModelFiles, device: Device, chunk: usize) -> Engine {
    let opts = EngineOptions { device, prefill_chunk: chunk, ..Default::default() };
    block_on(Engine::from_files(files, opts, Some(gpu()))).expect("engine")
}

fn load(dir: &std::path::Path) -> ModelFiles {
    block_on(ModelFiles::load(&DirSource::new(model_path(dir)))).expect("load")
}

/// The trace of `tokens` run as one sequence through `logits`.
fn logits_trace(e: &mut Engine, tokens: &[u32]) -> RouteTrace {
    e.record_routes(true);
    block_on(e.logits(tokens)).expect("logits");
    e.record_routes(false).expect("a trace")
}

/// Every MoE fixture (their router choices have no near ties, by construction): the GPU
/// trace equals the CPU reference's in the prefill GEMM path, the decode GEMV path and
/// a mix of chunk sizes.
#[test]
fn gpu_routes_equal_the_cpu_reference() {
    let mut checked = 0;
    for dir in fixtures() {
        let files = load(&dir);
        if !files.config.is_moe() {
            continue;
        }
        let r = reference(&dir);
        let want = logits_trace(&mut engine(&files, Device::Cpu, 256), &r.tokens);
        assert!(!want.layers.is_empty());
        for l in &want.layers {
            assert_eq!(l.ids.len(), r.tokens.len() * l.k, "{}: layer {}", dir.display(), l.layer);
        }
        for chunk in [256, 1, 5] {
            let got = logits_trace(&mut engine(&files, Device::Gpu, chunk), &r.tokens);
            assert_eq!(got, want, "{}: chunk {chunk}", dir.display());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no MoE fixture");
}

/// Recording through a generation: every fed token (prompt and generated but the last)
/// is recorded once, equal to the CPU reference's run, and the GPU's own per-layer
/// choice counts agree with the trace's usage.
#[test]
fn decoding_records_every_fed_token() {
    let dir = fixtures_dir().join("mixtral-e16-top4-gqa4-hd16-f16");
    let files = load(&dir);
    let r = reference(&dir);
    let prompt = &r.greedy_prompt;
    let opts = GenerateOptions { max_tokens: 8, ..Default::default() };
    let mut traces = Vec::new();
    for device in [Device::Gpu, Device::Cpu] {
        let mut e = engine(&files, device, 256);
        if device == Device::Gpu {
            block_on(e.take_expert_counts()).unwrap();
        }
        e.record_routes(true);
        let g = block_on(e.generate(prompt, &opts, |_| true)).unwrap();
        assert_eq!(g.tokens.len(), 8);
        let t = e.record_routes(false).unwrap();
        assert_eq!(t.tokens(), prompt.len() + 7, "{device:?}");
        if device == Device::Gpu {
            let counts = block_on(e.take_expert_counts()).unwrap();
            for (l, stats) in t.stats().iter().enumerate() {
                let usage: Vec<u32> = stats.usage.iter().map(|&u| u as u32).collect();
                assert_eq!(usage, counts[l], "layer {l}: trace usage vs the router's counts");
            }
        }
        traces.push(t);
    }
    assert_eq!(traces[0], traces[1], "GPU vs CPU reference");
}

/// `route::trace` runs windows as fresh sequences: locality is not counted across them.
#[test]
fn windows_are_separate_sequences() {
    let dir = fixtures_dir().join("mixtral-e8-top2-swa5");
    let files = load(&dir);
    let mut e = engine(&files, Device::Gpu, 256);
    let tokens: Vec<u32> = (0..30).map(|i| (i * 37 % 256) as u32).collect();
    let t = block_on(webmoe::route::trace(&mut e, &tokens, 8, |_, _| {})).unwrap();
    assert_eq!(t.tokens(), 30);
    assert_eq!(t.starts, vec![8, 16, 24]);
    // Each window equals the same tokens run alone.
    let alone = logits_trace(&mut e, &tokens[8..16]);
    for (l, a) in t.layers.iter().zip(&alone.layers) {
        assert_eq!(&l.ids[8 * l.k..16 * l.k], &a.ids[..], "layer {}", l.layer);
    }
    // Recording stopped with the trace.
    assert!(e.record_routes(false).is_none());
}

/// The learned-routing model (tests/fixtures/train_routed_moe.py: a Mixtral-format MoE
/// trained on the KJV without John) on held-out text (John): consecutive tokens keep their
/// first-choice expert at least 1.5 times as often as random routing would in most layers,
/// which a random-weight fixture does not, and an LRU cache of half the experts beats the
/// half it would hit at random. Printed: the whole table.
#[test]
fn learned_routing_has_locality() {
    let dir = fixtures_dir().join("learned-moe");
    let files = load(&dir);
    let mut e = engine(&files, Device::Gpu, 256);
    let text = std::fs::read_to_string(dir.join("heldout.txt")).unwrap();
    let tokens = e.encode(&text).unwrap();
    let t = block_on(webmoe::route::trace(&mut e, &tokens[..2048.min(tokens.len())], 512, |_, _| {})).unwrap();
    let stats = t.stats();
    println!("{}", webmoe::route::table(&stats));
    assert_eq!(stats.len(), 4);
    let local = stats.iter().filter(|s| s.same_first >= 1.5 * s.same_first_random).count();
    assert!(local >= 3, "{local} of 4 layers keep their first choice 1.5x as often as random");
    for s in &stats {
        let half = s.lru.iter().find(|c| c.size == s.experts / 2).unwrap();
        assert!(half.hit_rate > 0.5, "layer {}: LRU of half the experts hits {:.2}", s.layer, half.hit_rate);
    }
}

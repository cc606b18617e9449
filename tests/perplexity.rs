//! `webmoe perplexity` against transformers' logits: the first window of a fixture's
//! reference tokens scores exactly the positions llama-perplexity scores, so its value
//! follows from the reference rows alone.

mod common;

use common::*;
use webmoe::engine::{Device, Engine, EngineOptions};
use webmoe::model::ModelFiles;
use webmoe::perplexity::{estimate, nll, perplexity};
use webmoe::platform::{DirSource, block_on};

#[test]
fn one_window_matches_transformers_logits() {
    let dir = fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let r = reference(&dir);
    let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
    let ctx = 6; // 12 reference tokens: two windows; score one
    assert!(r.tokens.len() >= 2 * ctx);
    // Positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1 (no BOS: no tokenizer).
    let (mut sum, mut sum2, mut n) = (0.0, 0.0, 0);
    for p in ctx / 2..ctx - 1 {
        let v = nll(&r.logits[p], r.tokens[p + 1] as usize);
        sum += v;
        sum2 += v * v;
        n += 1;
    }
    let (want, want_pm) = estimate(sum, sum2, n);
    for device in [Device::Gpu, Device::Cpu] {
        let opts = EngineOptions { device, ..Default::default() };
        let mut e = block_on(Engine::from_files(&files, opts, Some(gpu()))).expect("engine");
        let mut seen = Vec::new();
        let got = block_on(perplexity(&mut e, &r.tokens, ctx, Some(1), |d, w, _| seen.push((d, w)))).unwrap();
        assert_eq!((got.windows, got.scored, got.tokens, got.context), (1, n, r.tokens.len(), ctx));
        assert_eq!(seen, vec![(1, 1)]);
        assert!((got.perplexity - want).abs() < 1e-4 * want, "{device:?}: {} vs {want}", got.perplexity);
        assert!(
            (got.plus_minus - want_pm).abs() < 1e-3 * want_pm.max(1e-6),
            "{device:?}: ± {} vs {want_pm}",
            got.plus_minus
        );
        // Both windows: the second runs as a fresh sequence (its own first token).
        let both = block_on(perplexity(&mut e, &r.tokens, ctx, None, |_, _, _| {})).unwrap();
        assert_eq!((both.windows, both.scored), (2, 2 * n));
    }
}

#[test]
fn too_short_a_text_is_an_error() {
    let dir = fixtures_dir().join("mixtral-e4-top1-mha");
    let files = block_on(ModelFiles::load(&DirSource::new(model_path(&dir)))).expect("load");
    let mut e = block_on(Engine::from_files(&files, EngineOptions::default(), Some(gpu()))).expect("engine");
    let err = block_on(perplexity(&mut e, &[1, 2, 3, 4, 5], 4, None, |_, _, _| {})).unwrap_err().to_string();
    assert!(err.contains("5 tokens") && err.contains("at least 8"), "{err}");
}

#[test]
fn nll_is_minus_log_softmax() {
    let row = [1.0f32, 2.0, 3.0];
    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
    assert!((nll(&row, 2) - -(3.0f64.exp() / z).ln()).abs() < 1e-12);
    // PPL of equal nll values is exp(nll) with no spread.
    let (p, pm) = estimate(2.0 * 3.0, 4.0 * 3.0, 3);
    assert!((p - 2.0f64.exp()).abs() < 1e-12 && pm == 0.0);
}

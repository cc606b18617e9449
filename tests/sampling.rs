//! The sampler on hand-made logits: each knob does what it says, and seeds reproduce.

use webmoe::sampling::{Sampler, SamplingParams, find_stop};

fn logits() -> Vec<f32> {
    // Token 3 is the most likely, then 1, then 4.
    vec![0.0, 2.0, -1.0, 3.0, 1.5, -5.0]
}

fn sample_many(p: SamplingParams, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(p);
    (0..n).map(|_| s.sample(&mut logits())).collect()
}

#[test]
fn greedy_and_its_equivalents_pick_the_argmax() {
    assert!(sample_many(SamplingParams::default(), 20).iter().all(|&t| t == 3));
    let top1 = SamplingParams { temperature: 1.0, top_k: 1, seed: Some(1), ..Default::default() };
    assert!(sample_many(top1, 50).iter().all(|&t| t == 3));
    let tiny_p = SamplingParams { temperature: 1.0, top_p: 0.01, seed: Some(1), ..Default::default() };
    assert!(sample_many(tiny_p, 50).iter().all(|&t| t == 3));
    let high_min_p = SamplingParams { temperature: 1.0, min_p: 0.9, seed: Some(1), ..Default::default() };
    assert!(sample_many(high_min_p, 50).iter().all(|&t| t == 3));
}

#[test]
fn top_k_and_min_p_restrict_the_candidates() {
    let k2 = SamplingParams { temperature: 2.0, top_k: 2, seed: Some(3), ..Default::default() };
    let got = sample_many(k2, 400);
    assert!(got.iter().all(|&t| t == 3 || t == 1));
    assert!(got.contains(&1) && got.contains(&3));
    // p(1)/p(3) = e^-1 ≈ 0.37 >= 0.3, p(4)/p(3) = e^-1.5 ≈ 0.22 < 0.3.
    let mp = SamplingParams { temperature: 1.0, min_p: 0.3, seed: Some(3), ..Default::default() };
    let got = sample_many(mp, 400);
    assert!(got.iter().all(|&t| t == 3 || t == 1), "{got:?}");
}

#[test]
fn temperature_sampling_follows_the_distribution() {
    let p = SamplingParams { temperature: 1.0, seed: Some(11), ..Default::default() };
    let got = sample_many(p, 20000);
    let freq = |t: u32| got.iter().filter(|&&x| x == t).count() as f64 / got.len() as f64;
    let z: f64 = logits().iter().map(|&l| (l as f64).exp()).sum();
    for t in [1u32, 3, 4] {
        let want = (logits()[t as usize] as f64).exp() / z;
        assert!((freq(t) - want).abs() < 0.02, "token {t}: {} vs {want}", freq(t));
    }
}

#[test]
fn same_seed_same_tokens() {
    let p = |seed| SamplingParams { temperature: 1.3, seed: Some(seed), ..Default::default() };
    assert_eq!(sample_many(p(42), 100), sample_many(p(42), 100));
    assert_ne!(sample_many(p(42), 100), sample_many(p(43), 100));
}

#[test]
fn logit_bias_bans_and_forces() {
    let ban = SamplingParams { logit_bias: vec![(3, f32::NEG_INFINITY)], ..Default::default() };
    assert_eq!(sample_many(ban, 1), vec![1]);
    let force = SamplingParams { logit_bias: vec![(5, 100.0)], ..Default::default() };
    assert_eq!(sample_many(force, 1), vec![5]);
}

#[test]
fn penalties_discourage_repeats() {
    // Repetition penalty 2 halves token 3's logit (3 -> 1.5), below token 1 (2.0).
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() });
    s.add_context(&[3]);
    assert_eq!(s.sample(&mut logits()), 1);
    // A negative logit is multiplied instead: token 2 goes from -1 to -2.
    let mut l = logits();
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() });
    s.add_context(&[2]);
    s.adjust(&mut l);
    assert_eq!(l[2], -2.0);
    // Presence counts once, frequency per occurrence; the prompt does not count.
    let mut s = Sampler::new(SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() });
    s.add_context(&[1, 1]);
    s.accept(3);
    s.accept(3);
    let mut l = logits();
    s.adjust(&mut l);
    assert_eq!((l[3], l[1]), (3.0 - 0.5 - 0.5, 2.0));
}

#[test]
fn stop_strings_are_found_and_their_prefixes_held_back() {
    let stops = vec!["\nUser:".to_string(), "###".to_string()];
    assert_eq!(find_stop("Paris.\nUser: hi", &stops), (Some(6), 0));
    assert_eq!(find_stop("Paris.\nUs", &stops).1, 3);
    assert_eq!(find_stop("Paris #", &stops), (None, 1));
    assert_eq!(find_stop("Paris", &stops), (None, 0));
    assert_eq!(find_stop("a ### b \nUser:", &stops).0, Some(2));
}

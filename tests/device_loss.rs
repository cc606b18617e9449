//! A lost GPU device, natively: wgpu's `Device::destroy` (what a driver reset does to the
//! engine) in the middle of a generation. The call fails with the retryable
//! `Error::DeviceLost`; `Engine::rebuilt` loads the model again onto a new device with the
//! conversation prefilled; the next answer equals a fresh engine's for the same
//! conversation, and only the new tokens are prefilled for it.

mod common;

use webmoe::engine::{Device, Engine, EngineOptions, Event, GenerateOptions};
use webmoe::error::Error;
use webmoe::platform::{DirSource, block_on};

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, ignore_eos: true, ..Default::default() }
}

fn open(src: &DirSource) -> Engine {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    // Each engine opens its own device (gpu: None): this test destroys one.
    let opts = EngineOptions { device: Device::Gpu, context: Some(64), ..Default::default() };
    block_on(Engine::load(src, opts, None)).expect("fixture loads")
}

#[test]
fn lost_device_mid_generation_rebuilds_and_resumes_the_conversation() {
    let dir = common::fixtures_dir().join("mixtral-e8-top2-gqa2-bf16-sharded");
    let src = DirSource::new(&dir);
    let mut engine = open(&src);

    // Turn one completes; turn two is cut by the lost device after three tokens.
    let turn1 = [5u32, 17, 99, 3, 200, 42, 7];
    let g1 = block_on(engine.generate(&turn1, &greedy(6), |_| true)).unwrap();
    let mut turn2: Vec<u32> = turn1.iter().chain(&g1.tokens).copied().collect();
    turn2.extend([11, 23, 64]);
    let gpu = engine.gpu().expect("a GPU engine");
    let mut seen = 0;
    let cut = block_on(engine.generate(&turn2, &greedy(10), |ev| {
        if matches!(ev, Event::Token(_)) {
            seen += 1;
            if seen == 3 {
                gpu.destroy_for_test();
            }
        }
        true
    }));
    let err = cut.expect_err("a generation on a destroyed device fails");
    assert!(matches!(err, Error::DeviceLost(_)) && err.is_retryable(), "the error is a retryable DeviceLost: {err}");
    assert!(err.to_string().contains("device was lost"), "{err}");
    assert!(seen >= 3 && seen < 10, "the generation stopped at the loss ({seen} tokens)");
    // What the lost device held is the conversation: turn two's prompt at least.
    let held = engine.cached().to_vec();
    assert!(held.len() >= turn2.len() && held.starts_with(&turn2), "held {held:?}");
    let mut resumed = block_on(engine.rebuilt(&src)).expect("rebuilt on a new device");
    assert_eq!(resumed.cached(), &held[..], "the conversation is restored");
    let answer = block_on(resumed.generate(&turn2, &greedy(10), |_| true)).unwrap();
    assert_eq!(answer.prefilled_tokens, 1, "only the last prompt token is fed again: the rest was restored");

    let mut fresh = open(&src);
    let want = block_on(fresh.generate(&turn2, &greedy(10), |_| true)).unwrap();
    assert_eq!(want.prefilled_tokens, turn2.len());
    assert_eq!(answer.tokens, want.tokens, "the resumed answer equals a fresh engine's");
    println!("device lost after {seen} tokens: {err}; resumed answer {:?} equals the fresh one", answer.tokens);
}

#[test]
fn device_lost_while_idle_fails_the_next_call_cleanly() {
    let dir = common::fixtures_dir().join("llama-dense-gqa2-tied");
    let src = DirSource::new(&dir);
    let mut engine = open(&src);
    let tokens = [1u32, 2, 3, 4];
    let before = block_on(engine.logits(&tokens)).unwrap();
    engine.gpu().unwrap().destroy_for_test();
    let err = block_on(engine.logits(&tokens)).expect_err("logits on a destroyed device fail");
    assert!(err.is_retryable(), "{err}");
    // And so does every call after it, at once instead of hanging.
    let again = block_on(engine.logits(&tokens)).expect_err("still lost");
    assert!(again.is_retryable(), "{again}");
    let mut rebuilt = block_on(engine.rebuilt(&src)).unwrap();
    let after = block_on(rebuilt.logits(&tokens)).unwrap();
    assert_eq!(before, after, "the rebuilt engine computes the same logits");
}
